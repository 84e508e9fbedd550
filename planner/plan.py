"""The Plan value: where each piece runs, what it is predicted to cost, and how it was found.

It is what `tierplan plan` writes as plan.json and what runtime/ and simulations/ read.
Field names are a public contract (DESIGN.md, machine-readable outputs): add, never rename.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from tierplan.devices.fleet import Fleet
    from tierplan.spec import AppSpec, FleetSpec

__all__ = ["SinkLatency", "BaselineResult", "ClassCoverage", "PlanPiece", "PlanEdge", "ParetoPoint",
           "PieceMove", "Plan", "piece_moves"]


class _M(BaseModel):
    model_config = ConfigDict(extra="allow")


class SinkLatency(_M):
    """Predicted end-to-end latency to one sink and where it goes (compute per tier, transfers)."""

    latency_ms: float
    slo_ms: float | None = None
    meets_slo: bool | None = None
    breakdown: dict[str, float] = Field(default_factory=dict,
                                        description="e.g. compute.edge, compute.cloud, transfer.edge->cloud (ms)")


class BaselineResult(_M):
    """A baseline strategy evaluated with the same cost model."""

    latency_ms: float
    cost_per_hour_usd: float
    feasible: bool = True
    assignment: dict[str, str] = Field(default_factory=dict)
    sinks: dict[str, SinkLatency] = Field(default_factory=dict)
    reason: str | None = None
    coverage_share: float | None = None      # share of the fleet's devices whose SLOs it meets
    per_class: dict[str, dict[str, str]] = Field(default_factory=dict)
    # the plan's objective (Plan.objective's units: $/h, mean sink latency ms, J or the weighted
    # mix) under the same evaluation: the figure to compare with the optimum's objective
    objective: float | None = None


class ClassCoverage(_M):
    """Per edge device class: does it meet the SLO, and how (on device, with offload, not at all)."""

    devices: int
    mode: Literal["on-device", "offload", "not-met"]
    latency_ms: float
    meets_slo: bool
    note: str = ""


class PlanPiece(_M):
    """A piece as the runtime and simulator need it."""

    id: str
    kind: Literal["source", "piece", "transform", "sink"] = "piece"
    model: str | None = None
    file: str | None = None
    inputs: list[dict] = Field(default_factory=list)    # [{name, shape, dtype, nbytes}]
    outputs: list[dict] = Field(default_factory=list)
    flops: float = 0.0
    param_bytes: int = 0
    rate_factor: float = 1.0                            # invocations per source request
    latency_ms: dict[str, float] = Field(default_factory=dict)  # predicted, per site class
    segments: list[str] = Field(default_factory=list,
                                description="the planner's candidate segments this piece joins, in order "
                                            "(empty: the piece is one segment, its id); replanning compares them")


class PlanEdge(_M):
    src: str
    dst: str
    nbytes: int
    tensors: list[str] = Field(default_factory=list)
    private: bool = False


class ParetoPoint(_M):
    """One point of the cost-latency frontier (epsilon-constraint on mean latency)."""

    latency_ms: float                 # request-weighted mean sink latency
    cost_per_hour_usd: float
    status: str
    per_class: dict[str, dict[str, str]] = Field(default_factory=dict)


class PieceMove(_M):
    """A piece that runs on another site class after replanning (`--from old-plan.json`): a piece of
    the new plan some of whose segments the old plan ran elsewhere (or not at all), or (`to_site`
    None) a piece of the old plan whose segments the new plan does not have."""

    edge_class: str
    piece: str
    from_site: str | None             # the old plan's site; several joined by "+"; None: a new class
    to_site: str | None
    segments: list[str] = Field(default_factory=list)   # the piece's segments that change site


class Plan(_M):
    """A placement and its predicted figures. `assignment` maps piece id -> site class.

    For fleets with several edge classes `per_class[edge_class][piece_id]` is the site class that
    runs the piece for requests from that edge class; `assignment` is the first class's view.
    """

    status: Literal["optimal", "feasible", "infeasible", "unknown"]
    objective: float | None = None
    objective_kind: str = "cost"
    gap: float | None = None
    assignment: dict[str, str] = Field(default_factory=dict)
    per_class: dict[str, dict[str, str]] = Field(default_factory=dict)
    sinks: dict[str, SinkLatency] = Field(default_factory=dict)
    cost_per_hour_usd: float = 0.0
    cost_per_1k_requests_usd: float = 0.0
    energy_j_per_request: float | None = None
    baselines: dict[str, BaselineResult] = Field(default_factory=dict)
    coverage: dict[str, ClassCoverage] = Field(default_factory=dict)
    instances: dict[str, int] = Field(default_factory=dict)  # rented instances per site class
    solve_s: float = 0.0
    reason: str | None = None
    pieces: list[PlanPiece] = Field(default_factory=list)
    edges: list[PlanEdge] = Field(default_factory=list)
    app_path: str | None = None
    fleet_path: str | None = None
    inputs_sha256: dict[str, str] = Field(default_factory=dict)
    # added by the planner (additive): bound, per-class views, coverage, money, frontier, replanning
    objective_bound: float | None = None
    latency_ms: float | None = None                   # request-weighted mean of each class's slowest sink
    site_tiers: dict[str, str] = Field(default_factory=dict)   # site class -> tier
    pins: dict[str, dict[str, str]] = Field(default_factory=dict)  # class -> source/sink id -> site class
    class_sinks: dict[str, dict[str, SinkLatency]] = Field(default_factory=dict)
    coverage_share: float | None = None               # share of devices whose SLOs are met
    coverage_summary: str = ""
    monthly_cost_usd_by_tier: dict[str, float] = Field(default_factory=dict)
    requests_per_hour: float = 0.0
    order: list[str] = Field(default_factory=list)    # topological order of the nodes (a site runs them in it)
    latency_semantics: str = ""
    percentile: float = 95.0
    pareto: list[ParetoPoint] = Field(default_factory=list)
    moves: list[PieceMove] = Field(default_factory=list)
    move_cost_ms: float | None = None   # --from --move-cost: ms charged per segment moved (planner.movecost)
    solver: dict[str, float | int | str] = Field(default_factory=dict)
    cuts: dict[str, list[int]] = Field(default_factory=dict, description="model -> the positions of its "
                                       "topological order where the plan cuts it (its pieces' boundaries)")
    refine: list[dict] = Field(default_factory=list, description="the cut refinement rounds (planner.refine): "
                               "segments per model refined, objective before and after, CP-SAT status, seconds")
    site_devices: dict[str, str] = Field(default_factory=dict,
                                         description="site class -> catalog device name (runtime compile reads it)")

    # the inputs, embedded so that runtime/ and simulations/ need nothing but this file (issue #15)
    fleet: dict | None = Field(None, description="the fleet as planned: FleetSpec JSON with every device "
                                                 "inline (Plan.fleet_model() rebuilds it)")
    app: dict | None = Field(None, description="the app as planned: AppSpec JSON (Plan.app_spec() rebuilds it)")
    batch_free_models: list[str] = Field(default_factory=list,
                                         description="models whose ONNX inputs all have a free first dimension: "
                                                     "their pieces may batch (runtime and simulator read this)")
    # issue #16: whether every device meets its SLO, and each (class, sink) that does not
    slo_met: bool | None = Field(None, description="every device within its SLOs (None: no SLO given)")
    not_met: list[dict[str, str | float | int]] = Field(
        default_factory=list, description="per class and sink missing its SLO: edge_class, devices, sink, slo_ms, "
        "planned_ms, best_alone_ms (the best it could reach with the fleet to itself), why, fix")

    def segments_of(self) -> dict[str, list[str]]:
        """Piece id -> the candidate segments it joins (itself when it is one, or for a plan that
        records none): what two plans of one app can be compared by, whatever pieces each cut."""
        segmented = any(p.segments for p in self.pieces)
        # in a segmented plan a piece lying inside one segment (a refined cut) names none
        return {p.id: list(p.segments) if p.segments else [] if segmented and p.kind == "piece" else [p.id]
                for p in self.pieces}

    def segment_sites(self) -> dict[str, dict[str, str]]:
        """Per class, segment (or transform) id -> the site class that runs it."""
        seg = self.segments_of()
        return {c: {x: site for piece, site in sites.items() for x in seg.get(piece, [piece])}
                for c, sites in self.per_class.items()}

    def with_inputs(self, app: "AppSpec", fleet: "Fleet") -> "Plan":
        """This plan with the app and the resolved fleet embedded (model paths made absolute)."""
        return self.model_copy(update={"fleet": fleet.to_spec().model_dump(mode="json", by_alias=True,
                                                                            exclude_none=True),
                                       "app": _app_json(app), "batch_free_models": batch_free_models(app)})

    def fleet_spec(self) -> "FleetSpec":
        """The fleet this plan was made for, with every device inline (no catalog, no fleet.yaml)."""
        from tierplan.spec import FleetSpec
        return FleetSpec.model_validate(self._embedded("fleet"))

    def fleet_model(self) -> "Fleet":
        """The resolved fleet (devices.fleet.Fleet): routes, parents, pins, edge classes."""
        from tierplan.devices.fleet import resolve_fleet
        return resolve_fleet(self.fleet_spec(), catalog={})

    def app_spec(self) -> "AppSpec":
        """The app this plan was made for (model paths absolute, as Plan.load makes them)."""
        from tierplan.spec import AppSpec
        return AppSpec.model_validate({**self._embedded("app"), "base_dir": "/"})

    def _embedded(self, what: str) -> dict:
        got = getattr(self, what)
        if got is None:
            from tierplan.errors import InputError
            raise InputError(f"plan.json has no embedded {what} (a plan written by an older tierplan, or an "
                             f"infeasible one). To fix: re-run `tierplan plan APP --fleet FLEET --out plan.json`")
        return got

    def _paths(self, fix: "Callable[[str], str]") -> "Plan":
        """This plan with every file path passed through `fix` (pieces, inputs, the app's models)."""
        update: dict = {k: fix(getattr(self, k)) for k in ("app_path", "fleet_path") if getattr(self, k)}
        update["pieces"] = [p.model_copy(update={"file": fix(p.file)}) if p.file else p for p in self.pieces]
        if self.app is not None:
            models = {n: {**m, **{k: fix(m[k]) for k in ("onnx", "tflite") if m.get(k)}}
                      for n, m in self.app.get("models", {}).items()}
            update["app"] = {**self.app, "models": models}
        return self.model_copy(update=update)

    def _local_pieces(self, here: Path) -> tuple["Plan", list[tuple[Path, Path]]]:
        """Piece files outside the plan's folder go into `pieces/` beside it, so the folder is a
        bundle that deploys and simulates the same when moved or copied elsewhere: this plan with
        those paths, and the (source, destination) copies to make."""
        out: list[PlanPiece] = []
        copies: list[tuple[Path, Path]] = []
        taken: dict[str, Path] = {}                  # file name in pieces/ -> the file copied there
        for p in self.pieces:
            src = Path(p.file) if p.file else None
            if src is None or not src.is_file() or here in src.resolve().parents:
                out.append(p)
                continue
            name = src.name if taken.get(src.name, src) == src else f"{len(taken)}-{src.name}"
            taken[name] = src
            dst = here / "pieces" / name
            copies.append((src, dst))
            out.append(p.model_copy(update={"file": str(dst)}))
        return self.model_copy(update={"pieces": out}), copies

    def save(self, path: str | Path) -> None:
        """Write plan.json atomically (never half-written), its paths relative to the plan's folder,
        and the piece files it runs into pieces/ beside it (only once plan.json could be written)."""
        import shutil
        from tierplan.errors import InputError
        path = Path(path)
        here = path.resolve().parent
        tmp = path.with_suffix(path.suffix + ".tmp")
        made: list[Path] = []                         # files this call created (removed on failure)
        try:
            if path.is_dir():
                raise IsADirectoryError(21, "Is a directory")
            here.mkdir(parents=True, exist_ok=True)
            local, copies = self._local_pieces(here)
            tmp.write_text(local._paths(lambda p: _relative(p, here)).model_dump_json(indent=2))
            for src, dst in copies:
                if not dst.parent.is_dir():
                    dst.parent.mkdir()
                    made.append(dst.parent)
                if not (dst.is_file() and dst.read_bytes() == src.read_bytes()):
                    made.insert(0, dst)
                    shutil.copyfile(src, dst)
            tmp.replace(path)
        except OSError as e:
            if tmp.is_file():
                tmp.unlink()
            for f in made:
                f.rmdir() if f.is_dir() else f.unlink(missing_ok=True)
            raise InputError(f"{path}: cannot write the plan ({e.strerror or e.__class__.__name__}). To fix: pass "
                             "a file path in a folder you can write to") from None

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        """Read plan.json; relative paths in it are relative to its folder (made absolute here)."""
        from tierplan.errors import InputError
        path = Path(path)
        try:
            plan = cls.model_validate(json.loads(path.read_text()))
        except FileNotFoundError:
            raise InputError(f"{path}: plan file not found. To fix: run `tierplan plan APP --fleet FLEET --out {path}`")
        except (IsADirectoryError, PermissionError) as e:
            raise InputError(f"{path}: cannot read the plan ({e.__class__.__name__}). To fix: pass the plan.json "
                             "file written by `tierplan plan`") from None
        except (json.JSONDecodeError, ValueError) as e:
            raise InputError(f"{path}: not a valid plan.json ({str(e).splitlines()[0]})")
        here = path.resolve().parent
        return plan._paths(lambda p: _absolute(p, here))


def _relative(p: str, base: Path) -> str:
    """`p` relative to `base` (the plan's folder); pkg: references stay as they are."""
    if p.startswith("pkg:") or not Path(p).is_absolute():
        return p
    return os.path.relpath(p, base)


def _absolute(p: str, base: Path) -> str:
    """A path read from plan.json made absolute against the plan's folder."""
    if p.startswith("pkg:") or Path(p).is_absolute():
        return p
    return os.path.normpath(base / p)


def batch_free_models(app: "AppSpec") -> list[str]:
    """The app's ONNX models whose graph inputs all have a free (symbolic or unknown) first dimension:
    partitioning binds it to 1, and a batching site frees it again (runtime.batchdim). Decided here,
    from the model files, so that downstream needs only the plan."""
    import onnx
    out = []
    for name, m in app.models.items():
        if not m.onnx:
            continue
        try:
            model = onnx.load(str(app.resolve_path(m.onnx)), load_external_data=False)
        except Exception:   # unreadable here: not known to batch  # noqa: BLE001
            continue
        inits = {i.name for i in model.graph.initializer}
        ins = [i for i in model.graph.input if i.name not in inits]
        if ins and all(i.type.tensor_type.shape.dim and not i.type.tensor_type.shape.dim[0].HasField("dim_value")
                       for i in ins):
            out.append(name)
    return out


def _app_json(app: "AppSpec") -> dict:
    """The AppSpec as JSON with its model files as absolute paths (pkg: kept)."""
    d = app.model_dump(mode="json", by_alias=True)
    for name, m in d.get("models", {}).items():
        for k in ("onnx", "tflite"):
            if m.get(k) and not m[k].startswith("pkg:"):
                m[k] = str(app.resolve_path(m[k]).resolve())
    return d


def piece_moves(old: Plan, new: Plan, classes: Iterable[str] | None = None) -> list[PieceMove]:
    """Per class, each piece of `new` some of whose segments `old` ran on another site class (or not
    at all), and each piece of `old` whose segments `new` lacks. Compared segment by segment, so a
    plan cut differently but run on the same sites moves nothing."""
    out: list[PieceMove] = []
    old_seg, new_seg = old.segment_sites(), new.segment_sites()
    old_pieces, new_pieces = old.segments_of(), new.segments_of()
    for cls, sites in new.per_class.items():
        if classes is not None and cls not in classes:
            continue
        before, after = old_seg.get(cls, {}), new_seg[cls]
        if cls not in old.per_class:
            out += [PieceMove(edge_class=cls, piece=p, from_site=None, to_site=s) for p, s in sites.items()]
            continue
        for piece, site in sites.items():
            moved = [x for x in new_pieces.get(piece, [piece]) if before.get(x) != site]
            if moved:
                was = sorted({before[x] for x in moved if x in before})
                out.append(PieceMove(edge_class=cls, piece=piece, from_site="+".join(was) or None, to_site=site,
                                     segments=moved))
        for piece, site in old.per_class[cls].items():
            gone = [x for x in old_pieces.get(piece, [piece]) if x not in after]
            if gone:
                out.append(PieceMove(edge_class=cls, piece=piece, from_site=site, to_site=None, segments=gone))
    return out

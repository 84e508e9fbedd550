"""Dynamic batching at sites and link sharing modes: which stages batch, and what a batch costs.

The runtime (runtime/stage.py, deployed by runtime/deploy.py) batches on the cloud tier's sites:
a node whose ONNX runner takes a free first dimension is queued for the site's batching thread,
which takes the oldest queued node and up to `max_batch` queued requests of the same node once
`max_batch` of them wait or the oldest has waited `max_wait_ms`, runs them as one call, and only
then looks at the queue again (one batch at a time per worker). Nodes it cannot batch (fixed first
dimension, Python transforms) run one request at a time. `max_batch` 1 turns batching off.

The simulator mirrors that per compute stage (a run of nodes on one site, simulations/journey.py):
a stage batches when its site is a batching site and every node of it is batchable; requests
of the same stage (same nodes) at the same server join one batch, which waits for the batch to
fill once, before its first node (the runtime's later nodes of a full batch start at once). A
batch of b requests takes `ratio[b] x` the mean of its members' drawn batch-1 times, where
ratio[b] = piece_ms(batch=b) / piece_ms(batch=1) from devices.costmodel when the pieces' ONNX
files are at hand, else the linear model t(b) = t1 * (a + (1 - a) * b) with
a = devices.constants.BATCH_FIXED_SHARE[device kind].

Batching policies: "auto" (the default) is what the runtime would deploy: the cloud tier's sites,
max_batch and max_wait_ms as runtime.stage.StageOptions, nodes batchable only where the plan says
their first input dimension is free, or where the piece's model (the plan's embedded app) has a
free first dimension on every input: partitioning binds it to 1 and the runtime frees it again
on batching sites (runtime.batchdim). A piece without a file or shapes cannot be deployed, so
it does not batch. An explicit "MAX[:WAIT_MS]" batches every node not known to be fixed-size.
"off" (or max_batch 1) never batches. A profile from `tierplan run` (`simulate --profile RUN.json`)
carries the caps the run deployed (`tierplan run --batch MAX:WAIT_MS`), which "auto" then uses
(`as_run_policy`), and says how long the run's partial batches really waited at each site: the batching thread wakes late on
a busy host (the wait is max_wait_ms plus that delay), and a wait of 3 ms instead of 2 takes smart-city's
region_east from a mean batch of 1.15 to 1.3, so the measured delay beyond the run's own wait is added to the policy's wait there.

Link sharing: "fifo" (the default) sends one transfer at a time per link direction at the full
rate, as runtime/links.py's token bucket does (each send reserves the link from its next-free
time); "fair" shares a link direction's rate equally among the transfers in flight (processor
sharing, as concurrent TCP flows roughly do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from tierplan.simulations.journey import Journey, Stage
from tierplan.errors import InputError

__all__ = ["BatchPolicy", "BatchStage", "parse_batching", "as_run_policy", "batch_stages", "linear_ratio",
           "RUNTIME_MAX_BATCH", "RUNTIME_MAX_WAIT_MS", "RUNTIME_BATCH_TIER", "LINK_SHARING", "check_link_sharing",
           "stage_key", "next_batch", "batch_ms", "SAME_INSTANT_MS"]

# The runtime's defaults (runtime.stage.StageOptions.max_batch / max_wait_ms, and runtime.deploy
# batching the cloud tier's sites); tests/sim checks they still agree.
RUNTIME_MAX_BATCH = 8
RUNTIME_MAX_WAIT_MS = 2.0
RUNTIME_BATCH_TIER = "cloud"
LINK_SHARING = ("fifo", "fair")
SAME_INSTANT_MS = 1e-9   # times closer than this are one instant (float sums drift by ulps)


@dataclass(frozen=True)
class BatchPolicy:
    """Where and how requests are batched: sites (None = the cloud tier's), size cap, wait cap."""

    max_batch: int = RUNTIME_MAX_BATCH
    max_wait_ms: float = RUNTIME_MAX_WAIT_MS
    sites: tuple[str, ...] | None = None
    forced: bool = False   # True: nodes of unknown batchability batch too (an explicit MAX[:WAIT_MS])

    @property
    def label(self) -> str:
        kind = "batch" if self.forced else "auto"
        return f"{kind} {self.max_batch}:{self.max_wait_ms:g}ms"


@dataclass(frozen=True)
class BatchStage:
    """How one compute stage batches: the group its requests batch with, caps, and t(b)/t(1)."""

    group: tuple[str, ...]          # the stage's nodes: requests batch with others of the same nodes
    max_batch: int
    max_wait_ms: float
    ratio: tuple[float, ...]        # ratio[b] = batch time of b requests / batch-1 time (ratio[0] unused)
    source: str                     # "costmodel" or "linear"


def parse_batching(value: Any) -> BatchPolicy | None:
    """A batching option as a policy: None/"auto" = as the runtime deploys, "off"/False/max 1 = none,
    "MAX[:WAIT_MS]", (MAX, WAIT_MS) or a BatchPolicy = batch with these caps."""
    if isinstance(value, BatchPolicy):
        policy = value
    elif value is None or value == "auto" or value is True:
        return BatchPolicy()
    elif value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return None
    elif isinstance(value, str):
        parts = value.strip().split(":")
        try:
            if len(parts) > 2:
                raise ValueError(value)
            policy = BatchPolicy(int(parts[0]), float(parts[1]) if len(parts) == 2 else RUNTIME_MAX_WAIT_MS,
                                 forced=True)
        except ValueError:
            raise InputError(f"--batch {value!r}: expected MAX[:WAIT_MS] (e.g. 8:2), auto or off") from None
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        policy = BatchPolicy(int(value[0]), float(value[1]), forced=True)
    else:
        raise InputError(f"simulate: batching={value!r}: expected 'auto', 'off', 'MAX[:WAIT_MS]' or a BatchPolicy")
    if policy.max_batch < 1 or not math.isfinite(policy.max_wait_ms) or policy.max_wait_ms < 0:
        raise InputError(f"--batch {policy.max_batch}:{policy.max_wait_ms:g}: MAX must be >= 1 and WAIT_MS >= 0")
    return policy if policy.max_batch > 1 else None


def as_run_policy(policy: BatchPolicy | None, ran: tuple[int, float] | None) -> BatchPolicy | None:
    """The policy to simulate a run with: "auto" (not forced) takes the caps the run deployed, `ran` =
    (max_batch, max_wait_ms) from its report (max_batch 1: it did not batch); an explicit policy or none
    stays as it is."""
    if policy is None or policy.forced or ran is None:
        return policy
    return replace(policy, max_batch=int(ran[0]), max_wait_ms=float(ran[1])) if ran[0] > 1 else None


def check_link_sharing(value: str) -> str:
    """The link sharing mode, or a one-line InputError naming the choices."""
    if value not in LINK_SHARING:
        raise InputError(f"--link-sharing {value!r}: expected fifo or fair")
    return value


def linear_ratio(max_batch: int, fixed_share: float) -> tuple[float, ...]:
    """t(b) / t(1) = a + (1 - a) * b for b = 0..max_batch (index 0 unused)."""
    return tuple(fixed_share + (1.0 - fixed_share) * b for b in range(max_batch + 1))


def _first_dim_free(shape) -> bool | None:
    if not isinstance(shape, (list, tuple)) or not shape:
        return None
    return not isinstance(shape[0], int) or shape[0] < 0


def _piece_file(piece, base_dirs: list[Path]) -> Path | None:
    f = getattr(piece, "file", None)
    if not f:
        return None
    p = Path(f)
    for cand in [p] + ([] if p.is_absolute() else [d / p for d in base_dirs]):
        if cand.is_file():
            return cand
    return None


def _onnx_batchable(path: Path) -> bool | None:
    """Whether every graph input of an ONNX file has a free first dimension (the runtime's rule)."""
    try:
        import onnx
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable here: the plan's shapes decide instead
        return None
    inits = {i.name for i in model.graph.initializer}
    ins = [i for i in model.graph.input if i.name not in inits]
    if not ins:
        return False
    free = []
    for i in ins:
        dims = i.type.tensor_type.shape.dim
        free.append(bool(dims) and not dims[0].HasField("dim_value"))
    return all(free)


def _first_dim_names(path: Path) -> set[str]:
    """Names of the free first dimensions of an ONNX file's inputs (bound to 1 to price batch 1)."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    return {i.type.tensor_type.shape.dim[0].dim_param for i in model.graph.input
            if i.type.tensor_type.shape.dim and i.type.tensor_type.shape.dim[0].dim_param}


def _batch_free_models(plan) -> set[str]:
    """The app's models whose ONNX inputs all have a free first dimension (`plan.batch_free_models`,
    decided at plan time): the runtime serves their pieces on batching sites with that dimension
    freed again (partitioning binds it to 1; runtime.batchdim), so they batch."""
    return set(getattr(plan, "batch_free_models", None) or ())


def _batchable(piece, path: Path | None, free_models: frozenset[str] | set[str] = frozenset()) -> bool | None:
    """True/False when the plan tells (a piece of a model with a free batch dimension, the ONNX file,
    else input shapes), None when it cannot."""
    if piece.kind == "transform":
        return False   # Python transforms have no runner: the runtime runs them one at a time
    if piece.kind == "piece" and getattr(piece, "model", None) in free_models:
        return True
    if path is not None:
        ok = _onnx_batchable(path)
        if ok is not None:
            return ok
    shapes = [i.get("shape") for i in piece.inputs if isinstance(i, dict)]
    verdicts = [_first_dim_free(s) for s in shapes]
    if verdicts and all(v is not None for v in verdicts):
        return all(verdicts)
    return None


def _costmodel_ratio(paths: list[tuple[Path, float]], device, max_batch: int) -> tuple[float, ...] | None:
    """ratio[b] from the cost model over the stage's files (weighted by each node's share), or None."""
    try:
        from tierplan.devices.costmodel import CostModel
        from tierplan.devices.pieces import piece_from_onnx
        cm = CostModel()
        per = [(cm, piece_from_onnx(p, dims={d: 1 for d in _first_dim_names(p)}), w) for p, w in paths]
        t1 = sum(w * c.piece_ms(pc, device, batch=1) for c, pc, w in per)
        if t1 <= 0:
            return None
        return (0.0,) + tuple(sum(w * c.piece_ms(pc, device, batch=b) for c, pc, w in per) / t1
                              for b in range(1, max_batch + 1))
    except Exception:  # the cost model cannot price these files: the linear model is used instead
        return None


def batch_stages(policy: BatchPolicy | None, journeys_by_strategy: Iterable[list[Journey]], plan, fleet,
                 measured_wait_ms: Mapping[str, float] | None = None,
                 ran_wait_ms: float = RUNTIME_MAX_WAIT_MS) -> dict[tuple[str, tuple[str, ...]], BatchStage]:
    """{(site class, nodes): BatchStage} for every compute stage of the journeys that batches under
    `policy` (empty when it is None); `stage_key(stage)` looks a stage up.

    `measured_wait_ms[site]`: how long a run's partial batches waited there (a ServiceProfile from
    `tierplan run`): the runtime's batching thread starts one after max_wait_ms plus its own delay
    (a timed wake-up on a busy host): the excess over the run's own wait `ran_wait_ms` is added to the
    policy's wait."""
    out: dict[tuple[str, tuple[str, ...]], BatchStage] = {}
    if policy is None:
        return out
    from tierplan.devices.constants import BATCH_FIXED_SHARE
    from tierplan.devices.costmodel import device_kind
    pieces = {p.id: p for p in plan.pieces}
    base_dirs = [Path(d) for d in (getattr(plan, "app_path", None), getattr(plan, "fleet_path", None)) if d]
    base_dirs = [d.parent for d in base_dirs]
    verdict: dict[str, tuple[bool | None, Path | None]] = {}
    free_models = _batch_free_models(plan)
    for journeys in journeys_by_strategy:
        for j in journeys:
            for st in j.stages:
                if st.kind != "compute" or not st.work:
                    continue
                sv = fleet.classes[st.site]
                batching_site = st.site in policy.sites if policy.sites is not None else sv.tier == RUNTIME_BATCH_TIER
                if not batching_site:
                    continue
                nodes = tuple(w.node for w in st.work)
                key = (st.site, nodes)
                if key in out or not all(nodes):
                    continue
                ok = True
                for n in nodes:
                    if n not in verdict:
                        p = pieces.get(n)
                        path = _piece_file(p, base_dirs) if p is not None else None
                        verdict[n] = (_batchable(p, path, free_models) if p is not None else None, path)
                    v = verdict[n][0]
                    ok &= bool(v) if not policy.forced else v is not False
                if not ok:
                    continue
                files = [(f, w.amount * w.rate_factor) for w in st.work for f in [verdict[w.node][1]] if f is not None]
                ratio, source = None, "linear"
                if sv.device is not None and len(files) == len(st.work):
                    ratio = _costmodel_ratio(files, sv.device, policy.max_batch)
                    source = "costmodel" if ratio is not None else source
                if ratio is None:
                    kind = device_kind(sv.device) if sv.device is not None else "cpu"
                    ratio = linear_ratio(policy.max_batch, BATCH_FIXED_SHARE[kind])
                late = max(0.0, float((measured_wait_ms or {}).get(st.site, ran_wait_ms)) - ran_wait_ms)
                out[key] = BatchStage(nodes, policy.max_batch, policy.max_wait_ms + late, ratio, source)
    return out


def stage_key(st: Stage) -> tuple[str, tuple[str, ...]]:
    """The key of `batch_stages`' result for a stage."""
    return (st.site, tuple(w.node for w in st.work))


def next_batch(waiting, now_ms: float) -> tuple[list[int] | None, float]:
    """The runtime's batching rule for a free server (runtime/stage.py `_batch_loop`), shared by
    every engine: `waiting` holds (BatchStage, batch-1 ms, arrived ms, ...) oldest first. Returns
    the indices of the batch to start now (the oldest's group, up to max_batch of it) once
    max_batch of it wait or the oldest has waited max_wait_ms; else None. Also the oldest's due time."""
    head = waiting[0][0]
    same = [k for k, w in enumerate(waiting) if w[0].group == head.group][:head.max_batch]
    due = waiting[0][2] + head.max_wait_ms
    if len(same) < head.max_batch and now_ms < due - SAME_INSTANT_MS:
        return None, due
    return same, due


def batch_ms(spec: BatchStage, member_ms) -> float:
    """Time of one batch: ratio[b] x the mean of its b members' batch-1 times."""
    member_ms = list(member_ms)
    return spec.ratio[len(member_ms)] * math.fsum(member_ms) / len(member_ms)

"""Move a running deployment to a new plan, losing no request; and step an emulated link live.

A move runs the new plan beside the old one for as long as the old one has requests in flight
(issue #19):

0. compile (`compile_moved`, the caller's step before `move`): the pieces that move are compiled
   for their new site's device as `tierplan compile` does (backend choice, verification, the
   content-addressed store); pieces that stay keep the deployment's artifact of the same file.
1. load: every node of the new plan gets a copy named `gK~NODE` (K: the move's generation tag) and
   each site is configured (`Configure`, a new generation number) with the union of the old and
   the new nodes; a site loads the new pieces' runners before it acknowledges, so every moved piece
   is loaded before any request uses it. A site that refuses leaves the old plan running alone.
2. switch: new requests feed the new copies (`Service.node_prefix`); requests already in flight go
   on over the old nodes, which every site still hosts, and end with their own sinks once.
3. drain, retire: once the old plan's requests have ended (or their deadline has passed), the
   sites are configured with the new plan's nodes only.

Only sites already running can take pieces: a new plan that needs another site is refused (the
service starts no worker). `Service.switches` and `describe()["switches"]` report each move.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

from tierplan.errors import RuntimeFault
from tierplan.planner.plan import Plan, PlanPiece
from tierplan.runtime.deploy import with_free_batch
from tierplan.runtime.fleetrun import ClassRun, prepare
from tierplan.runtime.graph import ExecGraph, with_app_renames
from tierplan.runtime.proto import runtime_pb2 as pb
from tierplan.runtime.service import Service, files_for

__all__ = ["move", "set_link", "executable", "union_plan", "renamed", "gen_prefix", "compile_moved"]


def gen_prefix(tag: int) -> str:
    """The node prefix of a move's generation (`g2~`, `g3~`, ...; the deployment's first plan has none)."""
    return f"g{tag}~"


def executable(plan: Plan, like: ClassRun | None, tiers: Mapping[str, str]) -> ClassRun:
    """`plan` made executable as the running deployment's was (same classes, devices per class)."""
    if plan.app is not None:
        plan = with_app_renames(plan, plan.app_spec())
    classes = tuple(like.classes) if like is not None and like.classes else None
    return prepare(plan, classes, like.devices_per_class if like is not None else 1, tiers)


def renamed(exe: Plan, prefix: str) -> Plan:
    """`exe` with every node named `prefix + id`, every node listed as a piece (sources and sinks
    too) and every node's site explicit in `assignment` (nothing left to infer from views)."""
    g = ExecGraph.from_plan(exe)
    pieces = [(g.nodes[n] if n in g.nodes else PlanPiece(id=n, kind=g.kinds[n])).model_copy(update={"id": prefix + n})
              for n in g.kinds]
    edges = [e.model_copy(update={"src": prefix + e.src, "dst": prefix + e.dst}) for e in exe.edges]
    assignment = {prefix + n: s for n, s in g.sites.items() if s}
    return exe.model_copy(update={"pieces": pieces, "edges": edges, "assignment": assignment, "per_class": {},
                                  "pins": {}, "sinks": {prefix + k: v for k, v in exe.sinks.items()},
                                  "order": [prefix + n for n in exe.order]})


def union_plan(old: Plan, new: Plan) -> Plan:
    """One executable plan holding the nodes of both (their names must not overlap)."""
    clash = {p.id for p in old.pieces} & {p.id for p in new.pieces}
    if clash:
        raise RuntimeFault(f"live move: node names overlap between the plans ({sorted(clash)[:3]})")
    old_x = renamed(old, "")
    return new.model_copy(update={"pieces": [*old_x.pieces, *new.pieces], "edges": [*old_x.edges, *new.edges],
                                  "assignment": {**old_x.assignment, **new.assignment},
                                  "sinks": {**old_x.sinks, **new.sinks}, "order": [*old_x.order, *new.order]})


def _renamed_files(files: Mapping[str, pb.PieceFile], prefix: str) -> dict[str, pb.PieceFile]:
    out = {}
    for node, f in files.items():
        g = pb.PieceFile()
        g.CopyFrom(f)
        g.node = prefix + node
        out[prefix + node] = g
    return out


def _configure_all(svc: Service, timeout_s: float) -> str:
    """Configure every site with the service's current plan; "" when all hold its generation, else why not."""
    deadline = time.monotonic() + timeout_s
    while True:
        svc._check_all()
        gen = svc.generation
        bad = {k: st.error or ("down" if not st.up else f"at generation {st.configured_generation}")
               for k, st in svc.sites.items() if not st.up or st.configured_generation != gen}
        if not bad:
            return ""
        if time.monotonic() >= deadline:
            return "; ".join(f"{k}: {v}" for k, v in bad.items())
        time.sleep(0.05)


def _install(svc: Service, plan: Plan, files: Mapping[str, pb.PieceFile]) -> None:
    with svc._configure_lock:
        svc.plan = plan
        svc.graph = ExecGraph.from_plan(plan)
        svc.files = dict(files)
        svc._needed_sites = {}
        svc.generation += 1


def compile_moved(new_plan: Plan, moved: Sequence[tuple[str, str]], out_dir: str | Path,
                  backends: Sequence[str] | None = None, old_manifest: Mapping | None = None) -> dict:
    """Compile the pieces a move loads on a new site (`moved`: (piece, site) pairs of `new_plan`) the
    way `tierplan compile` does (runtime.compile.compile_plan: the backends each site's device lists,
    narrowed by `backends`, verified, in the content-addressed store under `out_dir`, cached), before
    the switch. Pieces that stay reuse `old_manifest`'s artifact when it was built from the same file
    (same sha256, same site). Returns {"manifest", "compile_s", "built", "cached", "pieces"}."""
    from tierplan.runtime.compile import compile_plan
    from tierplan.runtime.store import file_sha256
    t0 = time.perf_counter()
    pairs = set(moved)
    keep = {pid for pid, _ in pairs}
    sub = new_plan.model_copy(update={
        "assignment": {k: v for k, v in new_plan.assignment.items() if (k, v) in pairs},
        "per_class": {c: {k: v for k, v in per.items() if (k, v) in pairs} for c, per in new_plan.per_class.items()}})
    entries: list[dict] = []
    built = cached = 0
    if keep:
        res = compile_plan(sub, out_dir, backends=list(backends) if backends else None, progress=False)
        entries = [dict(a) for a in res.artifacts if a.get("file")]
        built, cached = res.manifest["built"], res.manifest["cached"]
    # the pieces that stay: the deployment's artifact of the same file on the same site
    by_sha = {(a.get("piece_sha256"), a.get("site")): a for a in (old_manifest or {}).get("artifacts", [])
              if a.get("file") and a.get("piece_sha256")}
    sites = dict(new_plan.assignment)
    for per in new_plan.per_class.values():
        sites.update(per)
    for p in new_plan.pieces:
        if p.kind != "piece" or p.id in keep or not p.file or not by_sha or not Path(p.file).is_file():
            continue
        old = by_sha.get((file_sha256(p.file), sites.get(p.id)))
        if old is not None:
            entries.append({**old, "piece": p.id})
    return {"manifest": {"artifacts": entries}, "compile_s": round(time.perf_counter() - t0, 3), "built": built,
            "cached": cached, "pieces": [{"piece": a["piece"], "site": a.get("site"), "backend": a.get("backend"),
                                          "cached": a.get("cached"), "build_s": a.get("build_s")}
                                         for a in entries if a["piece"] in keep]}


def move(svc: Service, new_plan: Plan, *, load_timeout_s: float = 120.0, drain_timeout_s: float | None = None,
         note: str = "", manifest: Mapping | None = None, manifest_root: str | Path | None = None) -> dict:
    """Move `svc` to `new_plan` (a planner plan of the same app and fleet) as the module doc says;
    returns what happened (times in seconds; `switched` False with `error` when a site refused).
    `manifest`: compiled artifacts of the new plan's pieces (runtime.compile: `compile_moved`), each
    shipped instead of the piece's ONNX file; pieces it lacks run their ONNX file with onnxruntime."""
    t0 = time.monotonic()
    tiers = {name: c.tier for name, c in new_plan.fleet_model().classes.items()}
    run = executable(new_plan, svc.fleet_run, tiers)
    running = {st.site for st in svc.sites.values()}
    need = set(ExecGraph.from_plan(run.plan).used_sites())
    missing = sorted(need - running)
    if missing:
        return {"switched": False, "error": f"the new plan needs site(s) {', '.join(missing)}, which do not run here"}
    tag = len(svc.switches) + 2
    prefix = gen_prefix(tag)
    classes = run.classes
    files = files_for(run.plan, manifest, manifest_root=manifest_root, emulate_cross=True, classes=classes)
    files = with_free_batch(run.plan, files, svc.options.batch_sites)
    new_exe = renamed(run.plan, prefix)
    new_files = _renamed_files(files, prefix)
    old_plan, old_files, old_prefix = svc.plan, dict(svc.files), svc.node_prefix
    _install(svc, union_plan(old_plan, new_exe), {**old_files, **new_files})
    why = _configure_all(svc, load_timeout_s)
    if why:
        _install(svc, old_plan, old_files)
        _configure_all(svc, load_timeout_s)
        return {"switched": False, "error": f"a site refused the new plan: {why}", "load_s": time.monotonic() - t0}
    loaded = time.monotonic()
    with svc._lock:
        in_flight = sum(1 for p in {id(p): p for p in svc._pending.values()}.values() if not p.done.is_set())
        svc.node_prefix = prefix
    switched_unix = time.time()
    switched = time.monotonic()
    drain = svc.request_timeout_s if drain_timeout_s is None else drain_timeout_s
    while time.monotonic() - switched < drain:
        with svc._lock:
            left = [p for p in svc._pending.values() if p.prefix == old_prefix and not p.done.is_set()]
        if not left:
            break
        time.sleep(0.02)
    drained = time.monotonic()
    _install(svc, new_exe, new_files)
    retire_error = _configure_all(svc, load_timeout_s)
    report = {"switched": True, "generation": svc.generation, "prefix": prefix, "switched_at_unix": switched_unix,
              "load_s": round(loaded - t0, 3), "drain_s": round(drained - switched, 3),
              "retire_s": round(time.monotonic() - drained, 3), "in_flight_at_switch": in_flight,
              "sites": sorted(need), "note": note}
    if retire_error:
        report["retire_error"] = retire_error
    svc.switches.append(report)
    return report


def set_link(svc: Service, site: str, *, up_mbps: float | None = None, down_mbps: float | None = None,
             rtt_ms: float | None = None, timeout_s: float = 60.0) -> float:
    """Change the emulated attach link of `site` class (its up and/or down bandwidth, RTT) on every
    worker, live (a reconfigure with the same plan; requests in flight go on); returns the seconds
    it took. The link is named as the emulator names its hops (`SITE->PARENT` up, `PARENT->SITE` down)."""
    t0 = time.monotonic()
    fleet = svc.plan.fleet_model() if svc.plan.fleet is not None else None
    parent = fleet.classes[site].attach if fleet is not None and site in fleet.classes else None
    if parent is None:
        raise RuntimeFault(f"set_link: site class {site!r} has no attach link in this deployment's fleet")
    with svc._configure_lock:
        routes = {}
        for key, hops in svc.routes.items():
            new_hops = []
            for h in hops:
                h = dict(h)
                if h.get("link_id") == f"{site}->{parent}" and up_mbps is not None:
                    h["bandwidth_mbps"] = float(up_mbps)
                if h.get("link_id") == f"{parent}->{site}" and down_mbps is not None:
                    h["bandwidth_mbps"] = float(down_mbps)
                if h.get("link_id") in (f"{site}->{parent}", f"{parent}->{site}") and rtt_ms is not None:
                    h["delay_ms"] = float(rtt_ms) / 2.0
                new_hops.append(h)
            routes[key] = new_hops
        svc.routes = routes
        svc.generation += 1
    why = _configure_all(svc, timeout_s)
    if why:
        raise RuntimeFault(f"set_link: a site did not take the new link figures: {why}")
    return time.monotonic() - t0


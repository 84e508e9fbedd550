"""Plans made by hand: a model cut into a chain of pieces on chosen sites.

Used by tests and benchmarks (real ONNX pieces cut with `onnx.utils.extract_model`). Like the
planner's, these plans embed the fleet they were made for, since the runtime reads nothing but the
plan. Predicted latencies come from timing each piece here with
onnxruntime plus the links' transfer times (the cost model's formula: RTT/2 + bytes/bandwidth
per link).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx

from tierplan.planner.plan import Plan, PlanEdge, PlanPiece, SinkLatency
from tierplan.runtime.graph import SINK_PREFIX
from tierplan.runtime.links import LinkEmulator, route_table
from tierplan.errors import InputError
from tierplan.spec import FleetSpec

__all__ = ["with_fleet", "with_random_weights", "split_chain", "chain_plan", "tensor_infos", "time_piece_ms", "predict_latency"]

_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
                11: "float64"}
_TIMING_RUNS = 5
_IR_INITIALIZERS_NOT_INPUTS = 4   # from IR version 4 on, initializers need not be graph inputs


def tensor_infos(path: str | Path, which: str, dims: dict[str, int] | None = None) -> list[dict]:
    """[{name, shape, dtype, nbytes}] of a model's real inputs ("inputs") or outputs ("outputs")."""
    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    vals = [v for v in (m.graph.input if which == "inputs" else m.graph.output) if v.name not in inits]
    out = []
    for v in vals:
        t = v.type.tensor_type
        shape = []
        for d in t.shape.dim:
            shape.append(d.dim_value if d.dim_value > 0 else int((dims or {}).get(d.dim_param, 1)))
        dtype = _ONNX_DTYPES.get(t.elem_type, "float32")
        out.append({"name": v.name, "shape": shape, "dtype": dtype,
                    "nbytes": int(np.prod(shape) * np.dtype(dtype).itemsize)})
    return out


def with_random_weights(model: str | Path, out_path: str | Path, seed: int = 0) -> Path:
    """A copy of a model whose ConstantOfShape weights (the onnx "light" test models) become random
    initializers (He-scaled for conv kernels), so outputs depend on the input."""
    m = onnx.load(str(model))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    rng = np.random.default_rng(seed)
    keep, new_inits = [], []
    for node in m.graph.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in inits:
            shape = [int(d) for d in inits[node.input[0]]]
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 0
            w = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in) if fan_in
                 else rng.standard_normal(shape) * 0.01).astype(np.float32)
            new_inits.append(onnx.numpy_helper.from_array(w, node.output[0]))
        else:
            keep.append(node)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    used = {i for n in keep for i in n.input}
    live = [i for i in m.graph.initializer if i.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend([*live, *new_inits])
    graph_inputs = [i for i in m.graph.input if i.name in used or i.name not in inits]
    del m.graph.input[:]
    m.graph.input.extend(graph_inputs)
    m.ir_version = max(m.ir_version, 4)   # from IR 4 on, initializers need not be graph inputs
    onnx.save(m, str(out_path))
    return Path(out_path)


def split_chain(model: str | Path, cuts: list[str], out_dir: str | Path, prefix: str = "m") -> list[Path]:
    """Cut a model at the given tensors into len(cuts)+1 standalone ONNX pieces, in order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = onnx.load(str(model))
    inits = {i.name for i in m.graph.initializer}
    if any(i.name in inits for i in m.graph.input):  # old IR: weights listed as inputs
        keep = [i for i in m.graph.input if i.name not in inits]
        del m.graph.input[:]
        m.graph.input.extend(keep)
        m.ir_version = max(m.ir_version, _IR_INITIALIZERS_NOT_INPUTS)
    model = out / f"{prefix}_whole.onnx"
    onnx.save(m, str(model))
    ins = [t["name"] for t in tensor_infos(model, "inputs")]
    outs = [t["name"] for t in tensor_infos(model, "outputs")]
    bounds = [ins, *[[c] for c in cuts], outs]
    files = []
    for k in range(len(bounds) - 1):
        f = out / f"{prefix}_p{k}.onnx"
        onnx.utils.extract_model(str(model), str(f), bounds[k], bounds[k + 1])
        files.append(f)
    return files


def _random_inputs(infos: list[dict], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t["name"]: rng.random(t["shape"]).astype(t["dtype"]) for t in infos}


def time_piece_ms(path: str | Path, runs: int = _TIMING_RUNS, threads: int = 0) -> float:
    """Median latency of one piece on this machine with onnxruntime (random inputs)."""
    from tierplan.runtime.runners import OrtRunner
    r = OrtRunner(path, threads=threads)
    x = _random_inputs(tensor_infos(path, "inputs"))
    r.run(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r.run(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def with_fleet(plan: Plan, fleet: FleetSpec) -> Plan:
    """`plan` with `fleet` embedded (resolved against the device catalog, every device inline), as
    the planner embeds it: what the runtime reads for tiers and routes."""
    from tierplan.devices.fleet import resolve_fleet
    spec = resolve_fleet(fleet).to_spec()
    return plan.model_copy(update={"fleet": spec.model_dump(mode="json", by_alias=True, exclude_none=True)})


def predict_latency(plan: Plan) -> dict[str, SinkLatency]:
    """Latency to each sink along the plan's critical path: piece times + transfers over the routes
    of the plan's fleet (none when it embeds no fleet)."""
    from tierplan.runtime.graph import ExecGraph
    g = ExecGraph.from_plan(plan)
    sites = [s for s in dict.fromkeys(g.sites.values()) if s]
    emu = LinkEmulator(route_table(plan.fleet_model(), sites) if plan.fleet is not None else {})
    finish: dict[str, float] = {}
    breakdown: dict[str, dict[str, float]] = {}
    import networkx as nx
    dag = nx.DiGraph()
    dag.add_nodes_from(g.kinds)
    dag.add_edges_from((e.src, e.dst, {"edge": e}) for e in plan.edges)
    for n in nx.topological_sort(dag):
        best, parts = 0.0, {}
        for e in g.in_edges[n]:
            a, b = g.sites.get(e.src, ""), g.sites.get(n, "")
            tr = emu.transfer_ms(a, b, e.nbytes)
            t = finish[e.src] + tr
            if t >= best:
                best, parts = t, dict(breakdown[e.src])
                if tr > 0:
                    parts[f"transfer.{a}->{b}"] = parts.get(f"transfer.{a}->{b}", 0.0) + tr
        piece = g.nodes.get(n)
        site = g.sites.get(n, "")
        c = (piece.latency_ms.get(site, 0.0) if piece is not None else 0.0)
        if c:
            parts[f"compute.{site}"] = parts.get(f"compute.{site}", 0.0) + c
        finish[n] = best + c
        breakdown[n] = parts
    return {s[len(SINK_PREFIX):]: SinkLatency(latency_ms=finish[s], breakdown=breakdown[s]) for s in g.sinks()}


def chain_plan(files: list[str | Path], sites: list[str], source_site: str, *, source: str = "input",
               sink: str = "output", fleet: FleetSpec | None = None, time_pieces: bool = False,
               model: str = "m") -> Plan:
    """A plan running a chain of pieces: source on `source_site`, piece k on `sites[k]`, result back to the source."""
    if len(files) != len(sites):
        raise InputError(f"chain_plan: {len(files)} pieces but {len(sites)} sites")
    pieces = []
    first_in = tensor_infos(files[0], "inputs")
    pieces.append(PlanPiece(id=source, kind="source", outputs=first_in))
    assignment = {source: source_site}
    edges = []
    prev, prev_out = source, first_in
    for k, (f, s) in enumerate(zip(files, sites)):
        pid = f"{model}/p{k}"
        ins, outs = tensor_infos(f, "inputs"), tensor_infos(f, "outputs")
        lat = {s: time_piece_ms(f)} if time_pieces else {}
        pieces.append(PlanPiece(id=pid, kind="piece", model=model, file=str(f), inputs=ins, outputs=outs,
                                latency_ms=lat))
        assignment[pid] = s
        edges.append(PlanEdge(src=prev, dst=pid, nbytes=sum(t["nbytes"] for t in ins),
                              tensors=[t["name"] for t in ins]))
        prev, prev_out = pid, outs
    sink_id = SINK_PREFIX + sink
    pieces.append(PlanPiece(id=sink_id, kind="sink", inputs=prev_out))
    assignment[sink_id] = source_site
    edges.append(PlanEdge(src=prev, dst=sink_id, nbytes=sum(t["nbytes"] for t in prev_out),
                          tensors=[t["name"] for t in prev_out]))
    plan = Plan(status="feasible", assignment=assignment, pieces=pieces, edges=edges,
                objective_kind="latency")
    if fleet is not None:
        plan = with_fleet(plan, fleet)
    return plan.model_copy(update={"sinks": predict_latency(plan)})



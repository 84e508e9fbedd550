"""The runtime's own time per step, per hop and per request on this machine: measured, cached per host.

"Predicted here" (`tierplan run`) costs each piece with the calibrated cost model and each link
with the fleet's figures; the runtime adds time of its own around them: the Python bookkeeping
of a step (joins, tensor selection, the trace, metrics), a delivery between processes (sender
thread, same-host socket, the receiver's inbox and compute thread), and the controller's part of
a request, and the runner's call around a piece's own run. None of it is assumed: `measure()` deploys a probe on this machine (two agent sites,
links emulated with no delay and no bandwidth limit, one-op pieces) and sends requests down three
chains fed by separate sources:

    x: 2 steps on site a, then the sink                  gap_x = request + 2 step + hop
    z: 2 + n steps on site a, then the sink              gap_z = gap_x + n step
    y: 2 steps on a, then n steps alternating b, a, ...  gap_y = gap_z + n hop

where a request's gap is its latency less its feed and the compute time its trace records (the
pieces' own run time). Medians over the requests give step, hop and request; the median recorded
step of the one-op piece less its time measured alone, as calibration measures pieces, gives run. The figures are
cached per CPU next to the calibration (devices.calibstore.host_figures_path) and measured again
when missing.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["Overheads", "measure", "load_or_measure", "PROBE_STEPS", "PROBE_REQUESTS"]

PROBE_STEPS = 8          # n: steps (and hops) the longer chains add
PROBE_REQUESTS = 30      # requests per chain
_VERSION = 2


@dataclass(frozen=True)
class Overheads:
    """Runtime time beyond the pieces' own and the links' emulated time, ms (medians)."""

    step_ms: float          # per node a site runs, around its recorded step
    hop_ms: float           # per delivery between processes (another site, the controller)
    request_ms: float       # per request, beyond its steps and hops
    run_ms: float = 0.0     # per piece run, inside its recorded step: the runtime's runner call beyond the
                            # piece's time as calibration measures it (devices.profile.measure_piece)
    requests: int = 0       # probe requests per chain
    load_average_1m: float | None = None
    measured_at: str = ""
    wall_s: float = 0.0
    path: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _relu(path: Path) -> str:
    import onnx
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def probe_plan(model_file: str, n: int = PROBE_STEPS):
    """The probe's plan: sources x, z, y on site a and their chains (module doc)."""
    from tierplan.planner.plan import Plan, PlanEdge, PlanPiece
    from tierplan.runtime.graph import SINK_PREFIX

    io = [{"name": "x", "shape": [1, 4], "dtype": "float32", "nbytes": 16}]
    out = [{"name": "y", "shape": [1, 4], "dtype": "float32", "nbytes": 16}]
    chains = {"x": ["a", "a"], "z": ["a", "a"] + ["a"] * n, "y": ["a", "a"] + ["b", "a"] * (n // 2) + ["b"] * (n % 2)}
    pieces, edges, assignment = [], [], {}
    for src, sites in chains.items():
        pieces.append(PlanPiece(id=src, kind="source", outputs=[dict(io[0], name=src)]))
        assignment[src] = "a"
        prev = src
        for k, s in enumerate(sites):
            pid = f"{src}/p{k}"
            pieces.append(PlanPiece(id=pid, kind="piece", model=src, file=model_file, inputs=io, outputs=out))
            assignment[pid] = s
            edges.append(PlanEdge(src=prev, dst=pid, nbytes=16, tensors=["x"]))
            prev = pid
        sink = SINK_PREFIX + src
        pieces.append(PlanPiece(id=sink, kind="sink", inputs=out))
        assignment[sink] = "a"
        edges.append(PlanEdge(src=prev, dst=sink, nbytes=16, tensors=["y"]))
    return Plan(status="feasible", assignment=assignment, pieces=pieces, edges=edges, objective_kind="latency")


def _probe_fleet():
    from tierplan.spec import FleetSpec
    return FleetSpec.model_validate({
        "sites": {"a": {"tier": "edge", "device": "pixel-8", "attach": "bs", "link": "probe"},
                  "b": {"tier": "edge", "device": "pixel-8", "attach": "bs", "link": "probe"},
                  "bs": {"tier": "base_station", "device": "mec-t4"}},
        "links": {"probe": {"uplink_mbps": 1e6, "downlink_mbps": 1e6, "rtt_ms": 0}}})


def measure(requests: int = PROBE_REQUESTS, n: int = PROBE_STEPS) -> Overheads:
    """Deploy the probe here, send `requests` requests down each chain, return the medians (module doc)."""
    from tierplan.runtime.deploy import deploy

    t0 = time.time()
    gaps: dict[str, list[float]] = {"x": [], "z": [], "y": []}
    runs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="tierplan-overhead-") as tmp:
        model = _relu(Path(tmp) / "relu.onnx")
        from tierplan.runtime.handplan import with_fleet
        plan = with_fleet(probe_plan(model, n), _probe_fleet())
        x = np.ones((1, 4), dtype=np.float32)
        with deploy(plan, local=True, request_timeout_s=30) as svc:
            for i in range(requests + 2):
                for src in gaps:
                    _, tr = svc.predict_traced({src: x})
                    if i >= 2:      # the first requests warm the paths up
                        gaps[src].append(tr.latency_ms - sum(ms for kind, _, ms in tr.steps
                                                             if kind in ("feed", "compute")))
                        runs += [ms for kind, _, ms in tr.steps if kind == "compute"]
        alone = _measured_alone(model)
    med = {k: statistics.median(v) for k, v in gaps.items()}
    step = max(0.0, (med["z"] - med["x"]) / n)
    hop = max(0.0, (med["y"] - med["z"]) / n)
    request = max(0.0, med["x"] - 2 * step - hop)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    run = max(0.0, statistics.median(runs) - alone) if runs and alone is not None else 0.0
    return Overheads(step, hop, request, run, requests, load, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     time.time() - t0)


def _measured_alone(model: str) -> float | None:
    """The probe piece's time as calibration measures a piece (CPU-time median), ms; None if it cannot."""
    from tierplan.devices.pieces import piece_from_onnx
    from tierplan.devices.profile import measure_piece
    try:
        return measure_piece(piece_from_onnx(model, piece_id="probe"), runs=7, min_time_s=0.2).cpu_median_ms
    except Exception:
        return None


def load_or_measure(progress: bool = True) -> Overheads:
    """This host's overheads from the cache, else measured now (saying so on stderr) and cached."""
    from tierplan.devices.calibstore import host_figures_path

    path = host_figures_path("runtime-overhead")
    try:
        d = json.loads(path.read_text())
        if d.pop("version", None) == _VERSION:
            d.pop("path", None)
            return Overheads(**d, path=str(path))
    except (OSError, ValueError, TypeError):
        pass
    from tierplan.console import console
    if progress:
        console(stderr=True).print("first run on this CPU: measuring the runtime's own time per step and hop "
                                   "(~15 s, once)", highlight=False)
    o = measure()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": _VERSION, **{k: v for k, v in o.to_dict().items() if k != "path"}},
                              indent=2) + "\n")
    tmp.replace(path)
    return Overheads(**{**o.to_dict(), "path": str(path)})

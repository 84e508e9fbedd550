"""Per-request traces from a real deployment of an example, for calibrating the simulator (benchmarks only).

It lives here, not in simulations/, because it deploys through the runtime, and simulations never
imports runtime (DESIGN.md: Layers).
"""

from __future__ import annotations

from pathlib import Path

from tierplan.simulations.calibration import RequestTrace

__all__ = ["collect_runtime_traces"]


def collect_runtime_traces(example: str, duration_s: float, *, seed: int = 0,
                           max_requests: int | None = None) -> tuple[list[RequestTrace], object]:
    """Deploy an example on this machine the way `tierplan run` does and send requests one after
    another for `duration_s`; returns (per-request traces with their steps, the plan).

    The runtime's own `tierplan run` report keeps only per-stage percentiles; the copula needs each
    request's steps together, so this replays its request loop through the runtime's public API.
    """
    import tempfile
    import time

    from tierplan.runtime.deploy import deploy
    from tierplan.run import example_inputs, find_example, make_plan
    from tierplan.loader import load_app, load_fleet
    from tierplan.errors import RuntimeFault

    ex = find_example(example)
    app, fleet = load_app(ex / "app.yaml"), load_fleet(ex / "fleet.yaml")
    plan, _ = make_plan(app, fleet, ex / "app.yaml", ex / "fleet.yaml")
    make_inputs = example_inputs(ex, app)
    traces: list[RequestTrace] = []
    with tempfile.TemporaryDirectory(prefix="tierplan-calib-") as tmp:
        from tierplan.runtime.compile import compile_plan
        res = compile_plan(plan, Path(tmp) / "artifacts", backends=["onnxruntime"], progress=False)
        with deploy(plan, local=True, manifest=res.manifest, manifest_root=res.out_dir) as svc:
            t0, i = time.time(), 0
            while time.time() - t0 < duration_s and (max_requests is None or i < max_requests):
                try:
                    _, tr = svc.predict_traced(make_inputs(seed + i))
                except RuntimeFault:
                    i += 1
                    continue
                feed = sum(ms for kind, _, ms in tr.steps if kind == "feed")
                traces.append(RequestTrace(float(tr.latency_ms) - feed,
                                           tuple((str(k), str(n), float(ms)) for k, n, ms in tr.steps)))
                i += 1
    return traces, plan

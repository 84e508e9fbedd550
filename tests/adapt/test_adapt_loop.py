"""The whole loop on a real deployment: an app planned by the planner (SqueezeNet, cut where the
planner chooses), the phone's emulated uplink stepped down mid-run, the controller flags the drift,
re-plans warm-started on the observed figures, adopts and moves live; no request is lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tierplan.adapt import Adapter, parse_link_step, p95_series, run_adaptive, LinkStep
from tierplan.errors import InputError
from tierplan.planner.adaptpolicy import AdaptPolicy
from tierplan.planner.api import plan_app
from tierplan.runtime.deploy import deploy
from tierplan.runtime.stage import StageWorker
from tierplan.run import Stream
from tierplan.spec import AppSpec, FleetSpec


def _app(model: Path) -> AppSpec:
    return AppSpec.model_validate(dict(
        name="sq", models={"net": {"onnx": str(model)}},
        sources={"camera": {"at": "edge", "rate_hz": 4, "shape": [1, 3, 224, 224], "dtype": "float32"}},
        edges=[{"from": "camera", "to": "net"}], sinks={"label": {"from": "net"}},
        slo=[{"sink": "label", "latency_ms": 1000}], objective="latency"))


def _fleet(uplink_mbps: float) -> FleetSpec:
    return FleetSpec.model_validate({
        "sites": {"phone": {"tier": "edge", "device": "galaxy-a54", "count": 1, "attach": "gw", "link": "radio"},
                  "gw": {"tier": "base_station", "device": "mec-t4", "count": 1}},
        "links": {"radio": {"uplink_mbps": uplink_mbps, "downlink_mbps": 1000, "rtt_ms": 4}}})


@pytest.mark.slow
def test_a_stepped_uplink_is_noticed_replanned_and_moved_live(squeezenet_random, tmp_path):
    plan = plan_app(_app(squeezenet_random), _fleet(1000.0), time_limit_s=2, pieces_dir=tmp_path / "pieces")
    assert plan.per_class["phone"] == {"net/p0": "phone", "net/p1": "gw"}   # offloads the tail at 1 Gbit/s
    gw = StageWorker("gw")
    gw.start()
    rng = np.random.default_rng(0)
    frames = [rng.random((1, 3, 224, 224)).astype(np.float32) for _ in range(4)]
    policy = AdaptPolicy(threshold=0.3, sustain_s=0.5, window_s=1.0, cooldown_s=2.0, replan_time_limit_s=2.0, min_effect_ms=5.0,
                         move_cost_ms=2.0, tick_s=0.2)
    try:
        with deploy(plan, local=True, agents={"gw": gw.address}) as svc:
            run = run_adaptive(svc, plan, [Stream("phone", ("camera",), 6.0)],
                               lambda seed: {"camera": frames[seed % 4]}, duration_s=12.0, policy=policy,
                               link_steps=[LinkStep("phone", 3.0, up_mbps=20.0)], pieces_dir=tmp_path / "replan")
    finally:
        gw.stop()
    assert run.steps and run.steps[0]["up_mbps"] == 20.0
    errors = [r.error for r in run.records if r.error]
    assert errors == [] and all(r.latency_ms is not None for r in run.records)
    decisions = [d for d in run.adapt["decisions"] if "decision" in d]
    assert decisions, run.adapt
    first = decisions[0]
    drift = {f["key"]: f for f in first["drifted"]}
    assert drift["link:phone:up_mbps"]["observed"] == pytest.approx(20.0, rel=0.3)
    assert first["t_s"] > run.steps[0]["at_s"]
    assert first["decision"]["adopt"] and first["moves"], first
    assert first["switch"]["switched"], first
    # the moved pieces were compiled (tierplan compile's path, onnxruntime here) before the switch
    assert first["compile"]["pieces"] and all(p["backend"] == "onnxruntime" for p in first["compile"]["pieces"])
    # requests sent after the switch ran on the new placement: nothing left on the gateway
    after = [r for r in run.records if r.prefix == "g2~"]
    before = [r for r in run.records if r.prefix == ""]
    assert after and before
    assert run.adapt["switches"][0]["sites"] == ["phone"]
    series = p95_series(run.records, 1.0, 12.0)
    assert len(series["phone:camera"]) == 12


def test_link_step_flag_is_parsed_and_checked():
    assert parse_link_step("midrange_phones@20:up=2") == LinkStep("midrange_phones", 20.0, 2.0, None)
    assert parse_link_step("a@1.5:up=3,down=9") == LinkStep("a", 1.5, 3.0, 9.0)
    for bad in ("a@x:up=2", "a@3", "a@3:side=2", "@3:up=1"):
        with pytest.raises(InputError, match="--link-step"):
            parse_link_step(bad)


def test_adapter_refuses_a_plan_without_its_app():
    from tierplan.planner.plan import Plan

    class _Svc:
        fleet_run = None
        plan = Plan(status="feasible")
    with pytest.raises(InputError, match="app and fleet embedded"):
        Adapter(_Svc(), Plan(status="feasible"))  # type: ignore[arg-type]

"""Dynamic batching at sites and fair link sharing: hand-computed cases, the runtime's rule, engines, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import simpy
import yaml
from hypothesis import given, settings
from hypothesis import strategies as hs
from onnx import TensorProto, helper, numpy_helper
from sim_builders import make_fleet, make_plan

from tierplan.devices.constants import BATCH_FIXED_SHARE
from tierplan.planner.plan import Plan, PlanEdge, PlanPiece, SinkLatency
from tierplan.simulations.api import simulate
from tierplan.simulations.batching import (RUNTIME_MAX_BATCH, RUNTIME_MAX_WAIT_MS, BatchPolicy, as_run_policy,
                                  linear_ratio, parse_batching)
from tierplan.simulations.engine_simpy import _SharedLink
from tierplan.simulations.scenario import ArrivalSpec
from tierplan.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
ALL_CLOUD = {"camera": "cloud", "det/p0": "cloud", "det/p1": "cloud", "cls/p0": "cloud"}
STAGE_MS = 2.0 + 3.0 + 1.0   # make_plan's cloud times of det/p0 + det/p1 + cls/p0: one compute stage
A_CPU = BATCH_FIXED_SHARE["cpu"]


def _t(b: int) -> float:
    """Batch time of b requests of the cloud stage under the linear model."""
    return STAGE_MS * (A_CPU + (1 - A_CPU) * b)


def _cloud_run(batching, n_at_zero: int = 3, **kw):
    kw.setdefault("fast", False)
    """n requests produced in the cloud at t=0 (no links), deterministic service, one cloud server."""
    arr = ArrivalSpec("trace", trace=((0.0, None),) * n_at_zero)
    rep = simulate(make_plan(assign=ALL_CLOUD), make_fleet(), strategies=["optimal"], duration_s=1, arrivals=arr,
                   service_cv=0.0, replicas={"cloud": 1}, batching=batching, **kw)
    return rep.strategies["optimal"]


def _latencies(r) -> tuple[float, float, float]:
    """(fastest, median, slowest) request latency at the sink."""
    s = r.sinks["labels"]
    return s.cdf_ms[0], s.p50_ms, s.cdf_ms[-1]


@pytest.mark.parametrize("fast", [False, True])
def test_three_requests_together_make_one_batch_after_the_wait(fast):
    """3 requests at once, B=8, W=5 ms: one batch that starts at W and ends at W + t(3), on both engines."""
    r = _cloud_run("8:5", fast=fast)
    assert _latencies(r) == pytest.approx((5.0 + _t(3),) * 3)
    assert r.batch_mean == {"cloud": 3.0} and r.batches == {"cloud": 1} and r.engine == ("fast" if fast else "simpy")


@pytest.mark.parametrize("fast", [False, True])
def test_a_full_batch_starts_at_once_and_the_rest_waits_for_the_server(fast):
    """B=2 with 3 waiting: 2 run at once (full, t(2)); the third's wait ran out meanwhile, it runs next alone."""
    r = _cloud_run("2:5", fast=fast)
    assert _latencies(r) == pytest.approx((_t(2), _t(2), _t(2) + _t(1)))
    assert r.batch_mean == {"cloud": 1.5} and r.engine == ("fast" if fast else "simpy")


def test_batching_on_a_shared_host_still_waits_then_runs_once():
    """Every site on one host (colocate=1): the batch also needs the core, and still ends at W + t(3)."""
    r = _cloud_run("8:5", colocate=1)
    assert _latencies(r) == pytest.approx((5.0 + _t(3),) * 3) and r.batches == {"cloud": 1}


def test_explicit_sites_choose_where_requests_batch():
    """BatchPolicy(sites=("bs",)) batches at the base station only, not at the cloud."""
    kw = dict(strategies=["optimal"], duration_s=2, seed=1, rates={"camera": 50.0}, fast=False)
    r = simulate(make_plan(), make_fleet(cams=5), batching=BatchPolicy(8, 2.0, sites=("bs",), forced=True), **kw)
    assert set(r.strategies["optimal"].batch_mean) == {"bs"}


def test_no_batching_runs_requests_one_after_another():
    """batching off: FIFO, one at a time, no wait: 6, 12, 18 ms."""
    assert _latencies(_cloud_run("off")) == pytest.approx((STAGE_MS, 2 * STAGE_MS, 3 * STAGE_MS))


@settings(max_examples=6, deadline=None)
@given(seed=hs.integers(0, 10_000), wait_ms=hs.floats(0.0, 20.0))
def test_max_batch_one_equals_no_batching_exactly(seed, wait_ms):
    """max_batch 1 is exactly no batching (the runtime's rule), whatever the wait and the seed."""
    kw = dict(strategies=["optimal", "all-cloud"], duration_s=2, seed=seed, rates={"camera": 40.0})
    a = simulate(make_plan(), make_fleet(cams=5), batching=(1, wait_ms), **kw).to_json()
    b = simulate(make_plan(), make_fleet(cams=5), batching="off", **kw).to_json()
    for d in (a, b):
        for s in d["strategies"].values():
            s.pop("wall_s"), s.pop("sim_requests_per_s")
    assert a["strategies"] == b["strategies"]


def test_batching_keeps_an_overloaded_cloud_site_stable():
    """At 1.1x the one-at-a-time capacity, batching (8, 2 ms) cuts p95 latency and batches > 1 request."""
    rate = 1.1 * 1000.0 / STAGE_MS
    kw = dict(strategies=["optimal"], duration_s=4, seed=5, rates={"camera": rate}, replicas={"cloud": 1},
              fast=False)
    plain = simulate(make_plan(assign=ALL_CLOUD), make_fleet(), batching="off", **kw).strategies["optimal"]
    batched = simulate(make_plan(assign=ALL_CLOUD), make_fleet(), batching="8:2", **kw).strategies["optimal"]
    assert batched.batch_mean["cloud"] > 1.5
    assert batched.sinks["labels"].p95_ms < 0.5 * plain.sinks["labels"].p95_ms
    assert batched.utilisation["cloud"] < plain.utilisation["cloud"]


def test_same_seed_same_result_with_batching_and_fair_links():
    """Batching and fair sharing are deterministic: the same seed gives the same JSON."""
    kw = dict(duration_s=3, seed=11, batching="4:3", link_sharing="fair", rates={"camera": 20.0})
    a, b = (simulate(make_plan(), make_fleet(cams=8), **kw).to_json() for _ in range(2))
    for d in (a, b):
        for s in d["strategies"].values():
            s.pop("wall_s"), s.pop("sim_requests_per_s")
    assert a == b and a["scenario"]["link_sharing"] == "fair"


def test_fast_path_refuses_fair_links_in_one_line():
    """fast=True where it cannot run (fair links with an outage on links requests come back over) raises a
    one-line InputError naming the reason."""
    with pytest.raises(InputError) as e:
        simulate(make_plan(assign={"det/p0": "cams", "det/p1": "bs", "cls/p0": "cams"}), make_fleet(),
                 strategies=["optimal"], duration_s=1, fast=True, link_sharing="fair", failures=["link:cams@0-1"])
    assert "outages" in str(e.value) and "\n" not in str(e.value)


def test_auto_engine_keeps_batching_on_the_fast_path():
    """Above the fast-path threshold a batching strategy runs fast and batches; max_batch 1 runs fast unbatched."""
    kw = dict(strategies=["all-cloud"], duration_s=4, seed=2, rates={"camera": 1000.0})
    batched = simulate(make_plan(), make_fleet(cams=20), batching="8:2", **kw).strategies["all-cloud"]
    plain = simulate(make_plan(), make_fleet(cams=20), batching="1:2", **kw).strategies["all-cloud"]
    assert batched.engine == "fast" and batched.batch_mean["cloud"] > 1.0
    assert not any("SimPy" in n for n in batched.notes)
    assert plain.engine == "fast" and not plain.batch_mean


BATCH_SCENARIOS = {
    "overloaded cloud, one server": dict(rate=1.1 * 1000.0 / STAGE_MS, cams=1, kw=dict(replicas={"cloud": 1})),
    "cloud replicas, many devices": dict(rate=18.0, cams=30, kw=dict(replicas={"cloud": 3})),
    "two stages batching at the base station": dict(
        rate=25.0, cams=20, kw=dict(batching=BatchPolicy(4, 3.0, sites=("bs", "cloud"), forced=True))),
    "batching on a device that requests come back to (cycle scan)": dict(
        rate=30.0, cams=10, plan=dict(assign={"det/p0": "cams", "det/p1": "bs", "cls/p0": "cams"}),
        kw=dict(strategies=["optimal"], batching=BatchPolicy(3, 4.0, sites=("cams", "bs"), forced=True))),
}


@pytest.mark.parametrize("case", list(BATCH_SCENARIOS))
def test_simpy_and_fast_path_agree_with_batching(case):
    """Batch servers on the fast path (a scan per queue) agree with SimPy's batch queues: mean and p95
    within 1%, the same batch sizes, on the same draws."""
    sc = BATCH_SCENARIOS[case]
    kw = dict(strategies=["optimal", "all-cloud"], duration_s=6, seed=3, rates={"camera": sc["rate"]},
              batching="8:2")
    kw.update(sc["kw"])
    plan = make_plan(assign=ALL_CLOUD) if sc["cams"] == 1 else make_plan(**sc.get("plan", {}))
    slow = simulate(plan, make_fleet(cams=sc["cams"]), fast=False, **kw)
    fast = simulate(plan, make_fleet(cams=sc["cams"]), fast=True, **kw)
    for name in slow.strategies:
        a, b = slow.strategies[name], fast.strategies[name]
        assert a.engine == "simpy" and b.engine == "fast"
        assert a.batches == b.batches, (name, a.batches, b.batches)
        assert a.batch_mean == pytest.approx(b.batch_mean, rel=1e-9)
        for sink in a.sinks:
            assert b.sinks[sink].mean_ms == pytest.approx(a.sinks[sink].mean_ms, rel=0.01), (name, sink)
            assert b.sinks[sink].p95_ms == pytest.approx(a.sinks[sink].p95_ms, rel=0.01), (name, sink)
    assert any(max(r.batch_mean.values(), default=0) > 1.2 for r in fast.strategies.values()), "no batching happened"


def _gemm(path: Path, batch) -> str:
    """A MatMul ONNX file whose input's first dimension is `batch` ("N": free)."""
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 64])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


def _one_piece_in_the_cloud(file, batching, **kw):
    """4 requests at t=0 to one cloud piece (`file`, 6 ms), one server, deterministic service."""
    p = Plan(status="optimal", assignment={"camera": "cloud", "det/p0": "cloud"},
             sinks={"labels": SinkLatency(latency_ms=10, slo_ms=100)},
             pieces=[PlanPiece(id="camera", kind="source", rate_hz=1.0),
                     PlanPiece(id="det/p0", model="det", file=file, latency_ms={"cloud": 6.0}),
                     PlanPiece(id="sink:labels", kind="sink")],
             edges=[PlanEdge(src="camera", dst="det/p0", nbytes=256),
                    PlanEdge(src="det/p0", dst="sink:labels", nbytes=256)])
    arr = ArrivalSpec("trace", trace=((0.0, None),) * 4)
    return simulate(p, make_fleet(), strategies=["optimal"], duration_s=1, arrivals=arr, service_cv=0.0,
                    replicas={"cloud": 1}, batching=batching, **kw)


def test_auto_batching_follows_the_plan_files_like_the_runtime(tmp_path):
    """auto: a cloud piece whose ONNX input has a free first dim batches, priced by the cost model;
    a fixed first dim never batches, even when forced; a piece with no file does not batch under auto."""
    free, fixed = _gemm(tmp_path / "free.onnx", "N"), _gemm(tmp_path / "fixed.onnx", 1)
    run = _one_piece_in_the_cloud
    rep = run(free, "auto")
    assert rep.strategies["optimal"].batch_mean == {"cloud": 4.0}
    assert rep.scenario["batched_stages"] == ["det/p0@cloud (costmodel)"]
    assert not run(fixed, "auto").strategies["optimal"].batch_mean
    assert not run(fixed, "8:5").strategies["optimal"].batch_mean
    assert not run(None, "auto").strategies["optimal"].batch_mean
    assert run(None, "8:5").strategies["optimal"].batch_mean == {"cloud": 4.0}


@pytest.mark.parametrize("fast", [False, True])
def test_auto_batching_takes_the_caps_a_run_deployed(tmp_path, fast):
    """A run report's `batch` caps (`tierplan run --batch`) replace auto's 8:2 (an explicit --batch is kept);
    the run's measured wait beyond its own cap is added to it; max_batch 1 there means no batching."""
    from tierplan.simulations.calibration import ServiceProfile
    free = _gemm(tmp_path / "free.onnx", "N")

    def run(batching, caps, waited=None):
        prof = ServiceProfile({}, 0.0, batch_caps=caps, batch_wait_ms={"cloud": waited} if waited else {})
        r = _one_piece_in_the_cloud(free, batching, profile=prof, fast=fast).strategies["optimal"]
        return r.batch_mean, r.sinks["labels"].cdf_ms[0]
    assert run("auto", (2, 10.0))[0] == {"cloud": 2.0}             # full batches of 2 start at once
    assert run("8:5", (2, 10.0))[0] == {"cloud": 4.0}              # the explicit policy wins
    assert run("auto", (1, 2.0))[0] == {}                          # the run did not batch
    (b10, first10), (b_late, first_late) = run("auto", (8, 10.0)), run("auto", (8, 10.0), waited=10.75)
    assert b10 == b_late == {"cloud": 4.0}
    assert first10 >= 10.0 and first_late - first10 == pytest.approx(0.75)   # 10 ms cap, then 0.75 ms late
    assert as_run_policy(BatchPolicy(), None) == BatchPolicy() and as_run_policy(None, (8, 10.0)) is None


def test_simulator_defaults_match_the_runtime_deployment():
    """auto batching uses runtime.stage.StageOptions' max_batch and max_wait_ms (they must not drift)."""
    from tierplan.runtime.stage import StageOptions
    assert (RUNTIME_MAX_BATCH, RUNTIME_MAX_WAIT_MS) == (StageOptions().max_batch, StageOptions().max_wait_ms)
    assert parse_batching("auto") == BatchPolicy(StageOptions().max_batch, StageOptions().max_wait_ms)
    assert parse_batching("off") is None and parse_batching("1") is None
    assert linear_ratio(3, 0.25)[1] == 1.0 and linear_ratio(3, 0.25)[3] == pytest.approx(2.5)


@pytest.mark.parametrize("bad", ["x", "8:-1", "0", "8:2:1", ""])
def test_bad_batching_text_is_an_input_error(bad):
    """A malformed --batch value is a one-line InputError naming the expected form."""
    with pytest.raises(InputError) as e:
        parse_batching(bad)
    assert "--batch" in str(e.value) and "\n" not in str(e.value)


def _shared_link_ends(starts_and_ms: list[tuple[float, float]], lanes: int = 1) -> list[float]:
    env = simpy.Environment()
    link = _SharedLink(env, lanes)
    ends: list[float] = [0.0] * len(starts_and_ms)

    def send(k, t0, ms):
        yield env.timeout(t0)
        ends[k] = yield link.join(ms)

    for k, (t0, ms) in enumerate(starts_and_ms):
        env.process(send(k, t0, ms))
    env.run()
    return ends


def test_fair_sharing_two_equal_transfers_both_take_twice_as_long():
    """Two 10 ms transfers starting together on a fair link both end at 20 ms (FIFO: 10 and 20)."""
    assert _shared_link_ends([(0.0, 10.0), (0.0, 10.0)]) == [pytest.approx(20.0), pytest.approx(20.0)]


def test_fair_sharing_hand_computed_overlap():
    """10 ms at 0 and 10 ms at 5: the first has 5 left at half rate (ends 15), the second 5 alone (ends 20)."""
    assert _shared_link_ends([(0.0, 10.0), (5.0, 10.0)]) == [pytest.approx(15.0), pytest.approx(20.0)]
    assert _shared_link_ends([(0.0, 10.0), (0.0, 10.0)], lanes=2) == [pytest.approx(10.0), pytest.approx(10.0)]


@settings(max_examples=25, deadline=None)
@given(jobs=hs.lists(hs.tuples(hs.floats(0, 50), hs.floats(0.1, 20)), min_size=1, max_size=8))
def test_fair_sharing_is_work_conserving(jobs):
    """Processor sharing finishes the last transfer when FIFO does (same work, never idle while busy)."""
    ends = _shared_link_ends(jobs)
    fifo_free = 0.0
    for t0, ms in sorted(jobs):
        fifo_free = max(fifo_free, t0) + ms
    assert max(ends) == pytest.approx(fifo_free, rel=1e-9, abs=1e-6)
    assert all(e >= t0 + ms - 1e-6 for e, (t0, ms) in zip(ends, jobs))


def test_fair_links_end_to_end_two_uploads_at_once():
    """Two uploads from one device at t=0: FIFO delivers them 24 ms apart; fair sharing delivers both together."""
    fleet = make_fleet(cams=1, rtt_ms=0.0)   # radio 50 Mbps: 150 kB in 24 ms
    arr = ArrivalSpec("trace", trace=((0.0, None),) * 2)
    plan = make_plan(assign={"det/p0": "bs", "det/p1": "bs", "cls/p0": "bs"})
    out = {}
    for mode in ("fifo", "fair"):
        r = simulate(plan, fleet, strategies=["optimal"], duration_s=1, arrivals=arr, service_cv=0.0,
                     replicas={"bs": 2}, link_sharing=mode, dispatch="shared", fast=False)
        out[mode] = _latencies(r.strategies["optimal"])
    assert out["fifo"][2] - out["fifo"][0] == pytest.approx(24.0)
    # fair: both uploads end at 48 ms together; their 400 B results then share the 100 Mbps downlink too
    # (0.064 ms for both instead of 0.032 each, one after the other)
    down_ms = 400 * 8 / 100e6 * 1e3
    assert out["fair"][0] == pytest.approx(out["fair"][2]) and out["fair"][2] == pytest.approx(out["fifo"][2] + down_ms)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tierplan", "simulate", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.mark.slow   # takes seconds: kept out of the fast lane (under 3 min); the full suite runs it
def test_cli_batch_and_link_sharing_options(tmp_path):
    """--batch 4:3 --link-sharing fair runs (SimPy for a short run) and reports batch_mean; bad values exit 2 in one line."""
    plan, fleet = tmp_path / "plan.json", tmp_path / "fleet.yaml"
    make_plan().save(plan)
    fleet.write_text(yaml.safe_dump(make_fleet(cams=30).model_dump(mode="json", by_alias=True, exclude_none=True)))
    r = _cli(str(plan), "--fleet", str(fleet), "--strategies", "all-cloud", "--duration", "3", "--batch", "4:3",
             "--link-sharing", "fair", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    s = doc["strategies"]["all-cloud"]
    assert s["engine"] == "simpy" and 1.0 <= s["batch_mean"]["cloud"] <= 4.0
    assert doc["scenario"]["link_sharing"] == "fair" and doc["scenario"]["batching"] == "batch 4:3ms"
    for args, word in ((("--batch", "lots"), "--batch"), (("--link-sharing", "tcp"), "--link-sharing"),
                       (("--engine", "warp"), "--engine")):
        bad = _cli(str(plan), "--fleet", str(fleet), "--strategies", "all-cloud", "--duration", "1", *args)
        assert bad.returncode == 2, bad.stderr
        lines = [x for x in bad.stderr.strip().splitlines() if x.strip()]
        assert len(lines) == 1 and word in lines[0] and "Traceback" not in bad.stderr


def _simpy_batches(arrivals, services, groups, specs):
    """Departures of one batch server fed at `arrivals` (SimPy's _BatchQueue, the reference)."""
    from tierplan.simulations.engine_simpy import _BatchQueue
    env = simpy.Environment()
    q = _BatchQueue(env, 1, None)
    out = [None] * len(arrivals)

    def job(k):
        yield env.timeout(arrivals[k])
        start, svc, _, _ = yield q.join(specs[groups[k]], services[k])
        yield env.timeout(start + svc - env.now)
        out[k] = env.now

    for k in range(len(arrivals)):
        env.process(job(k))
    env.run()
    return out


@settings(max_examples=40, deadline=None)
@given(n=hs.integers(1, 40), seed=hs.integers(0, 10_000), cap=hs.integers(1, 6), wait=hs.floats(0.0, 5.0),
       mixed=hs.booleans())
def test_fast_batch_queue_matches_simpy_batch_queue(n, seed, cap, wait, mixed):
    """The fast path's batch scan (one group: a step per batch; mixed groups: arrival by arrival) gives
    every job the departure SimPy's _BatchQueue gives it, on random arrivals, sizes, waits and groups."""
    from tierplan.simulations.batch_fast import batch_departures
    from tierplan.simulations.batching import BatchStage
    rng = np.random.default_rng(seed)
    arrivals = np.sort(rng.exponential(1.0, n).cumsum() * rng.uniform(0.2, 3.0))
    services = rng.uniform(0.5, 3.0, n)
    specs = [BatchStage(group=(f"g{g}",), max_batch=cap + g, max_wait_ms=wait * (1 + g), source="linear",
                        ratio=tuple([0.0] + [0.3 + 0.7 * b for b in range(1, cap + g + 1)])) for g in range(2)]
    groups = rng.integers(0, 2, n) if mixed else np.zeros(n, dtype=int)
    dep, (_, _, _, sizes) = batch_departures(arrivals, services, np.zeros(n, dtype=int), groups, specs)
    ref = _simpy_batches(arrivals.tolist(), services.tolist(), groups.tolist(), specs)
    assert dep.tolist() == pytest.approx(ref, rel=1e-9, abs=1e-9)
    assert int(sizes.sum()) == n


@pytest.mark.parametrize("fast", [False, True])
def test_a_runs_measured_batch_wait_lengthens_the_wait(fast):
    """A profile from a run whose partial batches waited 3.5 ms where the runtime asks for 2 (its batching
    thread's delay): the simulated batch starts 1.5 ms after the policy's wait, on both engines."""
    from tierplan.simulations.calibration import ServiceProfile
    prof = ServiceProfile({}, 0.0, batch_wait_ms={"cloud": RUNTIME_MAX_WAIT_MS + 1.5})
    r = _cloud_run("8:5", fast=fast, profile=prof)
    assert _latencies(r) == pytest.approx((6.5 + _t(3),) * 3)
    assert r.batch_mean == {"cloud": 3.0}

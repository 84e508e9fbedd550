"""Measured service profiles, the per-request correlated slowdown, fan-out lanes and the shared host."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
from sim_builders import make_fleet, make_plan

from tierplan.planner.plan import Plan, PlanEdge, PlanPiece, SinkLatency
from tierplan.simulations.api import simulate
from tierplan.simulations.calibration import (RequestTrace, ServiceProfile, fit_correlation, load_profile,
                                     profile_from_traces)
from tierplan.errors import InputError

_ALL_ON_DEVICE = {"det/p0": "cams", "det/p1": "cams", "cls/p0": "cams"}
_STAGES = (("det/p0", 20.0), ("det/p1", 30.0), ("cls/p0", 10.0))


def _synthetic_traces(rho: float, n: int, seed: int) -> list[RequestTrace]:
    """Requests whose three compute steps on `cams` are log-normal with a Gaussian copula of share rho."""
    rng = np.random.default_rng(seed)
    z_req = rng.standard_normal(n)
    out = []
    for i in range(n):
        steps = []
        for node, median in _STAGES:
            z = np.sqrt(rho) * z_req[i] + np.sqrt(1 - rho) * rng.standard_normal()
            steps.append(("compute", f"{node}@cams", float(median * np.exp(0.4 * z))))
        out.append(RequestTrace(sum(s[2] for s in steps), tuple(steps)))
    return out


def _low_load_sim(profile: ServiceProfile, fast: bool, seed: int = 0):
    plan = make_plan(assign=_ALL_ON_DEVICE, rate_hz=0.01)
    return simulate(plan, make_fleet(cams=1, bs=1), strategies=["optimal"], duration_s=200_000, seed=seed,
                    fast=fast, profile=profile).strategies["optimal"].sinks["labels"]


def test_from_normal_is_the_empirical_quantile():
    """A normal draw at the i-th sample's normal score gives that sample; monotone between; extremes beyond."""
    xs = np.array([5.0, 1.0, 3.0, 2.0, 8.0, 13.0])
    prof = ServiceProfile({("a", "s"): xs}, 0.0)
    m = len(xs)
    scores = np.array([NormalDist().inv_cdf((i + 0.5) / m) for i in range(m)])
    assert np.allclose(prof.from_normal("a", "s", scores), np.sort(xs), atol=1e-12)
    z = np.linspace(-3, 3, 101)
    assert (np.diff(prof.from_normal("a", "s", z)) >= 0).all()
    assert prof.from_normal("a", "s", np.array([-9.0, 9.0])).tolist() == [1.0, 13.0]
    assert prof.quantile_ms("a", "s", np.array([0.5])) == pytest.approx((3.0 + 5.0) / 2)


def test_fit_correlation_recovers_the_shared_share():
    """The fitted copula share matches the one the requests were generated with (0 and 0.6)."""
    for rho in (0.0, 0.6):
        prof = profile_from_traces(_synthetic_traces(rho, 600, seed=4))
        assert abs(prof.correlation - rho) < 0.1, (rho, prof.correlation)


def test_profile_replays_marginals_and_correlation_widens_the_tail():
    """At negligible load, all on one device: rho=1 gives p95 = sum of the steps' p95s; rho=0 a narrower tail."""
    traces = _synthetic_traces(0.5, 400, seed=5)
    base = profile_from_traces(traces)
    one = ServiceProfile(dict(base.samples_ms), 1.0)
    zero = ServiceProfile(dict(base.samples_ms), 0.0)
    s1, s0 = _low_load_sim(one, fast=True), _low_load_sim(zero, fast=True)
    want95 = sum(float(np.percentile(v, 95)) for v in base.samples_ms.values())
    want50 = sum(float(np.percentile(v, 50)) for v in base.samples_ms.values())
    assert s1.p95_ms == pytest.approx(want95, rel=0.04)
    assert s1.p50_ms == pytest.approx(want50, rel=0.04)
    assert s0.p95_ms < 0.93 * s1.p95_ms
    fitted = _low_load_sim(base, fast=True)
    measured95 = float(np.percentile([t.latency_ms for t in traces], 95))
    assert fitted.p95_ms == pytest.approx(measured95, rel=0.1)


def test_profile_engines_agree_and_seed_fixes_result(tmp_path):
    """With a profile, correlation, lanes and a shared host, SimPy and the fast path agree; a seed fixes it."""
    prof = profile_from_traces(_synthetic_traces(0.4, 200, seed=6))
    prof.samples_ms[("cls/p0", "bs")] = prof.samples_ms[("cls/p0", "cams")] / 5
    prof.save(tmp_path / "profile.json")
    plan = make_plan(rate_hz=6.0, fanout=2.6)
    kw = dict(strategies=["optimal"], duration_s=40, seed=9, service_correlation=0.5,
              profile=tmp_path / "profile.json", replicas={"bs": 1, "cams": 1}, colocate=64)
    fleet = make_fleet(cams=30, bs=2)
    slow = simulate(plan, fleet, fast=False, **kw).strategies["optimal"].sinks["labels"]
    fast = simulate(plan, fleet, fast=True, **kw).strategies["optimal"].sinks["labels"]
    again = simulate(plan, fleet, fast=True, **kw).strategies["optimal"].sinks["labels"]
    assert fast.mean_ms == pytest.approx(slow.mean_ms, rel=0.01)
    assert fast.p95_ms == pytest.approx(slow.p95_ms, rel=0.01)
    assert (again.p50_ms, again.p95_ms, again.p99_ms) == (fast.p50_ms, fast.p95_ms, fast.p99_ms)
    assert load_profile(tmp_path / "profile.json").correlation == pytest.approx(prof.correlation)


def test_service_correlation_widens_lognormal_tail_keeps_mean():
    """A shared per-request slowdown leaves the mean and widens the tail of a multi-stage request."""
    plan = make_plan(assign={"det/p0": "cams", "det/p1": "bs", "cls/p0": "cloud"}, rate_hz=0.01)
    fleet = make_fleet(cams=1, bs=1)
    out = {}
    for rho in (0.0, 1.0):
        out[rho] = simulate(plan, fleet, strategies=["optimal"], duration_s=300_000, seed=2, fast=True,
                            service_cv=0.3, service_correlation=rho).strategies["optimal"].sinks["labels"]
    assert out[1.0].mean_ms == pytest.approx(out[0.0].mean_ms, rel=0.02)
    # compute 20 + 6 + 1 ms at CV 0.3: the spread above the median grows by sqrt(27^2 / 437), about 1.3x
    assert out[1.0].p95_ms - out[1.0].p50_ms > 1.2 * (out[0.0].p95_ms - out[0.0].p50_ms)


def _fanout_plan() -> Plan:
    """camera -> crop x4 (device) -> cls x4 (base station) -> labels back on the device."""
    pieces = [PlanPiece(id="camera", kind="source", rate_hz=0.01),
              PlanPiece(id="crop", model="crop", latency_ms={"cams": 10.0}, rate_factor=4.0),
              PlanPiece(id="cls", model="cls", latency_ms={"bs": 2.0}, rate_factor=4.0),
              PlanPiece(id="sink:labels", kind="sink")]
    edges = [PlanEdge(src="camera", dst="crop", nbytes=1000),
             PlanEdge(src="crop", dst="cls", nbytes=31_250), PlanEdge(src="cls", dst="sink:labels", nbytes=400)]
    return Plan(status="optimal", assignment={"crop": "cams", "cls": "bs"}, pieces=pieces,
                edges=edges, sinks={"labels": SinkLatency(latency_ms=70, slo_ms=100)})


@pytest.mark.parametrize("fast", [False, True])
def test_fanout_items_pipeline(fast):
    """Fan-out items travel separately: item 1 crosses the link while item 2 is still computed upstream."""
    rep = simulate(_fanout_plan(), make_fleet(cams=1, bs=1, uplink_mbps=50.0, rtt_ms=0.0), strategies=["optimal"],
                   duration_s=1000, seed=0, fast=fast, service_dist="deterministic")
    # crops end at 10, 20, 30, 40; 5 ms uplink each (31,250 B at 50 Mbit/s); cls 2 ms;
    # 400 B down at 100 Mbit/s = 0.032 ms: the last item is back at 47.032 ms (a batch: 68.128 ms)
    s = rep.strategies["optimal"].sinks["labels"]
    assert s.p50_ms == pytest.approx(47.032, abs=1e-6)
    assert s.p95_ms == pytest.approx(47.032, abs=1e-6)


def test_shared_host_cores_serialise_sites():
    """On a one-core host no two compute jobs of any sites overlap, and latency grows over separate hosts."""
    plan = make_plan(rate_hz=6.0)
    fleet = make_fleet(cams=4, bs=1)
    kw = dict(strategies=["optimal"], duration_s=30, seed=1, replicas={"bs": 1})
    apart = simulate(plan, fleet, fast=False, **kw).strategies["optimal"]
    shared = simulate(plan, fleet, fast=False, colocate=1, **kw)
    res = shared.strategies["optimal"]
    assert res.sinks["labels"].mean_ms > 1.05 * apart.sinks["labels"].mean_ms
    with pytest.raises(InputError, match="shared host"):
        simulate(plan, fleet, fast=True, colocate=1, **kw)


def test_shared_host_never_runs_more_jobs_than_cores(monkeypatch):
    """Compute busy intervals across every site never exceed the host's cores at any instant."""
    from tierplan.simulations import stream as sim_api   # stream.replay runs the engines
    from tierplan.simulations.engine_simpy import run_simpy

    captured = {}

    def keep(*a, **k):  # the real SimPy run, its result kept for the busy intervals
        captured["res"] = run_simpy(*a, **k)
        return captured["res"]

    monkeypatch.setattr(sim_api, "run_simpy", keep)
    simulate(make_plan(rate_hz=8.0), make_fleet(cams=6, bs=2, bs_max=2), strategies=["optimal"], duration_s=20,
             seed=3, fast=False, colocate=2)
    starts, ends = [], []
    for label, b in captured["res"].busy.items():
        if not label.startswith("link:"):
            _, s, v = b.arrays()
            starts.append(s)
            ends.append(s + v)
    s, e = np.concatenate(starts), np.concatenate(ends)
    events = np.r_[s, e]
    delta = np.r_[np.ones(len(s)), -np.ones(len(e))]
    order = np.lexsort((delta, events))  # ends before starts at the same instant
    assert np.cumsum(delta[order]).max() <= 2
    assert len(s) > 100


def test_bad_profile_and_options_are_input_errors(tmp_path):
    """A malformed profile file or an out-of-range option is an InputError naming the fix."""
    bad = tmp_path / "p.json"
    bad.write_text('{"stages": {"nodeonly": [1, 2]}, "correlation": 0.2}')
    with pytest.raises(InputError, match="node@site"):
        load_profile(bad)
    plan, fleet = make_plan(), make_fleet()
    with pytest.raises(InputError, match="service_correlation"):
        simulate(plan, fleet, duration_s=1, service_correlation=1.5)
    with pytest.raises(InputError, match="colocate"):
        simulate(plan, fleet, duration_s=1, colocate=0)
    with pytest.raises(InputError, match="correlation"):
        ServiceProfile({("a", "s"): np.ones(3)}, 1.2)


def test_fit_is_deterministic_and_bounded():
    """The same measurement fits the same correlation, inside [0, 1]."""
    traces = _synthetic_traces(0.3, 150, seed=8)
    prof = profile_from_traces(traces)
    steps = [[("det/p0", "cams"), ("det/p1", "cams"), ("cls/p0", "cams")] for _ in traces]
    totals = np.array([t.latency_ms for t in traces])
    a = fit_correlation(prof, steps, totals, seed=1)
    assert a == fit_correlation(prof, steps, totals, seed=1)
    assert 0.0 <= a <= 1.0


def test_overhead_outside_steps_is_replayed():
    """Time a one-site request spends outside its steps is measured and added to it: per step on the site
    (its 3 steps' share, beyond the runtime's per-request floor) and per request (the rest)."""
    traces = [RequestTrace(t.latency_ms + 5.0, t.steps) for t in _synthetic_traces(0.3, 300, seed=11)]
    prof = profile_from_traces(traces, request_floor_ms=0.5)
    assert prof.glue_at("cams") == pytest.approx(1.5)
    assert prof.overhead_ms is not None and np.allclose(prof.overhead_ms, 0.5)
    bare = ServiceProfile({k: v for k, v in prof.samples_ms.items() if k[0] != "<request>"}, prof.correlation)
    with_over, without = _low_load_sim(prof, fast=True), _low_load_sim(bare, fast=True)
    assert with_over.p50_ms - without.p50_ms == pytest.approx(5.0, abs=0.05)
    assert with_over.p95_ms - without.p95_ms == pytest.approx(5.0, abs=0.05)


def test_profile_pieces_measures_real_onnx_runs():
    """A calibration run with onnxruntime gives each piece's measured times, in order, with a fitted rho."""
    import onnx

    from tierplan.simulations.calibration import profile_pieces

    light = __import__("pathlib").Path(onnx.__file__).parent / "backend/test/data/light"
    files = {("squeeze", "cams"): light / "light_squeezenet.onnx", ("shuffle", "bs"): light / "light_shufflenet.onnx"}
    prof = profile_pieces(files, requests=24, warmup=2)
    assert set(prof.samples_ms) == set(files)
    assert all(len(v) == 24 and (v > 0).all() for v in prof.samples_ms.values())
    assert 0.0 <= prof.correlation <= 1.0 and prof.requests == 24
    # the pieces are real, different models: their measured medians differ
    med = {k: float(np.median(v)) for k, v in prof.samples_ms.items()}
    assert med[("squeeze", "cams")] != med[("shuffle", "bs")]

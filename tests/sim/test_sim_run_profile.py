"""`tierplan simulate PLAN --profile RUN.json`: a `tierplan run --json` report calibrates the simulator and sets its scale."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tierplan.errors import InputError
from tierplan.planner.plan import ClassCoverage, Plan, PlanPiece
from tierplan.runtime.handplan import with_fleet
from tierplan.simulations.calibration import as_run, load_profile, profile_from_run
from tierplan.spec import FleetSpec

FLEET = FleetSpec.model_validate({
    "sites": {"phone": {"tier": "edge", "device": "pixel-8", "count": 300, "attach": "bs", "link": "radio"},
              "tablet": {"tier": "edge", "device": "pixel-8", "count": 100, "attach": "bs", "link": "radio"},
              "bs": {"tier": "base_station", "device": "mec-t4", "count": 20, "attach": "cloud", "link": "radio"},
              "cloud": {"tier": "cloud", "device": "aws-g5-xlarge"}},
    "links": {"radio": {"uplink_mbps": 800, "downlink_mbps": 800, "rtt_ms": 2}}})


def _report(classes=("phone", "tablet"), n: int = 12) -> dict:
    """A run report of two classes: phones run m/p0 themselves, tablets on the bs; both send m/p1 to the cloud."""
    traces = []
    for i in range(n):
        for cls, site in (("phone", "phone"), ("tablet", "bs")):
            if cls not in classes:
                continue
            traces.append({"device_class": cls, "latency_ms": 20.0 + i,
                           "steps": [["compute", f"{cls}/m/p0@{site}", 10.0 + i], ["transfer", f"{site}->cloud", 2.0],
                                     ["compute", f"{cls}/m/p1@cloud", 5.0 + i / 2]]})
    return {"requests_ok": len(traces), "classes_run": list(classes), "devices_per_class": 2, "rate_scale": 0.5,
            "site_rows": [{"site": "bs", "workers": 1}, {"site": "cloud", "workers": 3}], "traces": traces}


def _plan() -> Plan:
    per = {"phone": {"m/p0": "phone", "m/p1": "cloud"}, "tablet": {"m/p0": "bs", "m/p1": "cloud"}}
    cov = {c: ClassCoverage(devices=n, mode="offload", latency_ms=30, meets_slo=True) for c, n in (("phone", 300),
                                                                                                   ("tablet", 100))}
    plan = Plan(status="feasible", assignment=per["phone"], per_class=per, coverage=cov,
                instances={"bs": 20, "cloud": 8}, pieces=[PlanPiece(id="m/p0"), PlanPiece(id="m/p1")])
    return with_fleet(plan, FLEET).model_copy(update={"app": {"sources": {"x": {"rate_hz": 4.0}}}})


def test_a_run_reports_steps_become_the_plans_node_at_site_stages(tmp_path):
    """Class prefixes (CLASS/NODE) are dropped: a stage is node@site as the simulator names it; the file loads as a profile."""
    prof = profile_from_run(_report())
    assert set(prof.samples_ms) == {("m/p0", "phone"), ("m/p0", "bs"), ("m/p1", "cloud")}
    assert len(prof.samples_ms[("m/p1", "cloud")]) == 24          # both classes' runs of the shared piece
    (tmp_path / "run.json").write_text(json.dumps(_report()))
    assert set(load_profile(tmp_path / "run.json").samples_ms) == set(prof.samples_ms)
    with pytest.raises(InputError, match="no request traces.*To fix"):
        profile_from_run({**_report(), "traces": []})


def test_the_simulated_fleet_is_the_one_the_run_ran(tmp_path):
    """Only the classes that ran, with the run's devices each, one instance of every shared site with the run's
    workers, and the sources' rates scaled as the run scaled them."""
    (tmp_path / "run.json").write_text(json.dumps(_report(classes=("tablet",))))
    plan = as_run(_plan(), tmp_path / "run.json")
    sites = plan.fleet_spec().sites
    assert "phone" not in sites and sites["tablet"].count == 2
    assert sites["bs"].count == 1 and plan.instances == {"bs": 1, "cloud": 3}
    assert list(plan.per_class) == ["tablet"] and plan.app["sources"]["x"]["rate_hz"] == pytest.approx(2.0)
    (tmp_path / "profile.json").write_text(json.dumps({"correlation": 0.1, "stages": {"m/p0@bs": [1.0]}}))
    assert as_run(_plan(), tmp_path / "profile.json") == _plan()   # a saved ServiceProfile changes nothing


def test_time_waiting_at_a_busy_source_site_is_not_taken_for_overhead():
    """A request whose input waited 50 ms at its site (its feed step beyond the feed's median) keeps that out of
    the time outside its steps (per-step work on the site and the request's own overhead, 1 ms in all): the
    simulator draws queueing itself."""
    traces = [{"device_class": "phone", "latency_ms": 3.0 + (50.0 if i == 0 else 0.0),
               "steps": [["feed", "client->phone", 0.4 + (50.0 if i == 0 else 0.0)],
                         ["compute", "m/p0@phone", 2.0]]} for i in range(10)]
    prof = profile_from_run({"requests_ok": 10, "classes_run": ["phone"], "traces": traces,
                             "overhead": {"hop_ms": 0.25, "request_ms": 0.0}})
    assert prof.overhead_ms is not None and prof.glue_at("phone") + max(prof.overhead_ms) == pytest.approx(1.0)


def test_the_site_holds_its_per_step_work_and_the_request_keeps_the_rest():
    """A phone's 2-step requests spend 1 ms outside their steps, its 10-step ones 5 ms; beyond the runtime's
    per-request floor (input and result hops, 2 x 0.25 ms) that is per-step work on the phone's thread
    (the median share, 0.35 ms a step, also for sites no one-site request ran on); what the 2-step requests
    have left (1 - 2 x 0.35 ms) is the overhead drawn for every request."""
    def trace(steps: int, extra: float) -> dict:
        return {"device_class": "phone", "latency_ms": steps * 2.0 + extra,
                "steps": [["compute", f"m/p{k}@phone", 2.0] for k in range(steps)]}
    traces = [trace(2, 1.0) for _ in range(10)] + [trace(10, 5.0) for _ in range(10)]
    prof = profile_from_run({"requests_ok": 20, "classes_run": ["phone"], "traces": traces,
                             "overhead": {"hop_ms": 0.25, "request_ms": 0.0}})
    assert prof.glue_at("phone") == pytest.approx(0.35) and prof.glue_at("cloud") == pytest.approx(0.35)
    assert prof.overhead_ms is not None and max(prof.overhead_ms) == pytest.approx(0.3)


def test_a_runs_measured_batch_wait_is_kept_with_the_profile(tmp_path):
    """A run report's site rows say how long partial batches waited (max_wait plus the batching thread's delay)
    and its `batch` the caps it deployed (--batch): the profile keeps both, and saving and loading it too."""
    doc = {**_report(), "site_rows": [{"site": "bs", "workers": 1, "batch_wait_ms": None},
                                      {"site": "cloud", "workers": 3, "batch_wait_ms": 3.25}],
           "batch": {"max_batch": 8, "max_wait_ms": 10.0}}
    prof = profile_from_run(doc)
    assert prof.batch_wait_ms == {"cloud": 3.25} and prof.batch_caps == (8, 10.0)
    prof.save(tmp_path / "profile.json")
    again = load_profile(tmp_path / "profile.json")
    assert again.batch_wait_ms == {"cloud": 3.25} and again.batch_caps == (8, 10.0)
    bare = profile_from_run(_report())
    assert bare.batch_wait_ms == {} and bare.batch_caps is None    # a report without them: the runtime's


def test_the_load_generator_is_open_loop_a_busy_site_does_not_hold_back_later_arrivals():
    """`tierplan run` sends each request at its Poisson time even while an earlier submit waits for a busy site
    (the same-host send waits for the site's connection): otherwise the requests behind it start late and
    measure less queueing than a device would see (coordinated omission)."""
    import threading
    import time

    from tierplan.run import Stream, _send

    started: dict[int, float] = {}
    release = threading.Event()

    class _Pending:
        def __init__(self, i: int) -> None:
            self.i = i

    class _Service:       # the load generator's view of a deployment: submit, then wait for the result
        fleet_run = None

        def submit(self, inputs, device_class=None):
            i = int(inputs["x"][0])
            started[i] = time.monotonic()
            if i == 0:        # the first request's site is busy: its send waits
                release.wait(2.0)
            return _Pending(i)

        def wait(self, p):
            return {}, None

    streams = [Stream("phone", ("x",), 10.0)]
    arrivals = [(0.0, 0), (0.05, 0), (0.10, 0)]
    t0 = time.monotonic()
    threading.Timer(0.5, release.set).start()
    _send(_Service(), streams, arrivals, lambda i: {"x": np.array([i])}, 0, 5.0, None, False, lambda ok, failed: None)
    assert started[1] - t0 < 0.4 and started[2] - t0 < 0.4    # sent on time, not after the first one's 0.5 s


def _burst_report(burst: bool) -> dict:
    """A phone's requests at 10 per second for 20 s, each two steps; seconds 5-9 of the run are 3x slower
    (a burst of load on the machine) when `burst`, else the same slow steps are spread over the run."""
    rng = np.random.default_rng(1)
    traces = []
    for i in range(200):
        t = i / 10.0
        slow = (5.0 <= t < 10.0) if burst else (i % 4 == 1)
        k = 3.0 if slow else 1.0
        a, b = k * rng.uniform(9, 11), k * rng.uniform(4, 6)
        traces.append({"device_class": "phone", "t_s": t, "latency_ms": a + b + 1.0,
                       "steps": [["compute", "m/p0@phone", a], ["compute", "m/p1@phone", b]]})
    return {"requests_ok": 200, "classes_run": ["phone"], "traces": traces}


def test_a_burst_of_load_is_replayed_at_its_time_and_spread_load_is_not(tmp_path):
    """Send times in the report: the seconds whose steps were all slow get a positive shift (the machine's slowdown
    then), the others a negative one, and the shift round-trips through a saved profile; the same slow steps spread
    evenly over the run explain nothing by time (no shift)."""
    prof = profile_from_run(_burst_report(True))
    shift = prof.time_shift
    assert shift is not None and len(shift) == 20
    assert shift[5:10].min() > 0.5 and np.delete(shift, range(5, 10)).max() < 0
    assert prof.shift_at(np.array([7_500.0, 27_500.0, 1_000.0])).tolist() == [shift[7], shift[7], shift[1]]
    prof.save(tmp_path / "p.json")
    assert np.allclose(load_profile(tmp_path / "p.json").time_shift, shift)
    assert profile_from_run(_burst_report(False)).time_shift is None
    assert profile_from_run(_report()).time_shift is None          # no send times: nothing to replay


def test_replaying_the_burst_slows_the_requests_of_those_seconds_together():
    """A step's draw is shifted by the run's slowdown at its request's time: simulated requests in the burst's
    seconds take longer than the others, while the marginal of every step stays the measured one."""
    from tierplan.simulations.calibration import ServiceProfile
    prof = profile_from_run(_burst_report(True))
    flat = ServiceProfile(dict(prof.samples_ms), prof.correlation)
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 20_000, 20_000)
    z = prof.mix(rng.standard_normal(len(t)), rng.standard_normal(len(t)), prof.shift_at(t))
    x = prof.from_normal("m/p0", "phone", z)
    burst = (t >= 5_000) & (t < 10_000)
    assert x[burst].mean() > 2 * x[~burst].mean()
    assert abs(np.median(x) - np.median(prof.samples_ms[("m/p0", "phone")])) < 2.0   # the measured marginal
    assert flat.time_share == 0.0 and prof.time_share > 0.3


def test_without_one_site_requests_the_per_step_work_is_the_runtimes_probe():
    """Every request crosses a link (no one-site request to measure the per-step work on): the run report's
    own per-step and per-run costs (runtime.overhead's probe on this host) stand for every site."""
    prof = profile_from_run({**_report(), "overhead": {"step_ms": 0.02, "run_ms": 0.03, "hop_ms": 0.25}})
    assert prof.glue_at("cloud") == pytest.approx(0.05) and prof.glue_at("bs") == pytest.approx(0.05)
    assert profile_from_run(_report()).glue_ms == {}


def test_the_simulated_rates_are_the_requests_the_run_sent():
    """A run sends its Poisson draw, not the nominal rate: 30 requests of the phones' x in 10 s on 2 devices each
    is 1.5 per second and device (nominal 4); the profile keeps it and the simulator offers that load."""
    from tierplan.simulations.api import simulate
    doc = _report()
    for i, t in enumerate(doc["traces"]):
        t["t_s"] = i * 10.0 / (len(doc["traces"]) - 1)
    doc["classes"] = [{"device_class": "phone", "sources": ["x"], "requests": 30},
                      {"device_class": "tablet", "sources": ["x"], "requests": 12}]
    prof = profile_from_run(doc)
    assert prof.sent_hz == {"phone": {"x": pytest.approx(1.5)}, "tablet": {"x": pytest.approx(0.6)}}
    from sim_builders import make_fleet, make_plan

    from tierplan.simulations.calibration import ServiceProfile
    sent = ServiceProfile({}, 0.0, sent_hz={"cams": {"camera": 1.0}})   # make_plan's cameras: nominal 5 Hz
    rep = simulate(make_plan(), make_fleet(), profile=sent, strategies=["optimal"], duration_s=100)
    assert rep.strategies["optimal"].requests == pytest.approx(20 * 1.0 * 100, rel=0.1)


def test_a_busy_host_floors_result_delivery_measured_on_the_shortest_route(tmp_path):
    """Each request's last transfer is its result. On the route the run measured shortest (median), the late
    half gives the host's floor under delivery (time since send), the early half 0. The simulator delivers a
    result at the later of its route's draw and one floor draw per request: a floor above the route's delay
    shows whole, one below it nothing, and only results wait for it."""
    from sim_builders import make_fleet, make_plan

    from tierplan.simulations.calibration import ServiceProfile, result_host_delays
    short = [10.0] * 18 + [40.0, 60.0]
    long = [30.0 + (i % 5) for i in range(20)]
    x = result_host_delays({"a->cloud": short, "b->cloud": long, "c->cloud": [1.0] * 5})
    assert x is not None and sorted(x.tolist())[-2:] == [40.0, 60.0] and np.count_nonzero(x) == 2
    assert result_host_delays({}) is None
    plan, fleet = make_plan(assign={"det/p0": "cams", "det/p1": "cams", "cls/p0": "bs"}), make_fleet()
    base = simulate_sink(plan, fleet, ServiceProfile({}, 0.0))
    high = simulate_sink(plan, fleet, ServiceProfile({}, 0.0, result_host_ms=np.full(10, 200.0)))
    higher = simulate_sink(plan, fleet, ServiceProfile({}, 0.0, result_host_ms=np.full(10, 230.0)))
    below = simulate_sink(plan, fleet, ServiceProfile({}, 0.0, result_host_ms=np.full(10, 0.5)))
    assert higher.p50_ms - high.p50_ms == pytest.approx(30.0, abs=0.5)   # above the route: the floor decides
    assert high.p50_ms > base.p50_ms + 100.0
    assert below.p50_ms == pytest.approx(base.p50_ms, abs=0.01)          # below the route's delay: nothing
    ServiceProfile({("n", "bs"): np.ones(3)}, 0.0, result_host_ms=x).save(tmp_path / "p.json")
    assert np.array_equal(load_profile(tmp_path / "p.json").result_host_ms, np.sort(x))
    old = json.loads((tmp_path / "p.json").read_text())
    old["result_delay_ms"] = old.pop("result_host_ms")   # an older tierplan's profile: lateness, not a floor
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(InputError, match="older tierplan.*To fix"):
        load_profile(tmp_path / "old.json")


def simulate_sink(plan, fleet, profile):
    from tierplan.simulations.api import simulate
    rep = simulate(plan, fleet, profile=profile, strategies=["optimal"], duration_s=20, service_cv=0.0)
    return next(iter(rep.strategies["optimal"].sinks.values()))


@pytest.mark.parametrize("text,caps", [(None, None), ("auto", None), ("8:10", (8, 10.0)), ("4", (4, 2.0)),
                                       ("off", (1, 2.0))])
def test_run_batch_flag_gives_the_caps_the_report_records(text, caps):
    """`tierplan run --batch MAX[:WAIT_MS]|auto|off` as deploy's caps (None: StageOptions'), which the run report
    records and `simulate --profile` replays."""
    from tierplan.run import _batch_caps, parse_batch
    assert parse_batch(text) == caps
    assert _batch_caps(caps) == ({"max_batch": 8, "max_wait_ms": 2.0} if caps is None else
                                 {"max_batch": caps[0], "max_wait_ms": caps[1]})


@pytest.mark.parametrize("bad", ["x", "8:-1", "0", "8:2:1", "", "8:nan", "8:inf"])
def test_run_batch_flag_refuses_bad_caps_in_one_line(bad):
    """A malformed `tierplan run --batch` is one InputError line naming the flag and a fix."""
    from tierplan.run import parse_batch
    with pytest.raises(InputError) as e:
        parse_batch(bad)
    assert str(e.value).startswith("--batch ") and "To fix: " in str(e.value) and "\n" not in str(e.value)

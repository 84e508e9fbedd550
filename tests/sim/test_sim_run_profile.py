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
    the per-request overhead: the simulator draws queueing itself."""
    traces = [{"device_class": "phone", "latency_ms": 3.0 + (50.0 if i == 0 else 0.0),
               "steps": [["feed", "client->phone", 0.4 + (50.0 if i == 0 else 0.0)],
                         ["compute", "m/p0@phone", 2.0]]} for i in range(10)]
    prof = profile_from_run({"requests_ok": 10, "classes_run": ["phone"], "traces": traces})
    assert prof.overhead_ms is not None and max(prof.overhead_ms) == pytest.approx(1.0)


def test_the_overhead_is_the_one_of_the_requests_with_the_fewest_steps():
    """A phone's 2-step speech request and its 10-step text request both run on one site; the per-request
    overhead drawn for every request is the short one's (1 ms), not the long one's (5 ms: a share per step)."""
    def trace(steps: int, extra: float) -> dict:
        return {"device_class": "phone", "latency_ms": steps * 2.0 + extra,
                "steps": [["compute", f"m/p{k}@phone", 2.0] for k in range(steps)]}
    traces = [trace(2, 1.0) for _ in range(10)] + [trace(10, 5.0) for _ in range(10)]
    prof = profile_from_run({"requests_ok": 20, "classes_run": ["phone"], "traces": traces})
    assert prof.overhead_ms is not None and max(prof.overhead_ms) == pytest.approx(1.0)


def test_a_runs_measured_batch_wait_is_kept_with_the_profile(tmp_path):
    """A run report's site rows say how long partial batches waited (max_wait plus the batching thread's delay):
    the profile keeps it per site, and saving and loading the profile keeps it too."""
    doc = {**_report(), "site_rows": [{"site": "bs", "workers": 1, "batch_wait_ms": None},
                                      {"site": "cloud", "workers": 3, "batch_wait_ms": 3.25}]}
    prof = profile_from_run(doc)
    assert prof.batch_wait_ms == {"cloud": 3.25}
    prof.save(tmp_path / "profile.json")
    assert load_profile(tmp_path / "profile.json").batch_wait_ms == {"cloud": 3.25}
    assert profile_from_run(_report()).batch_wait_ms == {}     # a report without it: the runtime's wait


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

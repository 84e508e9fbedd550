"""Behaviour under scenarios: determinism, failures, mobility, overload, arrivals, links."""

from __future__ import annotations

import numpy as np
import pytest
from sim_builders import make_fleet, make_plan

from tierplan.simulations.api import simulate
from tierplan.simulations.scenario import (LINK_PRESETS_MBPS, parse_arrivals, parse_failure, parse_link,
                                  parse_mobility)
from tierplan.errors import InputError


@pytest.mark.slow   # takes seconds: kept out of the fast lane (under 3 min); the full suite runs it
@pytest.mark.parametrize("fast", [False, True])
def test_same_seed_same_result(fast):
    """Same seed, same report (every number); another seed gives different latencies."""
    kw = dict(duration_s=10, arrivals="burst", failures=["site:bs#0@2-4:reroute"], mobility=["cams:0.3@5"],
              links={"cams": "4g~0.3"}, fast=fast)
    plan, fleet = make_plan(fanout=1.7), make_fleet(cams=30, bs=3, jitter_ms=2.0)
    a = simulate(plan, fleet, seed=7, **kw).to_json()
    b = simulate(plan, fleet, seed=7, **kw).to_json()
    c = simulate(plan, fleet, seed=8, **kw).to_json()
    for d in (a, b, c):
        for s in d["strategies"].values():
            s.pop("wall_s"), s.pop("sim_requests_per_s")
    assert a == b
    assert a != c


@pytest.mark.parametrize("fast", [False, True])
def test_failures_are_counted_and_nothing_vanishes(fast):
    """An outage with policy fail fails the requests that reach it; ok + failed == arrived, per sink too."""
    rep = simulate(make_plan(), make_fleet(cams=40, bs=2), duration_s=20, seed=1, fast=fast,
                   failures=["site:bs#0@5-10:fail"])
    opt = rep.strategies["optimal"]
    assert opt.requests_failed > 0
    assert opt.requests_ok + opt.requests_failed == opt.requests
    sink = opt.sinks["labels"]
    assert sink.ok + sink.failed == sink.requests == opt.requests
    # half the devices sit behind bs 0, 5 s of 20: about an eighth of the requests fail
    assert opt.requests_failed == pytest.approx(opt.requests / 8, rel=0.15)
    # all-device never touches the base station: nothing fails
    assert rep.strategies["all-device"].requests_failed == 0


def test_reroute_and_wait_policies():
    """Reroute sends requests to a live instance (none fail); wait holds them (none fail, tail grows)."""
    plan, fleet = make_plan(), make_fleet(cams=40, bs=2)
    base = simulate(plan, fleet, strategies=["optimal"], duration_s=20, seed=1).strategies["optimal"]
    rr = simulate(plan, fleet, strategies=["optimal"], duration_s=20, seed=1,
                  failures=["site:bs#0@5-10:reroute"]).strategies["optimal"]
    wt = simulate(plan, fleet, strategies=["optimal"], duration_s=20, seed=1,
                  failures=["site:bs#0@5-10:wait"]).strategies["optimal"]
    assert rr.requests_failed == 0 and rr.requests_rerouted > 0
    assert rr.requests_rerouted == pytest.approx(rr.requests / 8, rel=0.15)
    assert wt.requests_failed == 0 and wt.requests_delayed > 0
    assert wt.sinks["labels"].p99_ms > 1000 > base.sinks["labels"].p99_ms
    none_left = simulate(plan, fleet, strategies=["optimal"], duration_s=20, seed=1,
                         failures=["site:bs@5-10:reroute"]).strategies["optimal"]
    assert none_left.requests_failed > 0  # every instance down: nowhere to reroute


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.slow   # takes seconds: kept out of the fast lane
def test_reroute_hands_devices_over_to_a_live_base_station(fast):
    """With shared cell capacity, a rerouted base-station outage moves links and compute: none fail."""
    plan, fleet = make_plan(), make_fleet(cams=40, bs=4, bs_max=2, capacity_mbps=400.0)
    kw = dict(strategies=["optimal"], duration_s=20, seed=5, fast=fast)
    failed = simulate(plan, fleet, failures=["site:bs#0-1@5-10:fail"], **kw).strategies["optimal"]
    moved = simulate(plan, fleet, failures=["site:bs#0-1@5-10:reroute"], **kw).strategies["optimal"]
    assert failed.requests_failed == pytest.approx(failed.requests / 8, rel=0.2)
    assert moved.requests_failed == 0
    assert moved.requests_rerouted == pytest.approx(moved.requests / 8, rel=0.2)


def test_link_and_device_failures():
    """A radio-link outage and a device outage both fail the requests that need them."""
    plan, fleet = make_plan(), make_fleet(cams=20, bs=2)
    link = simulate(plan, fleet, duration_s=10, seed=3, failures=["link:cams#25%@0-10"])
    dev = simulate(plan, fleet, duration_s=10, seed=3, failures=["device:cams#0-4@0-10"])
    assert link.strategies["optimal"].requests_failed == pytest.approx(link.strategies["optimal"].requests / 4, rel=0.2)
    assert link.strategies["all-device"].requests_failed == 0  # all-device needs no link
    assert dev.strategies["all-device"].requests_failed == pytest.approx(dev.strategies["all-device"].requests / 4, rel=0.2)


@pytest.mark.parametrize("fast", [False, True])
def test_mobility_shifts_load_between_base_stations(fast):
    """When 80% of the cameras move to base station 0 it carries more load, base station 1 less."""
    plan, fleet = make_plan(rate_hz=2.0), make_fleet(cams=40, bs=2, bs_max=4)
    still = simulate(plan, fleet, strategies=["optimal"], duration_s=20, seed=4, fast=fast).strategies["optimal"]
    moved = simulate(plan, fleet, strategies=["optimal"], duration_s=20, seed=4, fast=fast,
                     mobility=["cams:0.8@0>0"]).strategies["optimal"]
    u0, u1 = still.instance_utilisation["bs"]
    m0, m1 = moved.instance_utilisation["bs"]
    assert abs(u0 - u1) < 0.25 * u0
    assert m0 > 1.5 * u0 and m1 < 0.6 * u1
    assert m0 + m1 == pytest.approx(u0 + u1, rel=0.05)  # the load moved, it did not appear or vanish


def test_overloaded_site_lowers_slo_attainment():
    """A strategy that overloads a site (one cloud server for everything) misses the SLO far more often."""
    plan = make_plan(rate_hz=10.0, slo_ms=150.0)
    fleet = make_fleet(cams=50, bs=5, bs_max=2, uplink_mbps=200.0)
    rep = simulate(plan, fleet, strategies=["optimal", "all-cloud"], duration_s=15, seed=2, replicas={"cloud": 1})
    opt, cloud = rep.strategies["optimal"], rep.strategies["all-cloud"]
    assert cloud.utilisation["cloud"] > 0.99 and opt.utilisation["bs"] < 0.9
    assert opt.sinks["labels"].slo_attainment > 0.95
    assert cloud.sinks["labels"].slo_attainment < 0.5 * opt.sinks["labels"].slo_attainment
    assert any("overloaded" in n for n in cloud.notes)


@pytest.mark.parametrize("spec", ["poisson", "periodic:5", "burst:6:1:4", "diurnal:0.8:10"])
def test_arrival_processes_keep_the_mean_rate(spec):
    """Poisson, MMPP bursts and diurnal arrivals all offer the nominal mean rate (N devices x rate)."""
    rep = simulate(make_plan(rate_hz=5.0), make_fleet(cams=10), strategies=["all-device"], duration_s=1200,
                   seed=9, arrivals=spec, fast=True)
    assert rep.strategies["all-device"].requests == pytest.approx(10 * 5.0 * 1200, rel=0.15)


def test_burst_arrivals_raise_the_tail():
    """Bursts (same mean rate) queue more than Poisson: higher p99 at the base station."""
    plan, fleet = make_plan(rate_hz=2.0), make_fleet(cams=40, bs=1, bs_max=1)
    kw = dict(strategies=["optimal"], duration_s=60, seed=3)
    p = simulate(plan, fleet, arrivals="poisson", **kw).strategies["optimal"].sinks["labels"].p99_ms
    b = simulate(plan, fleet, arrivals="burst:4:2:8", **kw).strategies["optimal"].sinks["labels"].p99_ms
    assert b > 1.5 * p


def test_periodic_cameras_queue_less_than_poisson():
    """Frames every 1/rate s (cameras) meet no queue on a device that keeps up; Poisson ones do."""
    plan, fleet = make_plan(rate_hz=10.0), make_fleet(cams=20)
    kw = dict(strategies=["all-device"], duration_s=30, seed=1, service_dist="deterministic")
    per = simulate(plan, fleet, arrivals="periodic", **kw).strategies["all-device"].sinks["labels"]
    poi = simulate(plan, fleet, arrivals="poisson", **kw).strategies["all-device"].sinks["labels"]
    assert per.p99_ms == pytest.approx(60.0, abs=1e-6)  # 20 + 30 + 10 ms, never a wait (utilisation 0.6)
    assert poi.p99_ms > 2 * per.p99_ms


def test_trace_arrivals_replay_timestamps(tmp_path):
    """A trace file's timestamps are replayed exactly (those inside the simulated duration)."""
    f = tmp_path / "arrivals.csv"
    f.write_text("t_s\n" + "\n".join(f"{0.05 * i:.3f}" for i in range(300)) + "\n")
    rep = simulate(make_plan(), make_fleet(), strategies=["all-device"], duration_s=10, arrivals=f"trace:{f}")
    assert rep.strategies["all-device"].requests == 200


def test_trace_arrivals_labelled_class_slash_source_replay_that_source_only(tmp_path):
    """`t,CLASS/SOURCE` rows feed only that source of the class (a run's sends per source: benchmarks/fidelity),
    `t,CLASS` and bare rows every source of the class."""
    f = tmp_path / "arrivals.csv"
    rows = [f"{0.05 * i:.3f},cams/camera" for i in range(100)] + [f"{0.05 * i:.3f},cams/microphone" for i in range(50)]
    f.write_text("\n".join(rows + [f"{0.07 * i:.3f}" for i in range(20)] + [f"{0.09 * i:.3f},cams" for i in range(7)]))
    rep = simulate(make_plan(), make_fleet(), strategies=["all-device"], duration_s=10, arrivals=f"trace:{f}")
    assert rep.strategies["all-device"].requests == 127


def test_slower_link_preset_raises_latency():
    """The 3G preset (1.1 Mbit/s) makes offloading slower than Wi-Fi (18.88 Mbit/s)."""
    plan, fleet = make_plan(), make_fleet(cams=10)
    kw = dict(strategies=["all-cloud"], duration_s=10, seed=1)
    wifi = simulate(plan, fleet, links={"cams": "wifi"}, **kw).strategies["all-cloud"].sinks["labels"].p50_ms
    g3 = simulate(plan, fleet, links={"cams": "3g"}, **kw).strategies["all-cloud"].sinks["labels"].p50_ms
    # 150 kB up: 63.6 ms on Wi-Fi, 1091 ms on 3G, before queueing
    assert wifi == pytest.approx(150_000 * 8 / 18.88e3 + 60, rel=0.25)
    assert g3 > 1000 > 3 * wifi
    assert LINK_PRESETS_MBPS == {"2g": 0.13, "3g": 1.1, "4g": 5.85, "wifi": 18.88}


def test_parsers_reject_bad_input_with_the_fix():
    """Scenario strings that do not parse raise InputError naming the flag and the expected form."""
    with pytest.raises(InputError, match="--fail .*KIND:CLASS"):
        parse_failure("bs down")
    with pytest.raises(InputError, match="end after it starts"):
        parse_failure("site:bs@10-5")
    with pytest.raises(InputError, match="--arrivals"):
        parse_arrivals("zipf")
    with pytest.raises(InputError, match="--mobility"):
        parse_mobility("cams@5")
    with pytest.raises(InputError, match="--link"):
        parse_link("cams")
    with pytest.raises(InputError, match="unknown site class"):
        simulate(make_plan(), make_fleet(), duration_s=1, failures=["site:nope@1-2"])
    with pytest.raises(InputError, match="unknown strategy 'magic'"):
        simulate(make_plan(), make_fleet(), duration_s=1, strategies=["magic"])
    w = parse_failure("link:cams#25%@5-15:wait")
    assert (w.kind, w.target, w.share, w.start_s, w.end_s, w.policy) == ("link", "cams", 0.25, 5.0, 15.0, "wait")
    assert parse_mobility("cams:0.5@20-40>1").to_instance == 1


def test_plan_instances_are_a_class_total():
    """The plan's rented instances (a class total) are spread over the sites and priced as that total."""
    plan = make_plan().model_copy(update={"instances": {"bs": 3}})
    rep = simulate(plan, make_fleet(cams=20, bs=2, bs_max=2), strategies=["optimal"], duration_s=5, seed=0)
    opt = rep.strategies["optimal"]
    assert opt.replicas["bs"] == 2  # ceil(3 / 2) servers per base station
    assert opt.cost_per_hour_usd == pytest.approx(3 * 0.5)


def test_cost_counts_instances_and_egress():
    """Cost per hour = instances x replicas x price of computing sites + egress on downlinked bytes."""
    rep = simulate(make_plan(), make_fleet(cams=20, bs=2), duration_s=10, seed=0, replicas={"bs": 3})
    assert rep.strategies["optimal"].cost_per_hour_usd == pytest.approx(2 * 3 * 0.5)
    assert rep.strategies["all-device"].cost_per_hour_usd == 0.0
    cloud = rep.strategies["all-cloud"]
    n_cloud = cloud.replicas["cloud"]
    egress = cloud.requests_ok * 400 / 1e9 * 0.09 * 3600 / 10  # 400-byte results down the backhaul
    assert cloud.cost_per_hour_usd == pytest.approx(n_cloud * 2.0 + egress, rel=1e-6)
    assert np.isfinite(cloud.sinks["labels"].p99_ms)


def test_scenario_is_one_frozen_config_built_from_flag_strings():
    """Scenario.of parses the CLI's strings once; the result is frozen, and simulate() takes it as is."""
    import dataclasses

    from tierplan.simulations.config import Scenario
    sc = Scenario.of(strategies="optimal, all-cloud", duration_s=2, arrivals="periodic:5", failures="site:bs#0@1-2:wait",
                     links={"cams": "4g~0.2"}, batching="4:3", fast=True)
    assert sc.strategies == ("optimal", "all-cloud") and sc.arrivals.kind == "periodic" and sc.engine == "fast"
    assert sc.failures[0].policy == "wait" and sc.links[0].site == "cams" and sc.batching.max_batch == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        sc.seed = 3  # type: ignore[misc]
    with pytest.raises(InputError):
        Scenario.of(duration_s=-1)
    a = simulate(make_plan(), make_fleet(cams=10), sc).to_json()
    b = simulate(make_plan(), make_fleet(cams=10), strategies="optimal,all-cloud", duration_s=2, arrivals="periodic:5",
                 failures=["site:bs#0@1-2:wait"], links={"cams": "4g~0.2"}, batching="4:3", fast=True).to_json()
    for doc in (a, b):
        for s in doc["strategies"].values():
            s.pop("wall_s"), s.pop("sim_requests_per_s")
    assert a == b and set(a["strategies"]) == {"optimal", "all-cloud"}

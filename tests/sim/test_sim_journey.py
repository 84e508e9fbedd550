"""How a plan's placement becomes a request's stages (simulations/journey.py), where it must follow the runtime."""

from __future__ import annotations

import pytest

from tierplan.planner.plan import PlanEdge
from tierplan.simulations.api import plan_fleet, simulate
from tierplan.simulations.journey import compile_journeys

from tests.sim.sim_builders import make_fleet, make_plan


def _journey(plan, fleet_spec):
    fleet = plan_fleet(plan, fleet_spec)
    nodes = {p.id: p for p in plan.pieces}
    [j] = compile_journeys(plan, fleet, lambda origin: dict(plan.assignment), lambda src: ["cams"],
                           lambda src: 5.0, lambda pp, site: float(nodes[pp.id].latency_ms[site]))
    return j


def test_a_frame_sent_to_two_nodes_upstream_crosses_the_link_twice_and_the_first_node_runs_on_the_first_copy():
    """smart-city's legacy_cams send the frame to the detector and to the crops, both on the base station: the
    runtime delivers the two copies one after the other and runs the detector on the first while the second
    travels. As one job behind one 2-copy transfer the simulator started the detector a copy late (+20 ms,
    legacy_cams p50 1.12-1.15x the run's)."""
    plan = make_plan(assign={"det/p0": "bs", "det/p1": "bs", "cls/p0": "bs"})
    plan = plan.model_copy(update={"edges": [*plan.edges, PlanEdge(src="camera", dst="det/p1", nbytes=150_000)]})
    j = _journey(plan, make_fleet())
    compute = [s for s in j.stages if s.kind == "compute"]
    assert [[w.node for w in s.work] for s in compute] == [["det/p0"], ["det/p1", "cls/p0"]]
    first, second = compute
    [up1] = [j.stages[p] for p in first.preds]
    assert up1.kind == "link" and up1.direction == "up" and [w.amount for w in up1.work] == [150_000]
    links = [j.stages[p] for p in second.preds if j.stages[p].kind == "link"]
    assert [[w.amount for w in s.work] for s in links] == [[150_000]]   # its own copy of the frame
    assert first.index in second.preds and links[0].preds == ()          # sent at once, queued behind the first


def test_same_site_nodes_fed_only_from_that_site_stay_one_job():
    j = _journey(make_plan(assign={"det/p0": "bs", "det/p1": "bs", "cls/p0": "bs"}), make_fleet())
    assert [[w.node for w in s.work] for s in j.stages if s.kind == "compute"] == [["det/p0", "det/p1", "cls/p0"]]


def test_the_detector_runs_while_the_second_copy_travels_and_both_engines_agree():
    """Deterministic times, one camera at 1 Hz (no queueing): the request ends det/p0's 4 ms on the base station
    sooner than when det/p0 waits for both copies (the same bytes as one 300 KB transfer to det/p0 alone)."""
    base = make_plan(assign={"det/p0": "bs", "det/p1": "bs", "cls/p0": "bs"}, rate_hz=1.0)
    two_copies = base.model_copy(update={"edges": [*base.edges, PlanEdge(src="camera", dst="det/p1", nbytes=150_000)]})
    one_transfer = base.model_copy(update={"edges": [PlanEdge(src="camera", dst="det/p0", nbytes=300_000),
                                                     *base.edges[1:]]})
    kw = dict(strategies=["optimal"], duration_s=60, seed=3, service_dist="deterministic")

    def p50(plan, fast):
        return simulate(plan, make_fleet(cams=1), fast=fast, **kw).strategies["optimal"].sinks["labels"].p50_ms

    split = p50(two_copies, True)
    assert split == pytest.approx(p50(two_copies, False), rel=0.01)
    assert split == pytest.approx(p50(one_transfer, True) - 4.0, abs=0.5)

"""Latency with overlap for DAG apps (issue #16): branches on different sites run at the same time,
one site runs a request's nodes one at a time in the plan's order; chains keep the sum model."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierplan.planner.api import plan_graph
from tierplan.planner.brute import brute_force, count_assignments
from tierplan.planner.build import SloTarget, build_problem
from tierplan.planner.evaluate import evaluate
from tierplan.planner.formulation import solve
from tierplan.spec import ObjectiveSpec
from planner_fixtures import assert_matches_brute_force, chain_graph, cost_model, random_graph, three_tier_fleet
from test_planner_semantics import _asg, _diamond, _ms

DEVS = ["cam-dev0", "bs-dev", "cloud-dev"]


def _problem(g, model: str = "overlap", **kw):
    return build_problem(g, three_tier_fleet(**kw), cost_model(), weights=ObjectiveSpec(latency=1),
                         queueing=False, latency_model=model)[0]


def test_branches_on_different_sites_overlap() -> None:
    """Diamond a -> (b, c) -> d with c in the cloud: d starts at the later of the two branches
    (b on the device, c's round trip), not after both added up."""
    p = _problem(_diamond(), uplink_mbps=1000.0)
    c = p.classes[0]
    idx = {n.id: i for i, n in enumerate(p.nodes)}
    k = {it.tensors[0]: i for i, it in enumerate(p.items)}
    d = {x: c.compute_us[idx[x]]["cam0"] for x in ("m/p0", "m/p1", "m/p3")}
    cloud = c.compute_us[idx["m/p2"]]["cloud"] + c.xfer_us(k["t2"], "cam0", "cloud") + c.xfer_us(k["u2"], "cloud", "cam0")
    expected = d["m/p0"] + max(d["m/p1"], cloud) + d["m/p3"]
    ev = evaluate(p, _asg(p, {"m/p2": "cloud"}))
    assert ev.classes["cam0"].sink_us[p.sink_nodes[0]] == expected
    summed = evaluate(_problem(_diamond(), "sum", uplink_mbps=1000.0), _asg(p, {"m/p2": "cloud"}))
    assert summed.classes["cam0"].sink_us[p.sink_nodes[0]] == d["m/p0"] + d["m/p1"] + cloud + d["m/p3"]


def test_branches_on_one_site_run_one_at_a_time() -> None:
    """Everything on the device: the overlap model equals the sum (one site, one node at a time)."""
    p = _problem(_diamond())
    c = p.classes[0]
    ev = evaluate(p, _asg(p, {}))
    assert ev.classes["cam0"].sink_us[p.sink_nodes[0]] == sum(c.compute_us[v]["cam0"] for v in p.compute_nodes)


def test_a_sibling_on_the_same_site_delays_a_branch() -> None:
    """Two sinks on two branches, both on the device: the second branch in the plan's order waits for
    the first (which the sum model, counting only what a sink depends on, leaves out)."""
    from planner_fixtures import _add_sink
    g = _diamond()
    g.remove_node("m/p3")
    g.remove_node("sink:out")
    _add_sink(g, "left", "m/p1", "camera")
    _add_sink(g, "right", "m/p2", "camera")
    p = _problem(g)
    c = p.classes[0]
    idx = {n.id: i for i, n in enumerate(p.nodes)}
    ev = evaluate(p, _asg(p, {})).classes["cam0"]
    dev = {x: c.compute_us[idx[x]]["cam0"] for x in ("m/p0", "m/p1", "m/p2")}
    assert ev.sink_us[idx["sink:left"]] == dev["m/p0"] + dev["m/p1"]
    assert ev.sink_us[idx["sink:right"]] == dev["m/p0"] + dev["m/p1"] + dev["m/p2"]


def test_overlap_never_exceeds_the_sum_and_its_breakdown_adds_up() -> None:
    """For every assignment of the diamond: overlap <= sum, and the critical path adds up to the latency."""
    over, summed = _problem(_diamond(), uplink_mbps=5.0), _problem(_diamond(), "sum", uplink_mbps=5.0)
    c = over.classes[0]
    v = over.sink_nodes[0]
    for combo in itertools.product(*(c.allowed[i] for i in range(len(over.nodes)))):
        a = evaluate(over, {"cam0": combo}).classes["cam0"]
        b = evaluate(summed, {"cam0": combo}).classes["cam0"]
        assert a.sink_us[v] <= b.sink_us[v]
        assert sum(a.breakdown_us[v].values()) == a.sink_us[v]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), objective=st.sampled_from(["latency", "cost"]))
def test_cp_sat_matches_brute_force_under_overlap(seed: int, objective: str) -> None:
    """On random DAGs (fan-in, fan-out, transforms, two sinks) CP-SAT's optimum under the overlap
    model equals brute force's under the same semantics, SLOs and queueing included."""
    rnd = random.Random(seed)
    g = random_graph(rnd, DEVS, rnd.choice([3, 4]))
    fleet = three_tier_fleet(uplink_mbps=rnd.choice([1.1, 5.85, 18.88, 100.0]), count=rnd.choice([10, 100]))
    slo = {"out": SloTarget(rnd.choice([80.0, 200.0, 600.0]))}
    problem, _ = build_problem(g, fleet, cost_model(), slo=slo, weights=ObjectiveSpec(**{objective: 1.0}),
                               latency_model="overlap")
    if count_assignments(problem) > 60_000:
        return
    assert_matches_brute_force(problem, solve(problem, 30), brute_force(problem))


def test_overlap_plans_better_on_a_dag_than_the_sum_model() -> None:
    """Latency objective on the diamond: the overlap optimum, evaluated under overlap, is at most the
    sum model's optimum evaluated under overlap (the model the runtime executes)."""
    over = _problem(_diamond(), uplink_mbps=100.0)
    summed = _problem(_diamond(), "sum", uplink_mbps=100.0)
    r_over, r_sum = solve(over, 20), solve(summed, 20)
    assert r_over.status == r_sum.status == "optimal"
    v = over.sink_nodes[0]
    assert (evaluate(over, r_over.assignment).classes["cam0"].sink_us[v]
            <= evaluate(over, r_sum.assignment).classes["cam0"].sink_us[v])


def test_plan_says_which_latency_model() -> None:
    """plan.json's latency_semantics names the model: sum for a chain, overlap for a DAG."""
    fleet = three_tier_fleet(uplink_mbps=18.88)
    chain = plan_graph(chain_graph([_ms(40, 8, 2)] * 3, [20_000, 20_000, 1_000]), fleet, cost_model(),
                       objective="latency", with_baselines=False)
    dag = plan_graph(_diamond(), fleet, cost_model(), objective="latency", with_baselines=False)
    assert chain.latency_semantics.startswith("sum (chains)")
    assert dag.latency_semantics.startswith("overlap (DAGs)")
    assert sum(v for k, v in dag.sinks["out"].breakdown.items() if not k.startswith("site:")) == \
        pytest.approx(dag.sinks["out"].latency_ms, abs=1e-3)

"""plan_graph end to end: baselines, infeasibility messages, coverage, capacity, frontier, replanning."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tierplan.devices.costmodel import CostModel
from tierplan.planner.api import plan_graph
from tierplan.planner.build import SloTarget
from tierplan.planner.plan import Plan
from planner_fixtures import chain_graph, cost_model, three_tier_fleet
from tierplan.errors import InfeasibleError, InputError

DEVS = ("cam-dev0", "bs-dev", "cloud-dev")
DEVS2 = ("cam-dev1",)


def _ms(edge: float, bs: float, cloud: float, edge2: float | None = None) -> dict[str, float]:
    out = dict(zip(DEVS, (edge, bs, cloud)))
    out["cam-dev1"] = edge2 if edge2 is not None else 2 * edge
    return out


def _app(n: int = 4):
    """A chain whose pieces are 10x faster in the cloud; the early tensors are big, the late ones small."""
    return chain_graph([_ms(40, 8, 2) for _ in range(n)], [400_000] + [20_000] * (n - 2) + [1_000],
                       input_bytes=600_000)


def test_plan_is_no_worse_than_any_feasible_baseline() -> None:
    """With the cost objective the optimum costs at most what every feasible baseline costs."""
    plan = plan_graph(_app(), three_tier_fleet(uplink_mbps=20.0), cost_model(), slo={"out": SloTarget(300)},
                      objective="cost")
    assert plan.status == "optimal" and plan.gap == 0.0
    assert set(plan.baselines) == {"all_on_device", "all_in_cloud", "neurosurgeon", "greedy"}
    for b in plan.baselines.values():
        if b.feasible:
            assert plan.cost_per_hour_usd <= b.cost_per_hour_usd + 1e-9
            assert b.objective is not None and plan.objective <= b.objective + 1e-9
    assert plan.sinks["out"].latency_ms <= 300


def _read_text_at(uplink_mbps: float):
    """The read-text example (two sinks, two phone classes) with every edge link's uplink set."""
    from tierplan.devices.fleet import resolve_fleet
    from tierplan.partition.app_graph import build_app_graph
    from tierplan.loader import load_app, load_fleet

    root = Path(__file__).resolve().parents[2] / "examples" / "read-text"
    spec = load_fleet(root / "fleet.yaml")
    edge_links = {s.link for s in spec.sites.values() if s.tier == "edge" and s.link}
    links = {n: (l.model_copy(update={"uplink_mbps": uplink_mbps}) if n in edge_links else l)
             for n, l in spec.links.items()}
    return build_app_graph(load_app(root / "app.yaml"), None), resolve_fleet(spec.model_copy(update={"links": links}))


@pytest.mark.parametrize("uplink_mbps", [5.85, 18.88])
def test_multi_sink_latency_optimum_is_no_worse_than_any_feasible_baseline(uplink_mbps: float) -> None:
    """With several sinks the latency optimum's objective is at most every feasible baseline's, same evaluation."""
    graph, fleet = _read_text_at(uplink_mbps)
    plan = plan_graph(graph, fleet, CostModel(calibration=False), objective="latency", analyse_uncovered=False)
    assert plan.status == "optimal" and len(plan.sinks) >= 2
    feasible = [b for b in plan.baselines.values() if b.feasible]
    assert feasible
    for b in feasible:
        assert b.objective is not None and plan.objective <= b.objective + 1e-6


def test_latency_objective_beats_the_single_split() -> None:
    """Minimising latency, the optimum's latency is at most the best single split point's (Neurosurgeon)."""
    plan = plan_graph(_app(), three_tier_fleet(uplink_mbps=18.88), cost_model(), objective="latency")
    assert plan.latency_ms <= plan.baselines["neurosurgeon"].latency_ms + 1e-9
    assert plan.latency_ms <= plan.baselines["all_on_device"].latency_ms + 1e-9


def test_unmeetable_slo_says_what_is_achievable() -> None:
    """An SLO below the best possible latency still gives a plan, at the best latency there is, and
    lists the class as not met with its best p95 and the placement reaching it."""
    plan = plan_graph(_app(), three_tier_fleet(), cost_model(), slo={"out": SloTarget(5)})
    assert plan.slo_met is False and [x["edge_class"] for x in plan.not_met] == ["cam0"]
    miss = plan.not_met[0]
    assert re.search(r"SLO 5 ms for sink 'out' cannot be met on cam0: the best possible p95 is [\d.]+ ms \(",
                     str(miss["why"]))
    # planned at the best latency it can reach (not the cheapest placement at any latency)
    assert float(miss["planned_ms"]) == pytest.approx(float(miss["best_alone_ms"]), abs=0.01)
    assert plan.coverage["cam0"].latency_ms <= min(b.latency_ms for b in plan.baselines.values()) + 1e-6


def test_compute_capacity_binding_is_named() -> None:
    """When the cloud cannot host the load within max_instances, the diagnosis (from the solver's
    assumption literals) names the compute capacity that binds, in the fleet's own figures."""
    g = chain_graph([_ms(400, 300, 2) for _ in range(2)], [1_000, 1_000], input_bytes=1_000)
    fleet = three_tier_fleet(uplink_mbps=100.0, count=5000, cloud_instances=1, bs_instances=1)
    with pytest.raises(InfeasibleError) as err:
        plan_graph(g, fleet, cost_model(), slo={"out": SloTarget(150)}, max_coverage=False)
    msg = str(err.value)
    assert "compute capacity at cloud (at most 1 instances)" in msg and "the least it would take" in msg
    assert re.search(r"the fleet serves [\d,]+ (but not [\d,]+ )?of the 5,000 cam0 devices|serves at most", msg)
    # every device's own capacity binds too (all on the device would need 160% of each camera)
    assert "compute capacity of the cam0 devices" in msg


def test_coverage_per_class_and_what_the_rest_needs() -> None:
    """A slow class on a slow link is not-met with a note of what it would need; the share counts devices."""
    g = chain_graph([_ms(40, 8, 2, edge2=100) for _ in range(3)], [200_000, 20_000, 1_000], input_bytes=600_000)
    fleet = three_tier_fleet(uplink_mbps=0.13, n_edge=2, count=100)
    plan = plan_graph(g, fleet, cost_model(), slo={"out": SloTarget(400)})
    assert plan.coverage["cam0"].meets_slo and plan.coverage["cam0"].mode == "on-device"
    assert not plan.coverage["cam1"].meets_slo and plan.coverage["cam1"].mode == "not-met"
    assert "would need" in plan.coverage["cam1"].note
    assert plan.coverage_share == pytest.approx(100 / 300)
    assert "on 33% of devices" in plan.coverage_summary


def test_instances_grow_with_the_fleet_but_variables_do_not() -> None:
    """Ten times the devices rents more instances; the plan is still per class (same per_class keys)."""
    g = chain_graph([_ms(400, 30, 3) for _ in range(2)], [1_000, 1_000], input_bytes=1_000)
    small = plan_graph(g, three_tier_fleet(uplink_mbps=100.0, count=100, cloud_instances=50), cost_model(),
                       slo={"out": SloTarget(250)})
    big = plan_graph(g, three_tier_fleet(uplink_mbps=100.0, count=1000, cloud_instances=50), cost_model(),
                     slo={"out": SloTarget(250)})
    assert list(small.per_class) == list(big.per_class) == ["cam0"]
    assert sum(big.instances.values()) > sum(small.instances.values())
    assert big.cost_per_hour_usd > small.cost_per_hour_usd


def test_pareto_frontier_trades_cost_for_latency() -> None:
    """Along the frontier, lower mean latency never costs less."""
    plan = plan_graph(_app(), three_tier_fleet(uplink_mbps=100.0), cost_model(), slo={"out": SloTarget(400)},
                      objective="cost", pareto=True, pareto_points=4)
    pts = plan.pareto
    assert len(pts) >= 2
    for a, b in zip(pts, pts[1:]):
        assert a.latency_ms <= b.latency_ms and a.cost_per_hour_usd >= b.cost_per_hour_usd


def test_replanning_lists_the_pieces_that_move() -> None:
    """Same fleet: nothing moves; a degraded uplink: the moved pieces are listed with old and new sites."""
    g = _app()
    old = plan_graph(g, three_tier_fleet(uplink_mbps=100.0), cost_model(), objective="latency")
    same = plan_graph(g, three_tier_fleet(uplink_mbps=100.0), cost_model(), objective="latency", from_plan=old)
    assert same.moves == []
    worse = plan_graph(g, three_tier_fleet(uplink_mbps=0.13), cost_model(), objective="latency", from_plan=old)
    assert worse.moves
    for m in worse.moves:
        assert old.per_class[m.edge_class][m.piece] == m.from_site
        assert worse.per_class[m.edge_class][m.piece] == m.to_site != m.from_site


def test_plan_json_carries_the_documented_fields(tmp_path) -> None:
    """plan.json has DESIGN.md's fields, the pieces and edges runtime/ needs, and loads back unchanged."""
    plan = plan_graph(_app(), three_tier_fleet(), cost_model(), slo={"out": SloTarget(500)})
    path = tmp_path / "plan.json"
    plan.save(path)
    data = json.loads(path.read_text())
    for key in ("status", "objective", "gap", "assignment", "sinks", "cost_per_hour_usd", "baselines", "solve_s"):
        assert key in data
    assert set(data["sinks"]["out"]) >= {"latency_ms", "breakdown"}
    assert set(data["baselines"]["greedy"]) >= {"latency_ms", "cost_per_hour_usd"}
    piece = next(p for p in data["pieces"] if p["id"] == "m/p0")
    assert piece["outputs"][0]["nbytes"] == 400_000 and set(piece["latency_ms"]) >= {"cam0", "bs", "cloud"}
    assert {(e["src"], e["dst"]) for e in data["edges"]} >= {("camera", "m/p0"), ("m/p3", "sink:out")}
    assert Plan.load(path) == plan


def test_unknown_slo_sink_is_bad_input() -> None:
    """An SLO naming no sink of the app is an InputError (exit 2) naming it."""
    with pytest.raises(InputError, match="unknown sink 'nope'"):
        plan_graph(_app(), three_tier_fleet(), cost_model(), slo={"nope": SloTarget(100)})


def test_inline_devices_are_named_in_site_devices() -> None:
    """Every site class maps to its device's name, inline (fleet-declared) devices included."""
    plan = plan_graph(_app(), three_tier_fleet(uplink_mbps=20.0, n_edge=2), cost_model(), objective="latency")
    assert plan.site_devices == {"cam0": "cam-dev0", "cam1": "cam-dev1", "bs": "bs-dev", "cloud": "cloud-dev"}

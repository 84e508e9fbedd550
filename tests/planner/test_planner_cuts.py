"""Cuts chosen with the placement (issue #16): candidate segments, max_pieces after the choice."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from tierplan.devices.fleet import resolve_fleet
from tierplan.loader import load_app
from tierplan.partition.app_graph import build_app_graph
from tierplan.planner.api import plan_app, plan_graph
from tierplan.planner.brute import brute_force
from tierplan.planner.build import SloTarget, build_problem
from tierplan.planner.evaluate import evaluate
from tierplan.planner.formulation import solve
from tierplan.spec import FleetSpec
from planner_fixtures import assert_matches_brute_force, chain_graph, cost_model, three_tier_fleet

DATA = Path(__file__).resolve().parent / "data"


def _phone_cloud(uplink_mbps: float) -> FleetSpec:
    """A phone class (Raspberry Pi 4 class CPU) offloading to a cloud GPU over one link, as Neurosurgeon."""
    return FleetSpec.model_validate({
        "name": "client-server",
        "sites": {"phones": {"tier": "edge", "device": "rpi4", "count": 10, "attach": "server", "link": "wifi"},
                  "server": {"tier": "cloud", "device": "aws-g5-xlarge", "max_instances": 4}},
        "links": {"wifi": {"uplink_mbps": uplink_mbps, "downlink_mbps": max(uplink_mbps, 1.0), "rtt_ms": 10}}})


@pytest.mark.parametrize("uplink_mbps", [5.85] + [pytest.param(u, marks=pytest.mark.slow)
                                                   for u in (0.13, 1.1, 18.88, 1000.0)])
def test_chain_profile_reaches_the_per_layer_optimum(uplink_mbps: float) -> None:
    """With default settings (max_pieces 8) the 24-layer AlexNet profile plans exactly as well as with
    one piece per layer: the cuts are chosen with the placement, not beforehand by bytes."""
    app = load_app(DATA / "alexnet24_app.yaml")
    fleet = _phone_cloud(uplink_mbps)
    default = plan_app(app, fleet, objective="latency", cost_model=cost_model(), time_limit_s=10)
    per_layer = plan_graph(build_app_graph(app, None, max_pieces=24), resolve_fleet(fleet), cost_model(),
                           objective="latency", with_baselines=False)
    assert default.status == per_layer.status == "optimal"
    # equal up to the microsecond rounding of merged layers (each layer's time is rounded on its own)
    assert default.objective == pytest.approx(per_layer.objective, abs=0.03)
    pieces = [p for p in default.pieces if p.kind == "piece"]
    assert 1 <= len(pieces) <= 8 and all(p.id in default.assignment for p in pieces)
    # the older behaviour (cut beforehand at the cheapest cuts) is never better
    before = plan_app(app, fleet, objective="latency", cost_model=cost_model(), segments=None, time_limit_s=10)
    assert before.objective >= default.objective - 0.03


def _segmented(rnd: random.Random, n: int, max_pieces: int):
    """A chain of n segments of one model whose pieces are bounded by max_pieces."""
    ms = [{"cam-dev0": rnd.uniform(5, 60), "bs-dev": rnd.uniform(1, 10), "cloud-dev": rnd.uniform(0.5, 5)}
          for _ in range(n)]
    g = chain_graph(ms, [rnd.choice([1_000, 40_000, 300_000]) for _ in range(n)], input_bytes=600_000)
    g.graph["segments"] = {"m": {"cuts": tuple(range(1, n)), "max_pieces": max_pieces}}
    return g


@pytest.mark.slow   # CP-SAT against brute force on 6 seeds (about 40 s on 2 cores)
@pytest.mark.parametrize("seed", range(6))
def test_max_pieces_bound_matches_brute_force(seed: int) -> None:
    """CP-SAT with the piece bound (cuts where any class's consecutive segments run apart, at most
    max_pieces - 1) equals brute force over every assignment under the same bound."""
    rnd = random.Random(seed)
    g = _segmented(rnd, 5, rnd.choice([1, 2, 3]))
    fleet = three_tier_fleet(uplink_mbps=rnd.choice([5.85, 18.88, 100.0]), n_edge=rnd.choice([1, 2]))
    problem, _ = build_problem(g, fleet, cost_model(), slo={"out": SloTarget(rnd.choice([150.0, 400.0]))},
                               weights=None)
    problem = problem.with_objective(*rnd.choice([("cost", 1, 0, 0), ("latency", 0, 1, 0)]))
    assert problem.segments and problem.segments[0].binds
    r = solve(problem, 20)
    assert_matches_brute_force(problem, r, brute_force(problem))
    if r.assignment:
        used = problem.cuts_used(r.assignment)["m"]
        assert len(used) + 1 <= problem.segments[0].max_pieces


def test_regrouped_plan_has_the_chosen_pieces_and_the_same_figures() -> None:
    """plan_app extracts the chosen segments as the plan's pieces: consecutive segments on one site
    are one piece, and the plan's figures are those of the segment plan (profile times add up)."""
    app = load_app(DATA / "alexnet24_app.yaml")
    fleet = _phone_cloud(5.85)
    plan = plan_app(app, fleet, objective="latency", cost_model=cost_model())
    pieces = [p for p in plan.pieces if p.kind == "piece"]
    sites = [plan.assignment[p.id] for p in pieces]
    assert all(a != b for a, b in zip(sites, sites[1:]))       # merged: neighbours run apart
    assert sum(len(p.outputs) >= 1 for p in pieces) == len(pieces)
    assert plan.sinks["labels"].latency_ms == pytest.approx(plan.objective, abs=1e-6)


def test_inf_latency_means_cannot_run_there(tmp_path: Path) -> None:
    """A profile layer with latency_ms .inf on a device is never placed there (no crash), and the
    plan lists no .inf figure."""
    text = (DATA / "alexnet24_app.yaml").read_text()
    app_path = tmp_path / "app.yaml"
    app_path.write_text(text.replace("      - name: fc6\n", "      - name: fc6\n        latency_ms: {rpi4: .inf}\n"))
    app = load_app(app_path)
    fleet = _phone_cloud(5.85)
    graph = build_app_graph(app, None, segments=64)
    problem, info = build_problem(graph, resolve_fleet(fleet), cost_model())
    fc6 = next(i for i, n in enumerate(info.order) if graph.nodes[n].get("kind") == "piece"
               and graph.nodes[n]["piece"].nodes == ("fc6",))
    assert problem.classes[0].allowed[fc6] == ("server",)
    plan = plan_app(app, fleet, objective="latency", cost_model=cost_model())
    assert plan.status == "optimal" and "server" in plan.assignment.values()
    for p in plan.pieces:
        assert all(math.isfinite(v) for v in p.latency_ms.values())


def test_evaluate_counts_pieces_over_the_bound() -> None:
    """The reference semantics flag a placement needing more pieces than max_pieces."""
    g = _segmented(random.Random(1), 4, 1)
    problem, _ = build_problem(g, three_tier_fleet(), cost_model())
    sites = list(problem.classes[0].allowed)
    asg = {"cam0": tuple(s[0] if i != 2 else s[-1] for i, s in enumerate(sites))}
    assert any("pieces of m" in v for v in evaluate(problem, asg).violations)


@pytest.mark.parametrize("value", [".nan", "-.inf", "-1"])
def test_other_non_finite_latencies_are_refused_at_load(tmp_path: Path, value: str) -> None:
    """Only .inf means 'cannot run there': .nan, -.inf (and non-positive figures) are refused when
    app.yaml is loaded, naming the YAML path."""
    from tierplan.errors import InputError
    text = (DATA / "alexnet24_app.yaml").read_text()
    app_path = tmp_path / "app.yaml"
    app_path.write_text(text.replace("      - name: fc6\n", f"      - name: fc6\n        latency_ms: {{rpi4: {value}}}\n"))
    with pytest.raises(InputError) as err:
        load_app(app_path)
    assert "latency_ms" in str(err.value) and "rpi4" in str(err.value)

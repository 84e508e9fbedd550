"""Replanning from an old plan (`tierplan plan --from`, planner.adaptpolicy.Replanner): the warm start
and the moves compare the plans segment by segment, since each plan merges the candidate segments
into its own pieces (a piece id of one plan names other layers than the same id of another)."""

from __future__ import annotations

from pathlib import Path

from tierplan.devices.fleet import resolve_fleet
from tierplan.loader import load_app
from tierplan.partition.app_graph import build_app_graph
from tierplan.partition.candidates import DEFAULT_SEGMENTS
from tierplan.planner.adaptpolicy import moves_of
from tierplan.planner.api import _hint, plan_app
from tierplan.planner.build import build_problem
from tierplan.planner.plan import Plan
from planner_fixtures import cost_model, twin_app_yaml
from test_planner_cuts import DATA, _phone_cloud


def _plan(uplink_mbps: float, from_plan: Plan | None = None) -> Plan:
    return plan_app(load_app(DATA / "alexnet24_app.yaml"), _phone_cloud(uplink_mbps), objective="latency",
                    cost_model=cost_model(), time_limit_s=10, from_plan=from_plan)


def _saved(plan: Plan, tmp_path: Path) -> Plan:
    plan.save(tmp_path / "old.json")
    return Plan.load(tmp_path / "old.json")


def test_each_plan_records_the_segments_its_pieces_join(tmp_path: Path) -> None:
    """The merged pieces of two plans cut differently cover the same 24 segments, in order."""
    a, b = _plan(5.85), _plan(1000.0)
    seq = []
    for plan in (a, b):
        pieces = [p for p in plan.pieces if p.kind == "piece"]
        assert len(pieces) < 24 and all(p.segments for p in pieces)
        seq.append([x for p in pieces for x in p.segments])
    assert seq[0] == seq[1] and len(seq[0]) == 24 == len(set(seq[0]))
    assert _saved(a, tmp_path).segment_sites() == a.segment_sites()


def test_replanning_an_unchanged_fleet_moves_nothing(tmp_path: Path) -> None:
    old = _saved(_plan(5.85), tmp_path)
    same = _plan(5.85, from_plan=old)
    assert same.moves == [] and moves_of(old, same) == []
    assert same.segment_sites() == old.segment_sites()


def test_replanning_a_changed_uplink_lists_the_segments_that_change_site(tmp_path: Path) -> None:
    """At 1000 Mbit/s instead of 5.85 the layers go to the server: the moves name exactly the segments
    whose site changed, each under the new piece that runs them, with its old and new site."""
    old = _saved(_plan(5.85), tmp_path)
    new = _plan(1000.0, from_plan=old)
    before, after = old.segment_sites()["phones"], new.segment_sites()["phones"]
    changed = {x for x, s in after.items() if before[x] != s}
    assert changed and len(changed) < len(after)
    assert {x for m in new.moves for x in m.segments} == changed
    segs = new.segments_of()
    for m in new.moves:
        assert m.edge_class == "phones" and m.to_site == new.per_class["phones"][m.piece]
        assert set(m.segments) <= set(segs[m.piece])
        assert m.from_site == "+".join(sorted({before[x] for x in m.segments})) != m.to_site
    assert [d["piece"] for d in moves_of(old, new)] == [m.piece for m in new.moves]
    # and back: the moves of the reverse replan cover the same segments
    back = _plan(5.85, from_plan=new)
    assert {x for m in back.moves for x in m.segments} == changed


def test_warm_start_hint_places_each_segment_where_the_old_plan_ran_it() -> None:
    """The hint (the old plan's placement) is read per segment, not per piece id."""
    old = _plan(5.85)
    app = load_app(DATA / "alexnet24_app.yaml")
    graph = build_app_graph(app, None, segments=DEFAULT_SEGMENTS)
    problem, info = build_problem(graph, resolve_fleet(_phone_cloud(1000.0)), cost_model())
    hint = _hint(problem, info, old)["phones"]
    was = old.segment_sites()["phones"]
    for v in problem.compute_nodes:
        assert hint[v] == was[info.order[v]]


def test_two_models_with_the_same_operator_names_keep_their_own_segments(tmp_path: Path) -> None:
    """Two copies of one ONNX model (every operator name shared): each plan piece joins segments of
    its own model only, each model's segments are all covered once, and a piece runs where the
    segment plan ran each of its segments (per class)."""
    model = Path(__file__).resolve().parents[2] / "examples" / "smart-city" / "classifier.onnx"
    (tmp_path / "app.yaml").write_text(twin_app_yaml(model, "crop", [1, 3, 224, 224], dims={"batch": 1}))
    app = load_app(tmp_path / "app.yaml")
    plan = plan_app(app, _phone_cloud(5.85), objective="latency", cost_model=cost_model(), time_limit_s=10)
    segments = build_app_graph(app, None, segments=DEFAULT_SEGMENTS)
    for m in ("a", "b"):
        own = [x for p in plan.pieces if p.model == m for x in p.segments]
        assert all(x.startswith(f"{m}/") for x in own)
        assert sorted(own) == sorted(n for n, d in segments.nodes(data=True) if d.get("model") == m)
    # every segment of a piece ran where the piece runs: re-planning from the plan moves nothing
    same = plan_app(app, _phone_cloud(5.85), objective="latency", cost_model=cost_model(), time_limit_s=10,
                    from_plan=plan)
    assert same.moves == [] and same.segment_sites() == plan.segment_sites()

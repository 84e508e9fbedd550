"""Cut refinement (planner.refine, issue #16): finer candidate cuts around the chosen ones.

The fast tests check the windows a round adds; the slow one plans read-text for cost, where the
16 default candidates per model put the orientation classifier's cut one instance of the base
stations' T4 too early (17.48 $/h) and refinement finds the cut the 48-candidate optimum uses.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tierplan.devices.costmodel import CostModel
from tierplan.loader import load_app, load_fleet
from tierplan.partition.app_graph import build_app_graph
from tierplan.partition.candidates import DEFAULT_SEGMENTS
from tierplan.planner.api import plan_app
from tierplan.planner.measured import plan_pieces_graph
from tierplan.planner.refine import WINDOW, _bounds, _windows

REPO = Path(__file__).resolve().parents[2]


def test_a_round_adds_the_nearest_candidates_between_the_default_neighbours() -> None:
    """Around a chosen cut the round adds the WINDOW candidates nearest to it, strictly between the
    default candidates on either side, and keeps every candidate it had."""
    default = (10, 20, 30)
    every = tuple(range(1, 40))
    grown = _windows(default, default, every, (20,))
    added = sorted(set(grown) - set(default))
    assert set(default) <= set(grown) and len(added) == WINDOW
    assert all(10 < q < 30 for q in added)
    assert max(abs(q - 20) for q in added) <= (WINDOW + 1) // 2
    # a cut at the model's last default candidate: the window runs to the model's end
    assert _bounds(default, 30) == (20, float("inf"))
    tail = set(_windows(default, default, every, (30,))) - set(default)
    assert len(tail) == WINDOW and all(q > 20 for q in tail) and max(abs(q - 30) for q in tail) <= (WINDOW + 1) // 2
    # nothing left to add: the candidates come back unchanged
    assert _windows(default, default, default, (20,)) == default


@pytest.mark.slow   # three plans of read-text (about 30 s on 2 shared cores)
def test_refinement_lowers_the_read_text_cost_and_keeps_segments_whole(tmp_path: Path) -> None:
    """read-text for cost: the refined plan is cheaper than the optimum on the default candidates
    (the first round's 'before'), is no dearer than the plan on 48 candidates per model, and lists
    each default segment of each model in exactly one piece; plan.cuts rebuilds its pieces."""
    app = load_app(REPO / "examples" / "read-text" / "app.yaml")
    fleet = load_fleet(REPO / "examples" / "read-text" / "fleet.yaml")
    cm = CostModel(calibration=False)
    plan = plan_app(app, fleet, objective="cost", cost_model=cm, pieces_dir=tmp_path, time_limit_s=20)
    assert plan.refine, "a cut was chosen, so at least one round ran"
    assert plan.refine[0]["after"] < plan.refine[0]["before"], plan.refine
    finer = plan_app(app, fleet, objective="cost", cost_model=cm, pieces_dir=tmp_path, time_limit_s=40, segments=48)
    assert plan.objective <= finer.objective * 1.01, (plan.objective, finer.objective)
    default = build_app_graph(app, tmp_path, segments=DEFAULT_SEGMENTS)
    for model in default.graph["segments"]:
        listed = [x for p in plan.pieces if p.model == model for x in p.segments]
        assert sorted(listed) == sorted(n for n, a in default.nodes(data=True) if a.get("model") == model), model
    assert sorted(plan_pieces_graph(plan).nodes) == sorted(p.id for p in plan.pieces)

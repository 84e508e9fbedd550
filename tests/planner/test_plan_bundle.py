"""plan.json is self-contained: it embeds the app and the resolved fleet, its paths are relative to
its folder, and its pieces travel with it, so a plan folder moved elsewhere reads back the same."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tierplan.devices.fleet import resolve_fleet
from tierplan.errors import InputError
from tierplan.loader import load_app, load_fleet
from tierplan.planner.api import plan_app
from tierplan.planner.plan import Plan

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "smart-city"


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Plan]:
    """smart-city copied to a temp folder and planned into out/plan.json there."""
    root = tmp_path_factory.mktemp("bundle") / "first"
    shutil.copytree(EXAMPLE, root)
    app, fleet = load_app(root / "app.yaml"), load_fleet(root / "fleet.yaml")
    plan = plan_app(app, fleet, time_limit_s=10.0)
    plan = plan.model_copy(update={"app_path": str(root / "app.yaml"), "fleet_path": str(root / "fleet.yaml")})
    (root / "out").mkdir()
    plan.save(root / "out" / "plan.json")
    return root, plan


@pytest.mark.slow   # takes seconds: kept out of the fast lane (under 3 min); the full suite runs it
def test_paths_on_disk_are_relative_to_the_plan(planned: tuple[Path, Plan]) -> None:
    """No absolute path is written: inputs, models and piece files are relative to plan.json's folder."""
    root, _ = planned
    raw = json.loads((root / "out" / "plan.json").read_text())
    assert raw["app_path"] == "../app.yaml" and raw["fleet_path"] == "../fleet.yaml"
    assert raw["app"]["models"]["detector"]["onnx"] == "../detector.onnx"
    files = [p["file"] for p in raw["pieces"] if p.get("file")]
    assert files and all(f.startswith("pieces/") for f in files)


@pytest.mark.slow   # takes seconds: kept out of the fast lane (under 3 min); the full suite runs it
def test_a_moved_plan_folder_reads_back_identically(planned: tuple[Path, Plan], tmp_path: Path) -> None:
    """Moving the whole folder to another depth: same fleet, same app, same piece bytes, every path found."""
    root, plan = planned
    before = Plan.load(root / "out" / "plan.json")
    moved = tmp_path / "a" / "b" / "moved"
    shutil.copytree(root, moved)
    after = Plan.load(moved / "out" / "plan.json")
    assert after.fleet_spec() == before.fleet_spec() == resolve_fleet(load_fleet(root / "fleet.yaml")).to_spec()
    assert after.assignment == before.assignment == plan.assignment
    a_app, b_app = after.app_spec(), before.app_spec()
    for name, m in a_app.models.items():
        src = a_app.resolve_path(m.onnx or "")
        assert src.is_file() and str(src).startswith(str(moved))
        assert src.read_bytes() == b_app.resolve_path(b_app.models[name].onnx or "").read_bytes()
    for p, q in zip(after.pieces, before.pieces):
        assert (p.file is None) == (q.file is None)
        if p.file and q.file:
            assert p.file.startswith(str(moved)) and Path(p.file).read_bytes() == Path(q.file).read_bytes()


@pytest.mark.slow   # takes seconds: kept out of the fast lane (under 3 min); the full suite runs it
def test_the_fleet_model_needs_no_catalog(planned: tuple[Path, Plan]) -> None:
    """The embedded fleet rebuilds with an empty catalog: every device is inline, routes as planned."""
    root, _ = planned
    fleet = Plan.load(root / "out" / "plan.json").fleet_model()
    assert fleet.edge_classes() == ["traffic_cams", "transit_cams", "street_cams", "legacy_cams"]
    up = fleet.route("legacy_cams", fleet.parents("legacy_cams")[-1])
    assert [d for _, d in up] == ["up", "up"]
    assert fleet.resolve_pin("legacy_cams", "base_station") == fleet.parents("legacy_cams")[0]


def test_a_plan_without_embedded_inputs_says_what_to_do(tmp_path: Path) -> None:
    """A plan from an older tierplan (no embedded fleet) fails with one line that says to re-plan."""
    old = Plan(status="optimal")
    old.save(tmp_path / "plan.json")
    with pytest.raises(InputError, match=r"no embedded fleet.*re-run `tierplan plan"):
        Plan.load(tmp_path / "plan.json").fleet_model()

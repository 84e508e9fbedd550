"""The bundled examples load, validate against the device catalog, and their model files run."""

from __future__ import annotations

import numpy as np
import pytest

from examples_support import EXAMPLES, session
from tierplan.loader import load_app, load_fleet

EXAMPLE_NAMES = ("read-text", "smart-city")


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_validates_against_catalog(name):
    """Each example's app.yaml and fleet.yaml pass the second validation pass with no problem."""
    from tierplan.devices.catalog import load_catalog
    from tierplan.validate import validate
    app_path, fleet_path = EXAMPLES / name / "app.yaml", EXAMPLES / name / "fleet.yaml"
    problems = validate(load_app(app_path), load_fleet(fleet_path), app_path=app_path, fleet_path=fleet_path,
                        catalog=load_catalog())
    assert problems == []


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_fleet_devices_are_catalog_devices(name):
    """Every site class names a catalog device or declares one inline, and the fleet resolves to all three tiers."""
    from tierplan.devices.catalog import load_catalog
    from tierplan.devices.fleet import resolve_fleet
    from tierplan.spec import DeviceSpec
    fleet = load_fleet(EXAMPLES / name / "fleet.yaml")
    catalog = load_catalog()
    named = {s.device for s in fleet.sites.values() if isinstance(s.device, str)}
    inline = [s.device for s in fleet.sites.values() if not isinstance(s.device, str)]
    assert named and named <= set(catalog)
    assert all(isinstance(d, DeviceSpec) and d.name not in catalog for d in inline)
    resolved = resolve_fleet(fleet)
    assert {c.tier for c in resolved.classes.values()} == {"edge", "base_station", "cloud"}


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_cli_validate_exits_zero(name, capsys):
    """`tierplan validate APP --fleet FLEET` accepts each bundled example (exit code 0)."""
    from tierplan.cli import main
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(EXAMPLES / name / "app.yaml"), "--fleet", str(EXAMPLES / name / "fleet.yaml")])
    assert exc.value.code == 0, capsys.readouterr().err


def test_fleet_scale_matches_the_brief():
    """read-text has thousands of phones of two kinds; smart-city thousands of cameras of three kinds,
    50+ base stations and two cloud regions."""
    rt = load_fleet(EXAMPLES / "read-text" / "fleet.yaml")
    phones = [s for s in rt.sites.values() if s.tier == "edge"]
    assert len(phones) == 2 and sum(s.count for s in phones) >= 1000
    sc = load_fleet(EXAMPLES / "smart-city" / "fleet.yaml")
    by_tier = {t: [s for s in sc.sites.values() if s.tier == t] for t in ("edge", "base_station", "cloud")}
    kinds = {s.device if isinstance(s.device, str) else s.device.name for s in by_tier["edge"]}
    assert len(kinds) >= 3 and sum(s.count for s in by_tier["edge"]) >= 1000
    assert sum(s.count for s in by_tier["base_station"]) >= 50
    assert len(by_tier["cloud"]) == 2


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_every_model_runs_at_its_bound_dims(name):
    """Each model file loads in onnxruntime and runs on zeros shaped by its `dims` binding."""
    from tierplan.partition.onnx_graph import load_onnx
    app = load_app(EXAMPLES / name / "app.yaml")
    for model_name, m in app.models.items():
        path = app.resolve_path(m.onnx)
        assert path.is_file(), f"{model_name}: {path} missing"
        graph = load_onnx(path, m.dims)
        feeds = {t.name: np.zeros(t.shape, t.dtype) for t in graph.graph["inputs"]}
        outs = session(path).run(None, feeds)
        assert [o.shape for o in outs] == [tuple(t.shape) for t in graph.graph["outputs"]], model_name


def test_committed_models_are_small():
    """Models committed to the repository stay at or below 15 MB each."""
    files = list(EXAMPLES.rglob("*.onnx"))
    assert files and all(f.stat().st_size <= 15_000_000 for f in files)


def test_vad_model_has_no_control_flow(read_text_app):
    """The read-text VAD variant has no If/Loop/Scan nodes (partitionable, compilable by TVM)."""
    import onnx
    model = onnx.load(str(read_text_app.resolve_path(read_text_app.models["vad"].onnx)))
    assert not {n.op_type for n in model.graph.node} & {"If", "Loop", "Scan"}


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_transform_output_shapes_match_consumers(name):
    """A transform's declared output_shape equals the input shape of the model it feeds."""
    from tierplan.partition.onnx_graph import load_onnx
    app = load_app(EXAMPLES / name / "app.yaml")
    inputs = {n: {t.name: t.shape for t in load_onnx(app.resolve_path(m.onnx), m.dims).graph["inputs"]}
              for n, m in app.models.items()}
    checked = 0
    for e in app.edges:
        if e.src in app.transforms and e.dst in app.models and app.transforms[e.src].output_shape:
            want = app.transforms[e.src].output_shape
            got = [inputs[e.dst][dst] for dst in e.tensors.values()]
            assert tuple(want) in [tuple(g) for g in got], (e.src, e.dst, want, got)
            checked += 1
    assert checked >= 1


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_joins_into_an_app_graph(name, tmp_path):
    """partition.build_app_graph accepts each example: every edge resolves and every model input is fed."""
    from tierplan.partition.app_graph import build_app_graph
    app = load_app(EXAMPLES / name / "app.yaml")
    g = build_app_graph(app, tmp_path, max_pieces=1)
    kinds = {d["kind"] for _, d in g.nodes(data=True)}
    assert kinds == {"source", "piece", "transform", "sink"}
    assert {f"sink:{s}" for s in app.sinks} <= set(g)
    assert g.graph["unfed_inputs"] == []
    fanned = [n for n, d in g.nodes(data=True) if d.get("rate_factor", 1) > 1]
    assert fanned, "the crop transform's fan-out multiplies the rate of what follows it"


@pytest.mark.slow   # plans every bundled example (CP-SAT with refinement, 3-7 s each)
@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_has_a_plan_meeting_its_slo_everywhere(name, tmp_path):
    """Each bundled example is plannable: CP-SAT finds a placement meeting every SLO on every edge class."""
    from tierplan.planner.api import plan_app
    app = load_app(EXAMPLES / name / "app.yaml")
    plan = plan_app(app, load_fleet(EXAMPLES / name / "fleet.yaml"), pieces_dir=tmp_path, time_limit_s=20)
    assert plan.status in ("optimal", "feasible"), plan.reason
    assert plan.coverage and all(c.meets_slo for c in plan.coverage.values()), plan.coverage
    assert set(plan.sinks) == set(app.sinks)

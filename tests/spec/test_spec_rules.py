"""Each named cross-field rule of the specs, checked directly on the pydantic models by its message."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tierplan.spec import (AppSpec, DeviceSpec, FleetSpec, ModelSpec, ObjectiveSpec, ProfileTable,
                           SiteClassSpec, SourceSpec, TransformSpec, did_you_mean)

DEVICE = dict(name="box", tier="cloud", peak_gflops={"fp32": 100.0}, memory_gb=16, memory_bandwidth_gbps=100,
              power_idle_w=10, power_active_w=100)
LINK = dict(uplink_mbps=10, downlink_mbps=40, rtt_ms=50)


def app(**over) -> dict:
    """A valid app as a dict, with top-level keys replaced by `over`."""
    base = dict(models={"det": {"onnx": "det.onnx"}, "cls": {"onnx": "cls.onnx"}},
                sources={"cam": {"at": "edge", "rate_hz": 5, "shape": [1, 3, 8, 8]}},
                edges=[{"from": "cam", "to": "det"}, {"from": "det", "to": "cls"}],
                sinks={"label": {"from": "cls"}}, slo=[{"sink": "label", "latency_ms": 100}])
    base.update(over)
    return base


def fleet(**sites) -> dict:
    """A valid three-tier fleet as a dict, with site classes replaced by `sites`."""
    base = {"phones": dict(tier="edge", device="pixel-8", count=10, attach="cells", link="lte"),
            "cells": dict(tier="base_station", device="mec-t4", attach="region", link="lte"),
            "region": dict(tier="cloud", device=DEVICE)}
    base.update(sites)
    return dict(sites=base, links={"lte": LINK})


def test_valid_app_and_fleet_construct():
    """The baseline app and fleet used below are valid."""
    a = AppSpec.model_validate(app())
    f = FleetSpec.model_validate(fleet())
    assert a.weights == ObjectiveSpec(cost=1.0) and f.tiers() == {"edge", "base_station", "cloud"}


def test_check_unique_names():
    """A transform may not reuse a model's name."""
    with pytest.raises(ValidationError, match=r"transforms\.det: name already used in models"):
        AppSpec.model_validate(app(transforms={"det": {"function": "m:f"}}))


def test_check_edge_ends_unknown_node_with_suggestion():
    """An edge to an undeclared node names the edge and suggests the closest node."""
    with pytest.raises(ValidationError, match=r"edges\[1\]\.to: unknown node 'clss'; did you mean 'cls'\?"):
        AppSpec.model_validate(app(edges=[{"from": "cam", "to": "det"}, {"from": "det", "to": "clss"}]))


def test_check_edge_ends_into_source():
    """Nothing may flow into a source."""
    with pytest.raises(ValidationError, match=r"edges\[2\]\.to: 'cam' is a source"):
        AppSpec.model_validate(app(edges=app()["edges"] + [{"from": "det", "to": "cam"}]))


def test_check_acyclic():
    """A cycle in the data-flow graph is reported with its path."""
    with pytest.raises(ValidationError, match=r"edges: the data-flow graph has a cycle \(det -> cls -> det\)"):
        AppSpec.model_validate(app(edges=app()["edges"] + [{"from": "cls", "to": "det"}]))


def test_check_every_node_fed():
    """A model without an input edge, and a source that feeds nothing, are both reported."""
    with pytest.raises(ValidationError) as e:
        AppSpec.model_validate(app(models={**app()["models"], "extra": {"onnx": "x.onnx"}},
                                   sources={**app()["sources"], "mic": {"at": "edge", "rate_hz": 1, "shape": [1]}}))
    assert "models.extra: nothing feeds 'extra'" in str(e.value)
    assert "sources.mic: source 'mic' feeds nothing" in str(e.value)


def test_check_duplicate_edges():
    """The same (from, to) pair twice is reported against the second edge."""
    with pytest.raises(ValidationError, match=r"edges\[2\]: duplicate of edges\[1\]"):
        AppSpec.model_validate(app(edges=app()["edges"] + [{"from": "det", "to": "cls"}]))


def test_check_sinks():
    """A sink must take a model's or a transform's output, not a source's."""
    with pytest.raises(ValidationError, match=r"sinks\.label\.from: 'cam' is a source"):
        AppSpec.model_validate(app(sinks={"label": {"from": "cam"}}))


def test_check_slo_unknown_and_duplicate():
    """An SLO names a declared sink, and a sink has one SLO per percentile."""
    with pytest.raises(ValidationError) as e:
        AppSpec.model_validate(app(slo=[{"sink": "lable", "latency_ms": 1},
                                        {"sink": "label", "latency_ms": 1}, {"sink": "label", "latency_ms": 2}]))
    assert "slo[0].sink: unknown sink 'lable'; did you mean 'label'?" in str(e.value)
    assert "slo[2]: duplicate of slo[1] (sink label, p95)" in str(e.value)


def test_all_app_rules_reported_together():
    """Several broken rules in one app come out in one error."""
    with pytest.raises(ValidationError) as e:
        AppSpec.model_validate(app(sinks={"label": {"from": "nobody"}}, slo=[{"sink": "x", "latency_ms": 1}],
                                   transforms={"det": {"function": "m:f"}}))
    text = str(e.value)
    assert "sinks.label.from" in text and "slo[0].sink" in text and "transforms.det" in text


def test_check_exactly_one_source():
    """A model is exactly one of onnx, tflite or profile."""
    with pytest.raises(ValidationError, match="a model needs exactly one of `onnx`, `tflite` or `profile` \\(got onnx, tflite\\)"):
        ModelSpec(onnx="a.onnx", tflite="a.tflite")
    with pytest.raises(ValidationError, match="a model needs exactly one of"):
        ModelSpec()


def test_profile_table_rules():
    """Profile layers have unique names and take inputs only from earlier layers."""
    with pytest.raises(ValidationError) as e:
        ProfileTable(input_bytes=10, layers=[{"name": "a", "output_bytes": 1},
                                             {"name": "a", "output_bytes": 1},
                                             {"name": "b", "output_bytes": 1, "inputs": ["c"]}])
    assert "layers[1].name: duplicate layer name 'a'" in str(e.value)
    assert "layers[2].inputs[0]: 'c' is not a layer listed before 'b'" in str(e.value)


def test_objective_needs_a_weight():
    """Objective weights may not all be zero."""
    with pytest.raises(ValidationError, match="objective needs at least one positive weight"):
        ObjectiveSpec(cost=0, latency=0, energy=0)


def test_objective_name_or_weights():
    """The objective is a name or a weights mapping; anything else is rejected."""
    assert AppSpec.model_validate(app(objective="energy")).weights == ObjectiveSpec(energy=1.0)
    assert AppSpec.model_validate(app(objective={"latency": 2})).weights.latency == 2
    with pytest.raises(ValidationError, match="Input should be 'cost', 'latency' or 'energy'"):
        AppSpec.model_validate(app(objective="speed"))


def test_device_power_order():
    """An inline device's active power may not be below its idle power."""
    with pytest.raises(ValidationError, match="power_active_w: 5.0 W is below power_idle_w"):
        DeviceSpec(**{**DEVICE, "power_idle_w": 10, "power_active_w": 5})


def test_device_needs_fp32():
    """peak_gflops must carry an fp32 figure."""
    with pytest.raises(ValidationError, match="peak_gflops needs at least an fp32 figure"):
        DeviceSpec(**{**DEVICE, "peak_gflops": {"fp16": 10.0}})


def test_site_attach_needs_link_and_back():
    """`attach` without `link` and `link` without `attach` are both rejected."""
    with pytest.raises(ValidationError, match="link: missing; a site class with `attach: cells` needs `link`"):
        SiteClassSpec(tier="edge", device="rpi5", attach="cells")
    with pytest.raises(ValidationError, match="attach: missing; `link: lte` is given"):
        SiteClassSpec(tier="edge", device="rpi5", link="lte")


def test_site_memory_limit_within_inline_device():
    """max_memory_gb may not exceed an inline device's memory."""
    with pytest.raises(ValidationError, match="max_memory_gb: 64.0 GB exceeds the device's memory_gb"):
        SiteClassSpec(tier="cloud", device=DEVICE, max_memory_gb=64)


def test_fleet_attach_targets():
    """`attach` names an existing class in a higher tier."""
    with pytest.raises(ValidationError, match=r"sites\.phones\.attach: unknown site class 'cell'; did you mean 'cells'\?"):
        FleetSpec.model_validate(fleet(phones=dict(tier="edge", device="rpi5", attach="cell", link="lte")))
    with pytest.raises(ValidationError, match=r"sites\.cells\.attach: 'phones' is edge, not in a higher tier"):
        FleetSpec.model_validate(fleet(cells=dict(tier="base_station", device="mec-t4", attach="phones", link="lte")))


def test_fleet_link_names():
    """`link` names a declared link class."""
    with pytest.raises(ValidationError, match=r"sites\.phones\.link: unknown link class 'ltee'; did you mean 'lte'\?"):
        FleetSpec.model_validate(fleet(phones=dict(tier="edge", device="rpi5", attach="cells", link="ltee")))


def test_fleet_connected():
    """A class below the top tier must attach upward when a higher tier exists."""
    with pytest.raises(ValidationError, match=r"sites\.cells: no `attach`; the fleet has cloud site classes"):
        FleetSpec.model_validate(fleet(cells=dict(tier="base_station", device="mec-t4")))


def test_edge_only_fleet_needs_no_links():
    """A fleet of one tier needs no attach and no links."""
    f = FleetSpec(sites={"pis": SiteClassSpec(tier="edge", device="rpi5", count=3)})
    assert f.tiers() == {"edge"} and f.links == {}


def test_transform_function_format():
    """A transform's function must read module:function."""
    assert TransformSpec(function="pkg.mod:fn").function == "pkg.mod:fn"
    with pytest.raises(ValidationError, match="'pkg.mod.fn' is not 'module:function'"):
        TransformSpec(function="pkg.mod.fn")


def test_source_bounds_and_nbytes():
    """Sources need a positive rate and positive dims; nbytes follows shape and dtype."""
    assert SourceSpec(at="edge", rate_hz=1, shape=[2, 3], dtype="uint8").nbytes == 6
    assert SourceSpec(at="edge", rate_hz=1, shape=[2, 3]).nbytes == 24
    with pytest.raises(ValidationError, match="greater than 0"):
        SourceSpec(at="edge", rate_hz=0, shape=[1])
    with pytest.raises(ValidationError, match="greater than 0"):
        SourceSpec(at="edge", rate_hz=1, shape=[1, 0])


def test_specs_are_frozen_and_closed():
    """Specs cannot be mutated and reject unknown keys."""
    s = SourceSpec(at="edge", rate_hz=1, shape=[1])
    with pytest.raises(ValidationError):
        s.rate_hz = 2
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        SourceSpec(at="edge", rate_hz=1, shape=[1], rate=3)


def test_did_you_mean():
    """did_you_mean suggests the closest name, else lists a short set of options."""
    assert did_you_mean("rpi55", ["rpi5", "rpi4", "nuc"]) == "; did you mean 'rpi5'?"
    assert did_you_mean("zzz", ["a", "b"]) == "; known: a, b"
    assert did_you_mean("zzz", ["a", "b"], list_max=0) == ""

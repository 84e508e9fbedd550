"""Specs round-trip: load a YAML file, dump it, load the dump: the same spec comes back."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from spec_paths import DATA, REPO
from tierplan.loader import dump_spec, load_app, load_fleet
from tierplan.spec import AppSpec, FleetSpec, LinkSpec, SiteClassSpec, SourceSpec

APPS = [DATA / "app.yaml", DATA / "profile_app.yaml"] + sorted(REPO.glob("examples/*/app.yaml"))
FLEETS = [DATA / "fleet.yaml", DATA / "fleet_small.yaml"] + sorted(REPO.glob("examples/*/fleet.yaml"))


def _rel(p: Path) -> str:
    return str(p.relative_to(REPO))


@pytest.mark.parametrize("path", APPS, ids=_rel)
def test_app_roundtrip(path, tmp_path):
    """load_app(dump(load_app(f))) equals load_app(f) (base_dir aside, which follows the file)."""
    first = load_app(path)
    out = tmp_path / "app.yaml"
    out.write_text(dump_spec(first))
    second = load_app(out)
    assert second.base_dir == str(tmp_path.resolve())
    assert second.model_copy(update={"base_dir": first.base_dir}) == first


@pytest.mark.parametrize("path", FLEETS, ids=_rel)
def test_fleet_roundtrip(path, tmp_path):
    """load_fleet(dump(load_fleet(f))) equals load_fleet(f)."""
    first = load_fleet(path)
    out = tmp_path / "fleet.yaml"
    out.write_text(dump_spec(first))
    assert load_fleet(out) == first


def test_dump_uses_yaml_key_names_and_skips_defaults():
    """The dump writes `from`/`to` (not src/dst), omits defaults and never writes base_dir."""
    doc = yaml.safe_load(dump_spec(load_app(DATA / "app.yaml")))
    assert doc["edges"][0] == {"from": "cam", "to": "det", "tensors": {"cam": "images"}}
    assert "base_dir" not in doc
    assert "deliver_to" in doc["sinks"]["log"] and "deliver_to" not in doc["sinks"]["label"]


def test_loaded_values():
    """The loader keeps the YAML's values: inline devices, link figures, objective weights."""
    f = load_fleet(DATA / "fleet.yaml")
    assert f.sites["region"].device.name == "tiny-gpu" and f.sites["phones"].device == "pixel-8"
    assert f.links["backhaul"].egress_usd_per_gb == 0.09 and f.sites["phones"].count == 1000
    a = load_app(DATA / "app.yaml")
    assert a.weights.latency == 0.01 and a.sources["cam"].private is True
    assert a.resolve_path(a.models["det"].onnx) == DATA / "det.onnx"


def test_scientific_notation_reads_as_numbers(tmp_path):
    """2.0e6 in YAML is a number (YAML 1.2), so integer byte counts may be written that way."""
    a = load_app(DATA / "profile_app.yaml")
    assert a.models["net"].profile.layers[1].param_bytes == 2_000_000


_pos = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(rate=_pos, up=_pos, down=_pos, rtt=st.floats(0, 1e3), count=st.integers(1, 10**6),
       shape=st.lists(st.integers(1, 4096), min_size=1, max_size=5), private=st.booleans())
def test_roundtrip_property(rate, up, down, rtt, count, shape, private, tmp_path_factory):
    """Any in-bounds source, link and site count survives dump and load unchanged."""
    d = tmp_path_factory.mktemp("rt")
    app = AppSpec(models={"m": {"onnx": "m.onnx"}},
                  sources={"s": SourceSpec(at="edge", rate_hz=rate, shape=shape, private=private)},
                  edges=[{"from": "s", "to": "m"}], sinks={"k": {"from": "m"}}, base_dir=str(d))
    fleet = FleetSpec(sites={"e": SiteClassSpec(tier="edge", device="rpi5", count=count, attach="c", link="l"),
                             "c": SiteClassSpec(tier="cloud", device="aws-g5-xlarge")},
                      links={"l": LinkSpec(uplink_mbps=up, downlink_mbps=down, rtt_ms=rtt)})
    (d / "app.yaml").write_text(dump_spec(app))
    (d / "fleet.yaml").write_text(dump_spec(fleet))
    assert load_app(d / "app.yaml") == app.model_copy(update={"base_dir": str(d.resolve())})
    assert load_fleet(d / "fleet.yaml") == fleet

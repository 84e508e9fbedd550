"""The device catalog: every YAML validates, cites sources, spans three tiers, and its TVM targets build."""

from __future__ import annotations

import re

import pytest

from tierplan.devices.catalog import CATALOG_DIR, get_device, load_catalog
from tierplan.errors import InputError
from tierplan.spec import TIERS


def test_catalog_has_at_least_14_devices_across_three_tiers():
    """At least 14 real devices (plus `local`), with edge, base-station and cloud entries."""
    cat = load_catalog()
    real = {n: d for n, d in cat.items() if n != "local"}
    assert len(real) >= 14
    assert {d.tier for d in real.values()} == set(TIERS)
    assert "local" in cat


def test_every_device_cites_sources_for_its_figures():
    """Each device lists sources and its YAML comments point at them ([n] references resolve)."""
    for path in sorted(CATALOG_DIR.glob("*.yaml")):
        dev = get_device(path.stem)
        assert len(dev.sources) >= 2, path.name
        text = path.read_text()
        cited = set(re.findall(r"\[(\d+)\]", text.split("sources:")[0]))
        listed = {re.match(r"\[(\d+)\]", s).group(1) for s in dev.sources if re.match(r"\[(\d+)\]", s)}
        assert cited, f"{path.name}: no [n] citations next to the figures"
        assert cited <= listed, f"{path.name}: cites {sorted(cited - listed)} but does not list them"


def test_device_figures_are_consistent():
    """Peaks grow with lower precision, active power exceeds idle, rented cloud devices have a price."""
    for d in load_catalog().values():
        assert d.power_active_w > d.power_idle_w, d.name
        if "fp16" in d.peak_gflops:
            assert d.peak_gflops["fp16"] >= d.peak_gflops["fp32"], d.name
        if "int8" in d.peak_gflops:
            assert d.peak_gflops["int8"] >= d.peak_gflops["fp32"], d.name
        if d.tier == "cloud":
            assert d.cost_per_hour_usd > 0, d.name


def test_phones_are_battery_devices_with_radio_energy():
    """Phones carry battery: true and a radio energy per byte (the cited LTE figure)."""
    for name in ("pixel-8", "galaxy-a54"):
        d = get_device(name)
        assert d.battery and d.radio_nj_per_byte == pytest.approx(438.39 * 8, rel=1e-3)


def test_unknown_device_suggests_the_closest_name():
    """get_device on a typo raises InputError with a did-you-mean."""
    with pytest.raises(InputError, match=r"did you mean 'rpi5'|did you mean 'rpi4'"):
        get_device("rpi")


def test_catalog_is_not_shared_mutable_state():
    """load_catalog returns a fresh dict: editing it does not change the next load."""
    cat = load_catalog()
    cat.pop("rpi4")
    assert "rpi4" in load_catalog()


@pytest.mark.integration
def test_tvm_targets_build_from_their_dict_form():
    """Every device's tvm_target builds as tvm.target.Target(dict) (CPU and CUDA alike)."""
    import tvm

    for d in load_catalog().values():
        t = tvm.target.Target(dict(d.tvm_target))
        assert t.kind.name == d.tvm_target["kind"], d.name
        if d.tvm_target["kind"] == "llvm" and "mtriple" in d.tvm_target:
            assert str(t.attrs["mtriple"]) == d.tvm_target["mtriple"]

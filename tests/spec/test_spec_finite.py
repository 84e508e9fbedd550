"""Non-finite numbers (.inf, .nan, 1e400) in app.yaml and fleet.yaml are refused at load, naming the YAML path."""

from __future__ import annotations

import math

import pytest
import yaml

from spec_paths import DATA
from tierplan.errors import SpecError
from tierplan.loader import format_path, load_app, load_fleet

NOT_FINITE = [".inf", "-.Inf", ".nan", ".NaN", "1e400"]


def _numbers(data, path=()):
    """Every YAML path holding a number (int or float, bools excluded) in a loaded YAML document."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _numbers(v, path + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _numbers(v, path + (i,))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        yield path


def _set(data, path, value):
    """A deep copy of `data` with the number at `path` replaced by the marker string `value`."""
    data = yaml.safe_load(yaml.safe_dump(data))
    cur = data
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    return data


def _write(tmp_path, name, data, path, value):
    """Write the document with `value` (YAML text, unquoted) at `path`; return the file."""
    marker = "__NOT_FINITE__"
    text = yaml.safe_dump(_set(data, path, marker), sort_keys=False).replace(marker, value)
    f = tmp_path / name
    f.write_text(text)
    return f


def _cases(file: str):
    data = yaml.safe_load((DATA / file).read_text())
    paths = [p for p in _numbers(data) if "latency_ms" not in p or file != "profile_app.yaml"]
    return [(file, p) for p in paths]


CASES = _cases("app.yaml") + _cases("fleet.yaml") + _cases("profile_app.yaml")


@pytest.mark.parametrize("file,path", CASES, ids=[f"{f}:{format_path(p)}" for f, p in CASES])
def test_every_number_refuses_inf_and_nan(file, path, tmp_path):
    """Every number of the sample app and fleet refuses .inf, -.inf, .nan and 1e400 with its YAML path and a fix."""
    data = yaml.safe_load((DATA / file).read_text())
    load = load_fleet if file == "fleet.yaml" else load_app
    for value in NOT_FINITE:
        f = _write(tmp_path, file, data, path, value)
        with pytest.raises(SpecError) as e:
            load(f)
        assert len(e.value.problems) == 1, e.value.problems
        line = e.value.problems[0]
        assert f": {format_path(path)}: " in line and "not a finite number" in line, line
        assert line.startswith(f"{f}:") and "To fix:" in line, line


def test_profile_latency_inf_means_cannot_run_there(tmp_path):
    """A profile layer's latency may be .inf (the layer cannot run on that device); .nan and -.inf are refused."""
    data = yaml.safe_load((DATA / "profile_app.yaml").read_text())
    path = ("models", "net", "profile", "layers", 0, "latency_ms", "tiny-gpu")
    spec = load_app(_write(tmp_path, "app.yaml", data, path, ".inf"))
    assert math.isinf(spec.models["net"].profile.layers[0].latency_ms["tiny-gpu"])
    for value in (".nan", "-.inf"):
        with pytest.raises(SpecError, match=r"latency_ms\.tiny-gpu: .* is not a number here\. To fix: "):
            load_app(_write(tmp_path, "app.yaml", data, path, value))


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 1e300])
def test_units_refuse_what_cp_sat_cannot_hold(value):
    """Every integer-unit conversion raises InputError (exit 2, with a fix) on a non-finite or absurd value."""
    from tierplan.planner import units
    from tierplan.errors import InputError
    for convert in (units.ms_to_us, units.usd_to_uusd, units.j_to_uj, units.frac_to_ppm, units.bytes_to_kb,
                    units.mbps_to_bps):
        with pytest.raises(InputError, match="To fix: "):
            convert(value)
    assert units.mbps_to_bps(4_096_000) == 4_096_000_000_000 and units.bytes_to_kb(1025) == 2

"""The loader at scale: one fast pass equal to PyYAML, linear cost, capped error output."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from spec_paths import BAD, DATA, REPO
from tierplan import spec as spec_module
from tierplan.errors import SpecError
from tierplan.loader import _FastLoader, _walk, index_yaml, line_index, load_fleet, parse_yaml

ODD = """\
a: !!str 12
b: !!int "7"
c: !!binary aGVsbG8=
d: 2024-01-01
e: !!float 3
f: ~
g: [yes, no, 0x1F, 1_000, 1:30, .5, -.inf, 1e6, "1e6"]
h: {x: {y: [1, [2, {z: 3}]]}}
'quoted key': |
  block
i: []
j: {}
"""
SPECIAL = ["a: &x 1\nb: *x\n", "<<: {a: 1}\nb: 2\n", "a: 1\na: 2\n", "? [1, 2]\n: x\n", "a: !!set {x, y}\n",
           "a: 1\n---\nb: 2\n", "", "# nothing\n", "just a scalar\n", "- 1\n- 2\n"]


def _pyyaml(text: str):
    """(data, line index) as PyYAML's composer and constructor make them."""
    data = _FastLoader(text).get_single_data()
    return data, dict(line_index(_FastLoader(text).get_single_node())[0])


def _yaml_files() -> list[Path]:
    return sorted(DATA.glob("*.yaml")) + sorted(BAD.glob("*.yaml")) + sorted((REPO / "examples").rglob("*.yaml"))


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: p.name)
def test_event_walker_equals_pyyaml(path):
    """The one-pass event walker builds the same data and line numbers as PyYAML (or leaves the file to it)."""
    text = path.read_text()
    try:
        want = _pyyaml(text)
    except yaml.YAMLError:
        with pytest.raises(yaml.YAMLError):
            parse_yaml(text)
        return
    assert parse_yaml(text)[0] == want[0]
    assert dict(index_yaml(text)[0]) == want[1]


@pytest.mark.parametrize("text", [ODD] + SPECIAL)
def test_event_walker_on_odd_yaml(text):
    """Tags, anchors, merges, duplicate and complex keys, several documents: same result or same error as PyYAML."""
    try:
        want = _pyyaml(text)
    except yaml.YAMLError as e:
        with pytest.raises(type(e)):
            parse_yaml(text)
        return
    assert parse_yaml(text)[0] == want[0]
    if "a: 1\na: 2" not in text:
        assert dict(index_yaml(text)[0]) == want[1]
    if text == ODD:
        assert _walk(text, index=False)[0] == want[0]  # handled by the walker itself, not the fallback


def _fleet_text(n: int, attach: str = "region") -> str:
    """A fleet of n edge site classes (inline devices), each with its own link class."""
    sites = {"region": {"tier": "cloud", "device": "aws-g5-xlarge"}}
    links = {}
    for i in range(n):
        links[f"l{i}"] = {"uplink_mbps": 10.5, "downlink_mbps": 40.0, "rtt_ms": 50}
        sites[f"edge_{i}"] = {"tier": "edge", "count": 100, "attach": attach, "link": f"l{i}",
                              "device": {"name": f"dev{i}", "tier": "edge", "peak_gflops": {"fp32": 100.0},
                                         "memory_gb": 4, "memory_bandwidth_gbps": 20, "power_idle_w": 1,
                                         "power_active_w": 5}}
    return yaml.safe_dump({"sites": sites, "links": links}, sort_keys=False)


def _cpu_s(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def _load_quietly(path):
    try:
        load_fleet(path)
    except SpecError:
        pass


@pytest.mark.parametrize("attach", ["region", "regoin"], ids=["valid", "every-site-misspelt"])
@pytest.mark.slow   # takes seconds: kept out of the fast lane
def test_loader_cost_is_linear(tmp_path, attach):
    """Loading 8x the site classes costs well under 8x^2 (no quadratic step), valid or with a problem per site."""
    small, large = tmp_path / "small.yaml", tmp_path / "large.yaml"
    small.write_text(_fleet_text(250, attach))
    large.write_text(_fleet_text(2000, attach))
    t_small = _cpu_s(lambda: _load_quietly(small))
    t_large = _cpu_s(lambda: _load_quietly(large))
    assert t_large < 24 * max(t_small, 0.01), (t_small, t_large)  # linear: ~8x; quadratic: ~64x


def test_suggestions_are_computed_for_a_bounded_number_of_words(tmp_path, monkeypatch):
    """A thousand distinct misspellings compute "did you mean" at most HINTS_MAX times per rule."""
    calls = []
    real = spec_module.did_you_mean
    monkeypatch.setattr(spec_module, "did_you_mean", lambda *a, **k: calls.append(a) or real(*a, **k))
    sites = {f"e{i}": {"tier": "edge", "device": "rpi5", "attach": f"regoin{i}", "link": "l"} for i in range(1000)}
    sites["region"] = {"tier": "cloud", "device": "aws-g5-xlarge"}
    f = tmp_path / "fleet.yaml"
    f.write_text(yaml.safe_dump({"sites": sites, "links": {"l": {"uplink_mbps": 1, "downlink_mbps": 1, "rtt_ms": 1}}}))
    with pytest.raises(SpecError) as e:
        load_fleet(f)
    assert len(e.value.problems) == 1000
    assert len(calls) <= spec_module.HINTS_MAX


def test_error_output_is_capped_at_50_with_a_count(cli, tmp_path):
    """The CLI prints the first 50 problems and '... and N more problems'; --json lists 50 and the total."""
    f = tmp_path / "fleet.yaml"
    f.write_text(_fleet_text(120, attach="regoin"))
    res = cli("validate", str(DATA / "app.yaml"), "--fleet", str(f))
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 51 and lines[-1].startswith("error: ... and 70 more problems"), lines[-3:]
    res = cli("validate", str(DATA / "app.yaml"), "--fleet", str(f), "--json")
    doc = json.loads(res.stdout)
    assert len(doc["problems"]) == 50 and doc["problems_total"] == 120


def test_absurd_nesting_is_refused_before_parsing(tmp_path, monkeypatch):
    """100,000 nested brackets (libyaml's scanner is quadratic in them) are one problem naming the line, unparsed."""
    import tierplan.loader as loader
    monkeypatch.setattr(loader, "parse_yaml", lambda text: pytest.fail("parsed a file nested 100,000 deep"))
    f = tmp_path / "fleet.yaml"
    f.write_text("name: x\nsites: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(SpecError, match=r"fleet\.yaml:2: <yaml>: more than 1000 levels .* To fix: "):
        load_fleet(f)


def test_deep_but_allowed_nesting_is_linear(tmp_path):
    """900 nested lists load (the spec refuses them) without indexing quadratic-length paths."""
    f = tmp_path / "fleet.yaml"
    f.write_text("sites: " + "[" * 900 + "]" * 900 + "\n")
    with pytest.raises(SpecError, match=r"sites: Input should be a valid dictionary"):
        load_fleet(f)
    _, lines = _walk(f.read_text(), index=True)
    assert max(len(p) for p in lines) <= 32

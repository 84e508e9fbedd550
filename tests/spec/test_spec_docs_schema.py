"""The YAML reference and the JSON Schema come from the spec models and agree with them."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from spec_paths import BAD, DATA
from tierplan.docs import README_PATH, REFERENCE_PATH, END, START, readme_with_reference, render, unit_of
from tierplan.spec import AppSpec, FleetSpec


def test_reference_is_up_to_date():
    """docs/yaml-reference.md equals what `python -m tierplan.docs` generates now."""
    assert REFERENCE_PATH.read_text() == render(), "To fix: python -m tierplan.docs"


def test_readme_copy_is_up_to_date():
    """README.md's reference section (between the markers, when present) equals the generated one."""
    readme = README_PATH.read_text() if README_PATH.exists() else ""
    assert readme_with_reference(readme) == readme, "To fix: python -m tierplan.docs"


def test_readme_injection_between_markers():
    """The README copy goes between the markers, one heading level down, and leaves the rest alone."""
    text = readme_with_reference(f"# tierplan\nintro\n{START}\nold\n{END}\nafter\n")
    assert text.startswith("# tierplan\nintro\n" + START + "\n## YAML reference\n")
    assert "#### AppSpec" in text and "\nold\n" not in text and text.endswith(END + "\nafter\n")
    assert readme_with_reference("no markers\n") == "no markers\n"


def test_docs_check_flags_stale_reference(tmp_path, monkeypatch):
    """`python -m tierplan.docs --check` exits 1 when the reference file differs from the models."""
    import tierplan.docs as docs
    stale = tmp_path / "ref.md"
    stale.write_text("# old\n")
    monkeypatch.setattr(docs, "REFERENCE_PATH", stale)
    monkeypatch.setattr(docs, "README_PATH", tmp_path / "README.md")
    assert docs.main(["--check"]) == 1
    assert docs.main([]) == 0 and stale.read_text() == render()
    assert docs.main(["--check"]) == 0


def test_reference_covers_every_field():
    """Every user-facing key of AppSpec and FleetSpec appears in the reference with its unit."""
    text = render()
    for model in (AppSpec, FleetSpec):
        for name, f in model.model_fields.items():
            if not f.exclude:
                assert f"| `{f.alias or name}` |" in text
    assert "| `rate_hz` | float | Hz |" in text
    assert "| `egress_usd_per_gb` | float | USD/GB |" in text
    assert "- The data-flow graph is a DAG." in text


def test_unit_of_suffixes():
    """Units come from key suffixes."""
    assert [unit_of(k) for k in ("latency_ms", "uplink_mbps", "budget_usd_per_hour", "count")] == \
        ["ms", "Mbit/s", "USD/h", ""]


@pytest.mark.parametrize("kind", ["app", "fleet", "device"])
def test_schema_command_prints_json_schema(kind, cli):
    """`tierplan schema KIND` prints a JSON Schema that forbids unknown keys."""
    res = cli("schema", kind)
    assert res.exit_code == 0, res.stderr
    schema = json.loads(res.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False


def test_schema_accepts_good_and_rejects_bad(cli):
    """The printed schema accepts the test app and fleet and rejects an unknown key, as the loader does."""
    app_schema = json.loads(cli("schema", "app").stdout)
    fleet_schema = json.loads(cli("schema", "fleet").stdout)
    jsonschema.validate(yaml.safe_load((DATA / "app.yaml").read_text()), app_schema)
    jsonschema.validate(yaml.safe_load((DATA / "fleet.yaml").read_text()), fleet_schema)
    with pytest.raises(jsonschema.ValidationError, match="rate_hzz"):
        jsonschema.validate(yaml.safe_load((BAD / "unknown_key.app.yaml").read_text()), app_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load((BAD / "zero_count.fleet.yaml").read_text()), fleet_schema)


def test_schema_rejects_unknown_kind(cli):
    """`tierplan schema bogus` is a usage error (exit 2)."""
    assert cli("schema", "bogus").exit_code == 2


def test_every_field_is_described():
    """Every user-facing field of every spec carries a description (it becomes the reference and schema text)."""
    from tierplan.docs import APP_SECTIONS, FLEET_SECTIONS
    missing = [f"{m.__name__}.{n}" for m in APP_SECTIONS + FLEET_SECTIONS
               for n, f in m.model_fields.items() if not f.description]
    assert missing == []

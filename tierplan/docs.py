"""Generate the YAML reference (docs/yaml-reference.md) from the spec models, so the two never drift.

    python -m tierplan.docs            # rewrite docs/yaml-reference.md (and README.md's copy)
    python -m tierplan.docs --check    # exit 1 if either is out of date

README.md gets the same reference, one heading level down, between the lines
`<!-- yaml-reference:start -->` and `<!-- yaml-reference:end -->` when it has them.

Each spec gets a table (key, type, unit, default, bounds, description) and the list of its
cross-field rules, taken from the docstrings of its `_check_*` methods.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from pathlib import Path

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tierplan import spec as S

__all__ = ["render", "write", "readme_with_reference", "REFERENCE_PATH", "README_PATH", "unit_of"]

REFERENCE_PATH = Path(__file__).resolve().parent.parent / "docs" / "yaml-reference.md"
README_PATH = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- yaml-reference:start -->", "<!-- yaml-reference:end -->"

APP_SECTIONS: tuple[type[BaseModel], ...] = (
    S.AppSpec, S.ModelSpec, S.ProfileTable, S.ProfileLayer, S.SourceSpec, S.TransformSpec,
    S.EdgeSpec, S.SinkSpec, S.SloSpec, S.ObjectiveSpec)
FLEET_SECTIONS: tuple[type[BaseModel], ...] = (S.FleetSpec, S.SiteClassSpec, S.LinkSpec, S.DeviceSpec)

# key suffix -> unit, longest first (units live in field names)
_UNITS: tuple[tuple[str, str], ...] = (
    ("_usd_per_hour", "USD/h"), ("_per_hour_usd", "USD/h"), ("_usd_per_gb", "USD/GB"),
    ("_nj_per_byte", "nJ/byte"), ("_gbps", "GB/s"), ("_mbps", "Mbit/s"), ("_gflops", "GFLOP/s"),
    ("_rps", "requests/s"), ("_ms", "ms"), ("_us", "µs"), ("_hz", "Hz"), ("_gb", "GB"), ("_w", "W"),
    ("_bytes", "bytes"), ("_usd", "USD"))


def unit_of(key: str) -> str:
    """The unit a key's suffix declares ('' when it has none)."""
    for suffix, unit in _UNITS:
        if key.endswith(suffix):
            return unit
    return ""


def _anchor(m: type[BaseModel]) -> str:
    return m.__name__.lower()


def _type_name(tp: typing.Any) -> str:
    """A short human name of a field type, linking to nested specs."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        inner = _type_name(args[0])
        for meta in args[1:]:
            if isinstance(meta, at.Gt):
                inner += f" > {meta.gt}"
            elif isinstance(meta, at.Ge):
                inner += f" ≥ {meta.ge}"
        return inner
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" (optional)" if type(None) in args else "")
    if origin is dict:
        return f"mapping name → {_type_name(args[1])}"
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return f"[{tp.__name__}](#{_anchor(tp)})"
    if tp is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _bounds(field: FieldInfo) -> str:
    parts = []
    for meta in field.metadata:
        for attr, sym in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            if getattr(meta, attr, None) is not None:
                parts.append(f"{sym} {getattr(meta, attr)}")
        if getattr(meta, "min_length", None) is not None:
            parts.append(f"at least {meta.min_length} item(s)")
        if getattr(meta, "max_length", None) is not None:
            parts.append(f"at most {meta.max_length} chars")
    return ", ".join(parts)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is None and field.default is PydanticUndefined:
        return ""
    value = field.get_default(call_default_factory=True)   # the spec's factories take no arguments
    if value is None:
        return "none"
    if value == {} or value == []:
        return "empty"
    return f"`{value}`"


def _rules(m: type[BaseModel]) -> list[str]:
    """The docstrings of the spec's named cross-field checks."""
    out = []
    for name, fn in vars(m).items():  # definition order
        if name.startswith("_check_") and inspect.isfunction(fn) and fn.__doc__:
            out.append(inspect.cleandoc(fn.__doc__).splitlines()[0])
    return out


def _section(m: type[BaseModel]) -> list[str]:
    lines = [f"### {m.__name__}", "", inspect.cleandoc(m.__doc__ or "").splitlines()[0], "",
             "| key | type | unit | default | bounds | description |",
             "|---|---|---|---|---|---|"]
    for name, f in m.model_fields.items():
        if f.exclude:
            continue
        key = f.alias or name
        desc = (f.description or "").replace("|", "\\|")
        lines.append(f"| `{key}` | {_type_name(f.annotation)} | {unit_of(key)} | {_default(f)} | {_bounds(f)} | {desc} |")
    rules = _rules(m)
    if rules:
        lines += ["", "Rules:"] + [f"- {r}" for r in rules]
    return lines + [""]


def render(level: int = 1) -> str:
    """The whole reference as Markdown (deterministic); `level` is the heading level of its title."""
    text = _render()
    if level == 1:
        return text
    shift = "#" * (level - 1)
    return "\n".join(shift + line if line.startswith("#") else line for line in text.splitlines()) + "\n"


def readme_with_reference(readme: str) -> str:
    """README text with the reference (one level down) between the markers; unchanged without markers."""
    if START not in readme or END not in readme:
        return readme
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{render(level=2)}{END}{tail}"


def _render() -> str:
    out = ["# YAML reference", "",
           "<!-- Generated by `python -m tierplan.docs` from tierplan/spec.py; do not edit by hand. -->", "",
           "Unknown keys are rejected everywhere (with a did-you-mean). Units are in the key names. "
           "`tierplan schema app|fleet` prints the same as JSON Schema for editors; "
           "`tierplan validate APP --fleet FLEET` checks both files, the model files, the devices and the "
           "tensor shapes.", "",
           "## app.yaml", ""]
    for m in APP_SECTIONS:
        out += _section(m)
    out += ["## fleet.yaml", "",
            "A device is a catalog name (`tierplan devices`) or an inline [DeviceSpec](#devicespec); "
            "catalog files (devices/catalog/*.yaml) use the same keys.", ""]
    for m in FLEET_SECTIONS:
        out += _section(m)
    return "\n".join(out).rstrip() + "\n"


def _wanted() -> dict[Path, str]:
    """Each generated file and the text it should hold."""
    out = {REFERENCE_PATH: render()}
    if README_PATH.exists():
        out[README_PATH] = readme_with_reference(README_PATH.read_text())
    return out


def write() -> list[Path]:
    """Write the reference (and README's copy); the files that changed."""
    changed = []
    for path, text in _wanted().items():
        old = path.read_text() if path.exists() else None
        if old != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    """`python -m tierplan.docs [--check]`."""
    argv = sys.argv[1:] if argv is None else argv
    if "--check" in argv:
        stale = [p for p, text in _wanted().items() if (p.read_text() if p.exists() else "") != text]
        for p in stale:
            print(f"{p} is out of date. To fix: python -m tierplan.docs", file=sys.stderr)
        return 1 if stale else 0
    changed = write()
    print("wrote " + ", ".join(map(str, changed)) if changed else f"unchanged {REFERENCE_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Load app.yaml and fleet.yaml into specs; every problem names file, line and YAML path.

Every problem is one line `FILE:LINE: yaml.path: message`; all problems of a file are reported
together (YAML duplicate keys, unknown keys with a did-you-mean, wrong types, bounds and the
specs' cross-field rules), raised as one `SpecError`.
"""

from __future__ import annotations

import math
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tierplan.errors import SpecError
from tierplan.spec import AppSpec, FleetSpec, did_you_mean

__all__ = ["load_app", "load_fleet", "load_yaml_spec", "dump_spec", "format_path", "parse_path",
           "line_index", "best_line", "relocate"]

M = TypeVar("M", bound=BaseModel)


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e6 / 2.5e-3 as floats (YAML 1.2), not strings as YAML 1.1 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))
Loc = tuple  # YAML path: str keys and int list indices


def format_path(loc: Loc) -> str:
    """('models', 'det', 'onnx') -> 'models.det.onnx'; ('edges', 2, 'from') -> 'edges[2].from'."""
    s = ""
    for p in loc:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s or "<top>"


def line_index(node: yaml.Node | None, path: Loc = (), lines: dict | None = None,
           dups: list | None = None) -> tuple[dict[Loc, int], list[tuple[Loc, int, int]]]:
    """Map each YAML path to its 1-based line; collect duplicate keys as (path, line, first line)."""
    lines = {} if lines is None else lines
    dups = [] if dups is None else dups
    if node is None:
        return lines, dups
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for k, v in node.value:
            key = _scalar_key(k)
            line = k.start_mark.line + 1
            if key in first:
                dups.append((path + (key,), line, first[key]))
                continue
            first[key] = line
            lines[path + (key,)] = line
            line_index(v, path + (key,), lines, dups)
            lines[path + (key,)] = line
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            line_index(v, path + (i,), lines, dups)
    return lines, dups


def _scalar_key(k: yaml.Node) -> Any:
    """The Python value of a mapping key as safe_load would build it (ints stay ints)."""
    if isinstance(k, yaml.ScalarNode):
        try:
            return yaml.load(yaml.serialize(k), Loader=_Loader)
        except yaml.YAMLError:
            return k.value
    return str(k.value)


def best_line(lines: dict[Loc, int], loc: Loc) -> int:
    for i in range(len(loc), -1, -1):
        if loc[:i] in lines:
            return lines[loc[:i]]
    return 1


def _yaml_loc(data: Any, loc: Loc, keep_last: bool) -> Loc:
    """Drop pydantic's union tags from an error location, keeping the path as written in the YAML."""
    out: list = []
    cur = data
    for i, p in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(cur, dict) and p in cur:
            out.append(p)
            cur = cur[p]
        elif isinstance(cur, list) and isinstance(p, int) and 0 <= p < len(cur):
            out.append(p)
            cur = cur[p]
        elif last and keep_last and isinstance(cur, dict) and isinstance(p, str):
            out.append(p)  # a missing or unknown key: it is the YAML name
        # else: a union tag or function-validator name, not part of the YAML
    return tuple(out)


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The spec class whose keys live at YAML path `loc` (walking fields, dict values and list items)."""
    tp: Any = model
    for p in loc:
        tp = _step(tp, p)
        if tp is None:
            return None
    return _as_model(tp)


def _step(tp: Any, p: Any) -> Any:
    m = _as_model(tp)
    if m is not None and isinstance(p, str):
        for name, f in m.model_fields.items():
            if p in (name, f.alias):
                return f.annotation
        return None
    tp = _strip(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is dict and args:
        return args[1]
    if origin is list and args:
        return args[0]
    return None


def _strip(tp: Any) -> Any:
    """Unwrap Annotated and Optional to the first dict/list/model member."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for a in typing.get_args(tp):
            a = _strip(a)
            if typing.get_origin(a) in (dict, list) or _as_model(a) is not None:
                return a
    return tp


def _as_model(tp: Any) -> type[BaseModel] | None:
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    return None


def _fields_of(m: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in m.model_fields.items() if not f.exclude]


def _describe_input(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return f" (got a {'mapping' if isinstance(v, dict) else 'list'})"
    if v is None:
        return " (got nothing)"
    text = repr(v)
    return f" (got {text if len(text) <= 40 else text[:37] + '...'})"


def _messages(err: dict, data: Any, model: type[BaseModel]) -> list[tuple[Loc, str]]:
    """One pydantic error as (YAML path, message) pairs."""
    kind = err["type"]
    loc = _yaml_loc(data, tuple(err["loc"]), keep_last=kind in ("missing", "extra_forbidden"))
    if kind == "cross_field":
        out = []
        for line in str(err["ctx"]["detail"]).splitlines():
            rel, sep, msg = line.partition(": ")
            rel_loc = parse_path(rel) if sep else ()
            out.append((loc + rel_loc, msg if sep else line))
        return out
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if kind == "finite_number" or (isinstance(value, float) and not math.isfinite(value)):
        return [(loc, _not_finite(value, allow_inf=kind != "finite_number"))]
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        options = _fields_of(parent) if parent else []
        hint = did_you_mean(str(loc[-1]), options, list_max=0)
        msg = f"unknown key {loc[-1]!r}" + (hint or (f"; allowed keys: {', '.join(options)}" if options else ""))
    elif kind == "missing":
        msg = f"missing required key {loc[-1]!r}" if loc else "missing required key"
    elif kind not in ("value_error", "assertion_error"):
        msg += _describe_input(err.get("input"))
    return [(loc, msg)]


def _not_finite(value: Any, allow_inf: bool = False) -> str:
    """The message for .inf / .nan (or a number YAML rounds to infinity, like 1e400) where a finite one is needed."""
    got = {"inf": ".inf", "-inf": "-.inf", "nan": ".nan"}.get(repr(value), repr(value))
    if allow_inf:
        return (f"{got} is not a number here. To fix: write a positive number "
                "(or .inf where the layer cannot run on that device)")
    return (f"{got} is not a finite number (YAML reads .inf, .nan and numbers beyond 1.8e308 as "
            "infinite or not-a-number). To fix: write a finite number")


def parse_path(rel: str) -> Loc:
    """'sites.phone.attach' / 'edges[2].from' -> tuple path (names may not contain '[')."""
    out: list = []
    for part in rel.replace("[", ".[").split("."):
        if not part:
            continue
        if part.startswith("[") and part.endswith("]") and part[1:-1].isdigit():
            out.append(int(part[1:-1]))
        else:
            out.append(part)
    return tuple(out)


def relocate(loc: Loc, lines: dict[Loc, int]) -> Loc:
    """Re-split a path whose names contain dots (e.g. a device 'g5.xlarge') against the YAML's paths."""
    if loc in lines:
        return loc
    text = format_path(loc)
    for known in lines:
        if format_path(known) == text:
            return known
    return loc


def load_yaml_spec(path: str | Path, model: type[M], **extra: Any) -> M:
    """Parse one YAML file into `model`; raise SpecError listing every problem as `file:line: path: msg`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError([f"{path}: file not found. To fix: check the path"]) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise SpecError([f"{path}: cannot read ({e.__class__.__name__}). To fix: pass a readable YAML file"]) from None
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        context = getattr(e, "context", None)
        raise SpecError([f"{path}{where}: <yaml>: YAML syntax error: {problem}"
                         + (f" ({context})" if context else "")]) from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise SpecError([f"{path}:1: <top>: expected a mapping of keys ({', '.join(_fields_of(model))}), got {got}"])
    fields = _fields_of(model)
    if data and not set(map(str, data)) & (set(fields) - {"name"}):
        raise SpecError([f"{path}:1: <top>: none of the keys ({', '.join(map(str, data))}) belongs here; expected "
                         f"{', '.join(fields)}. To fix: check that this is the right file (app.yaml vs fleet.yaml)"])
    lines, dups = line_index(node)
    problems: list[tuple[int, str]] = []
    for loc, line, first in dups:
        problems.append((line, f"{path}:{line}: {format_path(loc)}: duplicate key {loc[-1]!r} "
                               f"(first at line {first}); names must be unique"))
    for key in extra:
        if key in data:
            line = best_line(lines, (key,))
            problems.append((line, f"{path}:{line}: {key}: unknown key {key!r} (set by tierplan, not the YAML)"))
    try:
        spec = model.model_validate({**data, **extra})
    except ValidationError as e:
        seen: set[str] = set()
        errors = e.errors()
        # a misspelt key ('rate_hzz') also makes the real one missing: report only the misspelling
        misspelt = set()
        for err in errors:
            if err["type"] == "extra_forbidden":
                for loc, msg in _messages(err, data, model):
                    if "did you mean '" in msg:
                        misspelt.add(loc[:-1] + (msg.split("did you mean '")[1].split("'")[0],))
        for err in errors:
            if err["type"] == "missing" and _yaml_loc(data, tuple(err["loc"]), True) in misspelt:
                continue
            for loc, msg in _messages(err, data, model):
                loc = relocate(loc, lines)
                line = best_line(lines, loc)
                text_ = f"{path}:{line}: {format_path(loc)}: {msg}"
                if text_ not in seen:
                    seen.add(text_)
                    problems.append((line, text_))
        spec = None
    if problems:
        raise SpecError([p for _, p in sorted(problems, key=lambda x: x[0])])
    return spec


def dump_spec(spec: BaseModel) -> str:
    """The spec as YAML (keys as written in app.yaml / fleet.yaml, defaults left out); load(dump(x)) == x."""
    data = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return yaml.safe_dump(data, sort_keys=False)


def load_app(path: str | Path) -> AppSpec:
    """Load and validate app.yaml (structure only; see tierplan.validate for files and devices)."""
    path = Path(path)
    return load_yaml_spec(path, AppSpec, base_dir=str(path.resolve().parent))


def load_fleet(path: str | Path) -> FleetSpec:
    """Load and validate fleet.yaml (structure only)."""
    return load_yaml_spec(path, FleetSpec)

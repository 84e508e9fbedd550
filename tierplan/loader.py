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
from typing import Any, Literal, TypeVar, overload

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from tierplan.errors import SpecError
from tierplan.spec import AppSpec, FleetSpec, did_you_mean

__all__ = ["load_app", "load_fleet", "load_yaml_spec", "dump_spec", "format_path", "parse_path",
           "parse_yaml", "index_yaml", "line_index", "LineIndex", "best_line", "relocate"]

M = TypeVar("M", bound=BaseModel)


_FLOAT_12 = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)


_Base = yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader


class _FastLoader(_Base):  # type: ignore[valid-type,misc]
    """Safe loading on libyaml's C parser (where PyYAML has it) that reads 1e6 / 2.5e-3 as floats (YAML 1.2,
    not strings as YAML 1.1 does) and notes a mapping that loses a key to a duplicate."""

    merged_or_duplicate = False

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        mapping = super().construct_mapping(node, deep=deep)
        if len(mapping) != len(node.value):  # a duplicate key (or a `<<` merge): the slow path finds out which
            self.merged_or_duplicate = True
        return mapping


_FastLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))
_KEYS = yaml.constructor.SafeConstructor()  # builds mapping keys' values for the line index


class _Unusual(Exception):
    """A YAML feature the event walker leaves to PyYAML's composer: anchors, merges, tags, complex or duplicate keys."""


_STR, _MAP, _SEQ = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_INDEX_DEPTH = 32  # paths deeper than any spec are not indexed, so 100,000 nested brackets cost linear time
_SEQ_FRAME = object()  # the pending-key slot of a sequence's frame
_SCALAR_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("null", "bool", "int", "float", "binary", "timestamp")}


@overload
def _walk(text: str, index: Literal[True]) -> tuple[Any, LineIndex]: ...
@overload
def _walk(text: str, index: Literal[False]) -> tuple[Any, None]: ...


def _walk(text: str, index: bool) -> tuple[Any, LineIndex | None]:
    """(data, line index if asked) built straight from libyaml's events, without PyYAML's node tree.

    Several times faster than compose + construct on large files. Raises _Unusual on what it does
    not handle (the caller then takes PyYAML's own path) and yaml.YAMLError on a syntax error.
    """
    loader = _FastLoader(text)
    try:
        get, resolve, build = loader.get_event, loader.resolve, _KEYS.yaml_constructors
        lines = LineIndex()  # filled only when `index` (no path is tracked otherwise)
        scalars: dict[tuple[Any, ...], Any] = {}  # scalars repeat: resolve and convert each text once
        # one frame per open mapping or sequence: [container, path, awaiting a key?, pending key]
        stack: list[list[Any]] = []
        root: Any = None
        get()  # stream start
        if type(loader.peek_event()) is yaml.StreamEndEvent:
            return None, lines if index else None
        get()  # document start
        while True:
            ev = get()
            cls = type(ev)
            if cls is yaml.MappingEndEvent or cls is yaml.SequenceEndEvent:
                stack.pop()
                if not stack:
                    break
                continue
            if cls is yaml.AliasEvent or ev.anchor is not None:
                raise _Unusual("anchor")
            if cls is yaml.ScalarEvent:
                key = (ev.tag, ev.value, ev.implicit)
                value = scalars.get(key, scalars)
                if value is scalars:
                    tag = ev.tag
                    if tag is None or tag == "!":
                        tag = resolve(yaml.ScalarNode, ev.value, ev.implicit)
                    if tag == _STR:
                        value = ev.value
                    elif tag in _SCALAR_TAGS:
                        value = build[tag](_KEYS, yaml.ScalarNode(tag, ev.value, ev.start_mark, ev.end_mark, ev.style))
                    else:
                        raise _Unusual(tag)
                    scalars[key] = value
            else:
                is_map = cls is yaml.MappingStartEvent
                tag = ev.tag
                if tag is not None and tag != "!" and tag != (_MAP if is_map else _SEQ):
                    raise _Unusual(tag)
                value = {} if is_map else []
            path = None
            if stack:
                top = stack[-1]
                container = top[0]
                if top[2]:  # this is a mapping's key
                    if cls is not yaml.ScalarEvent:
                        raise _Unusual("complex key")
                    if value in container:
                        raise _Unusual("duplicate key")
                    top[2], top[3] = False, value
                    if top[1] is not None:
                        lines[top[1] + (value,)] = ev.start_mark.line + 1
                    continue
                if top[3] is not _SEQ_FRAME:
                    container[top[3]] = value
                    top[2] = True
                    if top[1] is not None:
                        path = top[1] + (top[3],)
                else:
                    if top[1] is not None:
                        path = top[1] + (len(container),)
                        lines[path] = ev.start_mark.line + 1
                    container.append(value)
            else:
                root = value
                if index:
                    path = ()
                    lines[path] = ev.start_mark.line + 1
            if path is not None and len(path) >= _INDEX_DEPTH:
                path = None  # lines below this depth are not indexed (their parent's line is used)
            if cls is yaml.MappingStartEvent:
                stack.append([value, path, True, None])
            elif cls is yaml.SequenceStartEvent:
                stack.append([value, path, False, _SEQ_FRAME])
            elif not stack:
                break  # the document is one scalar
        get()  # document end
        if type(loader.peek_event()) is not yaml.StreamEndEvent:
            raise _Unusual("several documents")  # PyYAML's composer says what is wrong
        return root, lines if index else None
    finally:
        loader.dispose()


_MAX_FLOW_DEPTH = 1000  # libyaml's scanner is quadratic in [ / { nesting: 100,000 levels take a minute
_BRACKETS = re.compile(r"[\[\]{}]")


def _too_deep(text: str) -> int | None:
    """The 1-based line where [ ] / { } nesting first exceeds _MAX_FLOW_DEPTH, else None (brackets in
    strings count too: a spec needs fewer than ten levels, so the bound is far from real files)."""
    if text.count("[") + text.count("{") <= _MAX_FLOW_DEPTH:
        return None
    depth = 0
    for m in _BRACKETS.finditer(text):
        depth += 1 if m.group() in "[{" else -1
        if depth > _MAX_FLOW_DEPTH:
            return text.count("\n", 0, m.start()) + 1
        depth = max(depth, 0)
    return None


def parse_yaml(text: str) -> tuple[Any, tuple[LineIndex, list[tuple[Loc, int, int]]] | None, bool]:
    """(data, (line index, duplicate keys) or None, whether a mapping lost a key) of one YAML document.

    One pass over libyaml's events builds the data and the line index together (the index costs
    about a fifth of the pass; a second pass would cost all of it). What the walker leaves to
    PyYAML (anchors, merges, tags, duplicate keys) is loaded by PyYAML without an index; `index_yaml`
    makes one when a problem needs a line. Raises yaml.YAMLError.
    """
    try:
        data, lines = _walk(text, index=True)
        return data, (lines, []), False
    except _Unusual:
        pass
    loader = _FastLoader(text)
    try:
        return loader.get_single_data(), None, loader.merged_or_duplicate
    finally:
        loader.dispose()


def index_yaml(text: str) -> tuple[LineIndex, list[tuple[Loc, int, int]]]:
    """(YAML path -> line, duplicate keys as (path, line, first line)) of one YAML document; raises yaml.YAMLError."""
    try:
        return _walk(text, index=True)[1], []
    except _Unusual:
        pass
    loader = _FastLoader(text)
    try:
        return line_index(loader.get_single_node())
    finally:
        loader.dispose()


Loc = tuple[Any, ...]  # YAML path: str keys and int list indices (a YAML key may be any scalar)


def format_path(loc: Loc) -> str:
    """('models', 'det', 'onnx') -> 'models.det.onnx'; ('edges', 2, 'from') -> 'edges[2].from'."""
    s = ""
    for p in loc:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s or "<top>"


class LineIndex(dict[Loc, int]):
    """YAML path -> 1-based line, with a lookup by the path's text (for names that contain dots)."""

    _by_text: dict[str, Loc] | None = None

    def by_text(self, text: str) -> Loc | None:
        if self._by_text is None:
            self._by_text = {}
            for known in self:
                self._by_text.setdefault(format_path(known), known)
        return self._by_text.get(text)


def line_index(node: yaml.Node | None) -> tuple[LineIndex, list[tuple[Loc, int, int]]]:
    """Map each YAML path to its 1-based line; collect duplicate keys as (path, line, first line).

    Linear in the number of nodes: an aliased node (`*anchor`) is indexed once, where it is
    defined, so a file of nested aliases ("billion laughs") costs no more than its text.
    """
    lines, dups = LineIndex(), []
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, Loc]] = [(node, ())] if node is not None else []
    while stack:  # depth-first without recursion: deeply nested YAML cannot overflow the stack
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        lines.setdefault(path, node.start_mark.line + 1)
        if len(path) >= _INDEX_DEPTH:
            continue
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            children = []
            for k, v in node.value:
                key = _scalar_key(k)
                line = k.start_mark.line + 1
                try:
                    if key in first:
                        dups.append((path + (key,), line, first[key]))
                        continue
                    first[key] = line
                except TypeError:  # an unhashable key: the loader reports it
                    continue
                lines[path + (key,)] = line
                children.append((v, path + (key,)))
            stack.extend(reversed(children))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed([(v, path + (i,)) for i, v in enumerate(node.value)]))
    return lines, dups


def _scalar_key(k: yaml.Node) -> Any:
    """The Python value of a mapping key as safe_load would build it (ints stay ints)."""
    if isinstance(k, yaml.ScalarNode):
        build = _KEYS.yaml_constructors.get(k.tag)
        if build is not None:
            try:
                return build(_KEYS, k)
            except (yaml.YAMLError, ValueError, TypeError):
                pass
        return k.value
    return str(k.value)


def best_line(lines: dict[Loc, int], loc: Loc) -> int:
    for i in range(len(loc), -1, -1):
        if loc[:i] in lines:
            return lines[loc[:i]]
    return 1


def _yaml_loc(data: Any, loc: Loc, keep_last: bool) -> Loc:
    """Drop pydantic's union tags from an error location, keeping the path as written in the YAML."""
    out: list[Any] = []
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


def _messages(err: ErrorDetails, data: Any, model: type[BaseModel]) -> list[tuple[Loc, str]]:
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
    out: list[str | int] = []
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
    if isinstance(lines, LineIndex):
        return lines.by_text(format_path(loc)) or loc
    text = format_path(loc)
    return next((known for known in lines if format_path(known) == text), loc)


def load_yaml_spec(path: str | Path, model: type[M], **extra: Any) -> M:
    """Parse one YAML file into `model`; raise SpecError listing every problem as `file:line: path: msg`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError([f"{path}: file not found. To fix: check the path"]) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise SpecError([f"{path}: cannot read ({e.__class__.__name__}). To fix: pass a readable YAML file"]) from None
    deep = _too_deep(text)
    if deep is not None:
        raise SpecError([f"{path}:{deep}: <yaml>: more than {_MAX_FLOW_DEPTH} levels of nested [ ] or {{ }}. "
                         "To fix: flatten the YAML (a spec needs fewer than ten levels)"])
    try:
        data, indexed, maybe_dups = parse_yaml(text)
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
    index: list[tuple[LineIndex, list[tuple[Loc, int, int]]]] = [indexed] if indexed else []  # once known

    def lines_and_dups() -> tuple[LineIndex, list[tuple[Loc, int, int]]]:
        if not index:
            index.append(index_yaml(text))
        return index[0]

    problems: list[tuple[int, str]] = []
    for loc, line, first in (lines_and_dups()[1] if maybe_dups else []):
        problems.append((line, f"{path}:{line}: {format_path(loc)}: duplicate key {loc[-1]!r} "
                               f"(first at line {first}); names must be unique"))
    for key in extra:
        if key in data:
            line = best_line(lines_and_dups()[0], (key,))
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
                lines = lines_and_dups()[0]
                loc = relocate(loc, lines)
                line = best_line(lines, loc)
                text_ = f"{path}:{line}: {format_path(loc)}: {msg}"
                if text_ not in seen:
                    seen.add(text_)
                    problems.append((line, text_))
    else:
        if not problems:
            return spec
    raise SpecError([p for _, p in sorted(problems, key=lambda x: x[0])])


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

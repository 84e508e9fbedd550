"""Load app.yaml and fleet.yaml into specs; every problem names file, line and YAML path."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tierplan.errors import SpecError
from tierplan.spec import AppSpec, FleetSpec

__all__ = ["load_app", "load_fleet", "load_yaml_spec"]

M = TypeVar("M", bound=BaseModel)


def _line_index(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map each YAML path (tuple of keys/indices) to its 1-based line."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[path + (key,)] = k.start_mark.line + 1
            _line_index(v, path + (key,), out)
            out[path + (key,)] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_index(v, path + (i,), out)
    return out


def _fmt_path(loc: tuple) -> str:
    s = ""
    for p in loc:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s or "<top>"


def _known_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names allowed at `loc`'s parent, for did-you-mean suggestions."""
    cur: Any = model
    for p in loc[:-1]:
        if isinstance(p, int) or cur is None:
            continue
        fields = getattr(cur, "model_fields", None)
        if fields is None:
            return []
        f = fields.get(p) or next((x for x in fields.values() if x.alias == p), None)
        if f is None:  # a dict key (model name etc.): descend into the dict's value type
            continue
        cur = _inner_model(f.annotation)
    fields = getattr(cur, "model_fields", None) or {}
    return [f.alias or n for n, f in fields.items()]


def _inner_model(tp: Any) -> Any:
    import typing
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for a in typing.get_args(tp):
        m = _inner_model(a)
        if m is not None:
            return m
    return None


def load_yaml_spec(path: str | Path, model: type[M], **extra: Any) -> M:
    """Parse one YAML file into `model`; raise SpecError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError([f"{path}: file not found. To fix: check the path"])
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise SpecError([f"{path}: cannot read ({e.__class__.__name__})"])
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError([f"{path}{where}: YAML syntax error: {problem}"])
    if not isinstance(data, dict):
        raise SpecError([f"{path}: expected a mapping at the top level, got {type(data).__name__}"])
    lines = _line_index(node) if node is not None else {}
    try:
        return model.model_validate({**data, **extra})
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(err["loc"])
            # pydantic adds union-branch names (e.g. 'str', 'DeviceSpec') into loc; drop non-YAML parts
            yaml_loc = tuple(p for p in loc if isinstance(p, int) or p in _all_keys(data, loc))
            line = _best_line(lines, yaml_loc)
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                options = _known_fields(model, yaml_loc)
                close = difflib.get_close_matches(str(yaml_loc[-1]), options, n=1)
                msg = "unknown key" + (f"; did you mean {close[0]!r}?" if close else
                                       (f"; allowed: {', '.join(options)}" if options else ""))
            if msg.startswith(tuple(f"{k}" for k in ("sites.", "edges", "sinks.", "slo[", "models.",
                                                      "sources.", "transforms."))):
                # a cross-field validator that already names its own path
                p = msg.split(":", 1)[0]
                line = _best_line(lines, _parse_path(p)) or line
                problems.append(f"{path}:{line}: {msg}")
            else:
                problems.append(f"{path}:{line}: {_fmt_path(yaml_loc)}: {msg}")
        raise SpecError(sorted(set(problems), key=problems.index))


def _all_keys(data: Any, loc: tuple) -> set:
    keys: set = set()
    cur = data
    for p in loc:
        if isinstance(cur, dict) and p in cur:
            keys.add(p)
            cur = cur[p]
        elif isinstance(cur, list) and isinstance(p, int) and p < len(cur):
            cur = cur[p]
        else:
            if isinstance(p, str) and isinstance(cur, dict):
                keys.add(p) if p in cur else None
    # keep a trailing unknown key (extra_forbidden) or missing key: it is the YAML name
    if loc and isinstance(loc[-1], str):
        keys.add(loc[-1])
    return keys


def _parse_path(p: str) -> tuple:
    out: list = []
    for part in p.replace("[", ".[").split("."):
        if not part:
            continue
        if part.startswith("[") and part.endswith("]") and part[1:-1].isdigit():
            out.append(int(part[1:-1]))
        else:
            out.append(part)
    return tuple(out)


def _best_line(lines: dict[tuple, int], loc: tuple) -> int:
    for i in range(len(loc), -1, -1):
        if loc[:i] in lines:
            return lines[loc[:i]]
    return 1


def load_app(path: str | Path) -> AppSpec:
    """Load and validate app.yaml (structure only; see tierplan.validate for files and devices)."""
    path = Path(path)
    return load_yaml_spec(path, AppSpec, base_dir=str(path.resolve().parent))


def load_fleet(path: str | Path) -> FleetSpec:
    """Load and validate fleet.yaml (structure only)."""
    return load_yaml_spec(path, FleetSpec)

"""Second validation pass: what needs the outside world (model files, the device catalog, tensor shapes).

`tierplan.loader` checks each YAML file on its own; `validate(app, fleet)` then checks that
- every model file exists and is a readable ONNX (or .tflite) file, and its `dims` name real
  symbolic dimensions (`dim_param`, or `INPUT[AXIS]` for an unnamed one);
- every transform's `module:function` exists (found without importing the module);
- every device named in the fleet and in profile tables is in the catalog (or declared inline);
- sources are pinned to site classes or tiers the fleet has, and sinks deliver to tiers it has;
- tensors agree across edges: a source's (or transform's) shape and dtype against the model
  input it feeds, and a model's output against the next model's input where the edge maps them,
  with symbolic dimensions bound by `dims`.
Each problem is one line `FILE[:LINE]: yaml.path: message`, saying what to do.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import yaml

from tierplan.errors import SpecError
from tierplan.loader import Loc, best_line, format_path, index_yaml, parse_path, relocate
from tierplan.spec import TIERS, AppSpec, DeviceSpec, FleetSpec, ModelSpec, did_you_mean, hinter

if TYPE_CHECKING:
    from onnx import ValueInfoProto

__all__ = ["validate", "check", "TensorSig", "ModelIO", "read_model_io"]

Dim = int | str | None  # a fixed size, a symbolic name, or unknown
_AXIS_KEY = re.compile(r"^(?P<input>.+)\[(?P<axis>\d+)\]$")


@dataclass(frozen=True)
class TensorSig:
    """A model input or output as declared in the ONNX file."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str | None  # numpy dtype name; None when the file leaves it undefined


@dataclass(frozen=True)
class ModelIO:
    """The graph inputs (initializers excluded) and outputs of one ONNX file."""

    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]

    def input(self, name: str) -> TensorSig | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSig | None:
        return next((t for t in self.outputs if t.name == name), None)


class _ModelFileError(Exception):
    """A model file that cannot be used; str() is the message."""


def _sig(vi: ValueInfoProto) -> TensorSig:
    import onnx
    tt = vi.type.tensor_type
    dims: list[Dim] = []
    if tt.HasField("shape"):
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(None)
    dtype = None
    if tt.elem_type:
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        except (KeyError, ValueError, TypeError):
            dtype = None
    return TensorSig(vi.name, tuple(dims), dtype)


@lru_cache(maxsize=64)
def _read_onnx(path: str, mtime_ns: int, size: int) -> ModelIO:
    """Parse and check one ONNX file (cached per file version)."""
    import onnx
    from google.protobuf.message import DecodeError
    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError, UnicodeDecodeError) as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise _ModelFileError(f"not a readable ONNX model (corrupt or truncated file: {first})") from None
    if not model.graph.node and not model.graph.output:
        raise _ModelFileError("not a readable ONNX model (no graph inside: the file is empty, truncated or "
                              "not ONNX)")
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    try:
        onnx.checker.check_model(path if external else model)  # by path: the checker finds external data
    except onnx.checker.ValidationError as e:
        first = (str(e).strip().splitlines() or ["invalid"])[0]
        raise _ModelFileError(f"invalid ONNX model ({first[:200]})") from None
    inits = {i.name for i in model.graph.initializer}
    return ModelIO(tuple(_sig(v) for v in model.graph.input if v.name not in inits),
                   tuple(_sig(v) for v in model.graph.output))


def read_model_io(path: str | Path) -> ModelIO:
    """Inputs and outputs of an ONNX file; raises InputError naming the file when it is unusable."""
    from tierplan.errors import InputError
    p = Path(path)
    try:
        st = p.stat()
        return _read_onnx(str(p.resolve()), st.st_mtime_ns, st.st_size)
    except (_ModelFileError, OSError) as e:
        raise InputError(f"{p}: {e}") from None


def _bound(shape: tuple[Dim, ...], sig_name: str, dims: Mapping[str, int]) -> tuple[int | None, ...]:
    """Shape with symbolic dims bound by `dims` (by name, or as NAME[AXIS]); unbound dims are None."""
    out: list[int | None] = []
    for axis, d in enumerate(shape):
        key = f"{sig_name}[{axis}]"
        if key in dims:
            out.append(dims[key])
        elif isinstance(d, str):
            out.append(dims.get(d))
        else:
            out.append(d)
    return tuple(out)


def _fits(got: tuple[int | None, ...], want: tuple[int | None, ...]) -> bool:
    return len(got) == len(want) and all(a is None or b is None or a == b for a, b in zip(got, want))


def _show(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


class _Report:
    """Collects problems as `file:line: path: message`, with lines looked up in the YAML file."""

    def __init__(self, file: Path | None, label: str):
        self.file = file
        self.label = str(file) if file is not None else label
        self._lines: dict[Loc, int] | None = None
        self.problems: list[tuple[int, str]] = []

    @property
    def lines(self) -> dict[Loc, int]:
        """The file's line index, read at the first problem (a valid file is not parsed again)."""
        if self._lines is None:
            self._lines = {}
            if self.file is not None and self.file.is_file():
                try:
                    self._lines, _ = index_yaml(self.file.read_text())
                except (yaml.YAMLError, OSError, UnicodeDecodeError):
                    pass
        return self._lines

    def add(self, path: str, msg: str) -> None:
        loc = relocate(parse_path(path), self.lines)
        line = best_line(self.lines, loc) if self.lines else 0
        where = f"{self.label}:{line}" if line else self.label
        msg = msg.replace("?. To fix", "? To fix")
        self.problems.append((line, f"{where}: {format_path(loc)}: {msg}"))

    def sorted(self) -> list[str]:
        return [p for _, p in sorted(self.problems, key=lambda x: x[0])]


def _check_model_file(app: AppSpec, name: str, m: ModelSpec, rep: _Report) -> ModelIO | None:
    if m.onnx is not None:
        key, raw = "onnx", m.onnx
    elif m.tflite is not None:
        key, raw = "tflite", m.tflite
    else:
        return None  # a profile-table model: no file (the caller checks file models only)
    path = app.resolve_path(raw)
    where = f"models.{name}.{key}"
    if raw.startswith("pkg:") and str(path).startswith("<package"):
        pkg = raw[4:].partition("/")[0]
        rep.add(where, f"package {pkg!r} is not installed. To fix: pip install {pkg}")
        return None
    if not path.exists():
        rep.add(where, f"file not found {raw!r} (looked at {path}). To fix: give a path relative to app.yaml "
                       "or pkg:PACKAGE/PATH")
        return None
    if not path.is_file():
        rep.add(where, f"{raw!r} is not a file ({path}). To fix: point at the .{key} file itself")
        return None
    if key == "tflite":
        try:
            head = path.read_bytes()[:8]
        except OSError as e:
            rep.add(where, f"cannot read {raw!r} ({e.__class__.__name__}). To fix: check permissions")
            return None
        if head[4:8] != b"TFL3":
            rep.add(where, f"{raw!r} is not a .tflite model (no TFL3 identifier). To fix: point at a LiteRT "
                           "flatbuffer")
        return None
    try:
        st = path.stat()
        io = _read_onnx(str(path.resolve()), st.st_mtime_ns, st.st_size)
    except PermissionError:
        rep.add(where, f"cannot read {raw!r}: permission denied. To fix: chmod +r {path}")
        return None
    except _ModelFileError as e:
        rep.add(where, f"{raw!r}: {e}. To fix: re-export the model or restore the file")
        return None
    _check_dims(name, m, io, rep)
    return io


def _check_dims(name: str, m: ModelSpec, io: ModelIO, rep: _Report) -> None:
    """Every `dims` key is a symbolic dim of the model, or INPUT[AXIS] of an input."""
    params = {d for t in io.inputs + io.outputs for d in t.shape if isinstance(d, str)}
    for key in m.dims:
        mt = _AXIS_KEY.match(key)
        if key in params:
            continue
        if mt:
            sig = io.input(mt["input"])
            axis = int(mt["axis"])
            if sig is None:
                rep.add(f"models.{name}.dims.{key}", f"model {name!r} has no input {mt['input']!r}"
                        + did_you_mean(mt["input"], [t.name for t in io.inputs]))
            elif axis >= len(sig.shape):
                rep.add(f"models.{name}.dims.{key}", f"input {sig.name!r} has rank {len(sig.shape)}; "
                        f"axis {axis} does not exist")
            continue
        rep.add(f"models.{name}.dims.{key}", f"model {name!r} has no symbolic dimension {key!r}"
                + (did_you_mean(key, sorted(params)) or "; it has none")
                + ". To fix: use a dim_param name or INPUT[AXIS]")


def _check_transform(app: AppSpec, name: str, function: str, rep: _Report) -> None:
    """`module:function` names a module on sys.path (or beside app.yaml) that defines the function."""
    module, _, fn = function.partition(":")
    search = [app.base_dir] if app.base_dir else []
    where = f"transforms.{name}.function"
    spec = None
    try:
        if "." not in module and search:
            spec = importlib.machinery.PathFinder.find_spec(module, search)
        if spec is None:
            spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        rep.add(where, f"module {module!r} not found (on sys.path or beside app.yaml). To fix: check "
                       f"the spelling of {function!r}")
        return
    origin = spec.origin or ""
    if origin.endswith(".py"):
        try:
            tree = ast.parse(Path(origin).read_text(), filename=origin)
        except (OSError, SyntaxError, UnicodeDecodeError) as e:
            rep.add(where, f"cannot read module {module!r} ({e.__class__.__name__})")
            return
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        for n in tree.body:
            if isinstance(n, ast.Assign):
                defined |= {t.id for t in n.targets if isinstance(t, ast.Name)}
            elif isinstance(n, (ast.ImportFrom, ast.Import)):
                defined |= {(a.asname or a.name).split(".")[0] for a in n.names}
        if fn not in defined:
            funcs = sorted(n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_"))
            rep.add(where, f"module {module!r} defines no {fn!r}" + did_you_mean(fn, funcs))


def _check_devices(fleet: FleetSpec, catalog: Mapping[str, DeviceSpec], rep: _Report) -> None:
    hint = hinter(sorted(catalog), list_max=0)
    for name, s in fleet.sites.items():
        if isinstance(s.device, str) and s.device not in catalog:
            rep.add(f"sites.{name}.device", f"unknown device {s.device!r}" + hint(s.device)
                    + ". To fix: `tierplan devices` lists the catalog, or declare the device inline")


def _check_pins(app: AppSpec, fleet: FleetSpec, rep: _Report) -> None:
    tiers = fleet.tiers()
    hint = hinter(list(fleet.sites) + list(TIERS))
    for name, s in app.sources.items():
        if s.at in TIERS:
            if s.at not in tiers:
                rep.add(f"sources.{name}.at", f"the fleet has no {s.at} site class. To fix: pin the source "
                                              f"to one of {', '.join(sorted(fleet.sites))} or add a {s.at} class")
        elif s.at not in fleet.sites:
            rep.add(f"sources.{name}.at", f"unknown site class or tier {s.at!r}"
                    + hint(s.at)
                    + ". To fix: name a site class of the fleet or a tier (edge, base_station, cloud)")
    for name, sink in app.sinks.items():
        if sink.deliver_to in TIERS and sink.deliver_to not in tiers:
            rep.add(f"sinks.{name}.deliver_to", f"the fleet has no {sink.deliver_to} site class. To fix: deliver "
                                                f"to source, any, or a tier the fleet has ({', '.join(t for t in TIERS if t in tiers)})")


def _check_profile_devices(app: AppSpec, known: set[str], rep: _Report) -> None:
    hint = hinter(sorted(known), list_max=0)
    for name, m in app.models.items():
        if m.profile is None:
            continue
        for i, layer in enumerate(m.profile.layers):
            for dev in layer.latency_ms:
                if dev not in known:
                    rep.add(f"models.{name}.profile.layers[{i}].latency_ms.{dev}", f"unknown device {dev!r}"
                            + hint(dev)
                            + ". To fix: use a catalog name (`tierplan devices`) or a device declared inline")


def _check_edges(app: AppSpec, io: Mapping[str, ModelIO], rep: _Report) -> None:
    """Tensor names in edge mappings exist, and connected tensors agree in shape and dtype."""
    out_names: dict[str, set[str]] = {}
    for e in app.edges:
        out_names.setdefault(e.src, set()).update(e.tensors)
    fan_in: dict[str, list[int]] = {}
    for i, e in enumerate(app.edges):
        fan_in.setdefault(e.dst, []).append(i)
    for i, e in enumerate(app.edges):
        where = f"edges[{i}]"
        src_io, dst_io = io.get(e.src), io.get(e.dst)
        if e.src in app.sources:
            for k in e.tensors:
                if k != e.src:
                    rep.add(f"{where}.tensors.{k}", f"a source's tensor is named after the source; use {e.src!r}")
        if src_io is not None:
            for k in e.tensors:
                if src_io.output(k) is None:
                    rep.add(f"{where}.tensors.{k}", f"model {e.src!r} has no output {k!r}"
                            + did_you_mean(k, [t.name for t in src_io.outputs]))
        if dst_io is not None:
            for k, v in e.tensors.items():
                if dst_io.input(v) is None:
                    rep.add(f"{where}.tensors.{k}", f"model {e.dst!r} has no input {v!r}"
                            + did_you_mean(v, [t.name for t in dst_io.inputs]))
        if dst_io is None:
            continue
        dst_dims = app.models[e.dst].dims
        # what feeds which input: explicit mapping, else the only input of the model
        pairs: list[tuple[str | None, TensorSig | None]]
        if e.tensors:
            pairs = [(k, dst_io.input(v)) for k, v in e.tensors.items()]
        elif len(dst_io.inputs) == 1 and len(fan_in[e.dst]) == 1:
            pairs = [(None, dst_io.inputs[0])]
        else:
            pairs = []
        for tensor, want_sig in pairs:
            if want_sig is None:
                continue
            want = _bound(want_sig.shape, want_sig.name, dst_dims)
            got, got_dtype, what = _produced(app, e.src, tensor, src_io, out_names)
            if got is None:
                continue
            if not _fits(got, want):
                rep.add(where, f"{what} has shape {_show(got)} but input {want_sig.name!r} of model {e.dst!r} "
                               f"expects {_show(want)}. To fix: make the shapes agree (source `shape`, transform "
                               f"`output_shape`, or the models' `dims`)")
            elif got_dtype and want_sig.dtype and got_dtype != want_sig.dtype:
                rep.add(where, f"{what} is {got_dtype} but input {want_sig.name!r} of model {e.dst!r} expects "
                               f"{want_sig.dtype}. To fix: change the dtype or add a transform that casts")


def _produced(app: AppSpec, src: str, tensor: str | None, src_io: ModelIO | None,
              out_names: Mapping[str, set[str]]) -> tuple[tuple[int | None, ...] | None, str | None, str]:
    """Shape, dtype and a description of what node `src` sends as `tensor` (None shape: unknown)."""
    if src in app.sources:
        s = app.sources[src]
        return tuple(s.shape), s.dtype, f"source {src!r}"
    if src in app.transforms:
        t = app.transforms[src]
        if t.output_shape is None or len(out_names.get(src, set())) > 1:
            return None, None, ""  # several outputs: output_shape describes only one of them
        return tuple(t.output_shape), t.output_dtype, f"transform {src!r} output"
    if src_io is None:
        return None, None, ""
    sig = src_io.output(tensor) if tensor is not None else (src_io.outputs[0] if len(src_io.outputs) == 1 else None)
    if sig is None:
        return None, None, ""
    return _bound(sig.shape, sig.name, app.models[src].dims), sig.dtype, f"output {sig.name!r} of model {src!r}"


def validate(app: AppSpec, fleet: FleetSpec | None = None, *, app_path: str | Path | None = None,
             fleet_path: str | Path | None = None,
             catalog: Mapping[str, DeviceSpec]) -> list[str]:
    """Every problem found in the second pass, app file's first; [] when app (and fleet) are usable.

    `app_path` / `fleet_path` name the YAML files in messages (and give line numbers);
    `catalog` is the device catalog that device names may refer to (the caller loads it, e.g.
    `tierplan.devices.catalog.load_catalog()`: validation is the ground floor and imports no layer above).
    """
    app_rep = _Report(Path(app_path) if app_path else None,
                      str(Path(app.base_dir) / "app.yaml") if app.base_dir else "app.yaml")
    fleet_rep = _Report(Path(fleet_path) if fleet_path else None, "fleet.yaml")
    io: dict[str, ModelIO] = {}
    for name, m in app.models.items():
        if m.onnx is not None or m.tflite is not None:
            got = _check_model_file(app, name, m, app_rep)
            if got is not None:
                io[name] = got
    for name, t in app.transforms.items():
        _check_transform(app, name, t.function, app_rep)
    _check_edges(app, io, app_rep)
    known = set(catalog)
    if fleet is not None:
        _check_devices(fleet, catalog, fleet_rep)
        _check_pins(app, fleet, app_rep)
        known |= {s.device.name for s in fleet.sites.values() if isinstance(s.device, DeviceSpec)}
    _check_profile_devices(app, known, app_rep)
    return app_rep.sorted() + fleet_rep.sorted()


def check(app: AppSpec, fleet: FleetSpec | None = None, *, app_path: str | Path | None = None,
          fleet_path: str | Path | None = None, catalog: Mapping[str, DeviceSpec]) -> None:
    """`validate`, raising SpecError with every problem when there is any."""
    problems = validate(app, fleet, app_path=app_path, fleet_path=fleet_path, catalog=catalog)
    if problems:
        raise SpecError(problems)

"""ONNX model -> operator graph (networkx DiGraph) with FLOPs, parameter and activation bytes.

`load_onnx(path, dims)` reads the file (clear errors for corrupt files, missing external
weights, unknown operators and unbound dynamic dimensions), binds symbolic input dimensions,
runs ONNX shape inference (falling back to one onnxruntime run for tensors inference leaves
without a static shape) and builds the graph described in docs/ARCHITECTURE.md:

- node = operator (unique name): `op_type`, `flops` (multiply-add = 2), `param_bytes`,
  `out_bytes`, `act_bytes` (activations read + written), `inputs`, `outputs` (tensor names),
  `index` (position in the ONNX node list), `counted` (False when FLOPs are unknown), `conv`
  (a Conv's channels, groups, kernel and strides as partition.types.ConvShape, else None).
- edge u -> v: `tensor` (first tensor name), `tensors` (all of them), `nbytes`.

Constant-producing nodes (`Constant`, and nodes computing only from initializers and
constants, e.g. `ConstantOfShape` of an initializer shape) are weights, not operators: they
are not graph nodes; their tensors count as parameter bytes of the operators reading them and
extraction copies them into each piece that needs them. Control-flow nodes (If/Loop/Scan) are
one operator each, whole, with the outer-scope tensors their subgraphs read as inputs.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import networkx as nx
import numpy as np
import onnx
from onnx import GraphProto, ModelProto, NodeProto, OperatorSetIdProto, ValueInfoProto, helper, shape_inference

from tierplan.partition.flops import ShapeOf, op_flops, subgraphs_of
from tierplan.partition.types import ConvShape, TensorInfo
from tierplan.errors import InputError

__all__ = ["load_onnx", "read_model", "bind_dims", "outer_refs", "dims_hint", "MIN_OPSET",
           "model_sha256", "KNOWN_CUSTOM_DOMAINS", "conv_shape_of"]

MIN_OPSET = 9
# Operator domains besides ONNX's own that onnxruntime implements (contrib ops).
KNOWN_CUSTOM_DOMAINS: frozenset[str] = frozenset({"com.microsoft", "com.microsoft.nchwc", "ai.onnx.ml",
                                                  "com.ms.internal.nhwc", "ai.onnx.contrib"})
_CONST_OPS = frozenset({"Constant"})
_NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                               "Multinomial", "Bernoulli"})
_UNNAMED = frozenset({"", "?"})   # dim_param values that name nothing: bind them as TENSOR[AXIS]


def model_sha256(path: str | Path) -> str:
    """SHA-256 of a model file (cache key for partition results)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dims_hint() -> str:
    """How a user binds a dynamic dimension, for error messages."""
    return "pass --dims NAME=VALUE (tierplan partition) or `dims: {NAME: VALUE}` under the model in app.yaml"


def read_model(path: str | Path) -> ModelProto:
    """Parse an ONNX file with its external weights; InputError for corrupt files or missing data."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    data = path.read_bytes()
    if not data:
        raise InputError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf DecodeError and friends
        raise InputError(f"{path}: not a valid ONNX model (corrupt or truncated file: {type(e).__name__}); "
                         "re-export or re-download it") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise InputError(f"{path}: not a valid ONNX model (no graph; corrupt or truncated file); "
                         "re-export or re-download it")
    _load_external(model, path)
    return model


def _load_external(model: ModelProto, path: Path) -> None:
    from onnx.external_data_helper import _get_all_tensors, load_external_data_for_model, uses_external_data
    missing = []
    any_external = False
    for t in _get_all_tensors(model):
        if uses_external_data(t):
            any_external = True
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            if not (path.parent / loc).is_file():
                missing.append((t.name, loc))
    if missing:
        name, loc = missing[0]
        more = f" (and {len(missing) - 1} more tensor(s))" if len(missing) > 1 else ""
        raise InputError(f"{path}: external-data weights missing: tensor {name!r} needs file "
                         f"{str(path.parent / loc)!r}{more}; put the weights file next to the model")
    if any_external:
        try:
            load_external_data_for_model(model, str(path.parent))
        except Exception as e:
            raise InputError(f"{path}: external-data weights unreadable ({e}); "
                             "re-export the model with its weights file") from None


def _check_ops(model: ModelProto, path: Path) -> None:
    opset = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    version = opset.get("ai.onnx", opset.get("", 0))
    if version < MIN_OPSET:
        raise InputError(f"{path}: opset {version} is older than {MIN_OPSET}; convert it with "
                         f"onnx.version_converter.convert_version(model, {MIN_OPSET}) or re-export")
    unknown: set[str] = set()

    def visit(graph: GraphProto) -> None:
        for n in graph.node:
            dom = n.domain or ""
            if dom in ("", "ai.onnx"):
                if not onnx.defs.has(n.op_type):
                    unknown.add(n.op_type)
            elif dom not in KNOWN_CUSTOM_DOMAINS:
                unknown.add(f"{dom}.{n.op_type}")
            for g in subgraphs_of(n):
                visit(g)

    visit(model.graph)
    if unknown:
        raise InputError(f"{path}: unknown operators {', '.join(sorted(unknown))} (not ONNX ops nor "
                         "onnxruntime contrib ops); re-export the model with standard operators")


def _initializer_names(graph: GraphProto) -> set[str]:
    return {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}


def bind_dims(model: ModelProto, dims: Mapping[str, int] | None, path: str | Path = "model") -> ModelProto:
    """A copy of `model` whose graph inputs have every dimension fixed.

    `dims` maps a symbolic dimension name (`batch`) or `TENSOR[AXIS]` (for unnamed dynamic
    dimensions) to a value. Raises InputError naming each unbound tensor dimension.
    """
    dims = dict(dims or {})
    out = ModelProto()
    out.CopyFrom(model)
    inits = _initializer_names(out.graph)
    unbound, used = [], set()
    for inp in out.graph.input:
        if inp.name in inits or not inp.type.HasField("tensor_type"):
            continue
        tt = inp.type.tensor_type
        if not tt.HasField("shape"):
            raise InputError(f"{path}: input {inp.name!r} has no shape (rank unknown); re-export the model "
                             "with input shapes")
        for axis, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            key_axis = f"{inp.name}[{axis}]"
            if key_axis in dims:
                value, used_key = dims[key_axis], key_axis
            elif d.dim_param not in _UNNAMED and d.dim_param in dims:
                value, used_key = dims[d.dim_param], d.dim_param
            else:
                unbound.append((inp.name, axis, key_axis if d.dim_param in _UNNAMED else d.dim_param))
                continue
            if int(value) <= 0:
                raise InputError(f"{path}: dims.{used_key}: must be a positive integer, got {value}")
            used.add(used_key)
            d.Clear()
            d.dim_value = int(value)
    stray = sorted(set(dims) - used)
    if stray:
        known = _dynamic_dim_names(model)
        close = difflib.get_close_matches(stray[0], known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(f"{path}: dims.{stray[0]}: no input has a dynamic dimension by that name "
                         f"(dynamic dimensions: {', '.join(known) or 'none'}){hint}")
    if unbound:
        where = ", ".join(f"{t!r} dim {axis} ({key})" for t, axis, key in unbound)
        names = list(dict.fromkeys(key for _, _, key in unbound))
        example = ",".join(f"{k}=VALUE" for k in names)
        raise InputError(f"{path}: unbound dynamic input dimensions: {where}; pass --dims {example} "
                         f"(tierplan partition) or `dims: {{{', '.join(f'{k!r}: VALUE' for k in names)}}}` "
                         "under the model in app.yaml")
    return out


def _dynamic_dim_names(model: ModelProto) -> list[str]:
    inits = _initializer_names(model.graph)
    names = []
    for inp in model.graph.input:
        if inp.name in inits or not inp.type.HasField("tensor_type"):
            continue
        for axis, d in enumerate(inp.type.tensor_type.shape.dim):
            if not (d.HasField("dim_value") and d.dim_value > 0):
                names.append(f"{inp.name}[{axis}]" if d.dim_param in _UNNAMED else d.dim_param)
    return names


def outer_refs(graph: GraphProto) -> set[str]:
    """Tensor names a (sub)graph reads from its enclosing scope, recursively."""
    defined = {i.name for i in graph.input} | _initializer_names(graph)
    for n in graph.node:
        defined.update(o for o in n.output if o)
    used: set[str] = set()
    for n in graph.node:
        used.update(i for i in n.input if i)
        for g in subgraphs_of(n):
            used |= outer_refs(g)
    return used - defined


def _static(vi: ValueInfoProto) -> tuple[tuple[int, ...] | None, int]:
    """(shape or None, elem_type) of a ValueInfoProto."""
    if not vi.type.HasField("tensor_type"):
        return None, 0
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None, tt.elem_type
    shape = []
    for d in tt.shape.dim:
        if not d.HasField("dim_value") or d.dim_value < 0:
            return None, tt.elem_type
        shape.append(int(d.dim_value))
    return tuple(shape), tt.elem_type


def _np_dtype(elem_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


@dataclass
class _Tensors:
    """Static shape and element type of every main-graph tensor."""

    shape: dict[str, tuple[int, ...]]
    elem: dict[str, int]

    def info(self, name: str) -> TensorInfo:
        shape = self.shape[name]
        dt = _np_dtype(self.elem[name])
        return TensorInfo(name=name, shape=shape, dtype=dt.name, nbytes=int(np.prod(shape, dtype=np.int64)) * dt.itemsize)

    def nbytes(self, name: str) -> int:
        shape = self.shape.get(name)
        if shape is None:
            return 0
        return int(np.prod(shape, dtype=np.int64)) * _np_dtype(self.elem[name]).itemsize


def _infer(model: ModelProto, path: Path) -> ModelProto:
    try:
        return shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:
        raise InputError(f"{path}: ONNX shape inference failed ({str(e).splitlines()[0][:200]}); "
                         "check the model with onnx.checker.check_model") from None


def _collect(model: ModelProto) -> _Tensors:
    g = model.graph
    shape, elem = {}, {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        s, e = _static(vi)
        if e:
            elem[vi.name] = e
        if s is not None:
            shape[vi.name] = s
    for t in g.initializer:
        shape[t.name] = tuple(int(d) for d in t.dims)
        elem[t.name] = t.data_type
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.type == a.TENSOR:
                    shape[n.output[0]] = tuple(int(d) for d in a.t.dims)
                    elem[n.output[0]] = a.t.data_type
    return _Tensors(shape, elem)


def _shapes_by_running(model: ModelProto, tensors: _Tensors, missing: list[str], path: Path,
                       feeds: Mapping[str, np.ndarray] | None) -> None:
    """Fill shapes ONNX inference left unknown by one onnxruntime run on random inputs."""
    import onnxruntime as ort

    from tierplan.partition.feeds import random_feeds

    probe = ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for name in missing:
        if name not in have and name in tensors.elem:
            probe.graph.output.append(helper.make_tensor_value_info(name, tensors.elem[name], None))
    inits = _initializer_names(model.graph)
    inputs = [tensors.info(i.name) for i in model.graph.input if i.name not in inits]
    try:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 4
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        values = sess.run(names, {**random_feeds(inputs, seed=0), **dict(feeds or {})})
    except Exception as e:
        raise InputError(f"{path}: tensors {', '.join(missing[:3])} have no static shape and the model "
                         f"failed to run to find them ({str(e).splitlines()[0][:200]}); "
                         f"check the input dimensions ({dims_hint()})") from None
    for name, v in zip(names, values):
        if isinstance(v, np.ndarray):
            tensors.shape[name] = tuple(int(d) for d in v.shape)
            tensors.elem[name] = helper.np_dtype_to_tensor_dtype(v.dtype)


def _const_nodes(model: ModelProto) -> tuple[set[int], set[str]]:
    """Indices of nodes that only compute constants, and the constant tensor names (initializers too)."""
    g = model.graph
    const = set(_initializer_names(g))
    idx = set()
    for i, n in enumerate(g.node):
        if n.op_type in _NONDETERMINISTIC or subgraphs_of(n):
            continue
        ins = [x for x in n.input if x]
        if n.op_type in _CONST_OPS or (ins and all(x in const for x in ins)):
            idx.add(i)
            const.update(o for o in n.output if o)
    return idx, const


def _branch_shapes(graph: GraphProto, shapes: Mapping[str, tuple[int, ...]], elems: Mapping[str, int],
                   opsets: Iterable[OperatorSetIdProto]) -> dict[str, tuple[int, ...]]:
    """Static shapes inside an If branch, inferred with the outer-scope tensors' shapes as inputs.

    ONNX inference of the whole model leaves branch tensors symbolic when the branch reads outer
    tensors; re-running it on the branch alone, with those tensors bound, makes them static.
    """
    if len(graph.input):   # Loop/Scan bodies have per-iteration inputs: leave them as they are
        return {}
    refs = sorted(outer_refs(graph))
    if any(r not in shapes or r not in elems for r in refs):
        return {}
    probe = helper.make_graph(list(graph.node), "branch",
                              [helper.make_tensor_value_info(r, elems[r], list(shapes[r])) for r in refs],
                              [helper.make_tensor_value_info(o.name, 0, None) for o in graph.output],
                              initializer=list(graph.initializer))
    try:
        m = shape_inference.infer_shapes(helper.make_model(probe, opset_imports=list(opsets)),
                                         check_type=False, strict_mode=False, data_prop=True)
    except Exception:   # the branch stays uncounted and is listed as such
        return {}
    out = {}
    for vi in list(m.graph.value_info) + list(m.graph.output):
        st, _ = _static(vi)
        if st is not None:
            out[vi.name] = st
    return out


def _subgraph_flops_fn(outer_shapes: Mapping[str, tuple[int, ...]], elems: Mapping[str, int] | None = None,
                       opsets: Iterable[OperatorSetIdProto] = (),
                       ) -> Callable[[GraphProto], tuple[float, list[str]]]:
    """A function graph -> (flops, uncounted op types) for control-flow bodies."""
    def count(graph: GraphProto) -> tuple[float, list[str]]:
        local = dict(outer_shapes)
        local_elems = dict(elems or {})
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            s, e = _static(vi)
            if s is not None:
                local[vi.name] = s
            if e:
                local_elems[vi.name] = e
        for t in graph.initializer:
            local[t.name] = tuple(int(d) for d in t.dims)
            local_elems[t.name] = t.data_type
        produced = [o for n in graph.node for o in n.output if o]
        if elems is not None and any(o not in local for o in produced):
            local.update(_branch_shapes(graph, local, local_elems, opsets))
        total, bad = 0.0, []
        inner = _subgraph_flops_fn(local, local_elems if elems is not None else None, opsets)
        for n in graph.node:
            f = op_flops(n, local.get, inner)
            if f is None:
                bad.append(n.op_type)
            else:
                total += f
        return total, bad
    return count


def _uncounted_inside(node: NodeProto, outer_shapes: Mapping[str, tuple[int, ...]], elems: Mapping[str, int] | None,
                      opsets: Iterable[OperatorSetIdProto]) -> list[str]:
    bad: list[str] = []
    fn = _subgraph_flops_fn(outer_shapes, elems, opsets)
    for g in subgraphs_of(node):
        bad.extend(fn(g)[1])
    return bad


def load_onnx(path: str | Path, dims: Mapping[str, int] | None = None,
              feeds: Mapping[str, np.ndarray] | None = None) -> nx.DiGraph:
    """Load an ONNX model as an operator graph (see the module docstring for attributes).

    `dims` binds dynamic input dimensions (see `bind_dims`). `feeds` are input values for the
    trial run that finds shapes ONNX inference cannot (random floats and zero integers by
    default; give them when the model's control flow depends on an input, e.g. a sample rate).

    >>> import onnx, os
    >>> G = load_onnx(os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light/light_squeezenet.onnx"))
    >>> G.graph["inputs"][0].shape
    (1, 3, 224, 224)
    """
    path = Path(path)
    raw = read_model(path)
    _check_ops(raw, path)
    bound = bind_dims(raw, dims, path)
    # `model` is only read for shapes; pieces are cut from `raw`: inferred subgraph value_info
    # and inputs fixed to one size can make onnxruntime reject control-flow branches.
    model = _infer(bound, path)
    tensors = _collect(model)
    g = model.graph
    const_idx, const = _const_nodes(model)
    inits = _initializer_names(g)

    consumed = {x for n in g.node for x in list(n.input) + sorted(outer_refs_of_node(n)) if x}
    consumed |= {o.name for o in g.output}
    needed = [o for i, n in enumerate(g.node) if i not in const_idx for o in n.output if o in consumed]
    needed += [o.name for o in g.output]
    missing = [t for t in needed if t not in tensors.shape]
    if missing:
        _shapes_by_running(model, tensors, missing, path, feeds)
        still = [t for t in needed if t not in tensors.shape]
        if still:
            raise InputError(f"{path}: tensor {still[0]!r} has no static shape after shape inference "
                             f"and a trial run; {dims_hint()}")

    G = nx.DiGraph()
    producer: dict[str, str] = {}
    used_names: set[str] = set()
    uncounted: set[str] = set()
    sub_fn = _subgraph_flops_fn(tensors.shape, tensors.elem, model.opset_import)
    for i, n in enumerate(g.node):
        if i in const_idx:
            continue
        name = n.name or f"{n.op_type}_{i}"
        if name in used_names:
            name = f"{name}__{i}"
        used_names.add(name)
        implicit = sorted(outer_refs_of_node(n))
        ins = [x for x in n.input if x]
        ins += [x for x in implicit if x not in ins]
        outs = [o for o in n.output if o]
        flops = op_flops(n, tensors.shape.get, sub_fn)
        if flops is None:
            uncounted.add(n.op_type)
            uncounted.update(_uncounted_inside(n, tensors.shape, tensors.elem, model.opset_import))
        param_bytes = sum(tensors.nbytes(x) for x in set(ins) if x in const)
        act_in = sum(tensors.nbytes(x) for x in set(ins) if x not in const)
        out_bytes = sum(tensors.nbytes(o) for o in outs)
        G.add_node(name, op_type=n.op_type, flops=float(flops or 0.0), counted=flops is not None,
                   param_bytes=int(param_bytes), out_bytes=int(out_bytes), act_bytes=int(act_in + out_bytes),
                   inputs=tuple(ins), outputs=tuple(outs), index=i, conv=conv_shape_of(n, tensors.shape.get))
        for o in outs:
            producer[o] = name
    for v, data in G.nodes(data=True):
        for t in data["inputs"]:
            u = producer.get(t)
            if u is None or u == v:
                continue
            if G.has_edge(u, v):
                e = G.edges[u, v]
                if t not in e["tensors"]:
                    e["tensors"] = e["tensors"] + (t,)
                    e["nbytes"] += tensors.nbytes(t)
            else:
                G.add_edge(u, v, tensor=t, tensors=(t,), nbytes=tensors.nbytes(t))

    G.graph.update(
        model=path.stem, path=str(path),
        inputs=[tensors.info(i.name) for i in g.input if i.name not in inits],
        outputs=[tensors.info(o.name) for o in g.output],
        uncounted_ops=sorted(uncounted), dims=dict(dims or {}),
        onnx=raw, const_nodes=sorted(const_idx), const_tensors=frozenset(const),
        tensors={k: tensors.info(k) for k in tensors.shape if k in tensors.elem},
    )
    return G


def conv_shape_of(node: NodeProto, shape_of: ShapeOf) -> ConvShape | None:
    """A Conv node's channels, groups, kernel and strides from its weight's static shape (O, I/group, k...)
    and attributes; None for other operators or an unknown weight shape."""
    if node.op_type != "Conv" or len(node.input) < 2:
        return None
    w = shape_of(node.input[1])
    if w is None or len(w) < 3:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    groups = int(attrs.get("group", 1) or 1)
    kernel = tuple(int(k) for k in attrs.get("kernel_shape", w[2:]))
    strides = tuple(int(s) for s in attrs.get("strides", (1,) * len(kernel)))
    return ConvShape(in_channels=int(w[1]) * groups, out_channels=int(w[0]), groups=groups, kernel=kernel,
                     strides=strides)


def outer_refs_of_node(node: NodeProto) -> set[str]:
    """Outer-scope tensors read by a control-flow node's subgraphs (its implicit inputs)."""
    refs: set[str] = set()
    for sg in subgraphs_of(node):
        refs |= outer_refs(sg)
    return refs


"""The app graph: sources, model pieces, host-side transforms and sinks joined by data-flow edges.

Nodes (ids unique across kinds), as in docs/ARCHITECTURE.md:
- source `name`: kind="source", spec, pin (site class or tier), nbytes (one request).
- piece `<model>/p<k>`: kind="piece", piece (partition.types.Piece), model.
- transform `name`: kind="transform", spec.
- sink `sink:<name>`: kind="sink", spec.
Every node has `rate_factor` (invocations per source request: a transform's fanout multiplies
it for everything downstream) and `source` (the source driving it; `sources` lists all).
Edges: `nbytes` per invocation of the producer (a transform's edge carries fanout items of
`item_nbytes` each), `tensors` (names), `private` (raw data of a private source not yet through
a model; a transform reading raw private data, e.g. a crop of the frame, passes it on).
`G.graph["unfed_inputs"]` lists (model, input) pairs no edge feeds (state, sample rate).

ONNX models are partitioned by `partition_model` into `pieces_dir/<model>-<key>/` (reused when
the model file, dims and piece count are unchanged); profile-table models become one piece per
layer (or per group of layers when coarsened) carrying `measured_ms` and no file; a .tflite
model is one piece.
"""

from __future__ import annotations

from pathlib import Path
from typing import Hashable, Mapping, Sequence, cast

import networkx as nx
import numpy as np

from tierplan.partition.api import partition_model
from tierplan.partition.candidates import PROFILE_SEGMENTS, candidate_cuts, cuts_at
from tierplan.partition.cuts import coarsen, partition_from_cuts, topological_order
from tierplan.partition.onnx_graph import read_model
from tierplan.partition.types import OpCost, Piece, TensorInfo
from tierplan.errors import InputError
from tierplan.spec import AppSpec, ModelSpec, ProfileTable

__all__ = ["build_app_graph", "profile_pieces", "ModelPieces", "model_pieces", "source_dims"]

PROFILE_INPUT = "input"   # tensor name of a profile-table model's input


class ModelPieces:
    """A model's pieces plus which piece makes / reads each model-level tensor."""

    def __init__(self, name: str, pieces: list[Piece], inputs: list[TensorInfo], outputs: list[TensorInfo],
                 cuts: tuple[int, ...] = ()):
        self.name = name
        self.pieces = pieces
        self.inputs = inputs
        self.outputs = outputs
        self.cuts = cuts    # positions (of the model's op / layer order) between consecutive pieces

    def readers(self, tensor: str) -> list[Piece]:
        return [p for p in self.pieces if any(t.name == tensor for t in p.inputs)]

    def producer(self, tensor: str) -> Piece | None:
        return next((p for p in self.pieces if any(t.name == tensor for t in p.outputs)), None)


def _nbytes(shape, dtype: str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


# ----------------------------------------------------------------------------- profile tables
def profile_pieces(name: str, table: ProfileTable, max_pieces: int | None = None,
                   cuts: Sequence[int] | None = None, segments: int | None = None) -> ModelPieces:
    """Pieces of a profile-table model: one per layer, or layers grouped into at most `max_pieces`
    (or cut at the layer positions `cuts`, or at the candidate cuts of at most `segments` segments).

    A group's `measured_ms` sums its layers' latencies for the devices every layer was measured
    on. Layer tensors are named after the layer and typed as bytes (uint8).
    """
    layers = list(table.layers)
    names = [l.name for l in layers]
    if len(set(names)) != len(names):
        raise InputError(f"models.{name}.profile.layers: duplicate layer names")
    G = nx.DiGraph()
    for i, l in enumerate(layers):
        G.add_node(l.name, index=i, flops=l.flops, op_type="profile_layer")
    for i, l in enumerate(layers):
        srcs = l.inputs if l.inputs is not None else ([names[i - 1]] if i else [])
        for s in srcs:
            if s == PROFILE_INPUT:
                continue
            if s not in G:
                raise InputError(f"models.{name}.profile.layers[{i}].inputs: unknown layer {s!r}")
            G.add_edge(s, l.name, tensor=s, tensors=(s,), nbytes=by_name(layers, s).output_bytes)
    if not nx.is_directed_acyclic_graph(G):
        raise InputError(f"models.{name}.profile.layers: the layer inputs form a cycle")
    k = len(layers) if max_pieces is None else max(1, min(max_pieces, len(layers)))
    flops: dict[Hashable, float] = {l.name: l.flops or 1.0 for l in layers}   # a cut's weight per graph node
    if cuts is not None:
        part = partition_from_cuts(topological_order(G), cuts_at(G, cuts))
    elif segments is not None:
        part = partition_from_cuts(topological_order(G), candidate_cuts(G, segments, weight=flops.__getitem__))
    else:
        part = coarsen(G, k, weight=flops.__getitem__, min_piece_frac=0.0)
    t_in = TensorInfo(PROFILE_INPUT, (table.input_bytes,), "uint8", table.input_bytes)
    consumed_later = {u for u, _ in G.edges}
    where = part.piece_of()
    pieces = []
    for idx, nodes in enumerate(part.pieces):
        group = cast(tuple[str, ...], nodes)   # the graph's nodes are the layer names
        members = [by_name(layers, v) for v in group]
        gset = set(group)
        ins: list[TensorInfo] = []
        for v in group:
            i = names.index(v)
            l = members[group.index(v)]
            srcs = l.inputs if l.inputs is not None else ([names[i - 1]] if i else [PROFILE_INPUT])
            if l.inputs is not None and not l.inputs:
                srcs = [PROFILE_INPUT]
            for s in srcs:
                if s == PROFILE_INPUT:
                    t = t_in
                elif s in gset:
                    continue
                else:
                    ob = by_name(layers, s).output_bytes
                    t = TensorInfo(s, (ob,), "uint8", ob)
                if t not in ins:
                    ins.append(t)
        outs = [TensorInfo(v, (m.output_bytes,), "uint8", m.output_bytes) for v, m in zip(group, members)
                if v not in consumed_later or any(where[w] != idx for w in G.successors(v))]
        devices = set.intersection(*(set(m.latency_ms) for m in members)) if members else set()
        measured = {d: float(sum(m.latency_ms[d] for m in members)) for d in sorted(devices)}
        pieces.append(Piece(
            id=f"{name}/p{idx}", model=name, index=idx, nodes=tuple(group), inputs=tuple(ins), outputs=tuple(outs),
            flops=float(sum(m.flops for m in members)), param_bytes=int(sum(m.param_bytes for m in members)),
            ops=tuple(OpCost(m.name, "profile_layer", m.flops, m.param_bytes, m.output_bytes) for m in members),
            file=None, measured_ms=measured))
    model_outs = [TensorInfo(v, (by_name(layers, v).output_bytes,), "uint8", by_name(layers, v).output_bytes)
                  for v in names if G.out_degree(v) == 0]
    return ModelPieces(name, pieces, [t_in], model_outs, tuple(c.position for c in part.cuts))


def by_name(layers, name: str):
    return next(l for l in layers if l.name == name)


# ----------------------------------------------------------------------------- ONNX / tflite
def _declared_inputs(path: Path) -> list[tuple[str, list]]:
    m = read_model(path)
    inits = {t.name for t in m.graph.initializer}
    out = []
    for i in m.graph.input:
        if i.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                for d in i.type.tensor_type.shape.dim]
        out.append((i.name, dims))
    return out


def source_dims(path: Path, given: Mapping[str, int], fed: Mapping[str, list[int]]) -> dict[str, int]:
    """`given` dims plus values for dynamic input dimensions read off the shapes feeding them.

    `fed` maps a model input name to the shape of what feeds it (a source's shape, a transform's
    output_shape); a dynamic axis takes the value at the same axis when the ranks agree.
    """
    dims = dict(given)
    for name, declared in _declared_inputs(path):
        shape = fed.get(name)
        if shape is None or len(shape) != len(declared):
            continue
        for axis, (d, v) in enumerate(zip(declared, shape)):
            if isinstance(d, int):
                continue
            key = d if d not in ("", "?") else f"{name}[{axis}]"
            if key not in dims and f"{name}[{axis}]" not in dims:
                dims[key] = int(v)
    return dims


def _tflite_pieces(name: str, path: Path) -> ModelPieces:
    """A .tflite model as a single piece (LiteRT runs it whole), with every operator's cost (tflite_graph)."""
    from tierplan.partition.tflite_graph import tflite_piece
    try:
        piece = tflite_piece(path.resolve(), f"{name}/p0", model=name)
    except InputError as e:
        raise InputError(f"models.{name}.tflite: {e}") from None
    return ModelPieces(name, [piece], list(piece.inputs), list(piece.outputs))


def model_pieces(app: AppSpec, name: str, pieces_dir: str | Path | None, max_pieces: int | None = None,
                 fed: Mapping[str, list[int]] | None = None, cuts: Sequence[int] | None = None,
                 segments: int | None = None) -> ModelPieces:
    """The pieces of one app model (partitioned ONNX, profile table or whole .tflite); `cuts` /
    `segments` as in partition_model (the planner's chosen cuts / the candidates it chooses from)."""
    spec: ModelSpec = app.models[name]
    k = max_pieces if max_pieces is not None else spec.max_pieces
    if spec.profile is not None:
        # a profile's layers are few and measured: every boundary up to PROFILE_SEGMENTS is a candidate
        return profile_pieces(name, spec.profile, k, cuts=cuts,
                              segments=None if segments is None else max(segments, PROFILE_SEGMENTS))
    if spec.tflite is not None:
        path = app.resolve_path(spec.tflite)
        if not path.is_file():
            raise InputError(f"models.{name}.tflite: file not found {str(path)!r}")
        return _tflite_pieces(name, path)
    assert spec.onnx is not None   # ModelSpec holds exactly one of profile, tflite and onnx
    path = app.resolve_path(spec.onnx)
    if not path.is_file():
        raise InputError(f"models.{name}.onnx: file not found {str(path)!r}")
    dims = source_dims(path, spec.dims, fed or {})
    out_dir = None
    if pieces_dir is not None:
        from tierplan.partition.api import _cache_key
        from tierplan.partition.onnx_graph import model_sha256
        how = list(cuts) if cuts is not None else f"segments:{segments}" if segments is not None else None
        out_dir = Path(pieces_dir) / f"{name}-{_cache_key(model_sha256(path), dims, k, name, how)}"
    try:
        res = partition_model(path, max_pieces=k, out_dir=out_dir, dims=dims, model_name=name, cuts=cuts,
                              segments=segments)
    except InputError as e:
        raise InputError(f"models.{name}: {e}") from None
    m = res.manifest
    from tierplan.partition.api import _tensor
    return ModelPieces(name, res.pieces, [_tensor(t) for t in m["inputs"]], [_tensor(t) for t in m["outputs"]],
                       tuple(int(c["position"]) for c in m.get("cuts", ())))


# ----------------------------------------------------------------------------- the app graph
def _edge_pairs(app: AppSpec, i: int, models: Mapping[str, ModelPieces]) -> list[tuple[str, str]]:
    """(producer output, consumer input) names of edge i.

    A source has one output named after it; a model's outputs and inputs are its ONNX tensor
    names (or profile layers); a transform's outputs and inputs are whatever the edges call
    them (one output named after the transform when an edge gives no names).
    """
    e = app.edges[i]
    where = f"edges[{i}]"
    if e.src in app.sources:
        outs = [e.src]
    elif e.src in models:
        outs = [t.name for t in models[e.src].outputs]
    else:
        outs = None                                   # a transform: names come from the edge
    ins = [t.name for t in models[e.dst].inputs] if e.dst in models else None
    if e.tensors:
        for o, i_name in e.tensors.items():
            if outs is not None and o not in outs:
                raise InputError(f"{where}.tensors: {o!r} is not an output of {e.src!r} "
                                 f"(outputs: {', '.join(outs)})")
            if ins is not None and i_name not in ins:
                raise InputError(f"{where}.tensors: {i_name!r} is not an input of {e.dst!r} "
                                 f"(inputs: {', '.join(ins)})")
        return list(e.tensors.items())
    outs = outs if outs is not None else [e.src]
    return list(zip(outs, ins)) if ins is not None else [(o, o) for o in outs]


def _output_info(app: AppSpec, src: str, out: str, dst: str, dst_in: str,
                 models: Mapping[str, ModelPieces]) -> TensorInfo:
    """The tensor `out` of node `src` as it flows into `dst_in` of `dst` (one item, bytes per item)."""
    if src in app.sources:
        s = app.sources[src]
        return TensorInfo(src, tuple(s.shape), s.dtype, _nbytes(s.shape, s.dtype))
    if src in models:
        return next(t for t in models[src].outputs if t.name == out)
    if dst in models:   # a transform feeding a model: one item is what the model input takes
        m_in = next(t for t in models[dst].inputs if t.name == dst_in)
        return TensorInfo(out, m_in.shape, m_in.dtype, m_in.nbytes)
    t = app.transforms[src]
    if t.output_shape is None:
        return TensorInfo(out, (0,), t.output_dtype, 0)
    return TensorInfo(out, tuple(t.output_shape), t.output_dtype, _nbytes(t.output_shape, t.output_dtype))


def build_app_graph(app: AppSpec, pieces_dir: str | Path | None, max_pieces: int | None = None, *,
                    segments: int | None = None, cuts: Mapping[str, Sequence[int]] | None = None) -> nx.DiGraph:
    """Join the app's sources, model pieces, transforms and sinks into one DAG (module docstring).

    `segments`: each partitionable model is cut at its candidate cut points (at most that many
    segments, partition.candidates) for the planner to choose cuts among; the graph then carries
    `G.graph["segments"][model] = {"cuts": positions, "max_pieces": k}`. `cuts[model]`: that model
    cut exactly at those positions (the planner's choice).
    """
    g = nx.DiGraph(app=app.name)
    models: dict[str, ModelPieces] = {}
    for n in app.models:
        spec = app.models[n]
        fed: dict[str, list[int]] = {}
        if spec.onnx is not None:   # shapes of sources / transforms feeding the inputs bind dynamic dims
            declared = ModelPieces(n, [], [TensorInfo(x, (), "float32", 0) for x, _ in
                                           _declared_inputs(app.resolve_path(spec.onnx))], [])
            for i, e in enumerate(app.edges):
                if e.dst != n or e.src in app.models:
                    continue
                for _, i_name in _edge_pairs(app, i, {n: declared}):
                    if e.src in app.sources:
                        fed[i_name] = list(app.sources[e.src].shape)
                    elif (shape := app.transforms[e.src].output_shape) is not None:
                        fed[i_name] = list(shape)
        models[n] = model_pieces(app, n, pieces_dir, max_pieces, fed,
                                 cuts=(cuts or {}).get(n), segments=segments if not (cuts and n in cuts) else None)
    if segments is not None:
        g.graph["segments"] = {n: {"cuts": mp.cuts, "max_pieces": int(app.models[n].max_pieces)}
                               for n, mp in models.items() if len(mp.pieces) > 1}

    # nodes
    for s, src_spec in app.sources.items():
        g.add_node(s, kind="source", spec=src_spec, pin=src_spec.at, nbytes=_nbytes(src_spec.shape, src_spec.dtype))
    for m, mp in models.items():
        for p in mp.pieces:
            g.add_node(p.id, kind="piece", piece=p, model=m)
        for p in mp.pieces:   # edges between pieces of one model
            for t in p.inputs:
                src = mp.producer(t.name)
                if src is not None and src.id != p.id:
                    _add_edge(g, src.id, p.id, t)
    for tname, tf_spec in app.transforms.items():
        g.add_node(tname, kind="transform", spec=tf_spec)
    for name, sink_spec in app.sinks.items():
        g.add_node(f"sink:{name}", kind="sink", spec=sink_spec)

    # data-flow edges
    fed_inputs: set[tuple[str, str]] = set()
    transform_outs: dict[str, dict[str, TensorInfo]] = {t: {} for t in app.transforms}
    for i, e in enumerate(app.edges):
        for o, i_name in _edge_pairs(app, i, models):
            t = _output_info(app, e.src, o, e.dst, i_name, models)
            if e.src in app.transforms:
                transform_outs[e.src].setdefault(o, t)
            u = _producer_node(e.src, o, models)
            if e.dst in models:
                fed_inputs.add((e.dst, i_name))
                consumers = [p.id for p in models[e.dst].readers(i_name)]
                if not consumers:
                    raise InputError(f"edges[{i}]: input {i_name!r} of model {e.dst!r} is read by no operator")
            else:
                consumers = [e.dst]
            for v in consumers:
                _add_edge(g, u, v, t)
    for name, sink_spec in app.sinks.items():
        if sink_spec.src in models:
            for t in models[sink_spec.src].outputs:
                prod = models[sink_spec.src].producer(t.name)
                if prod is not None:
                    _add_edge(g, prod.id, f"sink:{name}", t)
        else:
            outs = (list(transform_outs[sink_spec.src].values())
                    or [_output_info(app, sink_spec.src, sink_spec.src, "", "", models)])
            for t in outs:
                _add_edge(g, sink_spec.src, f"sink:{name}", t)

    if not nx.is_directed_acyclic_graph(g):
        raise InputError("edges: the joined app graph has a cycle")
    _rates_and_privacy(app, g)
    # model inputs no edge feeds (recurrent state, sample rates): the runtime supplies them
    g.graph["unfed_inputs"] = [(m, t.name) for m, mp in models.items() for t in mp.inputs
                               if (m, t.name) not in fed_inputs]
    return g


def _producer_node(src: str, tensor: str, models: Mapping[str, ModelPieces]) -> str:
    if src in models:
        p = models[src].producer(tensor)
        if p is None:
            raise InputError(f"model {src!r}: output {tensor!r} is produced by no piece")
        return p.id
    return src


def _add_edge(g: nx.DiGraph, u: str, v: str, t: TensorInfo) -> None:
    if g.has_edge(u, v):
        d = g.edges[u, v]
        if t.name not in d["tensors"]:
            d["tensors"] = d["tensors"] + (t.name,)
            d["item_nbytes"] += t.nbytes
    else:
        g.add_edge(u, v, tensors=(t.name,), item_nbytes=t.nbytes)


def _rates_and_privacy(app: AppSpec, g: nx.DiGraph) -> None:
    """rate_factor, source(s) per node; nbytes (per producer call: fanout x item) and private per edge."""
    for v in nx.topological_sort(g):
        d = g.nodes[v]
        preds = list(g.predecessors(v))
        if d["kind"] == "source":
            d["rate_factor"], d["sources"] = 1.0, (v,)
        else:
            rates = [g.nodes[u]["rate_factor"] * _fanout(app, g, u) for u in preds]
            d["rate_factor"] = max(rates) if rates else 1.0
            d["sources"] = tuple(sorted({s for u in preds for s in g.nodes[u]["sources"]}))
        d["source"] = d["sources"][0] if d["sources"] else None
        # raw private data: from a private source, or a transform whose inputs are all raw private
        if d["kind"] == "source":
            d["raw_private"] = d["spec"].private
        elif d["kind"] == "transform":   # a host-side step on raw private data (a crop) still carries it
            d["raw_private"] = any(g.nodes[u]["raw_private"] for u in preds)
        else:
            d["raw_private"] = False
        for u in preds:
            e = g.edges[u, v]
            e["nbytes"] = int(round(e["item_nbytes"] * _fanout(app, g, u)))
            e["private"] = bool(g.nodes[u]["raw_private"])
    for _, d in g.nodes(data=True):
        d.pop("raw_private", None)


def _fanout(app: AppSpec, g: nx.DiGraph, u: str) -> float:
    return app.transforms[u].fanout if g.nodes[u]["kind"] == "transform" else 1.0

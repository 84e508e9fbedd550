"""Pieces for profiling and calibration: an ONNX file (whole model or extracted piece) as a Piece with per-op costs.

`piece_from_onnx` reads one standalone ONNX file through partition.onnx_graph.load_onnx, so a piece's
operator costs are counted exactly as the planner counts them; a .tflite file is read by
partition.tflite_graph (the whole model, one piece, as LiteRT runs it). `pieces_from_dir` reads a
`tierplan partition` output directory (manifest.json). `slice_model` cuts a model into contiguous
pieces at its cheapest cuts (partition.cuts.coarsen) and extracts each with onnx.utils.Extractor:
enough for calibration and the benchmark, independent of the partitioner's extraction step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Hashable, Iterable, Mapping

import networkx as nx
import onnx
import onnx.utils
import numpy as np

from tierplan.partition.onnx_graph import load_onnx
from tierplan.partition.types import OpCost, Piece, TensorInfo
from tierplan.errors import InputError

__all__ = ["ops_of", "piece_from_onnx", "pieces_from_dir", "slice_model", "load_target"]


def ops_of(G: nx.DiGraph, nodes: Iterable[Hashable] | None = None) -> tuple[OpCost, ...]:
    """OpCost of each operator of G (or of `nodes`), in graph order."""
    names = list(G.nodes) if nodes is None else list(nodes)
    return tuple(OpCost(name=str(v), op_type=G.nodes[v]["op_type"], flops=float(G.nodes[v]["flops"]),
                        param_bytes=int(G.nodes[v]["param_bytes"]), act_bytes=int(G.nodes[v]["act_bytes"]),
                        conv=G.nodes[v].get("conv"))
                 for v in names)


def piece_from_onnx(path: str | Path, piece_id: str | None = None, model: str | None = None,
                    index: int = 0, dims: Mapping[str, int] | None = None) -> Piece:
    """One ONNX (or .tflite) file as a Piece carrying every operator's cost (dims bind dynamic input dimensions)."""
    path = Path(path)
    if path.suffix == ".tflite":
        from tierplan.partition.tflite_graph import tflite_piece
        return tflite_piece(path, piece_id, model=model, index=index)
    G = load_onnx(path, dims)
    model = model or path.stem
    ops = ops_of(G)
    return Piece(id=piece_id or f"{model}/p{index}", model=model, index=index, nodes=tuple(o.name for o in ops),
                 inputs=tuple(G.graph["inputs"]), outputs=tuple(G.graph["outputs"]),
                 flops=sum(o.flops for o in ops), param_bytes=sum(o.param_bytes for o in ops), ops=ops,
                 file=str(path))


def pieces_from_dir(directory: str | Path) -> list[Piece]:
    """The pieces listed in a partition output directory's manifest.json, with per-op costs."""
    directory = Path(directory)
    manifest = directory / "manifest.json"
    if not manifest.is_file():
        raise InputError(f"{directory}: no manifest.json; To fix: pass an ONNX file or a directory written by "
                         f"`tierplan partition MODEL --out DIR`")
    try:
        data = json.loads(manifest.read_text())
        entries = list(data["pieces"])
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{manifest}: not a partition manifest ({e.__class__.__name__}: {e})")
    out = []
    for i, entry in enumerate(entries):
        file = directory / str(entry.get("file", ""))
        if not file.is_file():
            raise InputError(f"{manifest}: pieces[{i}].file: {file} not found")
        pid = str(entry.get("id", f"{data.get('model', directory.name)}/p{i}"))
        out.append(piece_from_onnx(file, pid, model=str(data.get("model", directory.name)), index=i))
    return out


def load_target(target: str | Path, dims: Mapping[str, int] | None = None) -> list[Piece]:
    """MODEL.onnx or MODEL.tflite -> [the whole model as one piece]; DIR -> its pieces (manifest.json)."""
    target = Path(target)
    if target.is_dir():
        return pieces_from_dir(target)
    if not target.is_file():
        raise InputError(f"{target}: no such model file or partition directory")
    return [piece_from_onnx(target, f"{target.stem}/p0", model=target.stem, dims=dims)]


def slice_model(path: str | Path, out_dir: str | Path, max_pieces: int, dims: Mapping[str, int] | None = None,
                min_piece_frac: float | None = None) -> list[Piece]:
    """Cut a model into at most `max_pieces` contiguous pieces at its cheapest cuts; write piece files.

    Each piece becomes `<out_dir>/<model>_p<k>.onnx` (standalone; initializers it reads are copied in).
    """
    from tierplan.partition.cuts import coarsen, topological_order

    path, out_dir = Path(path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    G = load_onnx(path, dims)
    order = topological_order(G)
    part = coarsen(G, max_pieces, weight=lambda v: 1.0, min_piece_frac=min_piece_frac, order=order)
    model = _with_value_info(G.graph["onnx"], G.graph["tensors"])
    graph_in = {t.name for t in G.graph["inputs"]}
    graph_out = [t.name for t in G.graph["outputs"]]
    producer = {t: v for v in G.nodes for t in G.nodes[v]["outputs"]}
    pieces = []
    for k, nodes in enumerate(part.pieces):
        members = set(nodes)
        ins: list[str] = []
        for v in nodes:
            for t in G.nodes[v]["inputs"]:
                if (t in graph_in or producer.get(t) not in members and t in producer) and t not in ins:
                    ins.append(t)
        outs: list[str] = []
        for v in nodes:
            for t in G.nodes[v]["outputs"]:
                used_outside = any(w not in members for w in G.successors(v) if t in G.edges[v, w]["tensors"])
                if (used_outside or t in graph_out) and t not in outs:
                    outs.append(t)
        file = out_dir / f"{path.stem}_p{k}.onnx"
        sub = onnx.utils.Extractor(model).extract_model(ins, outs)
        _fix_shapes(sub, G.graph["tensors"])
        onnx.save(sub, str(file))
        pieces.append(piece_from_onnx(file, f"{path.stem}/p{k}", model=path.stem, index=k))
    return pieces


def _fix_shapes(model: onnx.ModelProto, tensors: Mapping[str, TensorInfo]) -> None:
    """Give the extracted piece's inputs and outputs the static shapes the whole model inferred."""
    for vi in list(model.graph.input) + list(model.graph.output):
        info = tensors.get(vi.name)
        if info is None or not vi.type.HasField("tensor_type"):
            continue
        shape = vi.type.tensor_type.shape
        shape.ClearField("dim")
        for d in info.shape:
            shape.dim.add().dim_value = int(d)


def _with_value_info(model: onnx.ModelProto, tensors: Mapping[str, TensorInfo]) -> onnx.ModelProto:
    """A copy of `model` declaring every tensor's static shape (the extractor needs value_info for cuts)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    known = {v.name for v in g.value_info} | {v.name for v in g.input} | {v.name for v in g.output}
    known |= {i.name for i in g.initializer}
    for name, info in tensors.items():
        if name in known:
            continue
        elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(info.dtype))
        g.value_info.append(onnx.helper.make_tensor_value_info(name, elem, list(info.shape)))
    return out

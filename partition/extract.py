"""Extraction of pieces as standalone ONNX files, and the chained onnxruntime check against the whole model.

Each piece file holds the piece's operators, the constant-producing nodes and initializers they
read (and nothing else), its inputs and outputs by their original tensor names with static
shapes. A piece's outputs are the tensors a later piece reads plus the model outputs it makes.
Control-flow nodes travel whole, with the outer-scope tensors their subgraphs read as inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, AbstractSet, Any, Hashable, Iterable, Mapping, Sequence

import networkx as nx
import numpy as np
from onnx import ModelProto, ValueInfoProto, helper

from tierplan.partition.cuts import Partition
from tierplan.partition.feeds import random_feeds
from tierplan.partition.flops import subgraphs_of
from tierplan.partition.types import OpCost, Piece, TensorInfo
from tierplan.errors import InputError

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = ["build_pieces", "piece_model", "write_pieces", "VerifyResult", "verify_pieces", "run_pieces",
           "run_model", "session"]


# IR version from which initializers need not be listed as graph inputs (ONNX 1.3, opset 9+).
_IR_INITIALIZERS_NOT_INPUTS = 4


def _vi(t: TensorInfo, static: bool = True) -> ValueInfoProto:
    shape = list(t.shape) if static else [None] * len(t.shape)   # rank only: sizes left free
    return helper.make_tensor_value_info(t.name, helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)), shape)


def build_pieces(G: nx.DiGraph, part: Partition, model: str | None = None) -> list[Piece]:
    """Pieces (without files) of a partition: boundary tensors, FLOPs, parameter bytes, per-op costs."""
    model = model or G.graph.get("model", "model")
    tensors: Mapping[str, TensorInfo] = G.graph["tensors"]
    const = G.graph.get("const_tensors", frozenset())
    graph_outputs = [t.name for t in G.graph.get("outputs", ())]
    where = part.piece_of()
    readers: dict[str, set[int]] = {}
    for v, d in G.nodes(data=True):
        for t in d["inputs"]:
            readers.setdefault(t, set()).add(where[v])
    pieces = []
    for k, nodes in enumerate(part.pieces):
        produced: list[str] = []
        consumed: list[str] = []
        for v in nodes:
            produced.extend(G.nodes[v]["outputs"])
            consumed.extend(G.nodes[v]["inputs"])
        made = set(produced)
        ins = list(dict.fromkeys(t for t in consumed if t not in made and t not in const))
        outs = [t for t in produced if any(r != k for r in readers.get(t, ())) or t in graph_outputs]
        outs = list(dict.fromkeys(outs))
        ops = tuple(OpCost(name=str(v), op_type=G.nodes[v]["op_type"], flops=float(G.nodes[v]["flops"]),
                           param_bytes=int(G.nodes[v]["param_bytes"]), act_bytes=int(G.nodes[v]["act_bytes"]),
                           conv=G.nodes[v].get("conv"))
                    for v in nodes)
        params = _param_bytes(G, nodes, tensors, const)
        pieces.append(Piece(
            id=f"{model}/p{k}", model=model, index=k, nodes=tuple(str(v) for v in nodes),
            inputs=tuple(tensors[t] for t in ins), outputs=tuple(tensors[t] for t in outs),
            flops=float(sum(o.flops for o in ops)), param_bytes=int(params), ops=ops))
    return pieces


def _param_bytes(G: nx.DiGraph, nodes: Iterable[Hashable], tensors: Mapping[str, TensorInfo],
                 const: AbstractSet[str]) -> int:
    """Bytes of the distinct constant tensors the piece reads (a weight shared by two ops counts once)."""
    seen = {t for v in nodes for t in G.nodes[v]["inputs"] if t in const}
    return sum(tensors[t].nbytes for t in seen if t in tensors)


def _const_closure(model: ModelProto, const_nodes: Sequence[int], needed: set[str]) -> tuple[list[int], set[str]]:
    """Constant-producing nodes (indices) and initializer names needed to compute `needed` constants."""
    g = model.graph
    by_output = {}
    for i in const_nodes:
        for o in g.node[i].output:
            by_output[o] = i
    inits = {t.name for t in g.initializer}
    nodes, init_used, stack = set(), set(), list(needed)
    while stack:
        t = stack.pop()
        if t in inits:
            init_used.add(t)
        elif t in by_output and by_output[t] not in nodes:
            i = by_output[t]
            nodes.add(i)
            stack.extend(x for x in g.node[i].input if x)
    return sorted(nodes), init_used


def piece_model(G: nx.DiGraph, piece: Piece) -> ModelProto:
    """The standalone ONNX model of one piece."""
    model: ModelProto = G.graph["onnx"]
    g = model.graph
    const = G.graph.get("const_tensors", frozenset())
    idx = [G.nodes[v]["index"] for v in piece.nodes]
    needed = {t for v in piece.nodes for t in G.nodes[v]["inputs"] if t in const}
    cidx, init_names = _const_closure(model, G.graph.get("const_nodes", ()), needed)
    order = sorted(set(idx) | set(cidx))
    init_list = [t for t in g.initializer if t.name in init_names]
    if any(subgraphs_of(g.node[i]) for i in idx):
        # Control flow: keep the model's declared (possibly dynamic) types, as onnxruntime checks
        # both branches against them; other boundary tensors keep their rank, not their sizes.
        declared = {v.name: v for v in list(g.input) + list(g.output)}
        ins = [declared.get(t.name) or _vi(t, static=False) for t in piece.inputs]
        outs = [declared.get(t.name) or _vi(t, static=False) for t in piece.outputs]
    else:
        ins, outs = [_vi(t) for t in piece.inputs], [_vi(t) for t in piece.outputs]
    graph = helper.make_graph([g.node[i] for i in order], f"{g.name or 'graph'}_{piece.id.replace('/', '_')}",
                              ins, outs, initializer=init_list)
    out = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="tierplan.partition")
    out.ir_version = max(model.ir_version, _IR_INITIALIZERS_NOT_INPUTS)
    if model.functions:
        out.functions.extend(model.functions)
    return out


def write_pieces(G: nx.DiGraph, pieces: Sequence[Piece], out_dir: str | Path) -> list[Piece]:
    """Write each piece as `<out_dir>/<model>_p<k>.onnx`; the pieces with `file` set (absolute)."""
    from dataclasses import replace
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for p in pieces:
        path = (out_dir / f"{_safe(p.model)}_p{p.index}.onnx").resolve()
        m = piece_model(G, p)
        tmp = path.with_suffix(".onnx.tmp")
        tmp.write_bytes(m.SerializeToString())
        tmp.replace(path)
        written.append(replace(p, file=str(path)))
    return written


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def session(model: ModelProto | bytes | str | Path, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session with basic (numerically exact) graph optimisations."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if isinstance(model, ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def run_model(G: nx.DiGraph, feeds: Mapping[str, np.ndarray], threads: int = 1) -> dict[str, np.ndarray]:
    """Outputs of the whole (dims-bound) model on `feeds`."""
    sess = session(G.graph["onnx"], threads)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds))))


def run_pieces(pieces: Sequence[Piece], feeds: Mapping[str, np.ndarray], threads: int = 1,
               models: Sequence[ModelProto] | None = None) -> dict[str, np.ndarray]:
    """Run the pieces one after another, each fed by the model inputs and earlier pieces' outputs."""
    values = dict(feeds)
    for i, p in enumerate(pieces):
        src = models[i] if models is not None else p.file
        if src is None:
            raise InputError(f"piece {p.id} has no file to run; extract it first")
        sess = session(src, threads)
        names = [o.name for o in p.outputs]
        try:
            outs = sess.run(names, {t.name: values[t.name] for t in p.inputs})
        except KeyError as e:
            raise InputError(f"piece {p.id}: input {e} is produced by no earlier piece") from None
        values.update(zip(names, outs))
    return values


@dataclass(frozen=True)
class VerifyResult:
    """Largest difference between the chained pieces and the whole model over all model outputs."""

    max_abs_diff: float
    max_rel_diff: float          # max |a - b| / max |b|, per output, worst output
    outputs: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff, "outputs": list(self.outputs)}


def verify_pieces(G: nx.DiGraph, pieces: Sequence[Piece], feeds: Mapping[str, np.ndarray] | None = None,
                  seed: int = 0, threads: int = 1) -> VerifyResult:
    """Run the whole model and the chained pieces on the same inputs and compare every output."""
    feeds = dict(feeds) if feeds is not None else random_feeds(G.graph["inputs"], seed)
    whole = run_model(G, feeds, threads)
    chained = run_pieces(pieces, feeds, threads)
    worst_abs = worst_rel = 0.0
    for name, ref in whole.items():
        got = chained.get(name)
        if got is None:
            raise InputError(f"model output {name!r} is produced by no piece")
        ref = np.asarray(ref)
        got = np.asarray(got)
        if ref.shape != got.shape:
            return VerifyResult(float("inf"), float("inf"), tuple(whole))
        if ref.size == 0:
            continue
        if not np.issubdtype(ref.dtype, np.number):
            diff = float(np.any(ref != got))
            scale = 1.0
        else:
            a, b = ref.astype(np.float64), got.astype(np.float64)
            diff = float(np.max(np.abs(a - b)))
            scale = float(np.max(np.abs(a)))
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / scale if scale > 0 else diff)
    return VerifyResult(worst_abs, worst_rel, tuple(whole))

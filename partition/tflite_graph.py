"""LiteRT (.tflite) model -> operator graph with FLOPs, parameter and activation bytes, as load_onnx builds it.

`load_tflite(path)` reads the flatbuffer with the schema reader that ai-edge-litert ships
(`ai_edge_litert.schema_py_generated`, no interpreter: models with custom operators load too) and
returns the networkx DiGraph described in partition/onnx_graph.py:

- node = operator of the main subgraph (`<BUILTIN>_<index>`): `op_type` (the ONNX operator it is
  costed as, partition.flops.TFLITE_OP_TYPES, e.g. DEPTHWISE_CONV_2D -> Conv), `tflite_op`
  (the builtin's name), `flops`, `param_bytes`, `out_bytes`, `act_bytes`, `inputs`, `outputs`
  (tensor names), `index`, `counted`.
- edge u -> v: `tensor`, `tensors`, `nbytes`.

Tensors backed by a buffer are weights; operators computing only from weights (the DEQUANTIZE of
fp16 weights, DENSIFY of sparse ones) run once when LiteRT prepares the model, so they are not
graph nodes and their outputs count as parameter bytes of the operators reading them. An operator
whose FLOPs are unknown here (custom operators, control flow) is costed as one FLOP per output
element, marked `counted=False`, listed in `G.graph["uncounted_ops"]` and reported by a
TfliteCostWarning. `tflite_piece(path)` gives the whole model as one Piece (LiteRT runs it whole).
"""

from __future__ import annotations

import warnings
from math import prod
from pathlib import Path
from types import ModuleType
from typing import Any

import networkx as nx
import numpy as np

from tierplan.partition.flops import TFLITE_OP_TYPES, tflite_op_flops
from tierplan.partition.types import OpCost, Piece, TensorInfo
from tierplan.errors import InputError

__all__ = ["load_tflite", "tflite_piece", "TfliteCostWarning", "TFLITE_IDENTIFIER"]

TFLITE_IDENTIFIER = b"TFL3"   # flatbuffer file identifier of LiteRT models (bytes 4..8)
_CONST_FOLDED = frozenset({"DEQUANTIZE", "DENSIFY"})   # evaluated once at prepare time on weights
# LiteRT TensorType name -> numpy dtype name (types numpy lacks are costed at their storage size)
_DTYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "FLOAT64": "float64", "INT32": "int32", "UINT8": "uint8",
           "INT64": "int64", "BOOL": "bool", "INT16": "int16", "INT8": "int8", "UINT64": "uint64",
           "UINT32": "uint32", "UINT16": "uint16", "COMPLEX64": "complex64", "COMPLEX128": "complex128",
           "BFLOAT16": "uint16", "INT4": "int8", "UINT4": "uint8", "INT2": "int8", "FLOAT8_E4M3FN": "uint8",
           "FLOAT8_E5M2": "uint8"}


class TfliteCostWarning(UserWarning):
    """A .tflite operator whose FLOPs are not known here: costed by the catch-all rule."""


def _schema() -> ModuleType:
    """LiteRT's generated flatbuffer schema module (untyped: its tables read as Any)."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError as e:
        raise InputError(f"reading .tflite models needs ai-edge-litert ({e}); To fix: pip install ai-edge-litert") \
            from None
    return schema


def _names(enum_cls: type) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _read(path: Path) -> tuple[ModuleType, Any]:
    """(schema module, Model table) of a .tflite file; InputError for anything that is not one."""
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise InputError(f"{path}: not a .tflite model (no {TFLITE_IDENTIFIER.decode()} identifier); To fix: "
                         "point at a LiteRT flatbuffer or convert the model with ai_edge_torch / TFLiteConverter")
    schema = _schema()
    try:
        model = schema.Model.GetRootAs(data, 0)
        if model.SubgraphsLength() < 1:
            raise ValueError("no subgraph")
        model.Subgraphs(0).TensorsLength()
    except Exception as e:  # flatbuffers raises struct/index errors on truncated files
        raise InputError(f"{path}: corrupt .tflite model ({type(e).__name__}: {e}); re-export it") from None
    return schema, model


def _pool_options(schema: ModuleType, op: Any) -> dict[str, int]:
    table = op.BuiltinOptions()
    if table is None or op.BuiltinOptionsType() != schema.BuiltinOptions.Pool2DOptions:
        return {}
    opts = schema.Pool2DOptions()
    opts.Init(table.Bytes, table.Pos)
    return {"filter_height": int(opts.FilterHeight()), "filter_width": int(opts.FilterWidth())}


def load_tflite(path: str | Path) -> nx.DiGraph:
    """The operator graph of a .tflite file's main subgraph (see the module docstring)."""
    path = Path(path)
    schema, model = _read(path)
    ops_by_code, types_by_code = _names(schema.BuiltinOperator), _names(schema.TensorType)
    sg = model.Subgraphs(0)

    # tensors: unique names, shapes, dtypes, and which ones are weights (backed by a buffer)
    names, shapes, dtypes, const = [], [], [], set()
    seen: set[str] = set()
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        name = (t.Name() or b"").decode("utf-8", "replace") or f"tensor_{i}"
        if name in seen:
            name = f"{name}#{i}"
        seen.add(name)
        names.append(name)
        shapes.append(tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ())
        dtypes.append(_DTYPES.get(types_by_code.get(t.Type(), ""), "float32"))
        buf = model.Buffers(t.Buffer()) if 0 < t.Buffer() < model.BuffersLength() else None
        if buf is not None and (buf.DataLength() > 0 or buf.Offset() > 1):
            const.add(i)

    def nbytes(i: int) -> int:
        return int(prod(max(d, 1) for d in shapes[i])) * np.dtype(dtypes[i]).itemsize

    G = nx.DiGraph()
    producer: dict[int, str] = {}
    uncounted: set[str] = set()
    for k in range(sg.OperatorsLength()):
        op = sg.Operators(k)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = ops_by_code.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")
        if builtin == "CUSTOM":
            builtin = f"CUSTOM:{(code.CustomCode() or b'').decode('utf-8', 'replace')}"
        ins = [int(i) for i in op.InputsAsNumpy()] if op.InputsLength() else []
        outs = [int(i) for i in op.OutputsAsNumpy()] if op.OutputsLength() else []
        present = [i for i in ins if i >= 0]
        if builtin in _CONST_FOLDED and present and all(i in const for i in present):
            const.update(outs)
            continue
        flops = tflite_op_flops(builtin, [shapes[i] if i >= 0 else None for i in ins],
                                [shapes[i] for i in outs], _pool_options(schema, op))
        if flops is None:
            uncounted.add(builtin)
        out_bytes = sum(nbytes(i) for i in outs)
        catch_all = float(sum(prod(max(d, 1) for d in shapes[i]) for i in outs))   # one FLOP per output element
        node = f"{builtin.replace(':', '_')}_{k}"
        G.add_node(node, op_type=TFLITE_OP_TYPES.get(builtin, builtin), tflite_op=builtin,
                   flops=float(flops if flops is not None else catch_all), counted=flops is not None,
                   param_bytes=int(sum(nbytes(i) for i in set(present) if i in const)), out_bytes=int(out_bytes),
                   act_bytes=int(sum(nbytes(i) for i in set(present) if i not in const) + out_bytes),
                   inputs=tuple(names[i] for i in present), outputs=tuple(names[i] for i in outs), index=k)
        for i in set(present):
            u = producer.get(i)
            if u is None:
                continue
            if G.has_edge(u, node):
                e = G.edges[u, node]
                e["tensors"] += (names[i],)
                e["nbytes"] += nbytes(i)
            else:
                G.add_edge(u, node, tensor=names[i], tensors=(names[i],), nbytes=nbytes(i))
        for i in outs:
            producer[i] = node
    if uncounted:
        warnings.warn(f"{path}: FLOPs of LiteRT operator(s) {', '.join(sorted(uncounted))} are not known; "
                      "costed as one FLOP per output element", TfliteCostWarning, stacklevel=2)

    def info(i: int) -> TensorInfo:
        return TensorInfo(name=names[i], shape=shapes[i], dtype=dtypes[i], nbytes=nbytes(i))

    G.graph.update(model=path.stem, path=str(path), format="tflite",
                   inputs=[info(int(i)) for i in sg.InputsAsNumpy()] if sg.InputsLength() else [],
                   outputs=[info(int(i)) for i in sg.OutputsAsNumpy()] if sg.OutputsLength() else [],
                   uncounted_ops=sorted(uncounted), dims={},
                   const_tensors=frozenset(names[i] for i in const),
                   tensors={names[i]: info(i) for i in range(len(names))},
                   subgraphs=model.SubgraphsLength())
    return G


def tflite_piece(path: str | Path, piece_id: str | None = None, model: str | None = None, index: int = 0) -> Piece:
    """A .tflite file as one Piece carrying every operator's cost (LiteRT runs the model whole)."""
    path = Path(path)
    G = load_tflite(path)
    model = model or path.stem
    ops = tuple(OpCost(name=str(v), op_type=d["op_type"], flops=float(d["flops"]), param_bytes=int(d["param_bytes"]),
                       act_bytes=int(d["act_bytes"])) for v, d in G.nodes(data=True))
    return Piece(id=piece_id or f"{model}/p{index}", model=model, index=index, nodes=tuple(o.name for o in ops),
                 inputs=tuple(G.graph["inputs"]), outputs=tuple(G.graph["outputs"]),
                 flops=sum(o.flops for o in ops), param_bytes=sum(o.param_bytes for o in ops), ops=ops,
                 file=str(path))

"""FLOP counts of ONNX operators from their attributes and static tensor shapes (a multiply-add counts 2).

`op_flops(node, shapes)` returns the FLOPs of one node, or None when the operator is not
known here (the caller lists those instead of silently counting zero). Convention, as in the
published figures (ResNet-50 4.1 GMAC, ...): a multiply-add is 2 FLOPs; bias additions,
normalisation and activations are counted per element with the per-element costs below.
"""

from __future__ import annotations

from math import prod
from typing import Callable, Mapping, Sequence

from onnx import NodeProto, helper

__all__ = ["op_flops", "ELEMENTWISE_FLOPS", "ZERO_FLOP_OPS", "subgraphs_of"]

Shape = tuple[int, ...]
# tensor name -> static shape (None when unknown)
ShapeOf = Callable[[str], "Shape | None"]

# FLOPs per output element of elementwise operators (transcendental ones cost a few).
ELEMENTWISE_FLOPS: dict[str, float] = {
    **{op: 1.0 for op in (
        "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "PRelu", "Neg", "Abs", "Max", "Min", "Sum",
        "Mean", "Clip", "Sign", "Floor", "Ceil", "Round", "Reciprocal", "Equal", "Less", "Greater",
        "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Not", "Where", "Mod", "BitShift",
        "ThresholdedRelu", "IsNaN", "IsInf", "Sqrt", "Pow", "Selu", "Elu", "Celu", "Shrink",
    )},
    **{op: 3.0 for op in ("HardSigmoid", "HardSwish", "Softplus", "Softsign")},
    **{op: 4.0 for op in ("Sigmoid", "Tanh", "Exp", "Log", "Erf", "Sin", "Cos", "Tan", "Asin", "Acos",
                          "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Mish")},
    "Gelu": 8.0, "FastGelu": 8.0, "QuickGelu": 5.0,
}

# Operators that only move, reshape or describe data: zero arithmetic, but known.
ZERO_FLOP_OPS: frozenset[str] = frozenset((
    "Reshape", "Transpose", "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND",
    "Squeeze", "Unsqueeze", "Flatten", "Identity", "Dropout", "Shape", "Size", "Cast", "CastLike",
    "Constant", "ConstantOfShape", "Expand", "Tile", "Pad", "Range", "NonZero", "ScatterND",
    "ScatterElements", "Scatter", "DepthToSpace", "SpaceToDepth", "OneHot", "Compress", "ReverseSequence",
    "EyeLike", "Trilu", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceInsert",
    "SplitToSequence", "ConcatFromSequence", "SequenceLength", "Optional", "OptionalGetElement",
    "OptionalHasElement", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
    "Multinomial", "Bernoulli", "ArgMax", "ArgMin", "TopK", "NonMaxSuppression", "Unique",
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
))

# Per-element costs of normalisations and reductions.
_NORM_FLOPS = {"BatchNormalization": 2.0, "InstanceNormalization": 5.0, "LayerNormalization": 5.0,
               "GroupNormalization": 5.0, "LpNormalization": 3.0, "MeanVarianceNormalization": 5.0,
               "SimplifiedLayerNormalization": 4.0, "SkipLayerNormalization": 6.0}
_SOFTMAX_FLOPS = 5.0       # exp, sum, divide, max-subtract per element
_REDUCE_FLOPS = 1.0        # per input element
_RESIZE_FLOPS = {"nearest": 1.0, "linear": 4.0, "cubic": 16.0}  # per output element per spatial axis pair


def subgraphs_of(node: NodeProto) -> list:
    """The GraphProto attributes of a control-flow node (If branches, Loop/Scan bodies)."""
    out = []
    for a in node.attribute:
        if a.type == a.GRAPH:
            out.append(a.g)
        elif a.type == a.GRAPHS:
            out.extend(a.graphs)
    return out


def _attr(node: NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _n(shape: Shape | None) -> int | None:
    return None if shape is None else int(prod(shape))


def _conv(node: NodeProto, shape_of: ShapeOf) -> float | None:
    w, y = shape_of(node.input[1]), shape_of(node.output[0])
    if w is None or y is None:
        return None
    macs = prod(y) * prod(w[1:])                     # each output: Cin/group * kernel MACs
    bias = prod(y) if len(node.input) > 2 and node.input[2] else 0
    return 2.0 * macs + bias


def _conv_transpose(node: NodeProto, shape_of: ShapeOf) -> float | None:
    x, w, y = shape_of(node.input[0]), shape_of(node.input[1]), shape_of(node.output[0])
    if x is None or w is None or y is None:
        return None
    macs = prod(x) * prod(w[1:])                     # each input scatters Cout/group * kernel MACs
    bias = prod(y) if len(node.input) > 2 and node.input[2] else 0
    return 2.0 * macs + bias


def _gemm(node: NodeProto, shape_of: ShapeOf) -> float | None:
    a, y = shape_of(node.input[0]), shape_of(node.output[0])
    if a is None or y is None or len(a) != 2:
        return None
    k = a[0] if _attr(node, "transA", 0) else a[1]
    bias = prod(y) if len(node.input) > 2 and node.input[2] else 0
    return 2.0 * prod(y) * k + bias


def _matmul(node: NodeProto, shape_of: ShapeOf) -> float | None:
    a, y = shape_of(node.input[0]), shape_of(node.output[0])
    if a is None or y is None:
        return None
    k = a[-1]
    return 2.0 * prod(y) * k


def _pool(node: NodeProto, shape_of: ShapeOf) -> float | None:
    y = shape_of(node.output[0])
    kernel = _attr(node, "kernel_shape")
    if y is None or kernel is None:
        return None
    return float(prod(y) * prod(kernel))


def _global_pool(node: NodeProto, shape_of: ShapeOf) -> float | None:
    x = shape_of(node.input[0])
    return None if x is None else float(prod(x))


def _resize(node: NodeProto, shape_of: ShapeOf) -> float | None:
    y = shape_of(node.output[0])
    if y is None:
        return None
    mode = _attr(node, "mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    return _RESIZE_FLOPS.get(mode, _RESIZE_FLOPS["linear"]) * prod(y)


def _rnn(node: NodeProto, shape_of: ShapeOf) -> float | None:
    """LSTM (4 gates), GRU (3), RNN (1): per step and direction, gates * hidden * (input + hidden) MACs."""
    x, w = shape_of(node.input[0]), shape_of(node.input[1])
    if x is None or w is None:
        return None
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[node.op_type]
    seq, batch, inp = x if not _attr(node, "layout", 0) else (x[1], x[0], x[2])
    dirs, gh, _ = w
    hidden = gh // gates
    macs = seq * batch * dirs * gates * hidden * (inp + hidden)
    elementwise = seq * batch * dirs * hidden * gates * ELEMENTWISE_FLOPS["Sigmoid"]
    return 2.0 * macs + elementwise


def _lrn(node: NodeProto, shape_of: ShapeOf) -> float | None:
    y = shape_of(node.output[0])
    size = _attr(node, "size", 1)
    return None if y is None else float(prod(y) * (size + 3))


def _einsum(node: NodeProto, shape_of: ShapeOf) -> float | None:
    """Einsum: 2 * product of every distinct index's extent (contracted and free)."""
    eq = _attr(node, "equation")
    eq = eq.decode() if isinstance(eq, bytes) else eq
    if not eq or "..." in eq:
        return None
    lhs = eq.split("->")[0].split(",")
    extent: dict[str, int] = {}
    for term, name in zip(lhs, node.input):
        s = shape_of(name)
        if s is None or len(s) != len(term.strip()):
            return None
        extent.update(zip(term.strip(), s))
    return 2.0 * prod(extent.values())


def _attention(node: NodeProto, shape_of: ShapeOf) -> float | None:
    """Fused attention (opset 23 / com.microsoft): 4 * batch * heads * q * k * head_dim for QK^T and AV."""
    q, y = shape_of(node.input[0]), shape_of(node.output[0])
    k = shape_of(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if q is None or y is None or k is None:
        return None
    q_len, kv_len = q[-2], k[-2]
    hidden = q[-1] * (q[1] if len(q) == 4 else 1)
    return 4.0 * prod(q[:1]) * q_len * kv_len * hidden + _SOFTMAX_FLOPS * prod(q[:1]) * q_len * kv_len


_COUNTERS: dict[str, Callable[[NodeProto, ShapeOf], float | None]] = {
    "Conv": _conv, "ConvInteger": _conv, "QLinearConv": _conv, "ConvTranspose": _conv_transpose,
    "Gemm": _gemm, "MatMul": _matmul, "MatMulInteger": _matmul, "QLinearMatMul": _matmul,
    "MaxPool": _pool, "AveragePool": _pool, "LpPool": _pool,
    "GlobalAveragePool": _global_pool, "GlobalMaxPool": _global_pool, "GlobalLpPool": _global_pool,
    "Resize": _resize, "Upsample": _resize, "LSTM": _rnn, "GRU": _rnn, "RNN": _rnn, "LRN": _lrn,
    "Einsum": _einsum, "Attention": _attention, "MultiHeadAttention": _attention,
}


def _elementwise_out(node: NodeProto, shape_of: ShapeOf, per_element: float) -> float | None:
    n = _n(shape_of(node.output[0])) if node.output else None
    return None if n is None else per_element * n


def _reduce_in(node: NodeProto, shape_of: ShapeOf, per_element: float) -> float | None:
    n = _n(shape_of(node.input[0])) if node.input else None
    return None if n is None else per_element * n


def op_flops(node: NodeProto, shape_of: ShapeOf,
             subgraph_flops: Callable[[object], "tuple[float, Sequence[str]]"] | None = None,
             ) -> float | None:
    """FLOPs of `node` given `shape_of(tensor) -> shape | None`; None when it cannot be counted.

    Control-flow nodes (If, Loop, Scan) are counted through `subgraph_flops(graph) -> (flops,
    uncounted op types)`: If takes its most expensive branch, Loop/Scan one iteration times a
    constant trip count when one is known. Any uncounted op inside makes the node uncounted.
    """
    op = node.op_type
    if op in _COUNTERS:
        return _COUNTERS[op](node, shape_of)
    if op in ZERO_FLOP_OPS:
        return 0.0
    if op in ELEMENTWISE_FLOPS:
        return _elementwise_out(node, shape_of, ELEMENTWISE_FLOPS[op])
    if op in _NORM_FLOPS:
        return _elementwise_out(node, shape_of, _NORM_FLOPS[op])
    if op in ("Softmax", "LogSoftmax", "Hardmax"):
        return _elementwise_out(node, shape_of, _SOFTMAX_FLOPS)
    if op.startswith("Reduce") or op in ("CumSum",):
        return _reduce_in(node, shape_of, _REDUCE_FLOPS)
    if op in ("If", "Loop", "Scan") and subgraph_flops is not None:
        results = [subgraph_flops(g) for g in subgraphs_of(node)]
        if not results or any(bad for _, bad in results):
            return None
        if op == "If":
            return max(f for f, _ in results)
        trips = _loop_trips(node, shape_of)
        return None if trips is None else trips * sum(f for f, _ in results)
    return None


def _loop_trips(node: NodeProto, shape_of: ShapeOf) -> int | None:
    """Iterations of a Scan (its scan axis length); Loop trip counts are data, so unknown here."""
    if node.op_type == "Scan":
        n_state = len(node.input) - int(_attr(node, "num_scan_inputs", 0))
        s = shape_of(node.input[n_state]) if n_state < len(node.input) else None
        axes = _attr(node, "scan_input_axes", None)
        axis = axes[0] if axes else 0
        return None if s is None else int(s[axis])
    return None

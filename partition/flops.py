"""FLOP counts of ONNX and LiteRT (.tflite) operators from static tensor shapes (a multiply-add counts 2).

`op_flops(node, shapes)` returns the FLOPs of one ONNX node, or None when the operator is not
known here (the caller lists those instead of silently counting zero). Convention, as in the
published figures (ResNet-50 4.1 GMAC, ...): a multiply-add is 2 FLOPs; bias additions,
normalisation and activations are counted per element with the per-element costs below.

`tflite_op_flops(op, inputs, outputs, options)` counts a LiteRT builtin operator by the same
convention from its tensors' shapes (NHWC activations; OHWI convolution weights, 1HWC depthwise
weights, (units, in) fully-connected weights); `TFLITE_OP_TYPES` names the ONNX operator each
builtin is costed as, so the cost model's op classes and calibration apply to both formats.
"""

from __future__ import annotations

from math import prod
from typing import Any, Callable, Mapping, Sequence

from onnx import GraphProto, NodeProto, helper

__all__ = ["op_flops", "ELEMENTWISE_FLOPS", "ZERO_FLOP_OPS", "subgraphs_of", "tflite_op_flops", "TFLITE_OP_TYPES"]

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


def subgraphs_of(node: NodeProto) -> list[GraphProto]:
    """The GraphProto attributes of a control-flow node (If branches, Loop/Scan bodies)."""
    out: list[GraphProto] = []
    for a in node.attribute:
        if a.type == a.GRAPH:
            out.append(a.g)
        elif a.type == a.GRAPHS:
            out.extend(a.graphs)
    return out


def _attr(node: NodeProto, name: str, default: Any = None) -> Any:
    """The value of attribute `name` of `node` (int, float, bytes, list, tensor... as onnx decodes it), else `default`."""
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
             subgraph_flops: Callable[[GraphProto], "tuple[float, Sequence[str]]"] | None = None,
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


# ----------------------------------------------------------------------------- LiteRT (.tflite) builtins
# LiteRT builtin operator -> the ONNX operator it is costed as (same arithmetic, same kind of kernel).
TFLITE_OP_TYPES: dict[str, str] = {
    "CONV_2D": "Conv", "DEPTHWISE_CONV_2D": "Conv", "CONV_3D": "Conv", "TRANSPOSE_CONV": "ConvTranspose",
    "FULLY_CONNECTED": "Gemm", "BATCH_MATMUL": "MatMul",
    "ADD": "Add", "SUB": "Sub", "MUL": "Mul", "DIV": "Div", "MAXIMUM": "Max", "MINIMUM": "Min", "ADD_N": "Sum",
    "SQUARED_DIFFERENCE": "Sub", "SQUARE": "Mul", "POW": "Pow", "FLOOR_DIV": "Div", "FLOOR_MOD": "Mod",
    "RELU": "Relu", "RELU6": "Clip", "RELU_N1_TO_1": "Clip", "RELU_0_TO_1": "Clip", "LEAKY_RELU": "LeakyRelu",
    "PRELU": "PRelu", "LOGISTIC": "Sigmoid", "TANH": "Tanh", "HARD_SWISH": "HardSwish", "ELU": "Elu", "GELU": "Gelu",
    "EXP": "Exp", "LOG": "Log", "SQRT": "Sqrt", "RSQRT": "Sqrt", "ABS": "Abs", "NEG": "Neg", "FLOOR": "Floor",
    "CEIL": "Ceil", "ROUND": "Round", "SIN": "Sin", "COS": "Cos", "SIGN": "Sign",
    "EQUAL": "Equal", "NOT_EQUAL": "Equal", "LESS": "Less", "LESS_EQUAL": "LessOrEqual", "GREATER": "Greater",
    "GREATER_EQUAL": "GreaterOrEqual", "LOGICAL_AND": "And", "LOGICAL_OR": "Or", "LOGICAL_NOT": "Not",
    "SELECT": "Where", "SELECT_V2": "Where",
    "MAX_POOL_2D": "MaxPool", "AVERAGE_POOL_2D": "AveragePool", "L2_POOL_2D": "LpPool",
    "MEAN": "ReduceMean", "SUM": "ReduceSum", "REDUCE_MAX": "ReduceMax", "REDUCE_MIN": "ReduceMin",
    "REDUCE_PROD": "ReduceProd", "ARG_MAX": "ArgMax", "ARG_MIN": "ArgMin", "TOPK_V2": "TopK", "CUMSUM": "CumSum",
    "SOFTMAX": "Softmax", "LOG_SOFTMAX": "LogSoftmax", "L2_NORMALIZATION": "LpNormalization",
    "LOCAL_RESPONSE_NORMALIZATION": "LRN",
    "RESIZE_BILINEAR": "Resize", "RESIZE_NEAREST_NEIGHBOR": "Resize",
    "RESHAPE": "Reshape", "SQUEEZE": "Squeeze", "EXPAND_DIMS": "Unsqueeze", "SHAPE": "Shape",
    "TRANSPOSE": "Transpose", "CONCATENATION": "Concat", "PACK": "Concat", "UNPACK": "Split", "SPLIT": "Split",
    "SPLIT_V": "Split", "SLICE": "Slice", "STRIDED_SLICE": "Slice", "GATHER": "Gather", "GATHER_ND": "GatherND",
    "PAD": "Pad", "PADV2": "Pad", "MIRROR_PAD": "Pad", "TILE": "Tile", "BROADCAST_TO": "Expand", "CAST": "Cast",
    "DEPTH_TO_SPACE": "DepthToSpace", "SPACE_TO_DEPTH": "SpaceToDepth", "FILL": "ConstantOfShape",
    "RANGE": "Range", "ZEROS_LIKE": "ConstantOfShape", "ONES_LIKE": "ConstantOfShape",
    "QUANTIZE": "QuantizeLinear", "DEQUANTIZE": "DequantizeLinear", "DENSIFY": "Identity",
}
_TFLITE_RESIZE_MODE = {"RESIZE_BILINEAR": "linear", "RESIZE_NEAREST_NEIGHBOR": "nearest"}
# tensor shape by input / output position; None for an absent optional input or an unknown shape
Shapes = Sequence["Shape | None"]


def _tfl_conv(inputs: Shapes, outputs: Shapes, depthwise: bool) -> float | None:
    """CONV_2D (weights OHWI: each output reads kh*kw*Cin) and DEPTHWISE_CONV_2D (weights 1HWC: kh*kw)."""
    w, y = inputs[1] if len(inputs) > 1 else None, outputs[0] if outputs else None
    if w is None or y is None:
        return None
    taps = prod(w[1:3]) if depthwise else prod(w[1:])
    bias = prod(y) if len(inputs) > 2 and inputs[2] is not None else 0
    return 2.0 * prod(y) * taps + bias


def _tfl_transpose_conv(inputs: Shapes, outputs: Shapes) -> float | None:
    """TRANSPOSE_CONV (output_shape, weights OHWI, input[, bias]): each input scatters Cout*kh*kw MACs."""
    if len(inputs) < 3 or inputs[1] is None or inputs[2] is None or not outputs or outputs[0] is None:
        return None
    bias = prod(outputs[0]) if len(inputs) > 3 and inputs[3] is not None else 0
    return 2.0 * prod(inputs[2]) * prod(inputs[1][:3]) + bias


def _tfl_fully_connected(inputs: Shapes, outputs: Shapes) -> float | None:
    """FULLY_CONNECTED (weights (units, in)): each output element reads `in` inputs."""
    w, y = inputs[1] if len(inputs) > 1 else None, outputs[0] if outputs else None
    if w is None or y is None:
        return None
    bias = prod(y) if len(inputs) > 2 and inputs[2] is not None else 0
    return 2.0 * prod(y) * w[-1] + bias


def tflite_op_flops(op: str, inputs: Shapes, outputs: Shapes, options: Mapping[str, int] | None = None,
                    ) -> float | None:
    """FLOPs of a LiteRT builtin `op` (e.g. "CONV_2D") from its input and output shapes; None when unknown.

    `options` carries what shapes do not tell: a pooling's `filter_height` and `filter_width` (without
    them the window is taken as input/output elements, exact for non-overlapping pools).
    """
    options = options or {}
    y = outputs[0] if outputs else None
    if op in ("CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D"):
        return _tfl_conv(inputs, outputs, depthwise=op == "DEPTHWISE_CONV_2D")
    if op == "TRANSPOSE_CONV":
        return _tfl_transpose_conv(inputs, outputs)
    if op == "FULLY_CONNECTED":
        return _tfl_fully_connected(inputs, outputs)
    if op == "BATCH_MATMUL":
        a = inputs[0] if inputs else None
        return None if a is None or y is None else 2.0 * prod(y) * a[-2 if options.get("adj_x") else -1]
    if op in ("MAX_POOL_2D", "AVERAGE_POOL_2D", "L2_POOL_2D"):
        if y is None:
            return None
        window: float = options.get("filter_height", 0) * options.get("filter_width", 0)
        if not window:
            x = inputs[0] if inputs else None
            window = prod(x) / max(prod(y), 1) if x is not None else 1
        return float(prod(y) * window)
    if op in _TFLITE_RESIZE_MODE:
        return None if y is None else _RESIZE_FLOPS[_TFLITE_RESIZE_MODE[op]] * prod(y)
    onnx_op = TFLITE_OP_TYPES.get(op)
    if onnx_op is None:
        return None
    if onnx_op in ZERO_FLOP_OPS or onnx_op in ("Shape", "Identity"):
        return 0.0
    first_in = inputs[0] if inputs else None
    if onnx_op.startswith("Reduce") or onnx_op == "CumSum":
        return None if first_in is None else _REDUCE_FLOPS * prod(first_in)
    per_element = (ELEMENTWISE_FLOPS.get(onnx_op) or _NORM_FLOPS.get(onnx_op)
                   or (_SOFTMAX_FLOPS if onnx_op in ("Softmax", "LogSoftmax") else None))
    if onnx_op == "LRN":
        per_element = float(options.get("radius", 2) * 2 + 1 + 3)
    if per_element is None or y is None:
        return None
    if op in ("RSQRT", "SQUARED_DIFFERENCE"):   # two arithmetic steps per element
        per_element *= 2
    return per_element * prod(y)

"""Default figures of the cost model, each with its rationale: the one place hardware-independent constants live.

Device figures (peak FLOP/s, bandwidth, power, prices) live in devices/catalog/*.yaml with their sources;
what is here says how far real kernels fall short of those peaks before a device is calibrated.
`tierplan calibrate` replaces all of it for the device it runs on (devices/calibration/<device>.json).
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = [
    "ACCEL_KINDS", "DEFAULT_EFFICIENCY", "PRECISION_EFFICIENCY_SCALE", "BANDWIDTH_EFFICIENCY",
    "PRECISION_BYTES_SCALE", "SERIALIZE_GBPS", "REFERENCE_EDGE_CPU_GFLOPS", "MIN_TRANSFORM_SCALE",
    "DEFAULT_CLOUD_MAX_INSTANCES", "BYTES_PER_GB", "MS_PER_HOUR", "DEFAULT_OP_EFFICIENCY",
    "OP_CLASSES", "op_class", "FUSION_HEADS", "FUSABLE_EPILOGUES", "FUSED_SUFFIX", "op_keys",
    "CONV_SHAPE_SUFFIX", "DEPTHWISE_MAX_DEPTH", "GEMV_MAX_POSITIONS", "conv_shape",
    "MATMUL_HEADS", "FUSABLE_PROLOGUES", "SCALE_EPILOGUES", "SCALAR_OPERAND_BYTES", "BATCH_FIXED_SHARE",
    "SHARED_KEYS", "NCHWC_CHANNEL_MULTIPLE", "UNBLOCKED", "nchwc_runs", "blocked_key",
]

# Device kinds, told apart by the kind of the TVM target ("cuda" -> gpu, else cpu).
ACCEL_KINDS: tuple[str, ...] = ("cpu", "gpu")

# Share of the fp32 peak an operator type reaches at batch 1, per device kind.
# CPU: onnxruntime's MLAS GEMM/conv kernels reach 50-70% of peak on large GEMMs but small, oddly
# shaped convolutions (depthwise, 1x1 on few channels) at batch 1 reach 5-30%; MatMul/Gemm in
# classifier heads are mostly memory-bound and fall to the bandwidth term. (MLAS and oneDNN
# benchmark reports; our own `tierplan calibrate` on an x86 core lands in these ranges.)
# GPU: batch-1 CNN layers fill few SMs: 5-25% of peak is typical (TensorRT/ORT CUDA EP profiles);
# at batch 1 small models are bound by per-op launch overhead (dispatch_overhead_us), not FLOPs.
DEFAULT_EFFICIENCY: dict[str, dict[str, float]] = {
    "cpu": {
        "Conv": 0.30, "ConvTranspose": 0.20, "Gemm": 0.40, "MatMul": 0.40, "LSTM": 0.15, "GRU": 0.15,
        "Attention": 0.25, "Einsum": 0.20,
    },
    "gpu": {
        "Conv": 0.15, "ConvTranspose": 0.10, "Gemm": 0.25, "MatMul": 0.25, "LSTM": 0.03, "GRU": 0.03,
        "Attention": 0.15, "Einsum": 0.10,
    },
}
# Element-wise and data-movement ops: their FLOPs are small; they are bound by the bandwidth term.
DEFAULT_OP_EFFICIENCY: dict[str, float] = {"cpu": 0.10, "gpu": 0.05}

# Lower precisions have higher peaks but kernels reach a smaller share of them (quantise/dequantise,
# fewer tuned kernels): multiply the fp32 efficiency by this.
PRECISION_EFFICIENCY_SCALE: dict[str, float] = {"fp32": 1.0, "fp16": 0.7, "int8": 0.5}

# Bytes moved relative to an fp32 model (weights and activations shrink with the precision).
PRECISION_BYTES_SCALE: dict[str, float] = {"fp32": 1.0, "fp16": 0.5, "int8": 0.25}

# Share of the datasheet memory bandwidth that kernels sustain (STREAM-like): 60% on CPUs,
# 75% on GPUs (STREAM and BabelStream reports on the catalog's parts).
BANDWIDTH_EFFICIENCY: dict[str, float] = {"cpu": 0.6, "gpu": 0.75}

# Tensor (de)serialisation + copy through gRPC, GB/s: 1.1-1.3 GB/s measured over loopback with 1 MiB
# stream chunks on this machine (shared/DESIGN.md, "Peers measured").
SERIALIZE_GBPS: float = 1.2

# TransformSpec.cost_ms is declared "on an edge-class CPU": a Raspberry Pi 4-class 48 GFLOP/s CPU.
REFERENCE_EDGE_CPU_GFLOPS: float = 48.0
# Host-side Python transforms are single-threaded: a big server is at most ~4x faster per call
# than the reference edge CPU (single-core speed ratio of a server core to a Cortex-A72).
MIN_TRANSFORM_SCALE: float = 0.25

# Batching without an ONNX file to price: a batch of b requests costs t1 * (a + (1 - a) * b), a =
# the share of a batch-1 run paid once per batch (weights streamed from memory, per-op dispatch).
# CPU: batch-8 CNN inference on onnxruntime gains ~1.3-1.5x throughput over batch 1 (a ~ 0.3);
# GPU: batch-1 kernels leave most SMs idle, batch 8 gains ~3x (a ~ 0.8; TensorRT/Triton reports).
# Used by simulations/ (dynamic batching at sites); the cost model's roofline prices files itself.
BATCH_FIXED_SHARE: dict[str, float] = {"cpu": 0.3, "gpu": 0.8}

# Rented cloud site classes without `max_instances` can scale out to this many instances.
DEFAULT_CLOUD_MAX_INSTANCES: int = 1000

# Units.
BYTES_PER_GB: float = 1e9          # cloud egress is priced per decimal GB
MS_PER_HOUR: float = 3.6e6


# Operator classes: calibration shares a per-op overhead within a class (fused epilogues such as a
# Relu after a Conv cost no dispatch; a standalone Reshape does), and an op type seen too rarely
# to get its own coefficients falls back to its class's `other:<class>` bucket.
OP_CLASSES: dict[str, tuple[str, ...]] = {
    "conv": ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger"),
    "matmul": ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "Einsum", "Attention", "MultiHeadAttention",
               "LSTM", "GRU", "RNN"),
    "norm": ("BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
             "LRN", "SkipLayerNormalization", "RMSNormalization"),
    "pool": ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "ReduceMean", "ReduceSum",
             "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "Softmax", "LogSoftmax", "ArgMax", "ArgMin", "TopK"),
    # shape-only ops: onnxruntime removes Identity/Dropout and runs Reshape-like ops as (near) free views
    "view": ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Dropout", "Shape", "Size"),
    "movement": ("Transpose", "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND", "Cast", "Pad",
                 "Expand", "Tile", "Resize", "Upsample", "DepthToSpace", "SpaceToDepth", "ScatterND",
                 "ConstantOfShape", "Range", "NonZero"),
}
_CLASS_OF: dict[str, str] = {t: c for c, types in OP_CLASSES.items() for t in types}


def op_class(op_type: str) -> str:
    """The class of an ONNX op type (or op key): conv, matmul, norm, pool, view, movement, fused (an
    epilogue key from op_keys), or elementwise (the rest). A shared key (SHARED_KEYS) is its class."""
    if op_type.endswith(FUSED_SUFFIX):
        return "fused"
    if op_type in OP_CLASSES:
        return op_type
    return _CLASS_OF.get(op_type.split(CONV_SHAPE_SUFFIX)[0], "elementwise")


# Data movement and views share one calibration key per class: a Transpose, a channel Split, a Slice and a
# Concat all copy their bytes once (cost = MB x one copy rate + the class's overhead), and a Reshape is a view
# onnxruntime hands out without copying. Fitted per op type, a rare one (Slice, seen in a few calibration
# pieces next to expensive ops) took a copy rate 15-30x the others' and priced ShuffleNetV2 with Slice channel
# splits at 2-2.8x its measured time; one shared rate is fitted on every copy in the data. Resize interpolates
# (arithmetic per element) and keeps its own key; ops onnxruntime runs with data-dependent work (NonZero,
# ScatterND, Range, ConstantOfShape) too.
SHARED_KEYS: dict[str, str] = {
    **{t: "movement" for t in ("Transpose", "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND",
                               "Cast", "Pad", "Expand", "Tile", "DepthToSpace", "SpaceToDepth")},
    **{t: "view" for t in OP_CLASSES["view"]},
}



# Operator fusion: onnxruntime folds a BatchNormalization into the Conv before it and fuses
# activations (and, on x86 NCHWc, a residual Add) into the Conv kernel, so such an op costs
# almost nothing when it directly follows its head, and a full memory pass when it stands alone.
# Calibration gives the fused form its own coefficients (key "<op>~fused"). Pieces list their ops
# in the exporter's order, which keeps Conv -> BN -> Relu chains adjacent.
FUSION_HEADS: frozenset[str] = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
FUSABLE_EPILOGUES: frozenset[str] = frozenset({"BatchNormalization", "Relu", "Clip", "LeakyRelu", "Sigmoid",
                                               "HardSigmoid", "Add"})
FUSED_SUFFIX = "~fused"


# Convolution shapes, told apart from an operator's FLOPs and bytes alone (OpCost has no shapes):
# reduction depth per output element k ~ FLOPs / (2 x activation elements) (Cin/groups x kernel area,
# halved when input and output are the same size) and output positions n ~ 2 x FLOPs / weight bytes.
# Depthwise and small grouped convolutions (k a few taps) run MLAS's direct depthwise kernels, bound by
# memory, not GEMM; convolutions on a 1x1 map (squeeze-excite, heads) are matrix-vector products.
CONV_SHAPE_SUFFIX = "@"
DEPTHWISE_MAX_DEPTH: float = 8.0     # k below this: depthwise / grouped (3x3 depthwise has k ~ 4.5)
GEMV_MAX_POSITIONS: float = 2.0      # n below this: a matrix-vector product


# onnxruntime on x86 (MLAS NCHWc block B = 8 with SSE/AVX2, 16 with AVX-512F; on Arm builds NCHWc is off, B = 1)
# runs a 2-D Conv in the blocked NCHWc layout only when its channels suit it (NchwcTransformer): a depthwise conv
# needs channels % 4 == 0 (MlasReorderInputNchw reorders groups of 4 channels, onnxruntime PR #7442; the block
# itself is padded), a grouped one (in/group) and (out/group) multiples of B, a plain one in-channels < B or
# % 4 == 0. Any other Conv runs the generic NCHW path: measured here (onnxruntime 1.32, AVX-512, one thread),
# 3x3 depthwise at 28x28 on 58, 62 or 114 channels 9 GFLOP/s against 30-35 GFLOP/s on 56, 60 or 116, and a
# 3x3 conv with 58 input channels 128 GFLOP/s against 200 with 64 (ShuffleNetV2's 58-channel stage ran 2x its
# prediction). Such a conv gets its own key (`Conv@dw-unblocked`; `Conv@unblocked` for a dense one with a
# kernel above 1x1, see conv_shape), fitted by calibration.
NCHWC_CHANNEL_MULTIPLE = 4
UNBLOCKED = "unblocked"


def nchwc_runs(conv: Any, block: int) -> bool:
    """True when onnxruntime runs this convolution (partition.types.ConvShape) in its NCHWc layout on a host
    whose MLAS NCHWc block is `block` (devices.host.nchwc_block; <= 1: no NCHWc layout at all)."""
    if block <= 1 or len(conv.kernel) != 2:
        return False
    groups = max(int(conv.groups), 1)
    cin, cout = conv.in_channels // groups, conv.out_channels // groups
    if groups > 1:
        if cin == 1 and cout == 1:    # depthwise
            return conv.out_channels % NCHWC_CHANNEL_MULTIPLE == 0
        return cin % block == 0 and cout % block == 0 and conv.out_channels % block == 0
    return conv.in_channels < block or conv.in_channels % NCHWC_CHANNEL_MULTIPLE == 0


def conv_shape(op: Any, block: int = 0) -> str:
    """'dw' (depthwise/grouped), 'gemv' (1x1 output map) or '' (GEMM-like) for a Conv-class OpCost; with an
    NCHWc `block` > 1 and the op's ConvShape known, a 2-D conv onnxruntime cannot block (nchwc_runs) is
    'dw-unblocked' (depthwise-like) or 'unblocked' (a dense one with a kernel above 1x1, which the NCHW path
    runs through im2col). A 1x1 or grouped dense conv is a GEMM on either path (58 -> 58 channels 1x1: 133
    against 155 GFLOP/s blocked; ShuffleNet's 4-group 1x1 convs priced as blocked ones measure 0.93x), and
    1-D convs have no NCHWc form at all: they keep their key."""
    shape = _conv_shape(op)
    conv = getattr(op, "conv", None)
    if block <= 1 or conv is None or shape == "gemv" or len(conv.kernel) != 2 or nchwc_runs(conv, block):
        return shape
    if shape == "dw":
        return f"dw-{UNBLOCKED}"
    return UNBLOCKED if conv.groups == 1 and max(conv.kernel) > 1 else shape


def blocked_key(key: str) -> str:
    """The key a conv would have in the NCHWc layout (`Conv@dw-unblocked` -> `Conv@dw`, `Conv@unblocked` -> `Conv`):
    what an unblocked conv falls back to when a calibration has no coefficients of its own for it."""
    if key == f"Conv{CONV_SHAPE_SUFFIX}{UNBLOCKED}":
        return "Conv"
    return key[: -len(UNBLOCKED) - 1] if key.endswith(f"-{UNBLOCKED}") else key


def _conv_shape(op: Any) -> str:
    flops, params, act = float(op.flops), float(op.param_bytes), float(op.act_bytes)
    if flops <= 0 or act <= 0:
        return ""
    if params > 0 and 2 * flops / params < GEMV_MAX_POSITIONS:
        return "gemv"
    if flops / (2 * act / 4) < DEPTHWISE_MAX_DEPTH:
        return "dw"
    return ""


# onnxruntime's MatMul fusions: a Transpose feeding a MatMul is absorbed into FusedMatMul
# (MatMulTransposeFusion: transA/transB), and a multiplication or division of a MatMul's output by a
# scalar constant becomes its alpha (MatMulScaleFusion), e.g. attention's Q K^T / sqrt(d).
MATMUL_HEADS: frozenset[str] = frozenset({"MatMul", "Gemm"})
FUSABLE_PROLOGUES: frozenset[str] = frozenset({"Transpose"})
SCALE_EPILOGUES: frozenset[str] = frozenset({"Mul", "Div"})
SCALAR_OPERAND_BYTES: int = 8      # a constant operand of at most this many bytes is a scalar


def _is_scalar_scale(o: Any) -> bool:
    return (not isinstance(o, str) and o.op_type in SCALE_EPILOGUES
            and 0 < int(o.param_bytes) <= SCALAR_OPERAND_BYTES)


def op_keys(ops: Sequence[Any], nchwc_block: int = 0) -> list[str]:
    """Calibration key per op of a piece, in order: the op type, `<op>~fused` for an epilogue that
    follows a fusion head (possibly through other epilogues) or a Transpose feeding a MatMul,
    `Conv@dw` / `Conv@gemv` for depthwise-like and matrix-vector convolutions (conv_shape),
    `Conv@unblocked` / `Conv@dw-unblocked` for convolutions onnxruntime cannot run in its NCHWc layout
    on a host with that `nchwc_block` (nchwc_runs; 0: not told apart), and the class name (`movement`,
    `view`) for data movement and views (SHARED_KEYS).

    `ops` are op type strings or operators (partition.types.OpCost); only operators carry the
    shapes and constants that conv shapes and scalar-scale epilogues need.
    """
    keys, head = [], None
    types = [o if isinstance(o, str) else o.op_type for o in ops]
    for i, (o, t) in enumerate(zip(ops, types)):
        if head is not None and (t in FUSABLE_EPILOGUES or (head in MATMUL_HEADS and _is_scalar_scale(o))):
            keys.append(t + FUSED_SUFFIX)
            continue
        if t in FUSABLE_PROLOGUES and i + 1 < len(types) and types[i + 1] == "MatMul":
            keys.append(t + FUSED_SUFFIX)
            head = None
            continue
        head = t if t in FUSION_HEADS else None
        shape = "" if isinstance(o, str) or t != "Conv" else conv_shape(o, nchwc_block)
        keys.append(t + CONV_SHAPE_SUFFIX + shape if shape else SHARED_KEYS.get(t, t))
    return keys

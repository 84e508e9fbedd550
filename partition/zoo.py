"""Reference architectures built with onnx.helper (random weights): FLOP checks, tests, benchmarks.

- `mobilenet_v2()`: MobileNetV2 1.0 at 224x224 (about 300 MMAC), BatchNorm folded into convs; `width` and
  `divisor` give other widths (divisor 1: odd channel counts, as pruned models have).
- `transformer_encoder()`: a BERT-style encoder (multi-head self-attention, GELU MLP, LayerNorm).
- `tiny_detector()`: a two-scale detector with box and score heads (four outputs).
- `shufflenet_v2()`: ShuffleNetV2 1.0 at 224x224 (about 146 MMAC): channel split, channel shuffle.
- `residual_chain(n_ops)`: a chain of residual blocks of exactly `n_ops` operators (benchmarks).
Nothing is downloaded; each builder returns an onnx.ModelProto; `save(model, path)` writes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, ValueInfoProto, helper, numpy_helper

__all__ = ["mobilenet_v2", "transformer_encoder", "tiny_detector", "shufflenet_v2", "residual_chain", "save",
           "OPSET"]

OPSET = 17


class _Builder:
    """Accumulates nodes and initializers with unique names and seeded random weights."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[NodeProto] = []
        self.inits: list[TensorProto] = []
        self.count = 0

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, arr: np.ndarray, prefix: str = "w") -> str:
        name = self.fresh(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def weight(self, shape: tuple[int, ...], fan_in: int, prefix: str = "w") -> str:
        std = np.sqrt(2.0 / max(fan_in, 1))
        return self.const((self.rng.standard_normal(shape) * std).astype(np.float32), prefix)

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        """One node with a single output; returns the output's name."""
        name = self.fresh(op_type.lower())
        out = f"{name}_out"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def ops(self, op_type: str, inputs: list[str], n_out: int, **attrs: Any) -> list[str]:
        """One node with `n_out` outputs (Split); returns their names in order."""
        name = self.fresh(op_type.lower())
        outs = [f"{name}_out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1) -> str:
        w = self.weight((cout, cin // group, k, k), fan_in=cin // group * k * k)
        b = self.const(np.zeros(cout, np.float32), "b")
        return self.op("Conv", [x, w, b], kernel_shape=[k, k], strides=[stride, stride],
                       pads=[k // 2] * 4, group=group)

    def model(self, inputs: list[ValueInfoProto], outputs: list[ValueInfoProto], name: str) -> ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tierplan.zoo")
        m.ir_version = 8
        return m


def _relu6(b: _Builder, x: str) -> str:
    lo = b.const(np.array(0.0, np.float32), "lo")
    hi = b.const(np.array(6.0, np.float32), "hi")
    return b.op("Clip", [x, lo, hi])


def _divisible(c: float, divisor: int) -> int:
    """torchvision's _make_divisible: `c` rounded to a multiple of `divisor`, never 10% below `c`."""
    out = max(divisor, int(c + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * c else out


def mobilenet_v2(resolution: int = 224, classes: int = 1000, seed: int = 0, width: float = 1.0,
                 divisor: int = 8) -> ModelProto:
    """MobileNetV2 (Sandler et al. 2018): inverted residual blocks, depthwise convs, ReLU6. `width` scales every
    layer's channels, rounded to a multiple of `divisor` as torchvision does; `divisor=1` keeps the odd
    counts a width multiplier or channel pruning gives (width 0.95: 30, 15, 23, 61, 91, 152, 304 channels,
    hidden layers of 90, 138, 366, 546), which onnxruntime cannot all block (devices.constants.nchwc_runs)."""
    b = _Builder(seed)
    x = b.op("Identity", ["image"])
    cin = _divisible(32 * width, divisor)
    x = _relu6(b, b.conv(x, 3, cin, 3, 2))
    # (expansion t, channels c, repeats n, first stride s)
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)]:
        c = _divisible(c * width, divisor)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = x
            if t != 1:
                y = _relu6(b, b.conv(y, cin, hidden, 1))
            y = _relu6(b, b.conv(y, hidden, hidden, 3, stride, group=hidden))
            y = b.conv(y, hidden, c, 1)
            if stride == 1 and cin == c:
                y = b.op("Add", [x, y])
            x, cin = y, c
    x = _relu6(b, b.conv(x, cin, 1280, 1))
    x = b.op("GlobalAveragePool", [x])
    x = b.op("Flatten", [x], axis=1)
    w = b.weight((classes, 1280), 1280)
    bias = b.const(np.zeros(classes, np.float32), "b")
    b.nodes.append(helper.make_node("Gemm", [x, w, bias], ["logits"], name="classifier", transB=1))
    return b.model([helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, resolution, resolution])],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])], "mobilenet_v2")


def _layer_norm(b: _Builder, x: str, d: int) -> str:
    scale = b.const(np.ones(d, np.float32), "ln_scale")
    bias = b.const(np.zeros(d, np.float32), "ln_bias")
    return b.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-5)


def _linear(b: _Builder, x: str, din: int, dout: int) -> str:
    w = b.weight((din, dout), din)
    return b.op("Add", [b.op("MatMul", [x, w]), b.const(np.zeros(dout, np.float32), "b")])


def transformer_encoder(layers: int = 2, seq: int = 32, d_model: int = 64, heads: int = 4, d_ff: int = 256,
                        batch: int = 1, seed: int = 0) -> ModelProto:
    """A post-LayerNorm transformer encoder (BERT layout): attention as MatMul/Softmax chains, GELU by Erf."""
    b = _Builder(seed)
    dh = d_model // heads
    x = b.op("Identity", ["tokens"])
    split_shape = b.const(np.array([batch, seq, heads, dh], np.int64), "shape")
    merge_shape = b.const(np.array([batch, seq, d_model], np.int64), "shape")
    inv_sqrt = b.const(np.array(1.0 / np.sqrt(dh), np.float32), "scale")
    for _ in range(layers):
        q, k, v = (b.op("Transpose", [b.op("Reshape", [_linear(b, x, d_model, d_model), split_shape])],
                        perm=perm) for perm in ([0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3]))
        scores = b.op("Mul", [b.op("MatMul", [q, k]), inv_sqrt])
        attn = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])
        attn = b.op("Reshape", [b.op("Transpose", [attn], perm=[0, 2, 1, 3]), merge_shape])
        x = _layer_norm(b, b.op("Add", [x, _linear(b, attn, d_model, d_model)]), d_model)
        h = _linear(b, x, d_model, d_ff)
        gelu = b.op("Mul", [b.op("Mul", [h, b.const(np.array(0.5, np.float32), "half")]),
                            b.op("Add", [b.op("Erf", [b.op("Div", [h, b.const(np.array(np.sqrt(2.0), np.float32), "rt2")])]),
                                         b.const(np.array(1.0, np.float32), "one")])])
        x = _layer_norm(b, b.op("Add", [x, _linear(b, gelu, d_ff, d_model)]), d_model)
    b.nodes.append(helper.make_node("Identity", [x], ["encoded"], name="encoded"))
    return b.model([helper.make_tensor_value_info("tokens", TensorProto.FLOAT, [batch, seq, d_model])],
                   [helper.make_tensor_value_info("encoded", TensorProto.FLOAT, [batch, seq, d_model])],
                   "transformer_encoder")


def tiny_detector(resolution: int = 128, classes: int = 4, anchors: int = 3, seed: int = 0) -> ModelProto:
    """A two-scale single-shot detector: conv backbone, per-scale box (4A) and score (CA) heads."""
    b = _Builder(seed)
    x = b.op("Identity", ["image"])
    cin = 3
    feats = []
    for i, c in enumerate((16, 32, 48, 64)):
        x = b.op("Relu", [b.conv(x, cin, c, 3, 2)])
        y = b.op("Relu", [b.conv(x, c, c, 3)])
        x = b.op("Add", [x, y])
        cin = c
        if i >= 2:
            feats.append((x, c))
    outputs, infos = [], []
    for s, (f, c) in enumerate(feats):
        hw = resolution // (2 ** (s + 3))
        for head, width in (("boxes", 4 * anchors), ("scores", classes * anchors)):
            out = b.conv(f, c, width, 3)
            if head == "scores":
                out = b.op("Sigmoid", [out])
            name = f"{head}_{s}"
            b.nodes.append(helper.make_node("Identity", [out], [name], name=name))
            outputs.append(name)
            infos.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, width, hw, hw]))
    return b.model([helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, resolution, resolution])],
                   infos, "tiny_detector")


def _channel_shuffle(b: _Builder, x: str, c: int, hw: int) -> str:
    """Reshape to (1, 2, C/2, H, W), swap the two group axes, reshape back: ShuffleNet's channel shuffle."""
    grouped = b.const(np.array([1, 2, c // 2, hw, hw], np.int64), "shape")
    flat = b.const(np.array([1, c, hw, hw], np.int64), "shape")
    x = b.op("Transpose", [b.op("Reshape", [x, grouped])], perm=[0, 2, 1, 3, 4])
    return b.op("Reshape", [x, flat])


def shufflenet_v2(resolution: int = 224, classes: int = 1000, seed: int = 0, channel_split: str = "Split",
                  ) -> ModelProto:
    """ShuffleNetV2 1.0 (Ma et al. 2018) as torchvision exports it: BatchNorm folded, a Split for the channel
    split (`channel_split="Slice"`: two Slices, as exporters write `x[:, :c]`), Reshape-Transpose-Reshape for
    the channel shuffle, ReduceMean before the classifier."""
    b = _Builder(seed)
    x = b.op("Identity", ["image"])
    x = b.op("Relu", [b.conv(x, 3, 24, 3, 2)])
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin, hw = 24, resolution // 4
    for c, repeats in ((116, 4), (232, 8), (464, 4)):
        half = c // 2
        for i in range(repeats):
            if i == 0:   # downsampling block: both branches read the whole input
                hw = (hw + 1) // 2
                left = b.op("Relu", [b.conv(b.conv(x, cin, cin, 3, 2, group=cin), cin, half, 1)])
                right = b.op("Relu", [b.conv(x, cin, half, 1)])
            else:
                if channel_split == "Slice":
                    axis = b.const(np.array([1], np.int64), "axis")
                    left, right = (b.op("Slice", [x, b.const(np.array([lo], np.int64), "start"),
                                                  b.const(np.array([lo + half], np.int64), "end"), axis])
                                   for lo in (0, half))
                else:
                    left, right = b.ops("Split", [x], n_out=2, axis=1)
                right = b.op("Relu", [b.conv(right, half, half, 1)])
            right = b.conv(right, half, half, 3, 2 if i == 0 else 1, group=half)
            right = b.op("Relu", [b.conv(right, half, half, 1)])
            x = _channel_shuffle(b, b.op("Concat", [left, right], axis=1), c, hw)
            cin = c
    x = b.op("Relu", [b.conv(x, cin, 1024, 1)])
    x = b.op("ReduceMean", [x], axes=[2, 3], keepdims=0)
    w = b.weight((classes, 1024), 1024)
    bias = b.const(np.zeros(classes, np.float32), "b")
    b.nodes.append(helper.make_node("Gemm", [x, w, bias], ["logits"], name="classifier", transB=1))
    return b.model([helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, resolution, resolution])],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])], "shufflenet_v2")


def residual_chain(n_ops: int, channels: int = 8, size: int = 8, seed: int = 0) -> ModelProto:
    """A chain of residual blocks (Conv, Relu, Conv, Add, Relu) padded with Relus to exactly `n_ops` operators."""
    b = _Builder(seed)
    x = b.op("Identity", ["x"])
    while len(b.nodes) + 5 <= n_ops - 1:
        y = b.op("Relu", [b.conv(x, channels, channels, 3)])
        y = b.conv(y, channels, channels, 3)
        x = b.op("Relu", [b.op("Add", [x, y])])
    while len(b.nodes) < n_ops - 1:
        x = b.op("Relu", [x])
    b.nodes.append(helper.make_node("Identity", [x], ["y"], name="output"))
    shape = [1, channels, size, size]
    return b.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], f"residual_chain_{n_ops}")


def save(model: ModelProto, path: str | Path) -> Path:
    """Check and write a model; returns the path."""
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path

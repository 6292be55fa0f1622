"""Benchmark models built with ``onnx.helper`` and numpy only (no torch), fixed-seed weights.

* :func:`conv16` - 16 x (Conv 3x3, 32 channels, pad 1 + Relu) on [N, 3, 32, 32], then
  GlobalAveragePool, Flatten, Gemm to 10 classes. Opset 17.
* :func:`encoder` - a BERT-like transformer encoder: 4 pre-LN layers, hidden 256, 4 heads,
  sequence length 64, FFN 1024 with GELU written as ``x * 0.5 * (1 + Erf(x / sqrt 2))``.
  Input ``x`` float32 [N, 64, 256] (the embeddings). Opset 17 (LayerNormalization).
* :func:`big_graph` - a long chain of cheap nodes (Add / Mul with small constants and a
  Conv 1x1 every 50 nodes) on a [1, 8, 8, 8] tensor, to measure graph preparation scaling.

:func:`save_model` checks a model with ``onnx.checker`` and writes it to a folder. Run this
file to build all three into a temporary folder and run each once in onnxruntime::

    python bench/models.py
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "CONV16_INPUT",
    "ENCODER_INPUT",
    "OPSET",
    "big_graph",
    "conv16",
    "encoder",
    "input_shape",
    "save_model",
]

OPSET = 17
CONV16_INPUT = (3, 32, 32)  # per-sample shape of input "input"
ENCODER_INPUT = (64, 256)  # per-sample shape of input "x"


class _Builder:
    """Nodes and initializers of one graph, with unique generated names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, prefix: str, shape: tuple[int, ...], fan_in: int, gain: float = 1.0) -> str:
        std = gain / math.sqrt(fan_in)
        return self.const(prefix, (self.rng.standard_normal(shape) * std).astype(np.float32))

    def bias(self, prefix: str, size: int, scale: float = 0.02) -> str:
        return self.const(prefix, (self.rng.standard_normal(size) * scale).astype(np.float32))

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def model(
        self,
        name: str,
        inputs: list[onnx.ValueInfoProto],
        outputs: list[onnx.ValueInfoProto],
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnxq-bench"
        )
        model.ir_version = 8
        return model


def conv16(seed: int = 0, layers: int = 16, channels: int = 32) -> onnx.ModelProto:
    """Toy CNN: ``layers`` x (Conv 3x3 + Relu), GlobalAveragePool, Flatten, Gemm to 10."""
    b = _Builder(seed)
    x = "input"
    c_in = CONV16_INPUT[0]
    for _ in range(layers):
        w = b.weight("conv_w", (channels, c_in, 3, 3), fan_in=9 * c_in, gain=math.sqrt(2.0))
        bias = b.bias("conv_b", channels)
        x = b.op("Conv", [x, w, bias], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        x = b.op("Relu", [x])
        c_in = channels
    x = b.op("GlobalAveragePool", [x])
    x = b.op("Flatten", [x], axis=1)
    w = b.weight("fc_w", (10, channels), fan_in=channels)
    bias = b.bias("fc_b", 10)
    b.op("Gemm", [x, w, bias], transB=1)
    b.nodes[-1].output[0] = "logits"
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *CONV16_INPUT])
    outp = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])
    return b.model("conv16", [inp], [outp])


def encoder(
    seed: int = 0,
    layers: int = 4,
    hidden: int = 256,
    heads: int = 4,
    seq: int = 64,
    ffn: int = 1024,
) -> onnx.ModelProto:
    """BERT-like pre-LN encoder on given embeddings ``x`` [N, seq, hidden]."""
    assert hidden % heads == 0 and (seq, hidden) == ENCODER_INPUT
    head_dim = hidden // heads
    b = _Builder(seed)
    split_shape = b.const("split_shape", np.array([0, 0, heads, head_dim], np.int64))
    merge_shape = b.const("merge_shape", np.array([0, 0, hidden], np.int64))
    inv_sqrt_d = b.const("inv_sqrt_d", np.array(1.0 / math.sqrt(head_dim), np.float32))
    inv_sqrt2 = b.const("inv_sqrt2", np.array(1.0 / math.sqrt(2.0), np.float32))
    one = b.const("one", np.array(1.0, np.float32))
    half = b.const("half", np.array(0.5, np.float32))

    def linear(x: str, n_in: int, n_out: int) -> str:
        w = b.weight("w", (n_in, n_out), fan_in=n_in)
        return b.op("Add", [b.op("MatMul", [x, w]), b.bias("b", n_out)])

    def layer_norm(x: str) -> str:
        gamma = b.const("ln_g", np.ones(hidden, np.float32))
        beta = b.const("ln_b", np.zeros(hidden, np.float32))
        return b.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=1e-5)

    def to_heads(x: str, perm: list[int]) -> str:
        return b.op("Transpose", [b.op("Reshape", [x, split_shape])], perm=perm)

    x = "x"
    for _ in range(layers):
        h = layer_norm(x)
        q = to_heads(linear(h, hidden, hidden), [0, 2, 1, 3])  # [N, H, S, D]
        k = to_heads(linear(h, hidden, hidden), [0, 2, 3, 1])  # [N, H, D, S]
        v = to_heads(linear(h, hidden, hidden), [0, 2, 1, 3])  # [N, H, S, D]
        scores = b.op("Mul", [b.op("MatMul", [q, k]), inv_sqrt_d])
        probs = b.op("Softmax", [scores], axis=-1)
        ctx = b.op("MatMul", [probs, v])
        ctx = b.op("Reshape", [b.op("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_shape])
        x = b.op("Add", [x, linear(ctx, hidden, hidden)])
        h = layer_norm(x)
        f = linear(h, hidden, ffn)
        erf = b.op("Erf", [b.op("Mul", [f, inv_sqrt2])])
        gelu = b.op("Mul", [b.op("Mul", [f, half]), b.op("Add", [erf, one])])
        x = b.op("Add", [x, linear(gelu, ffn, hidden)])
    b.nodes[-1].output[0] = "y"
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", seq, hidden])
    outp = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", seq, hidden])
    return b.model("encoder", [inp], [outp])


def big_graph(n_nodes: int = 4000, seed: int = 0, conv_every: int = 50) -> onnx.ModelProto:
    """A chain of ``n_nodes`` cheap nodes on a [1, 8, 8, 8] tensor: alternating Add / Mul
    with small per-node constants, and a Conv 1x1 every ``conv_every`` nodes."""
    b = _Builder(seed)
    x = "input"
    for i in range(n_nodes):
        if conv_every and i % conv_every == conv_every - 1:
            w = (np.eye(8, dtype=np.float32) + b.rng.standard_normal((8, 8)) * 0.01).astype(
                np.float32
            )
            x = b.op("Conv", [x, b.const("w", w.reshape(8, 8, 1, 1))], kernel_shape=[1, 1])
        elif i % 2 == 0:
            c = (b.rng.standard_normal((8, 1, 1)) * 0.01).astype(np.float32)
            x = b.op("Add", [x, b.const("c", c)])
        else:
            c = (1.0 + b.rng.standard_normal((8, 1, 1)) * 0.001).astype(np.float32)
            x = b.op("Mul", [x, b.const("c", c)])
    b.nodes[-1].output[0] = "output"
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 8, 8])
    outp = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8, 8, 8])
    return b.model(f"big_graph_{n_nodes}", [inp], [outp])


def input_shape(model_name: str) -> tuple[str, tuple[int, ...]]:
    """Input name and per-sample shape of ``conv16`` or ``encoder``."""
    return {"conv16": ("input", CONV16_INPUT), "encoder": ("x", ENCODER_INPUT)}[model_name]


def save_model(model: onnx.ModelProto, folder: Path, name: str) -> Path:
    """Check ``model`` with ``onnx.checker`` (full shape inference) and write it."""
    onnx.checker.check_model(model, full_check=True)
    path = folder / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def _smoke() -> None:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="onnxq-bench-models-") as tmp:
        folder = Path(tmp)
        built = {"conv16": conv16(), "encoder": encoder(), "big_graph": big_graph(4000)}
        feeds = {
            "conv16": {"input": np.random.default_rng(0).standard_normal((2, *CONV16_INPUT))},
            "encoder": {"x": np.random.default_rng(0).standard_normal((2, *ENCODER_INPUT))},
            "big_graph": {"input": np.random.default_rng(0).standard_normal((1, 8, 8, 8))},
        }
        for name, model in built.items():
            path = save_model(model, folder, name)
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            feed = {k: v.astype(np.float32) for k, v in feeds[name].items()}
            out = sess.run(None, feed)[0]
            print(
                f"{name}: {len(model.graph.node)} nodes, {path.stat().st_size} B, "
                f"output {out.shape} mean {out.mean():.4f} std {out.std():.4f}"
            )


if __name__ == "__main__":
    _smoke()

"""Integer weights of float nodes written for load-time folding (``--fold-weights``)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
from click.testing import CliRunner

from onnxq import Granularity, OptimizeFor, QuantConfig, Scheme, quantize
from onnxq.cli.main import cli
from onnxq.config import WeightSpec
from onnxq.graph.passes.fold_weights import fold_float_weights
from onnxq.runtime import optimized_op_types

import models
from helpers import NO_CHECK, graph_bytes, run


def _case(tmp_path, model, feed):
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    return tmp_path / "m.onnx", tmp_path / "d.npz"


def _ops(path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_weights_only_nodes_read_constant_float_weights_at_load(tmp_path):
    """The same weights as DequantizeLinear (outputs equal up to the summation order of
    another convolution kernel), the integers still in the file, and nothing left to
    compute per run once onnxruntime has optimised the graph."""
    model = models.cnn()
    feed = {"input": np.random.default_rng(0).normal(0, 1, (8, 1, 8, 8)).astype(np.float32)}
    m, d = _case(tmp_path, model, feed)
    # asymmetric weights: the zero points are not 0, so the Sub is there too
    cfg = QuantConfig(weights_only=True, target=NO_CHECK, weights=WeightSpec(scheme=Scheme.ASYM))
    folded = quantize(m, tmp_path / "a.onnx", cfg, data=d)
    kept = quantize(
        m, tmp_path / "b.onnx", QuantConfig(**{**cfg.__dict__, "fold_weights": False}), data=d
    )
    assert folded.folded_weights == kept.quantized_weights > 0 and kept.folded_weights == 0
    ops = _ops(tmp_path / "a.onnx")
    assert ops["DequantizeLinear"] == 0 and ops["Cast"] == ops["Mul"] == ops["Sub"] > 0
    written = onnx.load(str(tmp_path / "a.onnx"))
    assert any(t.data_type == onnx.TensorProto.UINT8 for t in written.graph.initializer)
    kept_out = run(onnx.load(str(tmp_path / "b.onnx")), feed)
    for a, b in zip(run(written, feed), kept_out, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    after = optimized_op_types(written)  # folded into constants: no per-run arithmetic
    assert after["Cast"] == 0 and after["DequantizeLinear"] == 0
    assert optimized_op_types(onnx.load(str(tmp_path / "b.onnx")))["DequantizeLinear"] > 0
    size = {p: (tmp_path / p).stat().st_size for p in ("a.onnx", "b.onnx")}
    assert size["a.onnx"] < m.stat().st_size  # the integers: a few nodes' worth of bytes more
    assert size["a.onnx"] - size["b.onnx"] < 300 * folded.folded_weights


def test_integer_kernels_keep_their_dequantize(tmp_path):
    model = models.cnn()
    feed = {"input": np.random.default_rng(0).normal(0, 1, (8, 1, 8, 8)).astype(np.float32)}
    m, d = _case(tmp_path, model, feed)
    size = OptimizeFor.SIZE  # int8 activations (balanced writes this tiny model weights-only)
    on = quantize(m, tmp_path / "a.onnx", QuantConfig(target=NO_CHECK, optimize_for=size), data=d)
    unfolded = QuantConfig(target=NO_CHECK, fold_weights=False, optimize_for=size)
    quantize(m, tmp_path / "b.onnx", unfolded, data=d)
    assert on.folded_weights == 0
    assert graph_bytes(tmp_path / "a.onnx") == graph_bytes(tmp_path / "b.onnx")


def test_blocked_and_4bit_weights_keep_their_dequantize(tmp_path):
    """onnxruntime fuses those into MatMulNBits, which is better than a float MatMul."""
    model, feed = models.single_op("matmul")
    m, d = _case(tmp_path, model, feed)
    cfg = QuantConfig(
        weights_only=True,
        target=NO_CHECK,
        weights=WeightSpec(bits=4, granularity=Granularity.BLOCK, block_size=16),
    )
    report = quantize(m, tmp_path / "a.onnx", cfg, data=d)
    assert report.folded_weights == 0 and _ops(tmp_path / "a.onnx")["DequantizeLinear"] > 0


def test_fold_leaves_the_input_model_alone_and_names_unique(tmp_path):
    """On a weights-only model written with DequantizeLinear: the input is not touched,
    the result is valid and every new tensor name is unique."""
    model = models.cnn()
    feed = {"input": np.random.default_rng(0).normal(0, 1, (8, 1, 8, 8)).astype(np.float32)}
    m, d = _case(tmp_path, model, feed)
    cfg = QuantConfig(weights_only=True, fold_weights=False, target=NO_CHECK)
    quantize(m, tmp_path / "q.onnx", cfg, data=d)
    written = onnx.load(str(tmp_path / "q.onnx"))
    before = written.SerializeToString()
    folded = fold_float_weights(written)
    out, n = folded.model, len(folded.changes)
    assert n > 0 and written.SerializeToString() == before
    onnx.checker.check_model(out, full_check=True)
    names = [o for node in out.graph.node for o in node.output]
    names += [t.name for t in out.graph.initializer]
    assert len(names) == len(set(names))
    assert _ops_of(out)["DequantizeLinear"] == 0


def _ops_of(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


def test_cli_switch(tmp_path):
    model = models.cnn()
    feed = {"input": np.random.default_rng(0).normal(0, 1, (8, 1, 8, 8)).astype(np.float32)}
    m, d = _case(tmp_path, model, feed)
    args = ["quantize", str(m), "--weights-only", "--data", str(d), "--target-sqnr", "0"]
    on = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "a.onnx"), "--json"])
    off = CliRunner().invoke(
        cli, [*args, "-o", str(tmp_path / "b.onnx"), "--json", "--no-fold-weights"]
    )
    assert on.exit_code == 0 and off.exit_code == 0, on.output + off.output
    assert json.loads(on.stdout)["folded_weights"] > 0
    assert json.loads(off.stdout)["folded_weights"] == 0

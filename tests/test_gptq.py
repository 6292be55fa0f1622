"""GPTQ rounding: less output error than round-to-nearest, same storage layout."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxq import QuantConfig, quantize
from onnxq.config import Granularity, WeightSpec
from onnxq.quant import QType, dequantize
from onnxq.quant import quantize as q_values
from onnxq.quant.gptq import gptq
from onnxq.quant.weights import WeightLayout, weight_qparams

import models
from helpers import NO_CHECK


def _correlated_inputs(rng, rows: int, k: int) -> np.ndarray:
    mix = rng.normal(0, 1, (k, k)) / np.sqrt(k) + np.eye(k)
    return (rng.normal(0, 1, (rows, k)) @ mix).astype(np.float32)


@pytest.mark.parametrize("block", [None, 16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gptq_output_error_is_below_round_to_nearest(block, seed):
    rng = np.random.default_rng(seed)
    x = _correlated_inputs(rng, 2048, 64)
    w = rng.normal(0, 0.1, (64, 24)).astype(np.float32)
    codes, qp = gptq(w, x.T.astype(np.float64) @ x, QType.INT4, symmetric=True, block=block)
    layout = WeightLayout("block", 0, block) if block else WeightLayout("channel", 1)
    rtn = weight_qparams(w, layout, "minmax", QType.INT4, symmetric=True)
    y = x @ w
    err_gptq = np.mean((x @ dequantize(codes, qp) - y) ** 2)
    err_rtn = np.mean((x @ dequantize(q_values(w, rtn), rtn) - y) ** 2)
    assert err_gptq < 0.9 * err_rtn
    assert codes.min() >= -8 and codes.max() <= 7
    assert qp.scale.shape == ((4, 24) if block else (24,))


def test_quantize_with_gptq_beats_round_to_nearest(tmp_path):
    model, _ = models.single_op("matmul")
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (64, 3, 8, 8)).astype(np.float32)
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", x=x)
    sqnr = {}
    for gptq_on in (False, True):
        config = QuantConfig(
            weights_only=True,
            gptq=gptq_on,
            exclude=("stem",),
            target=NO_CHECK,
            weights=WeightSpec(bits=4, granularity=Granularity.BLOCK, block_size=4),
        )
        report = quantize(
            tmp_path / "m.onnx", tmp_path / f"q{gptq_on}.onnx", config, data=tmp_path / "d.npz"
        )
        onnx.checker.check_model(onnx.load(str(tmp_path / f"q{gptq_on}.onnx")))
        sqnr[gptq_on] = report.fidelity.outputs[0].sqnr_db
    assert sqnr[True] > sqnr[False]


def test_gptq_needs_data(tmp_path):
    from onnxq.errors import ConfigError

    model, _ = models.single_op("matmul")
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(ConfigError, match="--gptq needs calibration data"):
        quantize(
            tmp_path / "m.onnx", tmp_path / "q.onnx", QuantConfig(weights_only=True, gptq=True)
        )

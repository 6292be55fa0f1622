"""``--rounding adaround`` end to end on the sample model: it beats nearest where the
survey says it should, the report names every rounded weight, bad uses are refused."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from onnxq import FidelityTarget, OptimizeFor, QuantConfig, Rounding, WeightSpec, quantize
from onnxq.cli.main import cli

from conftest import SAMPLES

MODEL = SAMPLES / "digits_cnn.onnx"
CALIB = SAMPLES / "digits_calib.npz"
EVAL = SAMPLES / "digits_eval.npz"


def _sqnr(report) -> float:
    return min(o.sqnr_db for o in report.fidelity.outputs)


@pytest.mark.parametrize("weights_only", [False, True])
def test_adaround_beats_nearest_at_4_bits_on_held_out_data(tmp_path, weights_only) -> None:
    reports = {}
    for rounding in (Rounding.NEAREST, Rounding.ADAROUND):
        config = QuantConfig(
            weights=WeightSpec(bits=4),
            weights_only=weights_only,
            target=FidelityTarget(sqnr_db=0),
            rounding=rounding,
            adaround_iters=500,
            optimize_for=OptimizeFor.SIZE,  # int8 both times, however fast it runs
        )
        out = tmp_path / f"{rounding.value}.onnx"
        reports[rounding] = quantize(MODEL, out, config, data=CALIB, eval_data=EVAL)
    nearest, ada = reports[Rounding.NEAREST], reports[Rounding.ADAROUND]
    assert _sqnr(ada) > _sqnr(nearest) + 2.0, (_sqnr(ada), _sqnr(nearest))
    rounded = [c for c in ada.methods if c.kind.name == "WEIGHT_ADAROUND"]
    assert len(rounded) == 7  # every Conv and the Gemm
    assert all("x nearest" in c.detail or "nearest" in c.detail for c in rounded)

    # the codes are written: the two files differ in some weight, one step at most
    def codes(path):
        return {
            t.name: numpy_helper.to_array(t).astype(np.int32)
            for t in onnx.load(path).graph.initializer
            if t.name.endswith("_quantized") and t.data_type in (onnx.TensorProto.INT4,)
        }

    a, n = codes(tmp_path / "adaround.onnx"), codes(tmp_path / "nearest.onnx")
    assert a.keys() == n.keys() and a
    steps = [np.abs(a[k] - n[k]).max() for k in a]
    assert max(steps) == 1


def test_adaround_is_recorded_and_refused_without_data(tmp_path) -> None:
    out = tmp_path / "q.onnx"
    args = ["quantize", str(MODEL), "-o", str(out), "--rounding", "adaround"]
    refused = CliRunner().invoke(cli, [*args, "--weights-only"])
    assert refused.exit_code == 2
    assert "--rounding adaround learns from each layer's inputs: give --data" in refused.output
    assert not out.exists()
    dynamic = CliRunner().invoke(cli, [*args, "--mode", "dynamic"])
    assert dynamic.exit_code == 2 and "applies to static and weights-only" in dynamic.output
    ok = CliRunner().invoke(cli, [*args, "--data", str(CALIB), "--adaround-iters", "20", "--json"])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.stdout)
    assert doc["settings"]["quantize"]["rounding"] == "adaround"
    assert doc["settings"]["quantize"]["adaround_iters"] == 20
    kinds = {c["kind"] for c in doc["methods"]["changes"]}
    assert kinds == {"weight_adaround"}

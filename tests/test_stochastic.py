"""--rounding stochastic end to end: reproducible for a seed, different across seeds,
every code one step at most from round-to-nearest, refused with GPTQ and dynamic mode."""

from __future__ import annotations

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import numpy_helper

from onnxq.cli.main import cli

from conftest import SAMPLES
from helpers import graph_bytes

MODEL, DATA = SAMPLES / "digits_cnn.onnx", SAMPLES / "digits_calib.npz"


def _quantize(out, *flags):
    args = ["quantize", str(MODEL), "-o", str(out), "--data", str(DATA), "-q", "--weights-only"]
    args += ["--no-fold-weights", "--target-sqnr", "0", *flags]
    return CliRunner().invoke(cli, args)


def _codes(path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {
        t.name: numpy_helper.to_array(t).astype(np.int64)
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.INT8
    }


def test_same_seed_same_bytes_other_seed_other_codes_one_step_from_nearest(tmp_path):
    for name, flags in (
        ("near", ()),
        ("a", ("--rounding", "stochastic", "--seed", "3")),
        ("b", ("--rounding", "stochastic", "--seed", "3")),
        ("c", ("--rounding", "stochastic", "--seed", "4")),
    ):
        result = _quantize(tmp_path / f"{name}.onnx", *flags)
        assert result.exit_code == 0, result.output
    assert graph_bytes(tmp_path / "a.onnx") == graph_bytes(tmp_path / "b.onnx")
    near, a, c = (_codes(tmp_path / f"{n}.onnx") for n in ("near", "a", "c"))
    assert near.keys() == a.keys() == c.keys() and near
    moved = differ = 0
    for name in near:
        step = np.abs(a[name] - near[name])
        assert step.max() <= 1  # floor or ceiling, never further
        moved += int(step.sum())
        differ += int(np.sum(a[name] != c[name]))
    assert moved > 0 and differ > 0  # really random, and the seed matters


def test_stochastic_rounding_is_refused_with_gptq_and_dynamic(tmp_path):
    gptq = _quantize(tmp_path / "g.onnx", "--rounding", "stochastic", "--gptq")
    assert gptq.exit_code == 2 and "exclude each other" in gptq.output
    args = ["quantize", str(MODEL), "-o", str(tmp_path / "d.onnx"), "--mode", "dynamic"]
    dynamic = CliRunner().invoke(cli, [*args, "--rounding", "stochastic"])
    assert dynamic.exit_code == 2 and "static and weights-only" in dynamic.output

"""Granularity and bit width: group, block, int4, int16, weights-only, recipes."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxq import OptimizeFor, QuantConfig, quantize
from onnxq.config import ActivationSpec, Granularity, Scheme, WeightSpec
from onnxq.errors import ConfigError
from onnxq.recipe import read_recipe
from onnxq.runtime import optimized_op_types

import models
from helpers import NO_CHECK, graph_bytes, output_step, run


def _files(tmp_path, model, feed):
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    return tmp_path / "m.onnx", tmp_path / "d.npz"


def _q(tmp_path, model, feed, config, name="q.onnx"):
    path, data = _files(tmp_path, model, feed)
    config = replace(config, target=NO_CHECK)
    report = quantize(path, tmp_path / name, config, data=data)
    return report, onnx.load(str(tmp_path / name))


def _inits(model):
    return {t.name: t for t in model.graph.initializer}


def _dq_of(model, prefix):
    return next(
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0].startswith(prefix)
    )


def _attr(node, name):
    return next(
        (onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), None
    )


def test_group_granularity_shares_one_range_per_group_of_channels(tmp_path):
    model, feed = models.single_op("conv")  # op weight w1: 6 output channels
    _, q = _q(
        tmp_path,
        model,
        feed,
        QuantConfig(
            weights=WeightSpec(granularity=Granularity.GROUP, group_size=4),
            optimize_for=OptimizeFor.SIZE,  # int8 activations whatever the timing
        ),
    )
    scale = numpy_helper.to_array(_inits(q)["w1_scale"])
    assert scale.shape == (6,)
    assert np.all(scale[:4] == scale[0]) and np.all(scale[4:] == scale[4])  # last group of 2
    assert scale[0] != scale[4]
    w = numpy_helper.to_array(_inits(model)["w1"])
    assert scale[0] == pytest.approx(2 * np.abs(w[:4]).max() / 255, rel=1e-6)
    (a,), (b,) = run(model, feed), run(q, feed)
    assert np.abs(a - b).max() <= 8 * output_step(q, "y", a)


def test_int4_block_matmul_is_packed_and_runs_as_matmulnbits(tmp_path):
    model, feed = models.single_op("gemm")  # wf [512, 7], reduction axis 0
    config = QuantConfig(
        weights_only=True, weights=WeightSpec(granularity=Granularity.BLOCK, block_size=32, bits=4)
    )
    report, q = _q(tmp_path, model, feed, config)
    assert next(o.version for o in q.opset_import if o.domain == "") >= 21
    w = _inits(q)["wf_quantized"]
    assert w.data_type == onnx.TensorProto.INT4
    assert len(w.raw_data) == 512 * 7 // 2  # two codes per byte
    dq = _dq_of(q, "wf_quantized")
    assert _attr(dq, "block_size") == 32 and _attr(dq, "axis") == 0
    assert numpy_helper.to_array(_inits(q)["wf_scale"]).shape == (16, 7)
    assert "QuantizeLinear" not in [n.op_type for n in q.graph.node]  # weights only
    assert report.quantized_nodes == 2  # the Conv stem and the Gemm have weights


def test_block_on_matmul_fuses_to_matmulnbits(tmp_path):
    model, feed = models.single_op("matmul")  # wm [8, 5]
    config = QuantConfig(
        weights_only=True,
        exclude=("stem",),
        weights=WeightSpec(granularity=Granularity.BLOCK, block_size=16, bits=4),
    )
    _, q = _q(tmp_path, model, feed, config)
    assert "MatMulNBits" in {o.rsplit(":", 1)[-1] for o in optimized_op_types(q)}
    (a,), (b,) = run(model, feed), run(q, feed)
    assert np.abs(a - b).max() <= 0.1 * np.abs(a).max()


def test_block_that_does_not_divide_the_axis_is_handled(tmp_path):
    model, feed = models.single_op("conv")  # w1 [6, 8, 3, 3]: 8 input channels, block 3
    config = QuantConfig(weights=WeightSpec(granularity=Granularity.BLOCK, block_size=3))
    report, q = _q(tmp_path, model, feed, config)
    scale = numpy_helper.to_array(_inits(q)["w1_scale"])
    assert scale.shape == (6, 3, 3, 3)  # ceil(8 / 3) blocks along the input channels
    w = numpy_helper.to_array(_inits(model)["w1"])
    assert scale[2, 2, 1, 1] == pytest.approx(2 * np.abs(w[2, 6:8, 1, 1]).max() / 255, rel=1e-6)
    (a,), (b,) = run(model, feed), run(q, feed)
    assert np.abs(a - b).max() <= 8 * output_step(q, "y", a)
    assert "op" in report.float_kernels  # blocked Conv weights: onnxruntime runs a float Conv


def test_int16_activations_are_more_faithful_than_int8(tmp_path):
    model, feed = models.single_op("add")
    sqnr = {}
    for bits in (8, 16):
        report, q = _q(
            tmp_path,
            model,
            feed,
            QuantConfig(activations=ActivationSpec(bits=bits), optimize_for=OptimizeFor.SIZE),
            f"q{bits}.onnx",
        )
        assert report.fidelity is not None
        sqnr[bits] = report.fidelity.outputs[0].sqnr_db
        if bits == 16:
            zp = _inits(q)["y_zp"]
            assert zp.data_type == onnx.TensorProto.UINT16
    assert sqnr[16] > sqnr[8] + 6  # int8 weights bound what int16 activations can gain


def test_per_channel_and_group_beat_per_tensor_on_uneven_filters(tmp_path):
    """The survey's prediction: finer weight ranges help when filters differ in range.
    Weights only (float activations) and 4 bits isolate the weight error; the metric is
    the mean over output channels of each channel's SQNR."""
    model, feed = models.single_op("conv")
    w = next(t for t in model.graph.initializer if t.name == "w1")
    gains = np.array([8.0, 4, 2, 1, 0.5, 0.25], np.float32)[:, None, None, None]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * gains, "w1"))
    (a,) = run(model, feed)
    sqnr = {}
    for g in (Granularity.TENSOR, Granularity.GROUP, Granularity.CHANNEL):
        config = QuantConfig(
            weights_only=True,
            exclude=("stem",),
            weights=WeightSpec(granularity=g, group_size=2, bits=4),
        )
        _, q = _q(tmp_path, model, feed, config, f"{g.value}.onnx")
        (b,) = run(q, feed)
        per_channel = [
            10 * np.log10(np.sum(a[:, c] ** 2) / np.sum((a[:, c] - b[:, c]) ** 2))
            for c in range(a.shape[1])
        ]
        sqnr[g] = float(np.mean(per_channel))
    assert sqnr[Granularity.TENSOR] + 3 < sqnr[Granularity.GROUP] < sqnr[Granularity.CHANNEL]


COMBINATIONS = [
    (g, wb, ab, wo)
    for g, wb, ab, wo in itertools.product(list(Granularity), (8, 4), (8, 16), (False, True))
    if not (wo and ab == 16)
]


@pytest.mark.parametrize("granularity,weight_bits,activation_bits,weights_only", COMBINATIONS)
def test_every_accepted_combination_runs_close_to_float(
    granularity, weight_bits, activation_bits, weights_only, tmp_path
):
    model = models.cnn()
    feed = {"input": np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)}
    config = QuantConfig(
        weights_only=weights_only,
        weights=WeightSpec(granularity=granularity, bits=weight_bits, block_size=4, group_size=2),
        activations=ActivationSpec(bits=activation_bits),
    )
    _, q = _q(tmp_path, model, feed, config)
    onnx.checker.check_model(q)
    (a,), (b,) = run(model, feed), run(q, feed)
    # 4-bit weights lose far more than 8-bit ones; the bound follows the weight step
    rel = {8: 0.05, 4: 0.35}[weight_bits]
    assert np.abs(a - b).max() <= rel * np.abs(a).max()


def test_recipe_sets_weights_per_node_and_reports_it(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\n"
        "rules:\n"
        "  - {match: Gemm, weight_bits: 4, granularity: block, block_size: 16}\n"
        "  - {match: 'conv[23]', granularity: tensor}\n"
        "  - {match: conv1, exclude: true}\n"
    )
    model = models.cnn()
    feed = {"input": np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)}
    config = QuantConfig(recipe=read_recipe(recipe), optimize_for=OptimizeFor.SIZE)
    report, q = _q(tmp_path, model, feed, config)
    reasons = {d.name: (d.action, d.reason) for d in report.decisions}
    assert "int4 sym per block 16" in reasons["fc"][1]
    assert "int8 sym per tensor" in reasons["conv2"][1]
    assert reasons["conv1"] == ("float", "excluded by the recipe")
    assert _inits(q)["wfc_quantized"].data_type == onnx.TensorProto.INT4
    assert numpy_helper.to_array(_inits(q)["w2_scale"]).shape == ()
    doc = report.to_dict()
    assert any("per block 16" in n["reason"] for n in doc["nodes"])


@pytest.mark.parametrize(
    "rules,message",
    [
        ([{"match": "nothing*", "weight_bits": 4}], "rule 'nothing*' matches no node"),
        (
            [{"match": "Conv", "weight_bits": 4}, {"match": "conv1", "weight_bits": 8}],
            "rules 'Conv' and 'conv1' give node 'conv1' conflicting bits",
        ),
        ([{"match": "Conv", "colour": "red"}], "unknown key 'colour'"),
        ([{"match": "Conv", "weight_bits": 9}], "--weight-bits 9 is not supported"),
        ([{"match": "Conv", "granularity": "diagonal"}], "bad granularity 'diagonal'"),
    ],
)
def test_bad_recipes_name_the_problem(rules, message, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"version": 1, "rules": rules}))
    model = models.cnn()
    feed = {"input": np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)}
    with pytest.raises(ConfigError, match=re.escape(message)):
        _q(tmp_path, model, feed, QuantConfig(recipe=read_recipe(path)))
    assert not (tmp_path / "q.onnx").exists()


def test_weights_only_needs_no_data_and_keeps_activations_float(tmp_path):
    from click.testing import CliRunner

    from onnxq.cli.main import cli

    model, _ = models.single_op("gemm")
    onnx.save(model, str(tmp_path / "m.onnx"))
    result = CliRunner().invoke(
        cli,
        [
            "quantize",
            str(tmp_path / "m.onnx"),
            "-o",
            str(tmp_path / "q.onnx"),
            "--weights-only",
            "--bits",
            "4",
            "--granularity",
            "block",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["qdq_pairs"] == 0 and doc["quantized_weights"] == 2
    # the graph itself (the recorded settings are a fixed ~1 kB on a model this small)
    assert len(graph_bytes(tmp_path / "q.onnx")) / doc["size"]["float_bytes"] < 0.25


def test_symmetric_activation_schemes_still_run(tmp_path):
    model = models.cnn()
    feed = {"input": np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)}
    report, q = _q(
        tmp_path, model, feed, QuantConfig(activations=ActivationSpec(scheme=Scheme.SYM, bits=16))
    )
    (a,), (b,) = run(model, feed), run(q, feed)
    assert np.abs(a - b).max() <= 0.01 * np.abs(a).max()
    assert (
        _inits(q)["logits_zp"].data_type == onnx.TensorProto.INT16
        if "logits_zp" in _inits(q)
        else True
    )

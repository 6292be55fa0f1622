"""``--equalize`` end to end: the stage before calibration, the report, the refusals.
The pass and the maths are tested in test_equalize.py."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from test_equalize import conv_chain, conv_pair

from onnxq import OptimizeFor, QuantConfig, quantize
from onnxq.cli.main import cli
from onnxq.config import Granularity, WeightSpec
from onnxq.data import open_dataset
from onnxq.graph.model_io import input_specs
from onnxq.stages.equalize import equalized
from onnxq.stages.prepare import prepare

from helpers import run

NO_CHECK = {"target": None}


def _files(tmp_path, model: onnx.ModelProto, feed: dict[str, np.ndarray], n: int = 64):
    """The model and ``n`` samples like ``feed`` (calibration = evaluation data)."""
    rng = np.random.default_rng(1)
    x = feed["x"]
    data = rng.normal(0, 1, (n, *x.shape[1:])).astype(np.float32)
    model_path, data_path = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save(model, model_path)
    np.savez(data_path, x=data)
    return model_path, data_path


def _sqnr(report) -> float:
    return min(o.sqnr_db for o in report.fidelity.outputs)


def _config(granularity: Granularity, **kwargs) -> QuantConfig:
    from onnxq.config import FidelityTarget

    return QuantConfig(
        weights=WeightSpec(granularity=granularity),
        target=FidelityTarget(sqnr_db=0),
        optimize_for=OptimizeFor.SIZE,  # int8 activations whatever the timing
        **kwargs,
    )


def test_the_equalised_model_computes_what_the_prepared_one_does(tmp_path) -> None:
    bias = np.where(np.arange(16) % 2 == 0, 12.0, 0.1)  # some channels always positive
    model, feed = conv_pair("Relu", bias_a=bias)
    model_path, data_path = _files(tmp_path, model, feed)
    prepared = prepare(model)
    data = open_dataset(data_path, input_specs(model))
    result = equalized(prepared, QuantConfig(equalize=True), data, batch_size=16)
    assert {c.kind.name for c in result.reported} == {"PAIR_EQUALIZED"}
    assert "balanced: activation vs weights" in result.reported[0].detail
    assert result.rescaled == {"c_a", "r_a"}  # the tensors between the layers
    assert result.original is None  # the float function is unchanged, on any input
    fresh = np.random.default_rng(7).normal(0, 3, (32, 4, 8, 8)).astype(np.float32)
    want = run(prepared.model, {"x": fresh})[0]
    got = run(result.prepared.model, {"x": fresh})[0]
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
    # weights changed: a no-op stage would pass the check above
    w = {t.name: t for t in result.prepared.model.graph.initializer}
    w0 = {t.name: t for t in prepared.model.graph.initializer}
    assert w["w_a"].raw_data != w0["w_a"].raw_data


def test_high_bias_absorption_is_exact_on_the_data_and_measured_as_a_change(tmp_path) -> None:
    bias = np.where(np.arange(16) % 2 == 0, 12.0, 0.1)
    model, feed = conv_pair("Relu", bias_a=bias)
    model_path, data_path = _files(tmp_path, model, feed)
    prepared = prepare(model)
    data = open_dataset(data_path, input_specs(model))
    config = QuantConfig(equalize=True, absorb_high_bias=True)
    result = equalized(prepared, config, data, batch_size=16)
    assert {"PAIR_EQUALIZED", "BIAS_ABSORBED"} <= {c.kind.name for c in result.changes}
    assert result.original is not None  # the report measures the float change
    batch = np.load(data_path)["x"]
    want = run(prepared.model, {"x": batch})[0]
    got = run(result.prepared.model, {"x": batch})[0]
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))


def test_per_tensor_weights_balance_weights(tmp_path) -> None:
    model, feed = conv_pair("Relu")
    model_path, data_path = _files(tmp_path, model, feed)
    data = open_dataset(data_path, input_specs(model))
    config = QuantConfig(equalize=True, weights=WeightSpec(granularity=Granularity.TENSOR))
    result = equalized(prepare(model), config, data, batch_size=16)
    assert "balanced: weights" in result.reported[0].detail


def test_without_data_or_for_weights_only_nothing_is_absorbed(tmp_path) -> None:
    model, feed = conv_pair("Relu", bias_a=np.full(16, 12.0))
    prepared = prepare(model)
    weights_only = QuantConfig(equalize=True, weights_only=True, absorb_high_bias=True)
    static = QuantConfig(equalize=True, absorb_high_bias=True)
    for config, data in ((static, None), (weights_only, "data")):
        model_path, data_path = _files(tmp_path, model, feed)
        dataset = open_dataset(data_path, input_specs(model)) if data else None
        result = equalized(prepared, config, dataset, batch_size=16)
        kinds = [c.kind.name for c in result.changes]
        assert "PAIR_EQUALIZED" in kinds and "BIAS_ABSORBED" not in kinds


def test_per_tensor_weights_gain_from_equalisation_and_channel_weights_do_not_lose(
    tmp_path,
) -> None:
    model, feed = conv_chain(0)  # channel ranges spread over four decades per link
    model_path, data_path = _files(tmp_path, model, feed)
    sqnr = {}
    for gran in (Granularity.TENSOR, Granularity.CHANNEL):
        for eq in (False, True):
            out = tmp_path / f"{gran.value}-{eq}.onnx"
            report = quantize(model_path, out, _config(gran, equalize=eq), data=data_path)
            sqnr[gran, eq] = _sqnr(report)
    assert sqnr[Granularity.TENSOR, True] > sqnr[Granularity.TENSOR, False] + 10
    assert sqnr[Granularity.CHANNEL, True] >= sqnr[Granularity.CHANNEL, False] - 0.5


def test_report_lists_pairs_and_skips_and_the_model_records_the_setting(tmp_path) -> None:
    model, feed = conv_pair("HardSwish")
    model_path, data_path = _files(tmp_path, model, feed)
    out = tmp_path / "q.onnx"
    result = CliRunner().invoke(
        cli,
        [
            "quantize",
            str(model_path),
            "-o",
            str(out),
            "--data",
            str(data_path),
            "--equalize",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    changes = doc["methods"]["changes"]
    assert [c["kind"] for c in changes] == ["pair_skipped"]
    # onnx inlines the HardSwish function into HardSigmoid and Mul when preparing
    assert "HardSigmoid, Mul (hard-swish: not positive-homogeneous)" in changes[0]["detail"]
    assert doc["settings"]["quantize"]["equalize"] is True
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert json.loads(meta["onnxq.settings"])["quantize"]["equalize"] is True


def test_relu6_replacement_is_measured_against_the_original(tmp_path) -> None:
    model, feed = conv_pair("Clip6", bias_a=np.full(16, 3.0), decades=0)
    model_path, data_path = _files(tmp_path, model, feed)
    plain = quantize(
        model_path, tmp_path / "a.onnx", _config(Granularity.CHANNEL, equalize=True), data=data_path
    )
    assert {c.kind.name for c in plain.methods} == {"PAIR_SKIPPED"}
    assert plain.float_change is None
    config = _config(Granularity.CHANNEL, equalize=True, relu6_to_relu=True)
    report = quantize(model_path, tmp_path / "b.onnx", config, data=data_path)
    assert "ACTIVATION_REPLACED" in {c.kind.name for c in report.methods}
    change = report.float_change
    assert change is not None
    change_db = min(o.sqnr_db for o in change.outputs)
    assert np.isfinite(change_db)  # the activations did go past 6: the model changed
    # the final fidelity is against the user's model, so it cannot beat the float change
    assert _sqnr(report) <= change_db + 0.5
    doc = report.to_dict()
    assert doc["methods"]["float_change"]["outputs"][0]["sqnr_db"] == pytest.approx(change_db)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--relu6-to-relu"], "--relu6-to-relu is part of --equalize"),
        (["--absorb-high-bias"], "--absorb-high-bias is part of --equalize"),
        (["--equalize", "--ranges", "RANGES"], "give --data instead of --ranges"),
    ],
)
def test_refusals(tmp_path, flags: list[str], message: str) -> None:
    model, feed = conv_pair("Relu")
    model_path, data_path = _files(tmp_path, model, feed)
    ranges = tmp_path / "r.json"
    calib = CliRunner().invoke(
        cli, ["calibrate", str(model_path), "--data", str(data_path), "-o", str(ranges)]
    )
    assert calib.exit_code == 0, calib.output
    args = [str(ranges) if f == "RANGES" else f for f in flags]
    if "--ranges" not in args:
        args += ["--data", str(data_path)]
    out = tmp_path / "q.onnx"
    result = CliRunner().invoke(cli, ["quantize", str(model_path), "-o", str(out), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_rescaled_tensors_are_left_out_of_the_per_layer_record(tmp_path) -> None:
    model, feed = conv_chain(0)
    model_path, data_path = _files(tmp_path, model, feed)
    records = {}
    for eq in (False, True):
        out = tmp_path / f"{eq}.onnx"
        quantize(model_path, out, _config(Granularity.CHANNEL, equalize=eq), data=data_path)
        meta = {p.key: p.value for p in onnx.load(out).metadata_props}
        records[eq] = set(json.loads(meta["onnxq.tensors"]).values())
    # diagnose compares what the record names against the original model: the tensors
    # between equalised layers hold scaled channels, so they must not be named
    assert {"r_a", "c_dw"} <= records[False]
    assert not {"r_a", "c_dw", "c_a"} & records[True]
    assert records[True] and records[True] < records[False]


def test_skipped_pairs_are_counted_by_their_cause_in_the_summary(tmp_path) -> None:
    model, feed = conv_pair("Sigmoid")
    model_path, data_path = _files(tmp_path, model, feed)
    out = tmp_path / "q.onnx"
    args = ["quantize", str(model_path), "-o", str(out), "--data", str(data_path), "--equalize"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "1 pairs skipped (1x Sigmoid between the layers)" in result.stderr

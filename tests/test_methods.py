"""Calibration methods: histogram determinism, KL / percentile / MSE against references,
outlier robustness end to end, dynamic mode, and the CLI options."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from onnxq import CalibrationConfig, OptimizeFor, QuantConfig, calibrate, quantize
from onnxq.calibration.histogram import HistogramObserver
from onnxq.calibration.methods import (
    entropy_range,
    mse_range,
    percentile_range,
)
from onnxq.cli.main import cli
from onnxq.config import ActivationSpec, CalibrationMethod, Mode, Scheme, WeightSpec
from onnxq.errors import ConfigError, RangesError
from onnxq.quant import QType, compute_qparams, dequantize
from onnxq.quant import quantize as q_values
from onnxq.runtime import optimized_op_types

import models
from helpers import NO_CHECK, run

data = hnp.arrays(
    np.float32,
    st.integers(1, 400),
    elements=st.floats(-1e3, 1e3, width=32) | st.sampled_from([0.0, 1e-3, -7.5]),
)


@given(x=data, splits=st.lists(st.integers(0, 400), max_size=6), seed=st.integers(0, 9))
def test_histogram_is_the_same_for_any_batching_and_order(x, splits, seed):
    one = HistogramObserver(64)
    one.update(x)
    shuffled = np.random.default_rng(seed).permutation(x)
    cuts = sorted({min(s, x.size) for s in splits})
    many = HistogramObserver(64)
    for part in np.split(shuffled, cuts):
        many.update(part)
    a, b = one.result(), many.result()
    assert a.width == b.width and np.array_equal(a.counts, b.counts)
    assert a.total == x.size
    # and it is exactly numpy's histogram of the data on the final grid
    if x.any():
        expected, _ = np.histogram(x.astype(np.float64), bins=a.edges())
        assert np.array_equal(expected, a.counts)


@given(x=data, cut=st.integers(0, 400))
def test_merging_histogram_shards_equals_one_pass(x, cut):
    whole = HistogramObserver(32)
    whole.update(x)
    left, right = HistogramObserver(32), HistogramObserver(32)
    left.update(x[:cut])
    right.update(x[cut:])
    left.merge(right)
    a, b = whole.result(), left.result()
    assert a.width == b.width and np.array_equal(a.counts, b.counts)
    assert (a.min, a.max) == (b.min, b.max)


def _kl_reference(mag: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """TensorRT's search written as the plain loop over candidates (no smoothing)."""
    n = int(np.nonzero(mag)[0][-1]) + 1
    h = mag[:n].astype(np.float64)
    h[0] = h[1]  # the zero spike is neutralised, as in pytorch-quantization
    kls = []
    for i in range(levels, n + 1):
        p = h[:i].copy()
        p[-1] += h[i:].sum()
        merged = i // levels
        q = np.zeros(i)
        for j in range(levels):
            start = j * merged
            stop = i if j == levels - 1 else start + merged
            nonzero = p[start:stop] > 0
            if nonzero.sum():
                q[start:stop][nonzero] = h[start:stop].sum() / nonzero.sum()
        q[(p > 0) & (q == 0)] = 1e-4  # TensorRT / MXNet-style smoothing of starved bins
        p, q = p / p.sum(), q / q.sum()
        mask = p > 0
        kls.append(float(np.sum(p[mask] * np.log(p[mask] / q[mask]))))
    return np.arange(levels, n + 1), np.array(kls)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), tail=st.floats(1.0, 50.0))
def test_vectorised_kl_search_matches_the_plain_loop(seed, tail):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, 1, 5000), rng.normal(0, tail, 5)]).astype(np.float32)
    obs = HistogramObserver(256)
    obs.update(x)
    hist = obs.result()
    cands, kls = _kl_reference(hist.magnitude(), 16)
    lo, hi = entropy_range(hist, levels=16)
    t = max(-lo, hi)
    amax = max(-hist.min, hist.max)
    # an unclipped side is a bin edge: the threshold t = i * width of candidate i
    chosen = round(t / hist.width) if t < amax else len(cands) + cands[0] - 1
    # the chosen candidate is a minimiser of the loop's KL (exact ties may break either way)
    assert kls[chosen - cands[0]] <= kls.min() + 1e-12
    assert hi == pytest.approx(min(chosen * hist.width, hist.max))


def test_entropy_search_is_never_degenerate_and_clips_outliers():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 100_000), [80.0, -75.0]]).astype(np.float32)
    obs = HistogramObserver(2048)
    obs.update(x)
    lo, hi = entropy_range(obs.result())
    assert 2.0 < hi < 20.0 and -20.0 < lo < -2.0  # neither min/max nor a collapsed range


def test_percentile_matches_numpy_within_a_bin():
    rng = np.random.default_rng(1)
    x = rng.standard_t(3, 200_000).astype(np.float32)
    obs = HistogramObserver(2048)
    obs.update(x)
    hist = obs.result()
    _, hi = percentile_range(hist, 99.9, symmetric=True)
    assert abs(hi - np.percentile(np.abs(x), 99.9)) <= hist.width
    lo, hi = percentile_range(hist, 99.0, symmetric=False)
    assert abs(lo - np.percentile(x, 1.0)) <= hist.width
    assert abs(hi - np.percentile(x, 99.0)) <= hist.width


@pytest.mark.parametrize("symmetric,qtype", [(True, QType.INT8), (False, QType.UINT8)])
def test_mse_range_is_no_worse_than_minmax_on_the_data(symmetric, qtype):
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0, 1, 50_000), [60.0]]).astype(np.float32)
    obs = HistogramObserver(2048)
    obs.update(x)
    hist = obs.result()

    def err(lo: float, hi: float) -> float:
        qp = compute_qparams(lo, hi, qtype, symmetric=symmetric)
        return float(np.sum((dequantize(q_values(x, qp), qp) - x) ** 2))

    lo, hi = mse_range(hist, qtype, symmetric=symmetric)
    best = err(lo, hi)
    assert best < err(float(x.min()), float(x.max()))
    # within a few percent of a brute-force scan of the exact error on the raw data
    amax = float(np.abs(x).max())
    scan = [
        err(-t, t) if symmetric else err(max(-t, float(x.min())), t)
        for t in np.linspace(0.5, amax, 300)
    ]
    assert best <= 1.05 * min(scan)


def _plain_rounding_error(hist, qtype, symmetric, lo, hi):
    """Σ count · (deq(q(centre)) − centre)² over the merged bins, the plain way."""
    from onnxq.calibration.methods import _compact

    centers, counts = _compact(hist, 512)
    qp = compute_qparams(lo, hi, qtype, symmetric=symmetric)
    s, z = float(qp.scale), float(qp.zero_point)
    q = np.clip(np.rint(centers / s) + z, qtype.min(restricted=False), qtype.max)
    return float(np.sum(counts * ((q - z) * s - centers) ** 2))


def _lattice_best(hist, qtype, symmetric):
    """The lattice candidate with the least plain rounding error, evaluated one by one,
    clamped to the observed range."""
    if symmetric:
        amax = max(abs(hist.min), abs(hist.max))
        lattice = [(-t * amax, t * amax) for t in np.linspace(0.01, 1.0, 100)]
    else:
        steps = np.linspace(1 / 25, 1.0, 25)
        lattice = [(a * hist.min, b * hist.max) for a in steps for b in steps]
    errors = [_plain_rounding_error(hist, qtype, symmetric, a, b) for a, b in lattice]
    a, b = lattice[int(np.argmin(errors))]
    return max(a, hist.min), min(b, hist.max)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("symmetric,qtype", [(False, QType.UINT8), (True, QType.INT8)])
def test_mse_range_minimises_the_plain_rounding_error_of_its_lattice(seed, symmetric, qtype):
    """The in-place search returns the lattice candidate with the least error as the
    plain formula computes it (clamped to the observed range)."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.standard_t(3, 20_000) + seed - 3, [40.0 * (seed + 1)]])
    obs = HistogramObserver(512)
    obs.update(x.astype(np.float32))
    hist = obs.result()
    assert mse_range(hist, qtype, symmetric=symmetric) == _lattice_best(hist, qtype, symmetric)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.sampled_from(["normal", "relu", "t3", "uniform", "spike", "bimodal"]),
    scheme=st.sampled_from(
        [(QType.UINT8, False), (QType.INT8, True), (QType.INT4, True), (QType.UINT16, False)]
    ),
    bins=st.sampled_from([64, 512, 2048]),
)
def test_mse_range_skips_only_candidates_that_cannot_win(seed, shape, scheme, bins):
    """The pruned search (candidates whose clipping error alone exceeds a known error are
    not evaluated) returns what evaluating every lattice candidate returns, for any shape
    of data and bit width (16 bits: errors near the prefix sums' rounding)."""
    qtype, symmetric = scheme
    rng = np.random.default_rng(seed)
    x = {
        "normal": lambda: rng.normal(rng.uniform(-2, 2), 1, 5000),
        "relu": lambda: np.maximum(rng.normal(0, 1, 5000), 0),
        "t3": lambda: rng.standard_t(3, 5000),
        "uniform": lambda: rng.uniform(-1, 3, 5000),
        "spike": lambda: np.concatenate([rng.normal(0, 1e-3, 5000), [rng.uniform(1, 100)]]),
        "bimodal": lambda: np.concatenate([rng.normal(-5, 0.1, 2500), rng.normal(5, 0.1, 2500)]),
    }[shape]()
    obs = HistogramObserver(bins)
    obs.update(x.astype(np.float32))
    hist = obs.result()
    assert mse_range(hist, qtype, symmetric=symmetric) == _lattice_best(hist, qtype, symmetric)


def _outlier_files(tmp_path):
    rng = np.random.default_rng(0)
    calib = rng.normal(0, 1, (64, 8, 16, 16)).astype(np.float32)
    calib[3, 2, 5, 5] = 400.0  # one corrupted pixel in the calibration set
    evaluation = rng.normal(0, 1, (64, 8, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=calib)
    np.savez(tmp_path / "eval.npz", x=evaluation)
    onnx.save(models.outlier_cnn(), str(tmp_path / "m.onnx"))
    return tmp_path / "m.onnx", tmp_path / "calib.npz", tmp_path / "eval.npz"


def test_outlier_robust_methods_beat_minmax(tmp_path):
    model, calib, evaluation = _outlier_files(tmp_path)
    sqnr = {}
    for method in CalibrationMethod:
        report = quantize(
            model,
            tmp_path / f"{method.value}.onnx",
            QuantConfig(
                auto_sqnr=0, optimize_for=OptimizeFor.SIZE
            ),  # the methods alone, without the automatic remedy
            data=calib,
            eval_data=evaluation,
            calibration=CalibrationConfig(method=method),
        )
        assert report.fidelity is not None
        sqnr[method] = report.fidelity.outputs[0].sqnr_db
    minmax = sqnr[CalibrationMethod.MINMAX]
    assert sqnr[CalibrationMethod.PERCENTILE] > minmax + 6, sqnr
    assert sqnr[CalibrationMethod.ENTROPY] > minmax + 6, sqnr
    # MSE weighs the outlier's own clipping error, so it trims the range far less
    assert sqnr[CalibrationMethod.MSE] > minmax + 1, sqnr


def test_automatic_remedy_rescues_minmax_on_outliers(tmp_path):
    """With the default --auto-sqnr, a tensor whose min/max range would leave it at a low
    SQNR gets its MSE-optimal range (or stays float), without the user asking."""
    model, calib, evaluation = _outlier_files(tmp_path)
    plain = quantize(
        model,
        tmp_path / "a.onnx",
        QuantConfig(auto_sqnr=0, optimize_for=OptimizeFor.SIZE),
        data=calib,
        eval_data=evaluation,
    )
    auto = quantize(
        model,
        tmp_path / "b.onnx",
        QuantConfig(optimize_for=OptimizeFor.SIZE),
        data=calib,
        eval_data=evaluation,
    )
    assert auto.fidelity.outputs[0].sqnr_db > plain.fidelity.outputs[0].sqnr_db + 6


def test_ranges_file_records_method_and_parameters(tmp_path):
    model, calib, _ = _outlier_files(tmp_path)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(
        cli,
        [
            "calibrate",
            str(model),
            "--data",
            str(calib),
            "-o",
            str(out),
            "--method",
            "percentile",
            "--percentile",
            "99.9",
            "--bins",
            "1024",
            "--scheme",
            "sym",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["method"]["name"] == "percentile"
    assert doc["method"]["params"]["percentile"] == 99.9
    assert doc["method"]["params"]["bins"] == 1024 and doc["method"]["params"]["scheme"] == "sym"
    entry = doc["tensors"]["c1"]
    assert entry["max"] < entry["observed"]["max"]  # the outlier was clipped
    # made for symmetric activations: asymmetric quantization refuses it
    with pytest.raises(RangesError, match="calibrated for sym activations"):
        quantize(model, tmp_path / "q.onnx", ranges=out)
    sym = QuantConfig(activations=ActivationSpec(scheme=Scheme.SYM))
    assert quantize(model, tmp_path / "q.onnx", sym, ranges=out).quantized_nodes == 3


def test_moving_average_minmax_is_less_extreme(tmp_path):
    model, calib, _ = _outlier_files(tmp_path)
    plain = calibrate(model, calib, CalibrationConfig(batch_size=4))
    ema = calibrate(model, calib, CalibrationConfig(batch_size=4, moving_average=0.1))
    assert float(ema.tensors["c1"].max) < 0.5 * float(plain.tensors["c1"].max)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"percentile": 20.0}, "--percentile"),
        ({"bins": 101}, "--bins"),
        ({"method": CalibrationMethod.ENTROPY, "bins": 100}, "--bins of at least 256"),
        ({"method": CalibrationMethod.ENTROPY, "moving_average": 0.1}, "--moving-average"),
        ({"moving_average": 2.0}, "--moving-average"),
    ],
)
def test_bad_method_parameters_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CalibrationConfig(**kwargs)


@pytest.mark.parametrize("kind", ["gemm", "gemm_transb", "matmul", "conv"])
def test_dynamic_models_run_close_to_float(kind, tmp_path):
    from onnxq.errors import ModelError
    from onnxq.graph.rewrite_dynamic import CONV_REASON, dynamic_decisions

    model, feed = models.single_op(kind)
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    config = QuantConfig(mode=Mode.DYNAMIC)
    if kind == "conv":  # ConvInteger has no uint8 x int8 kernel: nothing to quantize
        assert all(
            d.reason == CONV_REASON for d in dynamic_decisions(model, config) if d.op_type == "Conv"
        )
        with pytest.raises(ModelError, match="nothing in"):
            quantize(tmp_path / "m.onnx", tmp_path / "q.onnx", config, eval_data=tmp_path / "d.npz")
        return
    report = quantize(
        tmp_path / "m.onnx", tmp_path / "q.onnx", config, eval_data=tmp_path / "d.npz"
    )
    q = onnx.load(str(tmp_path / "q.onnx"))
    onnx.checker.check_model(q)
    (a,), (b,) = run(model, feed), run(q, feed)
    assert np.abs(a - b).max() <= 0.02 * np.abs(a).max()
    ops = {o.rsplit(":", 1)[-1] for o in optimized_op_types(q)}
    assert "DynamicQuantizeMatMul" in ops
    assert report.fidelity is not None and report.fidelity.outputs[0].cosine_mean > 0.999


def test_dynamic_needs_no_data_and_refuses_ranges(tmp_path):
    model, _ = models.single_op("gemm")
    onnx.save(model, str(tmp_path / "m.onnx"))
    result = CliRunner().invoke(
        cli,
        [
            "quantize",
            str(tmp_path / "m.onnx"),
            "-o",
            str(tmp_path / "q.onnx"),
            "--mode",
            "dynamic",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["quantized_nodes"] == 1
    result = CliRunner().invoke(
        cli,
        [
            "quantize",
            str(tmp_path / "m.onnx"),
            "-o",
            str(tmp_path / "q2.onnx"),
            "--mode",
            "dynamic",
            "--activation-scheme",
            "sym",
        ],
    )
    assert result.exit_code == 2 and "asymmetric uint8" in result.stderr


def _conv_weight_run(tmp_path, method: str, outlier: float | None):
    model, feed = models.single_op("conv")
    w = next(t for t in model.graph.initializer if t.name == "w1")
    arr = onnx.numpy_helper.to_array(w).copy()
    if outlier is not None:
        arr[0, 0, 0, 0] = outlier  # one outlying weight in channel 0
        w.CopyFrom(onnx.numpy_helper.from_array(arr, "w1"))
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    out = tmp_path / f"{method}.onnx"
    config = QuantConfig(
        target=NO_CHECK,
        optimize_for=OptimizeFor.SIZE,
        weights=WeightSpec(method=CalibrationMethod(method), percentile=99.0),
    )
    quantize(tmp_path / "m.onnx", out, config, data=tmp_path / "d.npz")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    deq = inits["w1_quantized"].astype(np.float32) * inits["w1_scale"][:, None, None, None]
    err = ((deq - arr) ** 2).reshape(arr.shape[0], -1).sum(axis=1)
    return inits["w1_scale"], err


def test_percentile_weight_range_clips_an_outlying_weight(tmp_path):
    minmax, _ = _conv_weight_run(tmp_path, "minmax", 50.0)
    pct, _ = _conv_weight_run(tmp_path, "percentile", 50.0)
    assert pct[0] < minmax[0] / 2  # the outlier channel got a much tighter range
    assert math.isclose(float(pct[1]), float(minmax[1]), rel_tol=0.5)


def test_mse_weight_range_minimises_the_weight_error():
    from onnxq.quant.weights import WeightLayout, weight_range

    # at 8 bits clipping only pays when one outlier sits among very many values
    w = np.random.default_rng(4).normal(0, 1, (2, 1 << 20)).astype(np.float32)
    w[:, 7] = 30.0

    def err(lo, hi):
        qp = compute_qparams(lo, hi, QType.INT8, symmetric=True, axis=0)
        return ((dequantize(q_values(w, qp), qp) - w) ** 2).sum(axis=1)

    minmax = err(*weight_range(w, WeightLayout("channel", 0), "minmax", QType.INT8, symmetric=True))
    mse = err(*weight_range(w, WeightLayout("channel", 0), "mse", QType.INT8, symmetric=True))
    assert np.all(mse <= minmax * (1 + 1e-6))
    assert mse.sum() < 0.5 * minmax.sum()


def test_automatic_remedy_sees_a_single_outlying_channel(tmp_path):
    """Regression: the quality estimate must see every value; a strided subsample of a
    [16, 384] activation missed channel 99 and let int8 crush the other channels."""
    model, feed = models.outlier_channel_mlp()
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    plain = quantize(
        tmp_path / "m.onnx",
        tmp_path / "a.onnx",
        QuantConfig(auto_sqnr=0, target=NO_CHECK, optimize_for=OptimizeFor.SIZE),
        data=tmp_path / "d.npz",
    )
    auto = quantize(
        tmp_path / "m.onnx",
        tmp_path / "b.onnx",
        QuantConfig(target=NO_CHECK, optimize_for=OptimizeFor.SIZE),
        data=tmp_path / "d.npz",
    )
    down = next(d for d in auto.decisions if d.name == "down")
    assert "weights only" in down.reason and "'h'" in down.reason
    assert auto.fidelity.outputs[0].sqnr_db > plain.fidelity.outputs[0].sqnr_db + 6


def test_histogram_skips_infinite_values():
    obs = HistogramObserver(64)
    obs.update(np.array([1.0, np.inf, -np.inf, 2.0, np.nan], np.float32))
    hist = obs.result()
    assert hist.total == 2 and hist.max == 2.0 and hist.min == 1.0

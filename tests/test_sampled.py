"""Quantize time: the sampled quality histogram, the check's probe, the bounded in-sample
report and the data cache. Each test pins what a broken shortcut would get wrong."""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

import onnxq.calibration.estimate as estimate
import onnxq.data.dataset as dataset_module
from onnxq import QuantConfig, quantize
from onnxq.calibration.estimate import TensorObserver, finish
from onnxq.calibration.histogram import HistogramObserver
from onnxq.calibration.methods import mse_range
from onnxq.calibration.sampled import SampledHistogram, Sampling, _picked_rows
from onnxq.config import CalibrationConfig, CalibrationMethod, Granularity
from onnxq.data import open_dataset
from onnxq.graph.model_io import input_specs
from onnxq.quant import QType
from onnxq.runtime import Runner
from onnxq.tuning.check import make_check_set

import models
from helpers import NO_CHECK, float_session

f32 = np.float32


def _batches(seed: int, count: int, size: int, heavy: int | None) -> list[np.ndarray]:
    """Normal batches; batch ``heavy`` (if any) also holds a few huge values."""
    rng = np.random.default_rng(seed)
    out = [rng.normal(0, 1, size).astype(f32) for _ in range(count)]
    if heavy is not None:
        out[heavy][: size // 50] = rng.uniform(20, 60, size // 50).astype(f32)
    return out


def _on_grid(counts: np.ndarray, src_width: float, width: float) -> np.ndarray:
    factor = int(round(width / src_width))
    bins = counts.size // 2
    target = np.floor_divide(np.arange(counts.size) - bins, factor) + bins
    return np.bincount(target, weights=counts, minlength=counts.size).astype(np.int64)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 1000), count=st.integers(1, 12), split=st.integers(0, 11))
def test_stride_one_is_exactly_the_plain_histogram(seed, count, split):
    batches = _batches(seed, count, 300, min(split, count - 1))
    plain, sampled = HistogramObserver(64), SampledHistogram(64, Sampling(stride=1))
    for b in batches:
        plain.update(b)
        sampled.update(b)
    a, b = plain.result(), sampled.result()
    assert a.width == b.width and np.array_equal(a.counts, b.counts)
    assert (a.min, a.max) == (b.min, b.max)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 1000),
    stride=st.integers(1, 6),
    rows=st.one_of(st.none(), st.integers(1, 3)),
    heavy=st.integers(1, 15),
)
def test_tails_are_exact_and_the_bulk_keeps_its_total(seed, stride, rows, heavy):
    """The tail bins (beyond the power of two above batch 0's magnitude) count every value
    of every batch, also of the rows and batches not binned whole (a rare batch of huge
    values), and the bulk is scaled to the exact total."""
    if stride == 1 and rows is None:
        rows = 1  # else nothing is sampled: the plain histogram, tested above
    batches = [b.reshape(8, 250) for b in _batches(seed, 16, 2000, heavy)]
    plain, sampled = (
        HistogramObserver(512),
        SampledHistogram(512, Sampling(stride=stride, rows=rows)),
    )
    for b in batches:
        plain.update(b)
        sampled.update(b)
    a, b = plain.result(), sampled.result()
    edge = sampled.edge
    assert (
        edge is not None and float(np.abs(batches[0]).max()) < edge <= 2 * np.abs(batches[0]).max()
    )
    assert b.width <= edge
    full = _on_grid(a.counts, a.width, b.width)
    lower = (np.arange(full.size) - b.bins) * b.width
    tail = (lower >= edge) | (lower + b.width <= -edge)
    assert full[tail].sum() > 0 and np.array_equal(b.counts[tail], full[tail])
    assert abs(b.total - a.total) <= int((~tail).sum())  # rounding of the scaled bins only
    assert (b.min, b.max) == (a.min, a.max)


def test_batches_inside_the_edge_are_not_read():
    """A batch whose bounds stay inside the edge only adds its count (the values are not
    read: a NaN there would show if they were binned)."""
    h = SampledHistogram(256, Sampling(stride=4, rows=1))
    first = np.linspace(-3, 3, 400, dtype=f32).reshape(4, 100)
    h.update(first, (float(first.min()), float(first.max())))
    assert h.edge == 4.0
    later = np.full((4, 100), np.nan, f32)  # lied about: bounds say inside
    h.update(later, (-1.0, 1.0))
    assert h.bulk_skipped == 400 and h.tail.exponent is None  # batch 0 was binned whole
    assert h.result().total == pytest.approx(800, abs=64)


def test_sampled_histogram_keeps_the_robust_range_of_ordered_data():
    """Data ordered so that the only heavy batch is not binned whole: sampling every
    k-th batch alone would lose the tail and clip it away; with exact tails the
    MSE-optimal range matches the full histogram's."""
    batches = _batches(7, 12, 20000, heavy=5)
    plain, sampled, naive = (
        HistogramObserver(512),
        SampledHistogram(512, Sampling(stride=4)),
        HistogramObserver(512),
    )
    for i, b in enumerate(batches):
        plain.update(b)
        sampled.update(b)
        if i % 4 == 0:
            naive.update(b)
    qtype = QType.UINT8
    full = mse_range(plain.result(), qtype, symmetric=False)
    ours = mse_range(sampled.result(), qtype, symmetric=False)
    lost = mse_range(naive.result(), qtype, symmetric=False)
    assert abs(ours[1] - full[1]) <= 0.05 * full[1]
    assert lost[1] < 0.8 * full[1]  # what the shortcut without tails would do


def test_observer_samples_only_beside_plain_minmax(monkeypatch):
    monkeypatch.setattr(estimate, "QUALITY_VALUES", 1000)
    x = np.random.default_rng(0).normal(0, 1, 800).astype(f32)
    minmax = TensorObserver(CalibrationConfig(), None)
    minmax.update(x, batches=10)
    assert isinstance(minmax.hist, SampledHistogram)
    # 1000 values in rows of one value over 10 batches, batch 0 as any other: 100 each
    assert (minmax.hist.sampling.stride, minmax.hist.sampling.rows) == (1, 100)
    assert minmax.hist.whole.result().total == 100  # not batch 0 whole
    wide = TensorObserver(CalibrationConfig(), None)  # a row (800 values) passes the share
    wide.update(x.reshape(1, 800), batches=10)
    assert isinstance(wide.hist, SampledHistogram)
    # two rows in all: one of every fifth batch, batches 0 and 5
    assert (wide.hist.sampling.stride, wide.hist.sampling.rows) == (5, 1)
    assert wide.hist.sampling.picks == 2
    percentile = TensorObserver(CalibrationConfig(method=CalibrationMethod.PERCENTILE), None)
    percentile.update(x, batches=10)
    assert isinstance(percentile.hist, HistogramObserver)  # its range is read from it
    with pytest.raises(ValueError, match="sampled"):
        minmax.merge(TensorObserver(CalibrationConfig(), None))
    # the observed extremes come from min/max, which saw every batch
    late = np.full(800, 99.0, f32)
    for _ in range(3):
        minmax.update(late, batches=10)
    r = finish(minmax, CalibrationConfig())
    assert float(r.observed_max) == 99.0 and float(r.max) == 99.0


# ----------------------------------------------------------------------------- the probe


def test_probe_takes_the_noisiest_feeds_and_extrapolates(tmp_path):
    """Ordered data: the last samples carry almost all the noise. The probe (one feed)
    is the last feed, and its noise, scaled by the share it held, is the whole set's."""
    x = np.ones((64, 16), f32)
    x[56:] *= 30.0  # the last feed of 8 dominates
    np.savez(tmp_path / "d.npz", x=x)
    ref, cand = models.scale_model(1.0), models.scale_model(1.02)
    data = open_dataset(tmp_path / "d.npz", input_specs(ref))
    check = make_check_set(float_session(ref), data, sample_bytes=1000)
    assert check.sizes == (8,) * 8
    before = check.run(check.runner(cand))
    probe = check.probe(8 * 1000, before)
    assert probe.sizes == (8,) and probe.feeds[0]["x"][0, 0] == 30.0
    measured = probe.noise_vector(Runner(cand))
    assert measured[0] == pytest.approx(before.noise["y"], rel=1e-9)
    first = check.probe(0, before)  # at least one feed, the noisiest
    assert first.feeds[0]["x"][0, 0] == 30.0


def test_big_samples_are_checked_one_per_feed(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((12, 16), f32))
    model = models.scale_model(1.0)
    data = open_dataset(tmp_path / "d.npz", input_specs(model))
    assert make_check_set(float_session(model), data, sample_bytes=2**31).sizes == (1,) * 12
    assert make_check_set(float_session(model), data, sample_bytes=0).sizes == (8, 4)


# ----------------------------------------------------------------------------- the report


def test_in_sample_report_is_bounded_and_held_out_data_is_measured_whole(tmp_path, monkeypatch):
    q = importlib.import_module("onnxq.stages.evaluate")

    model = models.cnn()
    shape = [d.dim_value or 40 for d in model.graph.input[0].type.tensor_type.shape.dim]
    feed = {"input": np.random.default_rng(0).normal(0, 1, shape).astype(f32)}
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    np.savez(tmp_path / "e.npz", **feed)  # the same samples, given as held-out data
    monkeypatch.setattr(q, "IN_SAMPLE_BYTES", 1)  # every sample is "large": the floor of 8
    cfg = QuantConfig(target=NO_CHECK)
    inside = quantize(tmp_path / "m.onnx", tmp_path / "a.onnx", cfg, data=tmp_path / "d.npz")
    held_out = quantize(
        tmp_path / "m.onnx",
        tmp_path / "b.onnx",
        cfg,
        data=tmp_path / "d.npz",
        eval_data=tmp_path / "e.npz",
    )
    assert shape[0] == 40
    assert 8 <= inside.fidelity.samples < 40
    assert held_out.fidelity.samples == 40


def test_small_data_is_read_once(tmp_path, monkeypatch):
    np.savez_compressed(tmp_path / "d.npz", x=np.arange(64, dtype=f32).reshape(4, 16))
    model = models.scale_model(1.0)
    data = open_dataset(tmp_path / "d.npz", input_specs(model))
    calls = []
    real = dataset_module._load_arrays
    monkeypatch.setattr(dataset_module, "_load_arrays", lambda *a: calls.append(a) or real(*a))
    first = [b.feed["x"].copy() for b in data.batches(3)]
    second = [b.feed["x"].copy() for b in data.batches(2)]
    assert not calls  # validated once when opened, kept since
    assert np.array_equal(np.concatenate(first), np.concatenate(second))
    monkeypatch.setattr(dataset_module, "CACHE_BYTES", 0)
    big = open_dataset(tmp_path / "d.npz", input_specs(model))
    list(big.batches(2))
    list(big.batches(2))
    assert len(calls) == 3  # too large to keep: read to validate, then for each pass


def test_probe_extrapolates_for_a_later_candidate(tmp_path):
    """The probe is chosen on the first candidate; a later one with a different noise
    level is still measured as its whole-set noise (the share held, not the first
    candidate's absolute noise, carries over)."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0.5, 1.5, (64, 16)).astype(f32)
    x[40:48] *= 20.0
    np.savez(tmp_path / "d.npz", x=x)
    ref = models.scale_model(1.0)
    data = open_dataset(tmp_path / "d.npz", input_specs(ref))
    check = make_check_set(float_session(ref), data, sample_bytes=1000)
    probe = check.probe(8 * 1000, check.run(check.runner(models.scale_model(1.02))))
    later = models.scale_model(1.08)
    whole = check.run(check.runner(later)).noise["y"]
    assert probe.noise_vector(Runner(later))[0] == pytest.approx(whole, rel=1e-6)


def test_probe_of_a_candidate_with_infinite_noise(tmp_path):
    """A feed whose output overflows is the noisiest; the weights stay finite."""
    x = np.ones((32, 16), f32)
    x[8:16] = 3e38  # times 1.5 overflows float32 in the candidate only
    np.savez(tmp_path / "d.npz", x=x)
    ref = models.scale_model(1.0)
    data = open_dataset(tmp_path / "d.npz", input_specs(ref))
    check = make_check_set(float_session(ref), data, sample_bytes=1000)
    before = check.run(check.runner(models.scale_model(1.5)))
    probe = check.probe(8 * 1000, before)
    assert probe.feeds[0]["x"][0, 0] == f32(3e38)
    assert all(np.isfinite(w) and w > 0 for w in probe.weights)


def test_skipped_batches_keep_min_max_and_never_count_nan():
    """Batches not binned whole still move min and max (through their bounds or their
    values), and their NaN values are neither binned nor counted as bulk."""
    rng = np.random.default_rng(0)
    first = rng.uniform(0.0, 1.0, 4000).astype(f32)  # edge 0.5, min about 0
    inside = rng.uniform(-0.4, 0.4, 4000).astype(f32)
    for bounds in (None, (float(inside.min()), float(inside.max()))):
        h = SampledHistogram(256, Sampling(stride=4))
        h.update(first)
        h.update(inside, bounds)
        assert h.result().min == pytest.approx(float(inside.min()))
    with_nan = rng.normal(0, 1, 4000).astype(f32)
    with_nan[:1500] = np.nan
    h = SampledHistogram(256, Sampling(stride=4))
    h.update(rng.normal(0, 1, 4000).astype(f32))
    h.update(with_nan)
    result = h.result()
    bulk_bins = int(np.count_nonzero(result.counts))
    assert abs(result.total - (4000 + 2500)) <= bulk_bins  # rounding of scaled bins only


def test_batch_count_follows_the_fixed_batch(tmp_path):
    fixed = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "fixed",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 3])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 3])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    np.savez(tmp_path / "d.npz", x=np.ones((20, 3), f32))
    data = open_dataset(tmp_path / "d.npz", input_specs(fixed))
    assert data.num_batches(64) == len(list(data.batches(64))) == 5
    np.savez(tmp_path / "e.npz", x=np.ones((20, 16), f32))
    free = open_dataset(tmp_path / "e.npz", input_specs(models.scale_model(1.0)))
    assert free.num_batches(8) == len(list(free.batches(8))) == 3


def test_in_sample_report_reads_the_float_outputs_calibration_kept(tmp_path, monkeypatch):
    """Without --eval the report compares on the calibration samples; the float outputs
    come from the calibration pass (the float session does not run them again) and the
    numbers are those of running it again (up to float rounding: the calibration session
    fetches every activation, so onnxruntime does not fuse nodes there as it does in the
    reference session)."""
    import onnxq.calibration.reference as reference
    from onnxq.calibration.reference import CachedReference

    model = models.cnn()
    shape = [d.dim_value or 40 for d in model.graph.input[0].type.tensor_type.shape.dim]
    feed = {"input": np.random.default_rng(1).normal(0, 1, shape).astype(f32)}
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    served: list[int] = []
    real_run = CachedReference.run

    def counting(self, feed, outputs=None):
        before = self.served
        out = real_run(self, feed, outputs)
        served.append(self.served - before)
        return out

    monkeypatch.setattr(CachedReference, "run", counting)
    cfg = QuantConfig(target=NO_CHECK)
    kept = quantize(tmp_path / "m.onnx", tmp_path / "a.onnx", cfg, data=tmp_path / "d.npz")
    assert served and all(served)  # every batch from the record
    monkeypatch.setattr(reference, "CACHE_BYTES", 0)  # nothing kept: the session runs
    served.clear()
    ran = quantize(tmp_path / "m.onnx", tmp_path / "b.onnx", cfg, data=tmp_path / "d.npz")
    assert not served
    assert kept.fidelity is not None and ran.fidelity is not None
    assert kept.fidelity.samples == ran.fidelity.samples == 40
    assert len(kept.fidelity.outputs) == len(ran.fidelity.outputs)
    for a, b in zip(kept.fidelity.outputs, ran.fidelity.outputs, strict=True):
        x, y = dataclasses.asdict(a), dataclasses.asdict(b)
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], float):
                assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), key
            else:
                assert x[key] == y[key], key


def _quality(batches: list[np.ndarray], values: int, monkeypatch):
    monkeypatch.setattr(estimate, "QUALITY_VALUES", values)
    observer = TensorObserver(CalibrationConfig(), None)
    for b in batches:
        observer.update(b, len(batches))
    q = finish(observer, CalibrationConfig()).quality
    assert q is not None
    return q


@pytest.mark.parametrize("layout", ["heads_on_axis_0", "blank_first_samples"])
def test_sampled_quality_matches_the_full_histogram(layout, monkeypatch):
    """Axis 0 is not always the samples (attention [samples·heads, S, D] with one loud
    head: rows taken from the front would all be the quiet head 0), and the first samples
    may be blank; the sampled estimate stays near the full histogram's either way."""
    rng = np.random.default_rng(5)
    batches = []
    for _ in range(16):
        if layout == "heads_on_axis_0":
            b = rng.normal(0, 0.05, (8 * 12, 16, 32)).astype(f32)
            b[5::12] *= 400.0  # head 5 of every sample is loud
        else:
            b = rng.normal(0, 1.0, (8, 16384)).astype(f32)
            b[:4] = 0.0  # blank samples first
        batches.append(b)
    from onnxq.calibration.methods import range_sqnr

    sampled = _quality(batches, 2**15, monkeypatch)
    full = _quality(batches, 2**40, monkeypatch)
    assert abs(sampled.sqnr_db - full.sqnr_db) <= 1.0, (sampled, full)
    # the clipping range chosen on the sample does, on all the data, about as well as the
    # one chosen on all of it
    every = HistogramObserver(512)
    for b in batches:
        every.update(b)
    hist = every.result()
    on_all = range_sqnr(hist, sampled.robust_min, sampled.robust_max, QType.UINT8, symmetric=False)
    assert on_all >= full.robust_sqnr_db - 1.0, (on_all, full)


def test_a_batch_that_is_not_the_recorded_one_runs_the_session():
    from onnxq.calibration.reference import CachedReference, OutputRecorder

    runner = Runner(models.scale_model(2.0))
    seen = {"x": np.ones((2, 16), f32)}
    recorder = OutputRecorder(("y",), 2)
    recorder.record(seen, runner.run(seen))
    recorder.batches[0][1]["y"][:] = -7.0  # marks what the record serves
    cached = CachedReference(runner, recorder)
    other = {"x": np.full((2, 16), 3.0, f32)}  # same shape and dtype, other values
    assert np.array_equal(cached.run(other, ["y"])["y"], np.full((2, 16), 6.0, f32))
    assert cached.served == 0
    again = CachedReference(runner, recorder)
    assert np.array_equal(again.run(seen, ["y"])["y"], np.full((2, 16), -7.0, f32))
    assert again.served == 1


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 10_000),
    shift=st.floats(-3.0, 3.0),
    spread=st.sampled_from([1e-3, 1.0, 1e3]),
    factor=st.sampled_from([None, 0.125, 0.5, 4.0]),
    channel=st.booleans(),
    heavy=st.integers(1, 11),
)
def test_a_derived_observer_is_the_observer_of_the_tensor_itself(
    seed, shift, spread, factor, channel, heavy, monkeypatch
):
    """Fed its source's batch extremes and a batch made only where read, the observer of
    max(x, 0) or x · 2^k gives bit for bit what observing the values themselves gives:
    ranges, observed range and quality (a sampled histogram with rare heavy batches)."""
    from onnxq.calibration.derived import Derivation, DerivedBatch

    monkeypatch.setattr(estimate, "QUALITY_VALUES", 2000)
    rng = np.random.default_rng(seed)
    how = Derivation("x", factor)
    config = CalibrationConfig(granularity=Granularity.CHANNEL if channel else Granularity.TENSOR)
    axis = 1 if channel else None
    source, derived, direct = (TensorObserver(config, axis) for _ in range(3))
    blank = False  # batch 0 all zeros
    for b in range(12):
        x = (rng.normal(shift, 1.0, (6, 4, 50)) * spread).astype(f32)
        if b == heavy:
            x[2, 1, :5] = spread * 80.0
            x[3, 2, :5] = -spread * 90.0
        source.update(x, 12)
        assert source.minmax is not None and source.minmax.last is not None
        derived.update(DerivedBatch(x, how), 12, how.extremes(*source.minmax.last))
        # the values written out here, not by the map under test
        values = np.maximum(x, f32(0)) if factor is None else x * f32(factor)
        blank = blank if b else not values.any()
        direct.update(values, 12)
    # sampled, unless batch 0 was all zeros (a Relu of negatives: then nothing to sample by)
    assert blank or isinstance(direct.hist, SampledHistogram)
    assert blank or direct.hist.sampling.stride >= 1
    assert derived.sampling == direct.sampling
    a, b = finish(derived, config), finish(direct, config)
    for field in ("min", "max", "observed_min", "observed_max"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert a.quality == b.quality


def test_rows_too_large_for_the_budget_are_binned_apart_and_blank_ones_keep_the_grid(
    monkeypatch,
):
    """One row would hold the quality budget: at least MIN_ROWS (2) rows are binned, from
    different batches and rows (not the first sample alone). When every row binned is
    blank (zeros), the histogram keeps the grid that holds batch 0 (edge / bins), not a
    width of 1 that would put the skipped bulk in a bin wider than the tensor."""
    monkeypatch.setattr(estimate, "QUALITY_VALUES", 4096)
    rng = np.random.default_rng(2)
    batches = [rng.normal(0, 0.01, (4, 8192)).astype(f32) for _ in range(16)]
    probe = TensorObserver(CalibrationConfig(), None)
    probe.update(batches[0], 16)
    sampling = probe.sampling
    assert sampling is not None and sampling.picks == 2 and sampling.stride == 8
    hist = SampledHistogram(512, sampling)
    picked = [_picked_rows(4, sampling, i) for i in (0, 8)]
    assert picked[0].tolist() != picked[1].tolist()
    for i, b in enumerate(batches):
        if i % sampling.stride == 0:
            b[_picked_rows(4, sampling, i)] = 0.0
        hist.update(b, (float(b.min()), float(b.max())))
    result = hist.result()
    assert sampling.edge is not None and result.width == sampling.edge / 512
    assert result.total == sum(b.size for b in batches)
    # without the batches' bounds the binned rows' grid comes from their values alone:
    # all zeros give none, and the fallback to batch 0's grid decides the width
    unbounded = SampledHistogram(512, sampling)
    for b in batches:
        unbounded.update(b)
    assert unbounded.whole.exponent is None and unbounded.tail.exponent is None
    blank = unbounded.result()
    assert blank.width == sampling.edge / 512
    assert blank.total == result.total and blank.counts[512] > 0  # the zeros' bin

"""The report's in-sample fidelity starts from the output check's runs of the written model
(:class:`onnxq.report.fidelity.KnownOutputs`): the same numbers, without running the
check samples again."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

import onnxq.stages.evaluate as evaluate_stage
import onnxq.tuning.check as check_module
from onnxq import OptimizeFor, QuantConfig, quantize
from onnxq.calibration.reference import CachedReference, OutputRecorder
from onnxq.data import open_dataset
from onnxq.graph.model_io import input_specs
from onnxq.report.fidelity import Fidelity, KnownOutputs, evaluate
from onnxq.runtime import Runner

import models

f32 = np.float32


class Counting:
    """A real session that counts the samples it ran."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.output_names = runner.output_names
        self.samples = 0

    def run(self, feed, outputs=None):
        self.samples += next(iter(feed.values())).shape[0]
        return self.runner.run(feed, outputs)


def _data(tmp_path, samples: int = 12):
    x = np.random.default_rng(3).normal(0, 1, (samples, 16)).astype(f32)
    np.savez(tmp_path / "d.npz", x=x)
    return open_dataset(tmp_path / "d.npz", input_specs(models.scale_model(1.0))), x


def _known(reference: Runner, candidate: Runner, x: np.ndarray, feeds: list[int]) -> KnownOutputs:
    """Both models' outputs on the first samples of ``x``, fed ``feeds`` samples at a time."""
    pairs, start = [], 0
    for size in feeds:
        feed = {"x": x[start : start + size]}
        pairs.append((reference.run(feed, ["y"]), candidate.run(feed, ["y"]), None))
        start += size
    return KnownOutputs(tuple(pairs), tuple(feeds))


def _same(a: Fidelity, b: Fidelity) -> None:
    assert a.samples == b.samples
    for x, y in zip(a.outputs, b.outputs, strict=True):
        for key, value in dataclasses.asdict(x).items():
            other = dataclasses.asdict(y)[key]
            if isinstance(value, float):
                assert value == pytest.approx(other, rel=1e-6, abs=1e-9), key
            else:
                assert value == other, key


def test_known_samples_are_not_run_again_and_give_the_same_fidelity(tmp_path):
    data, x = _data(tmp_path)
    reference, candidate = Runner(models.scale_model(1.0)), Runner(models.scale_model(1.05))
    full = evaluate(reference, Counting(candidate), data, batch_size=2)
    # the check fed 4 samples in one feed; the evaluation's batches of 2 end there too
    counted = Counting(candidate)
    known = _known(reference, candidate, x, [4])
    fidelity = evaluate(reference, counted, data, batch_size=2, known=known)
    assert counted.samples == 8  # 12 samples, the first 4 known
    _same(fidelity, full)


def test_known_samples_ending_inside_a_batch_are_not_used(tmp_path):
    data, x = _data(tmp_path)
    reference, candidate = Runner(models.scale_model(1.0)), Runner(models.scale_model(1.05))
    full = evaluate(reference, candidate, data, batch_size=2)
    counted = Counting(candidate)
    known = _known(reference, candidate, x, [3])  # batches of 2 end at 2 and 4, not 3
    fidelity = evaluate(reference, counted, data, batch_size=2, known=known)
    assert counted.samples == 12
    _same(fidelity, full)


def test_known_values_are_the_ones_reported(tmp_path):
    """The known pairs are read as they are: a candidate side made exact for its samples
    lowers the noise the report sees (a run would have measured the 5 % error)."""
    data, x = _data(tmp_path)
    reference, candidate = Runner(models.scale_model(1.0)), Runner(models.scale_model(1.05))
    exact = _known(reference, reference, x, [2, 2])
    both = evaluate(reference, candidate, data, batch_size=2, limit=4, known=exact)
    assert both.samples == 4
    assert both.outputs[0].sqnr_db == float("inf")


def test_a_limit_within_the_known_samples_runs_nothing(tmp_path):
    data, x = _data(tmp_path)
    reference, candidate = Runner(models.scale_model(1.0)), Runner(models.scale_model(1.05))
    counted = Counting(candidate)
    known = _known(reference, candidate, x, [4, 4])
    fidelity = evaluate(reference, counted, data, batch_size=2, limit=6, known=known)
    assert counted.samples == 0
    assert fidelity.samples == 8  # whole known feeds up to the limit: 4 + 4
    first = evaluate(reference, counted, data, batch_size=2, limit=3, known=known)
    assert first.samples == 4 and counted.samples == 0  # the first feed holds 3


def test_the_recorded_reference_skips_the_known_batches_by_count(tmp_path):
    """The evaluation tells the calibration record how many batches it skipped; the next
    batch asked for is served from its own position, and a batch with the same inputs
    earlier in the record is never served in its place."""
    runner = Runner(models.scale_model(2.0))
    same = {"x": np.ones((2, 16), f32)}
    feeds = [same, {"x": np.full((2, 16), 2.0, f32)}, same]
    recorder = OutputRecorder(("y",), 2)
    for feed in feeds:
        recorder.record(feed, runner.run(feed))
    for i, (_, values) in enumerate(recorder.batches):
        values["y"][:] = -float(i)  # marks which record served
    cached = CachedReference(runner, recorder)
    cached.skip(2)
    assert float(cached.run(same, ["y"])["y"][0, 0]) == -2.0  # not batch 0's record
    assert cached.served == 1
    unskipped = CachedReference(runner, recorder)
    assert float(unskipped.run(feeds[2], ["y"])["y"][0, 0]) == -0.0  # position 0
    assert float(unskipped.run(feeds[2], ["y"])["y"][0, 0]) == 2.0  # not batch 1: run


def test_quantize_reports_from_the_checks_runs_the_same_fidelity(tmp_path, monkeypatch):
    """In-sample (no --eval), the output check's runs of the written model are handed to the
    evaluation, which runs only the samples after them; the report is the one a full
    evaluation gives."""
    model = models.cnn()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [200, *(d.dim_value for d in dims[1:])]
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "d.npz", input=rng.normal(0, 1, shape).astype(f32))
    onnx.save(model, str(tmp_path / "m.onnx"))
    given: list[KnownOutputs | None] = []
    ran: list[Counting] = []
    real = evaluate_stage.evaluate

    def recording(reference, candidate, *args, **kwargs):
        given.append(kwargs.get("known"))
        ran.append(Counting(candidate))
        return real(reference, ran[-1], *args, **kwargs)

    monkeypatch.setattr(evaluate_stage, "evaluate", recording)
    cfg = QuantConfig(optimize_for=OptimizeFor.SIZE)
    kept = quantize(tmp_path / "m.onnx", tmp_path / "a.onnx", cfg, data=tmp_path / "d.npz")
    assert kept.check is not None and kept.fidelity is not None
    assert given and given[0] is not None
    assert given[0].samples == kept.check.after.samples < 200  # the check took a share
    assert kept.fidelity.samples == 200
    assert ran[0].samples == 200 - given[0].samples  # only the samples after the check's
    monkeypatch.setattr(check_module, "KNOWN_BYTES", -1)  # nothing kept: everything runs
    given.clear()
    ran.clear()
    full = quantize(tmp_path / "m.onnx", tmp_path / "b.onnx", cfg, data=tmp_path / "d.npz")
    assert given == [None] and ran[0].samples == 200
    assert full.fidelity is not None
    for a, b in zip(kept.fidelity.outputs, full.fidelity.outputs, strict=True):
        x, y = dataclasses.asdict(a), dataclasses.asdict(b)
        for key in x:
            if isinstance(x[key], float):
                assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), key
            else:
                assert x[key] == y[key], key
    assert kept.fidelity.samples == full.fidelity.samples


def test_a_report_served_from_the_record_loads_no_float_session():
    """The float session behind a calibration record is made only when a batch is not in
    the record."""
    runner = Runner(models.scale_model(2.0))
    feeds = [{"x": np.full((2, 16), float(i), f32)} for i in range(1, 3)]
    recorder = OutputRecorder(("y",), 2)
    for feed in feeds:
        recorder.record(feed, runner.run(feed))
    made: list[int] = []

    def make() -> Runner:
        made.append(1)
        return runner

    cached = CachedReference(make, recorder, ("y",))
    for feed in feeds:
        cached.run(feed, ["y"])
    assert cached.served == 2 and not made
    other = {"x": np.full((2, 16), 9.0, f32)}
    assert float(cached.run(other, ["y"])["y"][0, 0]) == 18.0
    assert made == [1]


def test_the_float_reference_session_counts_the_optimized_op_types(monkeypatch):
    """A float session of the graph outputs alone is the float model onnxruntime runs: its
    optimized op types come from it, with no session of their own later."""
    import onnxq.calibration.collect as collect
    from onnxq.runtime import optimized_op_types

    from helpers import float_session

    model = models.cnn()
    expected = optimized_op_types(model)
    floats = float_session(model)
    assert floats.reference_runner is not None

    def refused(model):
        raise AssertionError("a session of its own")

    monkeypatch.setattr(collect, "optimized_op_types", refused)
    assert floats.optimized_op_types() == expected


def test_freed_memory_goes_back_on_glibc():
    import platform

    from onnxq.runtime import return_freed

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert return_freed() is expected


def test_outputs_kept_past_a_run_are_copies_not_views_of_onnxruntime_buffers(tmp_path):
    """onnxruntime's output arrays are views of buffers in its session's arena: one kept
    keeps the arena after the session is dropped (magika: 40 MB for 110 kB of outputs).
    The calibration record, the check set's float outputs and a candidate's kept outputs
    are copies that own their data."""
    from onnxq.tuning.check import make_check_set

    from helpers import float_session

    runner = Runner(models.scale_model(2.0))
    feed = {"x": np.ones((2, 16), f32)}
    fresh = runner.run(feed)["y"]
    assert not fresh.flags.owndata  # what the copies guard against
    recorder = OutputRecorder(("y",), 2)
    recorder.record(feed, runner.run(feed))
    assert recorder.batches[0][1]["y"].flags.owndata
    data, _ = _data(tmp_path)
    check = make_check_set(float_session(models.scale_model(1.0)), data, sample_bytes=1000)
    assert all(v.flags.owndata for d in check.reference for v in d.values())
    assert all(v.flags.owndata for d in check.graph_reference for v in d.values())
    kept: list[dict[str, np.ndarray]] = []
    check.run(Runner(models.scale_model(1.05)), keep=kept)
    assert kept and all(v.flags.owndata for d in kept for v in d.values())

"""Sharded calibration: any split of the batches into shards, merged, gives the ranges of
one pass bit for bit (min/max, observed extremes and quality numbers), for every method
and granularity; so do local worker processes and a Dask LocalCluster."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

import onnxq.calibration.estimate as estimate
import onnxq.calibration.parallel as parallel
from onnxq import OptimizeFor, QuantConfig, calibrate, quantize
from onnxq.calibration.collect import FloatSession, batch_for
from onnxq.calibration.observers import TensorRange
from onnxq.calibration.passplan import PassPlan
from onnxq.calibration.sampled import SampledHistogram
from onnxq.calibration.shards import (
    Shard,
    ShardTask,
    merge_shards,
    observe_shard,
    sampling_of,
    split,
)
from onnxq.cli.main import cli
from onnxq.config import CalibrationConfig, CalibrationMethod, Granularity, Scheme
from onnxq.data import open_dataset
from onnxq.errors import ConfigError
from onnxq.graph.model_io import input_specs, load_model
from onnxq.stages.prepare import prepare

from helpers import NO_CHECK

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
MODEL = SAMPLES / "digits_cnn.onnx"
DATA = SAMPLES / "digits_calib.npz"
# a quality histogram of this many values bins only some batches whole (stride > 1)
SAMPLED_VALUES = 60_000

CONFIGS = [
    CalibrationConfig(batch_size=16),
    CalibrationConfig(batch_size=16, granularity=Granularity.CHANNEL),
    CalibrationConfig(batch_size=16, method=CalibrationMethod.PERCENTILE, percentile=99.9),
    CalibrationConfig(batch_size=16, method=CalibrationMethod.ENTROPY),
    CalibrationConfig(batch_size=16, method=CalibrationMethod.MSE, scheme=Scheme.SYM),
]


def assert_same_ranges(one: dict[str, TensorRange], other: dict[str, TensorRange]) -> None:
    assert one.keys() == other.keys()
    for name, a in one.items():
        b = other[name]
        assert a.axis == b.axis, name
        for field in ("min", "max", "observed_min", "observed_max"):
            x, y = getattr(a, field), getattr(b, field)
            assert np.array_equal(x, y) and x.dtype == y.dtype, (name, field, x, y)
        assert a.quality is not None and b.quality is not None
        got = np.array([*vars(a.quality).values()])
        want = np.array([*vars(b.quality).values()])
        assert np.array_equal(got, want), (name, a.quality, b.quality)


@pytest.fixture(scope="module")
def floats() -> FloatSession:
    return FloatSession(prepare(load_model(MODEL)).model)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample data as three files whose sizes the batch size does not divide."""
    arrays = np.load(DATA)
    out = tmp_path_factory.mktemp("folder")
    for i, (a, b) in enumerate([(0, 70), (70, 120), (120, 200)]):
        np.savez(out / f"{i}.npz", input=arrays["input"][a:b])
    return out


def _plan(floats: FloatSession, dataset, config: CalibrationConfig) -> PassPlan:
    """The plan FloatSession.observe makes of the whole stream."""
    size = batch_for(floats.sample_bytes(dataset), config.batch_size)
    return PassPlan.of(floats.model, floats.candidates, config, size, dataset.num_batches(size))


def _task(floats: FloatSession, dataset, config: CalibrationConfig) -> ShardTask:
    return _plan(floats, dataset, config).task


def test_split_covers_every_batch_once_in_order():
    assert split(13, 4) == (Shard(0, 4), Shard(4, 7), Shard(7, 10), Shard(10, 13))
    assert split(2, 5) == (Shard(0, 1), Shard(1, 2))  # never an empty shard
    with pytest.raises(ValueError):
        Shard(3, 3)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    config=st.sampled_from(CONFIGS),
    cuts=st.sets(st.integers(1, 12), max_size=5),
    order=st.randoms(use_true_random=False),
    sampled=st.booleans(),
    in_folder=st.booleans(),
)
def test_any_split_merges_to_the_ranges_of_one_pass(
    floats, folder, monkeypatch, config, cuts, order, sampled, in_folder
):
    monkeypatch.setattr(estimate, "QUALITY_VALUES", SAMPLED_VALUES if sampled else 2**24)
    dataset = open_dataset(folder if in_folder else DATA, input_specs(floats.model))
    one_pass = floats.observe(dataset, floats.candidates, config)

    task = _task(floats, dataset, config)
    assert task.batches == (14 if in_folder else 13)  # the folder's files end in short batches
    # the sample CNN's Relu outputs are read off their inputs under plain min/max, so the
    # shards carry derived observers too; a method's histogram observes them itself
    assert bool(task.derived) is (config.method is CalibrationMethod.MINMAX)
    bounds = [0, *sorted(c for c in cuts if c < task.batches), task.batches]
    shards = [Shard(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
    first = next(dataset.batches(task.batch_size))
    sampling = sampling_of(floats.run(first.feed, list(task.tensors)), task)
    # observed in any order (as workers finish), merged in shard order
    observed: dict[int, dict] = {}
    for i in order.sample(range(len(shards)), len(shards)):
        shard_task = replace(task, shard=shards[i], sampling=sampling)
        observed[i] = observe_shard(floats.run, dataset, shard_task)
    merged = merge_shards([observed[i] for i in range(len(shards))])
    plan = _plan(floats, dataset, config)
    assert_same_ranges(plan.ranges(merged, floats.candidates), one_pass)
    if sampled and config.method is CalibrationMethod.MINMAX:
        assert any(isinstance(o.hist, SampledHistogram) for o in merged.values())


def test_shards_with_different_sampling_refuse_to_merge(floats, monkeypatch):
    monkeypatch.setattr(estimate, "QUALITY_VALUES", SAMPLED_VALUES)
    dataset = open_dataset(DATA, input_specs(floats.model))
    task = _task(floats, dataset, CONFIGS[0])
    head = observe_shard(floats.run, dataset, replace(task, shard=Shard(0, 6)))
    with pytest.raises(ValueError, match="sampling chosen on batch 0"):
        observe_shard(floats.run, dataset, replace(task, shard=Shard(6, 13)))
    other = {n: estimate.Sampling(3, 0.5) for n in head}  # not batch 0's choice
    tail = observe_shard(floats.run, dataset, replace(task, shard=Shard(6, 13), sampling=other))
    with pytest.raises(ValueError, match="sampled differently"):
        merge_shards([head, tail])


def test_moving_average_refuses_shards_naming_both_flags():
    with pytest.raises(ConfigError, match="--moving-average and --workers 2"):
        CalibrationConfig(moving_average=0.1, workers=2)
    with pytest.raises(ConfigError, match="--moving-average and --scheduler"):
        CalibrationConfig(moving_average=0.1, scheduler="tcp://127.0.0.1:8786")
    with pytest.raises(ConfigError, match="--workers must be at least 1"):
        CalibrationConfig(workers=0)


def test_two_local_processes_give_the_ranges_of_one(monkeypatch):
    """Processes spawned fresh; the parent chooses the sampling (patched here) and ships it."""
    monkeypatch.setattr(estimate, "QUALITY_VALUES", SAMPLED_VALUES)
    for config in (CONFIGS[1], CONFIGS[3]):
        one = calibrate(MODEL, DATA, config)
        two = calibrate(MODEL, DATA, replace(config, workers=2))
        assert_same_ranges(two.tensors, one.tensors)
        assert two.to_json() == one.to_json()


def test_arrays_in_memory_are_spilled_for_the_workers():
    arrays = {"input": np.load(DATA)["input"]}
    config = CalibrationConfig(batch_size=32, method=CalibrationMethod.PERCENTILE)
    one = calibrate(MODEL, arrays, config)
    two = calibrate(MODEL, arrays, replace(config, workers=2))
    assert_same_ranges(two.tensors, one.tensors)


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_cli_workers_writes_the_same_ranges_file(tmp_path):
    common = [str(MODEL), "--data", str(DATA), "--method", "mse", "--batch-size", "16"]
    one = _invoke("calibrate", *common, "-o", str(tmp_path / "one.json"))
    two = _invoke("calibrate", *common, "-o", str(tmp_path / "two.json"), "--workers", "2")
    assert one.exit_code == 0 and two.exit_code == 0, two.output
    assert json.loads((tmp_path / "one.json").read_text()) == json.loads(
        (tmp_path / "two.json").read_text()
    )


def test_cli_refuses_what_shards_cannot_do(tmp_path):
    moving = _invoke(
        "calibrate", str(MODEL), "--data", str(DATA), "-o", str(tmp_path / "r.json"),
        "--moving-average", "0.1", "--workers", "2",
    )  # fmt: skip
    assert moving.exit_code == 2
    assert "--moving-average and --workers 2 exclude each other" in moving.output
    assert "Traceback" not in moving.output
    equalized = _invoke(
        "quantize", str(MODEL), "--data", str(DATA), "-o", str(tmp_path / "q.onnx"),
        "--equalize", "--workers", "2",
    )  # fmt: skip
    assert equalized.exit_code == 2, equalized.output
    assert "--workers 2" in equalized.output and "--equalize" in equalized.output
    assert not (tmp_path / "q.onnx").exists()
    dynamic = _invoke(
        "quantize", str(MODEL), "-o", str(tmp_path / "q.onnx"), "--mode", "dynamic",
        "--workers", "2",
    )  # fmt: skip
    assert dynamic.exit_code == 2 and "calibrates nothing" in dynamic.output
    assert not (tmp_path / "q.onnx").exists()


def test_scheduler_without_dask_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'onnxq\[distributed\]'"):
        calibrate(MODEL, DATA, CalibrationConfig(scheduler="tcp://127.0.0.1:1"))


def test_unreadable_paths_are_named(tmp_path):
    there = tmp_path / "model.onnx"
    there.write_bytes(b"x")
    assert parallel._unreadable([str(there), str(tmp_path / "gone.npz"), str(tmp_path)]) == [
        str(tmp_path / "gone.npz"),
        str(tmp_path),
    ]


def test_dask_local_cluster_gives_the_ranges_of_one_process(monkeypatch):
    distributed = pytest.importorskip("distributed")
    monkeypatch.setattr(estimate, "QUALITY_VALUES", SAMPLED_VALUES)
    config = CalibrationConfig(batch_size=16, granularity=Granularity.CHANNEL)
    entropy = CalibrationConfig(batch_size=16, method=CalibrationMethod.ENTROPY)
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        for cfg in (config, entropy):
            one = calibrate(MODEL, DATA, cfg)
            dask = calibrate(MODEL, DATA, replace(cfg, scheduler=address))
            assert_same_ranges(dask.tensors, one.tensors)
        # more shards than workers: --workers sets the count
        three = calibrate(MODEL, DATA, replace(config, scheduler=address, workers=3))
        assert_same_ranges(three.tensors, calibrate(MODEL, DATA, config).tensors)


def test_quantize_with_workers_writes_the_same_scales(tmp_path):
    # int8 both times whatever the timing (balanced decides by a timing at the noise floor)
    config = QuantConfig(target=NO_CHECK, optimize_for=OptimizeFor.SIZE)
    written = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.onnx"
        calibration = CalibrationConfig(batch_size=16, workers=workers)
        quantize(MODEL, out, config, data=DATA, calibration=calibration)
        graph = load_model(out).graph
        written[workers] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    assert written[1].keys() == written[2].keys()
    assert all(np.array_equal(written[1][n], written[2][n]) for n in written[1])


def test_dask_precheck_names_the_external_data_files(tmp_path):
    import onnx

    model = tmp_path / "ext.onnx"
    onnx.save_model(
        onnx.load(str(MODEL)), str(model), save_as_external_data=True,
        location="ext.data", size_threshold=0,
    )  # fmt: skip
    dataset = open_dataset(DATA, input_specs(load_model(model)))
    paths = parallel._paths(parallel.ModelOrigin(str(model), 13), dataset)
    data = str((tmp_path / "ext.data").resolve())
    assert paths[0] == str(model) and data in paths
    (tmp_path / "ext.data").unlink()  # as a worker without the file would see it
    assert parallel._unreadable(paths) == [data]


def test_dask_failures_become_one_line_runtime_failures():
    distributed = pytest.importorskip("distributed")
    from types import SimpleNamespace

    from onnxq.errors import DataError, RuntimeFailure

    worker = SimpleNamespace(address="tcp://10.0.0.7:4000")
    killed = distributed.scheduler.KilledWorker("observe_job-1", worker, 3)
    closed = distributed.comm.CommClosedError("in <TCP>: Stream is closed")
    for exc, fragment in (
        (killed, "died"),
        (closed, "lost the connection"),
        (ValueError("bad\nsecond line"), "ValueError: bad"),
    ):
        failure = parallel._dask_failure(exc, "tcp://s:8786")
        assert isinstance(failure, RuntimeFailure), exc
        message = str(failure)
        assert "\n" not in message and fragment in message and "tcp://s:8786" in message
    data = DataError("shard data changed")
    assert parallel._dask_failure(data, "tcp://s:8786") is data

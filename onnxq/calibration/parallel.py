"""Sharded calibration in other processes: local ones (``--workers N``) or the workers of
a Dask cluster (``--scheduler ADDRESS``, ``pip install 'onnxq[distributed]'``).

Each task is one shard (:mod:`onnxq.calibration.shards`) and ships a :class:`Job`: the
model's path with how it was prepared and the fingerprint of the prepared graph, the
validated dataset (its parts by path, not their arrays), the span of batch indices and the
sampling chosen on batch 0. The worker reads the model and its shard of the data itself,
keeps one onnxruntime session per process, and returns its observers (min/max and
histograms: a few KB per tensor); the parent merges them in shard order and finishes the
ranges once. Arrays given in Python are written to a temporary ``.npz`` first, so local
workers read them by path; a Dask worker must be able to read the model and every data
path as the parent names them (shared storage), which is checked before any task runs.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxq.calibration.estimate import Sampling, TensorObserver
from onnxq.calibration.shards import ShardTask, merge_shards, observe_shard, sampling_of, split
from onnxq.data import Dataset
from onnxq.data.dataset import NpzPart
from onnxq.data.images import ImageChunk
from onnxq.data.memory import ArrayPart
from onnxq.data.npy import NpyPart
from onnxq.errors import ConfigError, DataError, ModelError, OnnxqError, RuntimeFailure
from onnxq.graph.external import referenced_files
from onnxq.graph.model_io import fingerprint

if TYPE_CHECKING:
    from onnxq.calibration.collect import FloatSession

__all__ = ["DASK_HINT", "Job", "ModelOrigin", "observe_job", "observe_sharded"]

log = logging.getLogger(__name__)

DASK_HINT = "pip install 'onnxq[distributed]'"
CONNECT_SECONDS = 30  # to reach the Dask scheduler


@dataclass(frozen=True)
class ModelOrigin:
    """How another process rebuilds a float session's model: read ``path`` and prepare it
    with ``min_opset`` (:func:`onnxq.stages.prepare.prepare`)."""

    path: str
    min_opset: int


@dataclass(frozen=True)
class Job:
    """What one task ships: where the model comes from, the fingerprint of the prepared
    graph the parent observes, the tensors its session fetches (the same outputs give the
    same onnxruntime graph), onnxruntime threads, the data and the shard."""

    origin: ModelOrigin
    fingerprint: str
    fetch: tuple[str, ...]
    threads: int
    dataset: Dataset
    task: ShardTask


def observe_sharded(
    floats: FloatSession, dataset: Dataset, task: ShardTask, progress: Callable[[int], None]
) -> dict[str, TensorObserver]:
    """The observers of ``task`` (the whole stream) observed in shards in other
    processes and merged in shard order; ``progress`` gets the samples of each shard."""
    config = task.config
    origin = floats.origin
    if origin is None:
        flag = "--scheduler" if config.scheduler is not None else f"--workers {config.workers}"
        raise ConfigError(
            f"{flag} rebuilds the float model from its file in each worker, but this one was "
            "changed in memory (--equalize); drop one of them"
        )
    graph = fingerprint(floats.model)
    sampling = _sampling(floats, dataset, task)
    threads = floats.threads or _local_threads(config.workers, config.scheduler)
    with _portable(dataset) as shipped:

        def jobs(count: int) -> list[Job]:
            shards = split(task.batches, count)
            log.info("calibrating %d batches in %d shards", task.batches, len(shards))
            fetch = floats.fetchable
            tasks = [replace(task, shard=shard, sampling=sampling) for shard in shards]
            return [Job(origin, graph, fetch, threads, shipped, t) for t in tasks]

        if config.scheduler is not None:
            paths = _paths(origin, shipped)
            results = _on_dask(config.scheduler, config.workers, jobs, paths, progress)
        else:
            results = _on_processes(jobs(config.workers), progress)
    return merge_shards(results)


def _sampling(floats: FloatSession, dataset: Dataset, task: ShardTask) -> dict[str, Sampling]:
    """The sampling the observers choose on batch 0 (one run of it here, only when an
    observer may sample)."""
    probe = TensorObserver(task.config, None)
    if not probe.sampled:
        return {t: Sampling() for t in task.observed}
    first = next(dataset.batches(task.batch_size))
    return sampling_of(floats.run(first.feed, list(task.tensors)), task)


def _local_threads(workers: int, scheduler: str | None) -> int:
    """onnxruntime threads per local worker process: the cores shared out (0 on a Dask
    worker: onnxruntime's default, all its machine's cores)."""
    if scheduler is not None:
        return 0
    return max(1, (os.cpu_count() or 1) // workers)


Result = tuple[dict[str, TensorObserver], int]  # a shard's observers, its samples


def observe_job(job: Job) -> Result:
    """Run in a worker: the observers of one shard and the samples it held."""
    samples = 0

    def count(n: int) -> None:
        nonlocal samples
        samples += n

    observers = observe_shard(_session(job).run, job.dataset, job.task, count)
    return observers, samples


_SESSIONS: dict[tuple[object, ...], Any] = {}  # one float session per worker process


def _session(job: Job) -> FloatSession:
    from onnxq.calibration.collect import FloatSession
    from onnxq.graph.model_io import load_model
    from onnxq.stages.prepare import prepare

    key = (job.origin, job.fingerprint, job.fetch, job.threads)
    if key not in _SESSIONS:
        _SESSIONS.clear()
        prepared = prepare(load_model(job.origin.path), min_opset=job.origin.min_opset)
        if fingerprint(prepared.model) != job.fingerprint:
            raise ModelError(
                f"model file '{job.origin.path}' read by a calibration worker differs from the "
                "one calibrated (changed on disk, or another file at that path on this worker)"
            )
        _SESSIONS[key] = FloatSession(prepared.model, threads=job.threads, extra=job.fetch)
    session: FloatSession = _SESSIONS[key]
    return session


@contextmanager
def _portable(dataset: Dataset) -> Iterator[Dataset]:
    """``dataset`` as a task ships it: parts by path (arrays in memory written to a
    temporary ``.npz`` that lives as long as this context), no cached arrays."""
    folder: tempfile.TemporaryDirectory[str] | None = None
    names = [s.name for s in dataset.specs]
    parts: list[object] = []
    try:
        for part in dataset.parts:
            if isinstance(part, NpzPart):  # the parent keeps the files alive
                part = replace(part, path=part.path.resolve(), owner=None)
            elif isinstance(part, NpyPart):
                part = replace(part, path=part.path.resolve())
            elif isinstance(part, ImageChunk):
                part = replace(part, files=tuple(f.resolve() for f in part.files))
            elif isinstance(part, ArrayPart):
                folder = folder or tempfile.TemporaryDirectory(prefix="onnxq-shards-")
                path = Path(folder.name) / f"{len(parts):05d}.npz"
                np.savez(path, **part.read(names, dataset.label_key))  # type: ignore[arg-type]
                part = NpzPart(path, str(part))
            parts.append(part)
        yield replace(dataset, parts=tuple(parts), _cache={})  # type: ignore[arg-type]
    finally:
        if folder is not None:
            folder.cleanup()


def _on_processes(
    jobs: Sequence[Job], progress: Callable[[int], None]
) -> list[dict[str, TensorObserver]]:
    """The jobs' observers, in order, from local processes started fresh ("spawn":
    onnxruntime is not safe to fork once a session exists)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=context) as pool:
        futures = [pool.submit(observe_job, job) for job in jobs]
        try:
            for done in as_completed(futures):
                progress(done.result()[1])
            return [f.result()[0] for f in futures]
        except BaseException as exc:
            pool.shutdown(cancel_futures=True)  # one shard failed: the others are of no use
            if isinstance(exc, BrokenProcessPool):
                raise RuntimeFailure(
                    f"a calibration worker process died ({exc}); out of memory? use fewer --workers"
                ) from None
            raise


def _paths(origin: ModelOrigin, dataset: Dataset) -> list[str]:
    """The files a worker reads: the model, its external data files and every data
    part's."""
    paths = [origin.path, *(str(f) for f in referenced_files(origin.path))]
    for part in dataset.parts:
        path = getattr(part, "path", None)
        paths += [str(path)] if path is not None else [str(f) for f in getattr(part, "files", ())]
    return paths


def _unreadable(paths: Sequence[str]) -> list[str]:
    """Run on each Dask worker: the paths it cannot open for reading."""
    return [p for p in paths if not os.access(p, os.R_OK) or not os.path.isfile(p)]


def _on_dask(
    address: str,
    workers: int,
    jobs: Callable[[int], list[Job]],
    paths: Sequence[str],
    progress: Callable[[int], None],
) -> list[dict[str, TensorObserver]]:
    """The jobs on the Dask cluster at ``address``: one shard per Dask worker, or
    ``workers`` shards when more than one, after every worker showed it reads ``paths``."""
    try:  # an optional extra, untyped: used as Any
        distributed: Any = importlib.import_module("distributed")
    except ImportError:
        raise ConfigError(f"--scheduler needs Dask: {DASK_HINT}") from None
    try:
        client = distributed.Client(address, timeout=CONNECT_SECONDS)
    except (OSError, TimeoutError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"--scheduler {address}: cannot reach a Dask scheduler ({first})"
        ) from None
    with client:
        try:
            return _run_on_dask(client, distributed, address, workers, jobs, paths, progress)
        except OnnxqError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a worker raised, as one line
            raise _dask_failure(exc, address) from exc


def _run_on_dask(
    client: Any,
    distributed: Any,
    address: str,
    workers: int,
    jobs: Callable[[int], list[Job]],
    paths: Sequence[str],
    progress: Callable[[int], None],
) -> list[dict[str, TensorObserver]]:
    missing = client.run(_unreadable, list(paths))
    if not missing:
        raise ConfigError(f"--scheduler {address}: the Dask cluster has no workers")
    for worker, unread in sorted(missing.items()):
        if unread:
            raise DataError(
                f"Dask worker {worker} cannot read '{unread[0]}': the model, its external "
                "data and the data must be readable at the same path on every worker "
                "(shared storage)"
            )
    futures = [
        client.submit(observe_job, job, pure=False)
        for job in jobs(workers if workers > 1 else len(missing))
    ]
    for done in distributed.as_completed(futures):
        progress(done.result()[1])
    results: list[Result] = client.gather(futures)
    return [observers for observers, _ in results]


def _dask_failure(exc: Exception, address: str) -> OnnxqError:
    """What to raise for ``exc`` from the Dask cluster at ``address``: onnxq's own errors
    as they are; a worker that died, a lost connection or anything a task raised as a
    one-line :class:`RuntimeFailure`."""
    if isinstance(exc, OnnxqError):
        return exc
    distributed: Any = importlib.import_module("distributed")  # imported by the caller
    name = type(exc).__name__
    lines = str(exc).strip().splitlines()
    detail = f"{name}: {lines[0]}" if lines else name
    if isinstance(exc, distributed.scheduler.KilledWorker):
        return RuntimeFailure(
            f"--scheduler {address}: Dask workers died running a calibration shard ({detail}); "
            "out of memory? give the workers more memory or split the data into more "
            "shards (--workers)"
        )
    if isinstance(exc, distributed.comm.CommClosedError):
        return RuntimeFailure(
            f"--scheduler {address}: lost the connection to the Dask cluster ({detail}); "
            "check that the scheduler and its workers are still running"
        )
    return RuntimeFailure(f"--scheduler {address}: a calibration shard failed ({detail})")

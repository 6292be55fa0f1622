"""Calibration in shards: contiguous runs of whole batches of one stream, each observed
apart (in this process or another) and merged in shard order.

The merged observers are the observers of one pass, bit for bit, for every method and
granularity, because

* the batches are the same whatever the split (a shard is a span of batch indices of
  :meth:`onnxq.data.Dataset.batches`), so every batch's activations are the same arrays;
* min/max (per tensor or per channel) merge by element-wise minimum and maximum, and the
  histograms sit on a power-of-two grid aligned at zero whose coarsening is exact
  (:mod:`onnxq.calibration.histogram`), so their counts do not depend on the order values
  arrive in; integer counts add exactly;
* the sampled quality histogram (:mod:`onnxq.calibration.sampled`) is given the sampling
  chosen on batch 0 of the whole stream and picks batches by their index in the stream;
* the one pass is this same code with one shard, and clipping ranges and quality numbers
  are computed once, from the merged observers (:func:`onnxq.calibration.estimate.finish`).

A moving average of batch extremes depends on batch order by definition and is refused
(:class:`onnxq.config.CalibrationConfig`). Pure numpy: the model runs through ``run``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from onnxq.calibration.derived import Derivation, DerivedBatch
from onnxq.calibration.estimate import Sampling, TensorObserver, make_observer
from onnxq.config import CalibrationConfig
from onnxq.data import Dataset

__all__ = [
    "Run",
    "RunResult",
    "Shard",
    "ShardTask",
    "merge_shards",
    "observe_shard",
    "sampling_of",
    "split",
]

RunResult = Mapping[str, np.ndarray]
Run = Callable[[Mapping[str, np.ndarray], Sequence[str]], RunResult]


@dataclass(frozen=True)
class Shard:
    """Batches ``start`` to ``stop`` (excluded) of the stream."""

    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise ValueError(f"a shard holds at least one batch, got {self.start}..{self.stop}")


def split(batches: int, shards: int) -> tuple[Shard, ...]:
    """``batches`` cut into at most ``shards`` contiguous runs as equal as possible (the
    first ones one batch longer); never an empty shard."""
    count = max(1, min(shards, batches))
    size, extra = divmod(batches, count)
    out, start = [], 0
    for i in range(count):
        stop = start + size + (i < extra)
        out.append(Shard(start, stop))
        start = stop
    return tuple(out)


@dataclass(frozen=True)
class ShardTask:
    """What observing one shard needs besides the model and the data: the tensors (with
    the channel axis of each, None per tensor), the calibration settings, the batch size
    and batch count of the whole stream, the shard, and the sampling chosen on batch 0
    (None: the shard starts at batch 0 and chooses it there)."""

    tensors: tuple[str, ...]
    axes: Mapping[str, int | None]
    config: CalibrationConfig
    batch_size: int
    batches: int
    shard: Shard
    sampling: Mapping[str, Sampling] | None = None
    # tensors observed without a fetch, each from one of ``tensors`` (with its axis in
    # ``axes``): onnxq.calibration.derived
    derived: Mapping[str, Derivation] = field(default_factory=dict)

    @property
    def observed(self) -> tuple[str, ...]:
        """Every tensor with an observer: the fetched ones and the derived ones."""
        return (*self.tensors, *self.derived)


def observe_shard(
    run: Run, dataset: Dataset, task: ShardTask, progress: Callable[[int], None] | None = None
) -> dict[str, TensorObserver]:
    """The observers of ``task.tensors`` over the shard's batches (``progress``: called
    with each batch's sample count)."""
    observers = {t: make_observer(task.config, task.axes[t]) for t in task.observed}
    if task.sampling is not None:
        for name, observer in observers.items():
            observer.plan(task.sampling[name], task.shard.start)
    elif task.shard.start != 0:
        raise ValueError("a shard after the first needs the sampling chosen on batch 0")
    names = list(task.tensors)
    for batch in dataset.batches(task.batch_size, task.shard.start, task.shard.stop):
        values = run(batch.feed, names)
        for name, value in values.items():
            observers[name].update(value, task.batches)
        for name, how in task.derived.items():
            source = observers[how.source].minmax
            last = source.last if source is not None else None
            extremes = None if last is None else how.extremes(*last)
            observers[name].update(DerivedBatch(values[how.source], how), task.batches, extremes)
        del values  # before the next run allocates its outputs
        if progress is not None:
            progress(batch.size)
    return observers


def sampling_of(values: Mapping[str, np.ndarray], task: ShardTask) -> dict[str, Sampling]:
    """The sampling each tensor's observer chooses on batch 0 of the stream (``values``):
    the choice the first shard makes itself, for the shards after it."""
    out = {}
    batch: dict[str, np.ndarray | DerivedBatch] = dict(values)
    batch |= {n: DerivedBatch(values[how.source], how) for n, how in task.derived.items()}
    for name, value in batch.items():
        probe = make_observer(task.config, task.axes[name])
        probe.update(value, task.batches)
        assert probe.sampling is not None
        out[name] = probe.sampling
    return out


def merge_shards(results: Sequence[dict[str, TensorObserver]]) -> dict[str, TensorObserver]:
    """The observers of each shard merged in shard order (into the first shard's)."""
    first, *rest = results
    for later in rest:
        for name, observer in first.items():
            observer.merge(later[name])
    return first

"""Running a reference and a candidate model side by side over a dataset."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from onnxq.data import Dataset
from onnxq.report.metrics import OutputFidelity, OutputStats
from onnxq.runtime import Runner

__all__ = ["BatchObserver", "Fidelity", "Outputs", "evaluate"]


class BatchObserver(Protocol):
    """Sees both models' outputs of every batch (task metrics, per-part SQNR)."""

    def update(
        self,
        ref: Mapping[str, np.ndarray],
        cand: Mapping[str, np.ndarray],
        labels: np.ndarray | None,
    ) -> None: ...


@dataclass(frozen=True)
class Fidelity:
    samples: int
    outputs: tuple[OutputFidelity, ...]

    @property
    def classifier(self) -> OutputFidelity | None:
        """The first classifier-shaped output (top-1 agreement and accuracy apply to it)."""
        return next((o for o in self.outputs if o.top1_agreement is not None), None)


class Outputs(Protocol):
    """What :func:`evaluate` reads the reference from: a :class:`Runner`, or the float
    outputs a calibration pass kept (:class:`onnxq.calibration.reference.CachedReference`)."""

    output_names: tuple[str, ...]

    def run(
        self, feed: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]: ...


def evaluate(
    reference: Outputs,
    candidate: Runner,
    dataset: Dataset,
    *,
    batch_size: int,
    limit: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    outputs: Sequence[str] | None = None,
    observers: Sequence[BatchObserver] = (),
) -> Fidelity:
    """Metrics of ``outputs`` (default: every output of ``reference``) over ``dataset``
    (its first ``limit`` samples or more, whole batches, when given), batch by batch;
    ``observers`` see the outputs of each batch too."""
    total = dataset.num_samples if limit is None else min(limit, dataset.num_samples)
    names = list(outputs if outputs is not None else reference.output_names)
    stats = {n: OutputStats(n) for n in names}
    done = 0
    for batch in dataset.batches(batch_size):
        ref = reference.run(batch.feed, names)
        cand = candidate.run(batch.feed, names)
        for n in names:
            stats[n].update(ref[n], cand[n], batch.labels)
        for observer in observers:
            observer.update(ref, cand, batch.labels)
        done += batch.size
        if progress is not None:
            progress("evaluating", min(done, total), total)
        if done >= total:
            break
    return Fidelity(done, tuple(stats[n].result() for n in names))

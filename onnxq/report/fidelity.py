"""Running a reference and a candidate model side by side over a dataset."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from onnxq.data import Dataset
from onnxq.report.metrics import OutputFidelity, OutputStats
from onnxq.runtime import Runner

__all__ = ["BatchObserver", "Fidelity", "KnownOutputs", "Outputs", "evaluate"]


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


_Pair = tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray], np.ndarray | None]


@dataclass(frozen=True)
class KnownOutputs:
    """Both models' graph outputs on the first samples of a dataset, already run (the
    output check's runs of the written model: :meth:`onnxq.tuning.check.CheckSet.known`),
    feed by feed: ``(reference, candidate, labels)``, with the samples of each feed."""

    pairs: tuple[_Pair, ...]
    sizes: tuple[int, ...]

    @property
    def samples(self) -> int:
        return sum(self.sizes)

    def head(self, samples: int) -> KnownOutputs:
        """The first feeds that hold ``samples`` samples or more (whole feeds)."""
        reached = [i for i, n in enumerate(itertools.accumulate(self.sizes)) if n >= samples]
        count = reached[0] + 1 if reached else len(self.sizes)
        return KnownOutputs(self.pairs[:count], self.sizes[:count])


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
    known: KnownOutputs | None = None,
    skipped: Callable[[int], None] | None = None,
) -> Fidelity:
    """Metrics of ``outputs`` (default: every output of ``reference``) over ``dataset``
    (its first ``limit`` samples or more, whole batches, when given), batch by batch;
    ``observers`` see the outputs of each batch too. ``known``: the outputs of the first
    samples, taken as they are instead of running both models on them again (every metric
    is a sum or a count over rows: the same numbers; whole feeds of it up to ``limit``);
    used when they end where one of ``dataset``'s batches of ``batch_size`` ends, else
    everything is run. ``skipped``: told how many batches were not asked of ``reference``
    (before it is asked for the next; a record of its outputs serves by position)."""
    total = dataset.num_samples if limit is None else min(limit, dataset.num_samples)
    names = list(outputs if outputs is not None else reference.output_names)
    stats = {n: _Pooled(OutputStats(n)) for n in names}

    def add(pairs: Sequence[_Pair]) -> None:
        for ref, cand, labels in pairs:
            for n in names:
                stats[n].add(ref[n], cand[n], labels)
            for observer in observers:
                observer.update(ref, cand, labels)

    done, first = 0, 0
    head = _known_head(known, names, dataset.batch_ends(batch_size), total)
    if head is not None:
        add(head[0].pairs)
        done, first = head[0].samples, head[1]
        if done < total and skipped is not None:
            skipped(first)
    if done < total:
        for batch in dataset.batches(batch_size, first=first):
            ref = reference.run(batch.feed, names)
            cand = candidate.run(batch.feed, names)
            add(((ref, cand, batch.labels),))
            done += batch.size
            if progress is not None:
                progress("evaluating", min(done, total), total)
            if done >= total:
                break
    return Fidelity(done, tuple(stats[n].result() for n in names))


def _known_head(
    known: KnownOutputs | None, names: Sequence[str], ends: Sequence[int], total: int
) -> tuple[KnownOutputs, int] | None:
    """The known feeds :func:`evaluate` takes (whole feeds up to ``total`` samples) and
    how many of the dataset's batches (which end at ``ends``) they stand for; None when
    they lack an output or end inside a batch (or past the data) short of ``total``."""
    if known is None or not set(names) <= _names(known):
        return None
    head = known.head(total)
    if head.samples >= total:
        return head, len(ends)  # nothing left to run
    if head.samples not in ends:
        return None
    return head, ends.index(head.samples) + 1


def _names(known: KnownOutputs) -> set[str]:
    """The outputs every pair of ``known`` holds on both sides."""
    if not known.pairs:
        return set()
    return set.intersection(*(set(r) & set(c) for r, c, _ in known.pairs))


POOL_BYTES = 4 * 2**20  # outputs of small feeds pooled before their metrics are taken


class _Pooled:
    """Pools the rows of small outputs (along axis 0) over consecutive feeds before
    :class:`OutputStats` takes their metrics, every one of which is a sum or a count over
    rows: the same numbers, without numpy's fixed cost per call on each of hundreds of
    one-sample feeds (silero_vad: 872 feeds, 0.18 s of metrics for 0.18 s of runs)."""

    def __init__(self, stats: OutputStats) -> None:
        self.stats = stats
        self.pool: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        self.bytes = 0

    def add(self, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None) -> None:
        ref, cand = np.asarray(ref), np.asarray(cand)
        if self.pool and not self._fits(ref, cand, labels):
            self.flush()
        alone = labels is not None and (ref.ndim == 0 or labels.shape[0] != ref.shape[0])
        if alone or ref.ndim == 0 or ref.shape != cand.shape or not ref.shape[0]:
            self.stats.update(ref, cand, labels)  # not pooled: taken (or refused) alone
            return
        self.pool.append((ref, cand, labels))
        self.bytes += ref.nbytes + cand.nbytes
        if self.bytes >= POOL_BYTES:
            self.flush()

    def _fits(self, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None) -> bool:
        first_ref, _, first_labels = self.pool[0]
        return (
            ref.ndim > 0
            and ref.shape[1:] == first_ref.shape[1:]
            and ref.dtype == first_ref.dtype
            and cand.shape == ref.shape
            and (labels is None) == (first_labels is None)
            and (labels is None or labels.shape[0] == ref.shape[0])
        )

    def flush(self) -> None:
        if not self.pool:
            return
        if len(self.pool) == 1:  # one feed (a large output): taken without a copy
            self.stats.update(*self.pool[0])
        else:
            refs, cands, labels = zip(*self.pool, strict=True)
            joined = None if labels[0] is None else np.concatenate(labels)
            self.stats.update(np.concatenate(refs), np.concatenate(cands), joined)
        self.pool, self.bytes = [], 0

    def result(self) -> OutputFidelity:
        self.flush()
        return self.stats.result()

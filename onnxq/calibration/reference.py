"""The float model's graph outputs, kept from the calibration pass for the in-sample report
and the output check's references.

Calibration runs every calibration sample through the float session; the report of a
quantize run without ``--eval`` then compares the written model with the float model on
those same samples, and ran the float session over them a second time (MiniLM: 1.1 of its
2.3 s of evaluation). The outputs are small next to the activations calibration fetches,
so the pass keeps them, up to :data:`CACHE_BYTES`, and the report reads them back batch by
batch. A batch is served only when it is the batch the pass saw at that position (the
same inputs: dtypes, shapes and sums; batches the caller had the outputs of already are
skipped by count); anything else runs the session.
The report then counts whole calibration batches: the same numbers as running the float
model again when every sample is evaluated (a small model), up to float rounding (the
calibration session fetches activations, so onnxruntime fuses less there than in the
reference session); with a bounded in-sample share (a large one) it may take a few
samples more or fewer than the session's own batches would. The output check reads its
float references from the same record (:meth:`OutputRecorder.rows`, rows joined across
batches; MiniLM: 1.1 s).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from onnxq.data import Dataset
from onnxq.runtime import Runner, owned

__all__ = [
    "CACHE_BYTES",
    "CachedReference",
    "OutputRecorder",
    "RecordedFeeds",
    "batch_signature",
]

CACHE_BYTES = 256 * 2**20  # graph outputs of the calibration samples kept, at most


def batch_signature(feed: Mapping[str, np.ndarray]) -> tuple[object, ...]:
    """Which batch a feed is: each input's name, dtype, shape and sum (a pass over the
    inputs, cheap next to a run of the model; the bytes' hash for non-numeric inputs)."""
    out: list[object] = []
    for name, value in sorted(feed.items()):
        arr = np.asarray(value)
        if np.issubdtype(arr.dtype, np.number):
            mark: object = float(np.sum(arr, dtype=np.float64))
        else:
            mark = hash(arr.tobytes())
        out.append((name, str(arr.dtype), arr.shape, mark))
    return tuple(out)


@dataclass
class OutputRecorder:
    """Graph outputs of the batches of one pass, in order, until they pass ``budget``
    bytes (then none are kept)."""

    outputs: tuple[str, ...]
    batch_size: int
    budget: int = field(default_factory=lambda: CACHE_BYTES)
    batches: list[tuple[tuple[object, ...], dict[str, np.ndarray]]] = field(default_factory=list)
    bytes: int = 0
    overflowed: bool = False

    def record(self, feed: Mapping[str, np.ndarray], values: Mapping[str, np.ndarray]) -> None:
        if self.overflowed:
            return
        kept = {n: owned(values[n]) for n in self.outputs}
        self.bytes += sum(v.nbytes for v in kept.values())
        if self.bytes > self.budget:
            self.overflowed, self.batches = True, []
            return
        self.batches.append((batch_signature(feed), kept))

    def rows(
        self, dataset: Dataset, names: Sequence[str], samples: int
    ) -> dict[str, np.ndarray] | None:
        """``names`` on the first ``samples`` samples of ``dataset`` (the data this pass ran
        on; or more: whole batches), each batch's values joined along axis 0 (the output
        check reads its float references so). None when the record does not hold them, or
        an output's first axis is not the batch's samples or its other axes change from
        batch to batch (rows that cannot be joined); an output whose batch axis is another
        can still have a first axis of the batch's size: the caller checks one batch
        against a run."""
        if self.overflowed or not samples or not set(names) <= set(self.outputs):
            return None
        parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        done = 0
        for batch, (signature, values) in zip(
            dataset.batches(self.batch_size), self.batches, strict=False
        ):
            if signature != batch_signature(batch.feed):
                return None
            for n in names:
                value, seen = values[n], parts[n]
                if value.ndim == 0 or value.shape[0] != batch.size:
                    return None
                if seen and value.shape[1:] != seen[0].shape[1:]:
                    return None
                seen.append(value)
            done += batch.size
            if done >= samples:
                return {n: np.concatenate(v) for n, v in parts.items()}
        return None


class CachedReference:
    """Stands in for the float :class:`Runner` in :func:`onnxq.report.fidelity.evaluate`:
    the recorded outputs of the batches in the order they were recorded, the session for
    any batch that is not the recorded one. ``runner``: the session,
    or what makes it when a batch first needs it (with ``output_names``, the outputs it
    serves: a report served wholly from the record and the output check's runs loads no
    float session, MiniLM 115 MB)."""

    def __init__(
        self,
        runner: Runner | Callable[[], Runner],
        recorder: OutputRecorder,
        output_names: Sequence[str] | None = None,
    ) -> None:
        self._runner = runner
        self.recorder = recorder
        if output_names is None:
            output_names = self.runner.output_names
        self.output_names = tuple(output_names)
        self.position = 0
        self.served = 0  # batches answered from the record

    @property
    def runner(self) -> Runner:
        if not isinstance(self._runner, Runner):
            self._runner = self._runner()
        return self._runner

    def run(
        self, feed: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else list(self.output_names)
        index, self.position = self.position, self.position + 1
        batches = self.recorder.batches
        if index < len(batches) and set(names) <= set(self.recorder.outputs):
            signature, values = batches[index]
            if signature == batch_signature(feed):
                self.served += 1
                return {n: values[n] for n in names}
        return self.runner.run(feed, names)

    def skip(self, batches: int) -> None:
        """The caller had the outputs of the next ``batches`` batches already (the output
        check's, :class:`onnxq.report.fidelity.KnownOutputs`) and does not ask for them."""
        self.position += batches


class RecordedFeeds:
    """The float outputs a calibration pass kept for the check samples
    (:meth:`OutputRecorder.rows`), served feed by feed in place of a run of the float
    model (MiniLM: 1.1 s). The first feed is run as well and the record used only when it
    agrees with that run (same shapes, values up to the float rounding of the other
    session): an output whose batch axis is not its first is caught there."""

    def __init__(self, rows: Mapping[str, np.ndarray] | None) -> None:
        self.rows = rows
        self.start = 0
        self.trusted = False

    def take(
        self, size: int, run: Callable[[], Mapping[str, np.ndarray]]
    ) -> Mapping[str, np.ndarray]:
        if self.rows is None:
            return run()
        stop = self.start + size
        part = {n: v[self.start : stop] for n, v in self.rows.items()}
        self.start = stop
        if not self.trusted:
            fresh = run()
            self.trusted = all(_agrees(part[n], np.asarray(fresh[n])) for n in part)
            if not self.trusted:
                self.rows = None
            return fresh
        if any(v.shape[0] != size for v in part.values()):  # past the record
            self.rows = None
            return run()
        return part


def _agrees(kept: np.ndarray, fresh: np.ndarray) -> bool:
    if kept.shape != fresh.shape or kept.dtype != fresh.dtype:
        return False
    if not np.issubdtype(fresh.dtype, np.floating):
        return bool(np.array_equal(kept, fresh))
    finite = np.isfinite(fresh)
    if not np.array_equal(finite, np.isfinite(kept)):
        return False
    scale = float(np.max(np.abs(fresh[finite]), initial=0.0))
    same_special = np.array_equal(kept[~finite], fresh[~finite], equal_nan=True)
    close = np.allclose(kept[finite], fresh[finite], rtol=1e-3, atol=1e-4 * scale)
    return bool(same_special and close)

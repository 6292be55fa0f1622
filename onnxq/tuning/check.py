"""The output check: a few calibration samples, the float model's outputs on them, and how
far a candidate's outputs are from those (noise ratio per output, top-1 agreement).

An output made by Softmax / LogSoftmax is compared before it, on the logits: there the
noise of different quantized parts adds up (the probabilities saturate), and the top-1
decision along the softmax axis is the same. Top-1 agreement is counted along the softmax
axis for any rank (per position of a sequence model) and along axis 1 for [batch, classes]
outputs whose rows are probabilities (a softmax written out as Exp/Sum/Div); never for
embeddings or regressions. Outputs that are not float, hold NaN/Inf or are all zero on the
check samples are not compared.

An output concatenated from parts of very different ranges (the per-part rule of
:mod:`onnxq.report.task.parts`) is compared part by part: each part has its own noise ratio
and the SQNR target applies to the worst. Declared task metrics
(:class:`onnxq.report.task.TaskTarget`) are measured on the check samples too; with goals,
they are the target instead of SQNR and top-1."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import onnx

from onnxq.calibration.collect import FloatSession
from onnxq.calibration.reference import RecordedFeeds
from onnxq.config import FidelityTarget
from onnxq.data import Dataset
from onnxq.graph.concat_parts import concat_parts
from onnxq.graph.outputs import with_outputs
from onnxq.graph.rules import GraphIndex, attribute
from onnxq.metrics_config import Part
from onnxq.report.fidelity import KnownOutputs
from onnxq.report.metrics import binomial_tail, is_classifier, noise_ratio, sqnr_db
from onnxq.report.task import TaskMeter, TaskTarget
from onnxq.report.task.families import select
from onnxq.report.task.parts import parts_of, split_parts
from onnxq.runtime import OptLevel, Runner, loadable, owned

__all__ = ["CheckResult", "CheckSet", "check_samples", "compared_tensors", "make_check_set"]


@dataclass(frozen=True)
class CheckResult:
    """How a candidate's outputs compare with the float outputs on the check samples."""

    samples: int
    noise: dict[str, float]  # Σ(ref - out)² / Σ ref², per compared output or part (label)
    top1: dict[str, float]  # top-1 agreement of classifier-shaped outputs
    # Σ(ref - out)² of each feed, per output or part (in CheckSet.items order)
    feed_noise: tuple[tuple[float, ...], ...] = field(default=(), compare=False)
    task: dict[str, float] = field(default_factory=dict)  # declared metrics, METRIC.VALUE
    # top-1 decisions counted per output (samples, or positions of a sequence output)
    decisions: dict[str, int] = field(default_factory=dict, compare=False)
    # top-1 disagreements where the float model's decision was clear: its top two apart
    # by NEAR_TIE of its median margin or more (the others are near ties); counted on full
    # runs only (not a search pass's)
    clear_flips: dict[str, int] = field(default_factory=dict, compare=False)

    @property
    def sqnr_db(self) -> float:
        """The worst output's SQNR (inf when every output is exact, -inf on NaN)."""
        values = list(self.noise.values())
        if any(math.isnan(v) for v in values):
            return -math.inf
        return sqnr_db(1.0, max(values, default=0.0))

    @property
    def worst_top1(self) -> float | None:
        return min(self.top1.values()) if self.top1 else None

    def top1_shortfall(self, target: FidelityTarget) -> tuple[str, int, int, float] | None:
        """Of the outputs below the top-1 target, the one whose shortfall chance explains
        least: (name, disagreements, decisions, p), p the chance of that many or more
        disagreements in that many decisions were the agreement exactly the target's
        (None: no top-1 output misses the target)."""
        worst: tuple[str, int, int, float] | None = None
        for name, agreement in self.top1.items():
            n = self.decisions.get(name, 0)
            if agreement >= target.top1 or n <= 0:
                continue
            k = n - round(agreement * n)
            p = binomial_tail(k, n, 1.0 - target.top1)
            if worst is None or p < worst[3]:
                worst = (name, k, n, p)
        return worst

    def meets(self, target: FidelityTarget) -> bool:
        """Every goal on a task metric met when the target has goals; else SQNR (of the
        worst output or part) and top-1 agreement."""
        if target.task.goals:
            return all(g.met(self.task.get(g.name, math.nan)) for g in target.task.goals)
        top1 = self.worst_top1
        return self.sqnr_db >= target.sqnr_db and (top1 is None or top1 >= target.top1)

    def to_dict(self) -> dict[str, object]:
        return {
            "samples": self.samples,
            "sqnr_db": self.sqnr_db if math.isfinite(self.sqnr_db) else None,
            "top1_agreement": self.worst_top1,
            "sqnr_db_by_output": {k: _finite(sqnr_db(1.0, v)) for k, v in self.noise.items()},
            "task_metrics": dict(self.task),
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class CheckSet:
    """Feeds of the check samples and the float model's outputs on them."""

    feeds: tuple[dict[str, np.ndarray], ...]
    reference: tuple[dict[str, np.ndarray], ...]
    outputs: tuple[str, ...]  # tensors compared: float outputs, or the logits before them
    axes: dict[str, int]  # top-1 axis of the decision-making tensors
    samples: int
    sizes: tuple[int, ...]  # samples in each feed
    sample_bytes: int  # float activations of one sample: what running one costs

    weights: tuple[float, ...] | None = None  # noise_vector scale per item (a probe's)
    parts: dict[str, tuple[Part, ...]] = field(default_factory=dict)  # outputs split in parts
    task: TaskTarget = field(default_factory=TaskTarget)  # declared metrics
    task_reference: tuple[dict[str, np.ndarray], ...] = ()  # the outputs they read, per feed
    labels: tuple[np.ndarray | None, ...] = ()  # labels of each feed, when the data has them
    task_outputs: tuple[str, ...] = ()  # the model's graph outputs (metrics read these)
    # the float graph outputs of each feed, when small (KNOWN_BYTES): the report's
    # in-sample fidelity reads a checked candidate's runs instead of running it again
    graph_reference: tuple[dict[str, np.ndarray], ...] = ()

    @property
    def items(self) -> tuple[tuple[str, Part], ...]:
        """What noise is measured on: each compared tensor, or each of its parts."""
        return tuple((n, p) for n in self.outputs for p in self.parts.get(n, (Part(),)))

    @property
    def labels_of_items(self) -> tuple[str, ...]:
        return tuple(p.label(n) for n, p in self.items)

    def probe(self, budget: float, result: CheckResult, max_samples: int | None = None) -> CheckSet:
        """The feeds where ``result`` (a candidate checked on this set) was noisiest for
        its worst output, about ``budget`` bytes of activations in all (at least one feed)
        and at most about ``max_samples`` samples (whole feeds; None: no such limit):
        enough to rank decisions by the noise they add, at a fraction of the cost. Its
        :meth:`noise_vector` extrapolates to the whole set: the probe's noise scaled by
        the share of the candidate's noise it held. Calibration data is often ordered
        (by class, by source), so the first feeds could all be easy ones."""
        feed_noise = np.asarray(result.feed_noise, np.float64).reshape(len(self.feeds), -1)
        feed_noise = np.nan_to_num(feed_noise, nan=np.inf)  # NaN / inf outputs: noisiest
        labels = self.labels_of_items
        worst = int(np.argmax(np.nan_to_num([result.noise[n] for n in labels], nan=np.inf)))
        order = np.argsort(-feed_noise[:, worst], kind="stable")
        chosen: list[int] = []
        samples = 0
        for i in order:
            full = samples * self.sample_bytes >= budget
            if chosen and (full or (max_samples is not None and samples >= max_samples)):
                break
            chosen.append(int(i))
            samples += self.sizes[i]
        chosen.sort()
        total = feed_noise.sum(axis=0)
        held = feed_noise[chosen].sum(axis=0)
        weights = []
        for k, (name, part) in enumerate(self.items):
            signal = sum(
                float(np.sum(np.square(select(r[name], part), dtype=np.float64)))
                for r in self.reference
            )
            share = held[k] / total[k] if total[k] > 0 and held[k] > 0 else 1.0
            if not np.isfinite(share):  # an infinite total: no share to extrapolate by
                share = 1.0
            weights.append(1.0 / (max(signal, 1e-300) * share))
        return replace(
            self,
            feeds=tuple(self.feeds[i] for i in chosen),
            reference=tuple(self.reference[i] for i in chosen),
            task_reference=tuple(self.task_reference[i] for i in chosen)
            if self.task_reference
            else (),
            labels=tuple(self.labels[i] for i in chosen) if self.labels else (),
            graph_reference=(),  # the probe runs the simulation: nothing is reported
            sizes=tuple(self.sizes[i] for i in chosen),
            samples=samples,
            weights=tuple(weights),
        )

    def runner(
        self,
        model: onnx.ModelProto,
        *,
        threads: int = 0,
        level: OptLevel = OptLevel.ALL,
        what: str = "quantized model",
        record_graph: bool = False,
    ) -> Runner:
        """A session over ``model`` that can fetch the compared tensors (and the graph
        outputs), its threads not spinning; ``record_graph``: see
        :class:`onnxq.runtime.Runner`. The copy with the outputs is loaded from a spooled
        file (:func:`onnxq.runtime.loadable`): no copy of it is alive while the session
        loads."""
        # threads that sleep between runs: the session is also timed against float
        # (onnxq.stages.latency), which would otherwise gain from its spinning threads
        return Runner(
            loadable(with_outputs(model, self.outputs)),
            threads=threads,
            level=level,
            what=what,
            record_graph=record_graph,
            spin=False,
        )

    def run(
        self,
        runner: Runner,
        extra: Mapping[str, np.ndarray] | None = None,
        *,
        task: bool = True,
        keep: list[dict[str, np.ndarray]] | None = None,
    ) -> CheckResult:
        """Run ``runner`` (with ``extra`` inputs, e.g. simulation masks) on every feed;
        ``task``: measure the declared task metrics and the float margins of top-1 flips
        too (a search pass needs neither); ``keep``: given and the set holds the float
        graph outputs, each feed's graph outputs are appended to it (:meth:`known`)."""
        items = self.items
        labels = self.labels_of_items
        noise = dict.fromkeys(labels, 0.0)
        signal = dict.fromkeys(labels, 0.0)
        agree = dict.fromkeys(self.outputs, 0)
        rows = dict.fromkeys(self.outputs, 0)
        margins: dict[str, list[np.ndarray]] = {n: [] for n in self.axes}  # float's top-2 gap
        flipped: dict[str, list[np.ndarray]] = {n: [] for n in self.axes}
        meter = TaskMeter(self.task, self.task_outputs) if task and self.task else None
        kept = self._kept_names() if keep is not None else ()
        fetch = list(dict.fromkeys([*self.outputs, *(meter.reads if meter else ()), *kept]))
        feed_noise = []
        for i, (feed, ref) in enumerate(zip(self.feeds, self.reference, strict=True)):
            out = runner.run({**feed, **(extra or {})}, fetch)
            if keep is not None and kept:
                keep.append({n: owned(out[n]) for n in kept})
            here = []
            for (name, part), label in zip(items, labels, strict=True):
                r = select(ref[name], part).astype(np.float64)
                c = np.asarray(select(out[name], part), np.float64)
                here.append(float(np.sum((r - c) ** 2)))
                noise[label] += here[-1]
                signal[label] += float(np.sum(r**2))
            if meter is not None:
                meter.update(self.task_reference[i], out, self.labels[i] if self.labels else None)
            for name in self.outputs:
                r = ref[name].astype(np.float64)
                c = np.asarray(out[name], np.float64)
                if name in self.axes:
                    axis = self.axes[name]
                    same = r.argmax(axis) == c.argmax(axis)
                    agree[name] += int(np.sum(same))
                    rows[name] += same.size
                    if task:  # a search pass does not read them
                        gap = _top2_gap(r, axis)
                        margins[name].append(gap.ravel())
                        flipped[name].append(gap[~same].ravel())
            feed_noise.append(tuple(here))
        ratio = {n: noise_ratio(signal[n], noise[n]) for n in labels}
        top1 = {n: agree[n] / rows[n] for n in self.outputs if rows[n]}
        values = meter.result() if meter is not None else {}
        counted = {n: rows[n] for n in top1}
        clear = {n: _clear(margins[n], flipped[n]) for n in top1} if task else {}
        return CheckResult(self.samples, ratio, top1, tuple(feed_noise), values, counted, clear)

    def noise_vector(
        self, runner: Runner, extra: Mapping[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """Noise ratio per output or part (a probe's: extrapolated to the set it was taken
        from)."""
        result = self.run(runner, extra, task=False)
        if self.weights is None:
            return np.array([result.noise[n] for n in self.labels_of_items])
        summed = np.sum(
            np.asarray(result.feed_noise, np.float64).reshape(-1, len(self.items)), axis=0
        )
        out: np.ndarray = summed * np.asarray(self.weights)
        return out

    def _kept_names(self) -> tuple[str, ...]:
        return tuple(self.graph_reference[0]) if self.graph_reference else ()

    def known(self, kept: list[dict[str, np.ndarray]]) -> KnownOutputs | None:
        """A candidate's graph outputs :meth:`run` kept, with the float ones, as the
        report's evaluation reads them (None: the set holds no float graph outputs)."""
        if not self.graph_reference or len(kept) != len(self.feeds):
            return None
        labels = self.labels or (None,) * len(self.feeds)
        pairs = zip(self.graph_reference, kept, labels, strict=True)
        return KnownOutputs(tuple(pairs), self.sizes)


def _top2_gap(values: np.ndarray, axis: int) -> np.ndarray:
    """How far apart the two largest values are along ``axis`` (each decision's margin;
    infinite along an axis of one value: no decision to flip)."""
    if values.shape[axis] < 2:
        return np.full(np.delete(values.shape, axis % values.ndim), np.inf)
    top = np.partition(values, -2, axis=axis)
    gap: np.ndarray = np.take(top, -1, axis=axis) - np.take(top, -2, axis=axis)
    return gap


def _clear(margins: list[np.ndarray], flipped: list[np.ndarray]) -> int:
    """How many of the ``flipped`` decisions' float margins are NEAR_TIE of the median
    margin of all decisions or more (not near ties)."""
    if not margins:
        return 0
    median = float(np.median(np.concatenate(margins)))
    return int(np.sum(np.concatenate(flipped) >= NEAR_TIE * median))


NEAR_TIE = 0.1  # a float margin under this share of the median margin: a near tie
FEED_SAMPLES = 8  # samples per run of the check (small feeds: the search can use a few)
PROBE_BYTES = 2**29  # activations of the check samples the search's simulation runs use
# and at most this many samples: on small inputs (PP-OCR cls: 72 check samples in 512 MB)
# the search ran every check sample 48 times, 70 % of the quantize time; the noisiest
# 32 rank the decisions as well (measured: the same or a better check result)
PROBE_SAMPLES = 32
TASK_SAMPLES = 32  # check samples at least, when a task metric has a goal
KNOWN_BYTES = 16 * 2**20  # float graph outputs of the check samples kept for the report
# (each side: a classifier's or an embedding's are far below; PP-OCR rec's 45 MB of
# probabilities, kept, raised its peak by 109 MB to save 0.6 s: not kept)


def check_samples(dataset: Dataset, budget: float = 2e6, low: int = 4, high: int = 128) -> int:
    """How many calibration samples the check uses: about ``budget`` input elements in
    all (large images: a few; short sequences: many, up to ``high``), never more than the
    data holds. A function of the data's shapes only, so the result is reproducible."""
    probe = next(dataset.batches(1))
    per_sample = sum(v.size for v in probe.feed.values()) / max(probe.size, 1)
    return int(min(dataset.num_samples, max(low, min(high, budget // max(per_sample, 1.0)))))


def make_check_set(
    floats: FloatSession,
    dataset: Dataset,
    *,
    batch_size: int = 32,
    sample_bytes: int | None = None,
    task: TaskTarget | None = None,
) -> CheckSet:
    """The first :func:`check_samples` calibration samples (whole batches) and the float
    model's outputs on them (``floats`` must fetch :func:`compared_tensors`). The float
    activations of one sample (``sample_bytes``, measured when not given) size the feeds:
    a sample larger than the probe is fed alone. ``task``: declared metrics, measured by
    every check (``floats`` must fetch the graph outputs they read)."""
    if sample_bytes is None:
        sample_bytes = floats.sample_bytes(dataset)
    task = task or TaskTarget()
    # a goal on a task metric counts whole samples (strings, top-k anchors): a few large
    # images judge it by chance, so it takes at least TASK_SAMPLES when the data has them
    wanted = check_samples(dataset, low=TASK_SAMPLES if task.goals else 4)
    per_feed = min(batch_size, wanted, FEED_SAMPLES, max(1, PROBE_BYTES // max(sample_bytes, 1)))
    compared, softmax_axes = compared_tensors(floats.model)
    graph_outputs = tuple(o.name for o in floats.model.graph.output)
    reads = TaskMeter(task, graph_outputs).reads if task else ()
    fetch = list(dict.fromkeys([*compared, *reads, *graph_outputs]))
    feeds: list[dict[str, np.ndarray]] = []
    refs: list[dict[str, np.ndarray]] = []
    task_refs: list[dict[str, np.ndarray]] = []
    graph_refs: list[dict[str, np.ndarray]] = []
    labels: list[np.ndarray | None] = []
    sizes: list[int] = []
    kept = RecordedFeeds(floats.recorded_rows(dataset, fetch, wanted))
    for batch in dataset.batches(per_feed):
        ref = kept.take(batch.size, partial(floats.run, batch.feed, fetch))
        feeds.append(batch.feed)
        # owned copies: the float session is released while the simulation runs
        refs.append({n: owned(ref[n]) for n in compared})
        task_refs.append({n: owned(ref[n]) for n in reads})
        graph_refs.append({n: ref[n] for n in graph_outputs})  # copied only when kept
        labels.append(batch.labels)
        sizes.append(batch.size)
        if sum(sizes) >= wanted:
            break
    names = tuple(n for n in compared if refs and _comparable([r[n] for r in refs]))
    axes = {n: a for n, a in softmax_axes.items() if n in names}
    for n in names:
        if n not in axes and all(_probabilities(r[n]) for r in refs):
            axes[n] = 1
    return CheckSet(
        tuple(feeds),
        tuple({n: r[n] for n in names} for r in refs),
        names,
        axes,
        sum(sizes),
        tuple(sizes),
        sample_bytes,
        parts=_split_outputs(floats.model, names, refs),
        task=task,
        task_reference=tuple(task_refs) if task else (),
        labels=tuple(labels) if any(v is not None for v in labels) else (),
        task_outputs=graph_outputs,
        graph_reference=_kept(graph_refs),
    )


def _kept(values: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], ...]:
    """Owned copies of ``values`` when they are small enough to keep twice over (a
    candidate's too: KNOWN_BYTES), else nothing."""
    if sum(np.asarray(v).nbytes for d in values for v in d.values()) > KNOWN_BYTES:
        return ()
    return tuple({n: owned(v) for n, v in d.items()} for d in values)


def _split_outputs(
    model: onnx.ModelProto, names: tuple[str, ...], refs: list[dict[str, np.ndarray]]
) -> dict[str, tuple[Part, ...]]:
    """The compared outputs the per-part rule splits, on the float values of the check."""
    out = {}
    for name, bounds in concat_parts(model).items():
        if name not in names:
            continue
        parts = parts_of(bounds)
        ranges = [
            max(float(np.max(np.abs(select(r[name], p)), initial=0.0)) for r in refs) for p in parts
        ]
        if split_parts(ranges):
            out[name] = parts
    return out


def _comparable(values: list[np.ndarray]) -> bool:
    """A float output with finite values and some signal (an SQNR can be taken)."""
    if not all(np.issubdtype(v.dtype, np.floating) and v.size for v in values):
        return False
    return all(np.isfinite(v).all() for v in values) and any(np.any(v != 0) for v in values)


def _probabilities(value: np.ndarray) -> bool:
    """[batch, classes] rows of probabilities (a softmax written out as Exp/Sum/Div)."""
    if not is_classifier(value) or value.min() < 0:
        return False
    return bool(np.allclose(value.sum(axis=1), 1.0, atol=1e-3))


def compared_tensors(model: onnx.ModelProto) -> tuple[tuple[str, ...], dict[str, int]]:
    """The tensors compared (each output, or the input of the Softmax that makes it) and
    the softmax axis of those that are logits."""
    idx = GraphIndex(model)
    names: list[str] = []
    axes: dict[str, int] = {}
    for out in model.graph.output:
        producer = idx.producer.get(out.name)
        if producer is not None and producer.op_type in ("Softmax", "LogSoftmax"):
            logits = producer.input[0]
            names.append(logits)
            axes[logits] = int(attribute(producer, "axis", -1))
        else:
            names.append(out.name)
    return tuple(dict.fromkeys(names)), axes

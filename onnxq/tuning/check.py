"""The output check: a few calibration samples, the float model's outputs on them, and how
far a candidate's outputs are from those (noise ratio per output, top-1 agreement).

An output made by Softmax / LogSoftmax is compared before it, on the logits: there the
noise of different quantized parts adds up (the probabilities saturate), and the top-1
decision along the softmax axis is the same. Top-1 agreement is counted along the softmax
axis for any rank (per position of a sequence model) and along axis 1 for [batch, classes]
outputs whose rows are probabilities (a softmax written out as Exp/Sum/Div); never for
embeddings or regressions. Outputs that are not float, hold NaN/Inf or are all zero on the
check samples are not compared."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from onnxq.calibration.collect import FloatSession
from onnxq.config import FidelityTarget
from onnxq.data import Dataset
from onnxq.graph.outputs import with_outputs
from onnxq.graph.rules import GraphIndex, attribute
from onnxq.report.metrics import is_classifier, noise_ratio, sqnr_db
from onnxq.runtime import OptLevel, Runner

__all__ = ["CheckResult", "CheckSet", "check_samples", "compared_tensors", "make_check_set"]


@dataclass(frozen=True)
class CheckResult:
    """How a candidate's outputs compare with the float outputs on the check samples."""

    samples: int
    noise: dict[str, float]  # Σ(ref - out)² / Σ ref², per float output
    top1: dict[str, float]  # top-1 agreement of classifier-shaped outputs
    # Σ(ref - out)² of each feed, per output (in CheckSet.outputs order)
    feed_noise: tuple[tuple[float, ...], ...] = field(default=(), compare=False)

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

    def meets(self, target: FidelityTarget) -> bool:
        top1 = self.worst_top1
        return self.sqnr_db >= target.sqnr_db and (top1 is None or top1 >= target.top1)

    def to_dict(self) -> dict[str, object]:
        return {
            "samples": self.samples,
            "sqnr_db": self.sqnr_db if math.isfinite(self.sqnr_db) else None,
            "top1_agreement": self.worst_top1,
        }


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

    weights: tuple[float, ...] | None = None  # noise_vector scale per output (a probe's)

    def probe(self, budget: float, result: CheckResult) -> CheckSet:
        """The feeds where ``result`` (a candidate checked on this set) was noisiest for
        its worst output, about ``budget`` bytes of activations in all (at least one feed):
        enough to rank decisions by the noise they add, at a fraction of the cost. Its
        :meth:`noise_vector` extrapolates to the whole set: the probe's noise scaled by
        the share of the candidate's noise it held. Calibration data is often ordered
        (by class, by source), so the first feeds could all be easy ones."""
        feed_noise = np.asarray(result.feed_noise, np.float64).reshape(len(self.feeds), -1)
        feed_noise = np.nan_to_num(feed_noise, nan=np.inf)  # NaN / inf outputs: noisiest
        worst = int(np.argmax(np.nan_to_num([result.noise[n] for n in self.outputs], nan=np.inf)))
        order = np.argsort(-feed_noise[:, worst], kind="stable")
        chosen: list[int] = []
        samples = 0
        for i in order:
            if chosen and samples * self.sample_bytes >= budget:
                break
            chosen.append(int(i))
            samples += self.sizes[i]
        chosen.sort()
        total = feed_noise.sum(axis=0)
        held = feed_noise[chosen].sum(axis=0)
        weights = []
        for k, name in enumerate(self.outputs):
            signal = sum(
                float(np.sum(np.square(r[name], dtype=np.float64))) for r in self.reference
            )
            share = held[k] / total[k] if total[k] > 0 and held[k] > 0 else 1.0
            if not np.isfinite(share):  # an infinite total: no share to extrapolate by
                share = 1.0
            weights.append(1.0 / (max(signal, 1e-300) * share))
        return replace(
            self,
            feeds=tuple(self.feeds[i] for i in chosen),
            reference=tuple(self.reference[i] for i in chosen),
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
        outputs); ``record_graph``: see :class:`onnxq.runtime.Runner`."""
        fetch = with_outputs(model, self.outputs)
        return Runner(fetch, threads=threads, level=level, what=what, record_graph=record_graph)

    def run(self, runner: Runner, extra: Mapping[str, np.ndarray] | None = None) -> CheckResult:
        """Run ``runner`` (with ``extra`` inputs, e.g. simulation masks) on every feed."""
        noise = dict.fromkeys(self.outputs, 0.0)
        signal = dict.fromkeys(self.outputs, 0.0)
        agree = dict.fromkeys(self.outputs, 0)
        rows = dict.fromkeys(self.outputs, 0)
        feed_noise = []
        for feed, ref in zip(self.feeds, self.reference, strict=True):
            out = runner.run({**feed, **(extra or {})}, self.outputs)
            here = []
            for name in self.outputs:
                r = ref[name].astype(np.float64)
                c = np.asarray(out[name], np.float64)
                here.append(float(np.sum((r - c) ** 2)))
                noise[name] += here[-1]
                signal[name] += float(np.sum(r**2))
                if name in self.axes:
                    axis = self.axes[name]
                    same = r.argmax(axis) == c.argmax(axis)
                    agree[name] += int(np.sum(same))
                    rows[name] += same.size
            feed_noise.append(tuple(here))
        ratio = {n: noise_ratio(signal[n], noise[n]) for n in self.outputs}
        top1 = {n: agree[n] / rows[n] for n in self.outputs if rows[n]}
        return CheckResult(self.samples, ratio, top1, tuple(feed_noise))

    def noise_vector(
        self, runner: Runner, extra: Mapping[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """Noise ratio per output (a probe's: extrapolated to the set it was taken from)."""
        result = self.run(runner, extra)
        if self.weights is None:
            return np.array([result.noise[n] for n in self.outputs])
        summed = np.sum(
            np.asarray(result.feed_noise, np.float64).reshape(-1, len(self.outputs)), axis=0
        )
        out: np.ndarray = summed * np.asarray(self.weights)
        return out


FEED_SAMPLES = 8  # samples per run of the check (small feeds: the search can use a few)
PROBE_BYTES = 2**29  # activations of the check samples the search's simulation runs use


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
) -> CheckSet:
    """The first :func:`check_samples` calibration samples (whole batches) and the float
    model's outputs on them (``floats`` must fetch :func:`compared_tensors`). The float
    activations of one sample (``sample_bytes``, measured when not given) size the feeds:
    a sample larger than the probe is fed alone."""
    if sample_bytes is None:
        sample_bytes = floats.sample_bytes(dataset)
    wanted = check_samples(dataset)
    per_feed = min(batch_size, wanted, FEED_SAMPLES, max(1, PROBE_BYTES // max(sample_bytes, 1)))
    compared, softmax_axes = compared_tensors(floats.model)
    feeds: list[dict[str, np.ndarray]] = []
    refs: list[dict[str, np.ndarray]] = []
    sizes: list[int] = []
    for batch in dataset.batches(per_feed):
        ref = floats.run(batch.feed, compared)
        feeds.append(batch.feed)
        refs.append({n: np.asarray(ref[n]) for n in compared})
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
    )


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

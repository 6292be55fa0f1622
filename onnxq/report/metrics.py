"""Streaming fidelity metrics between a reference and a candidate output (pure numpy).

For one output over all samples:

* cosine similarity per sample (the sample's values flattened), mean and minimum;
* SQNR = 10 log10(Σ ref² / Σ (ref - cand)²) in dB over all values (inf when equal);
* maximum absolute error;
* for classifier-shaped outputs ([batch, classes], classes ≥ 2): top-1 agreement,
  and top-1 accuracy of each model against labels when given;
* how many values of each model were NaN or infinite. Such values make cosine and error
  NaN (or inf) rather than being skipped, and a row holding one never agrees on top-1 and
  is never correct: a broken output cannot look good.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxq.errors import ModelError

__all__ = [
    "Accuracy",
    "OutputFidelity",
    "OutputStats",
    "accuracy_of",
    "binomial_tail",
    "binomial_upper",
    "cosine_rows",
    "is_classifier",
    "noise_ratio",
    "sqnr_db",
]


def noise_ratio(signal: float, noise: float) -> float:
    """``Σ noise² / Σ signal²``: 0 when both are 0, inf when only the signal is 0 or the
    noise is NaN (a NaN output is the worst there is)."""
    if math.isnan(noise) or math.isnan(signal):
        return math.inf
    if signal > 0:
        return noise / signal
    return 0.0 if noise == 0 else math.inf


def sqnr_db(signal: float, noise: float) -> float:
    """SQNR = 10 log10(Σ signal² / Σ noise²) in dB: inf when the noise is 0 (identical),
    -inf when the signal is 0 with noise, or either is NaN."""
    ratio = noise_ratio(signal, noise)
    if ratio == 0:
        return math.inf
    return -math.inf if math.isinf(ratio) else -10.0 * math.log10(ratio)


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): how likely ``k`` or more of ``n`` independent
    events of probability ``p`` are (log-space terms: exact for the counts a check sees)."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq, ln = math.log(p), math.log1p(-p), math.lgamma(n + 1)

    def log_pmf(i: int) -> float:
        return ln - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq

    below = sum(math.exp(log_pmf(i)) for i in range(k))
    return min(1.0, max(0.0, 1.0 - below))


def binomial_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """The one-sided upper confidence bound on an event's probability after ``k`` events
    in ``n`` trials (Clopper-Pearson): the ``p`` at which ``k`` or fewer events happen
    with probability ``1 - confidence`` (bisection; 1.0 when ``k >= n``)."""
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2.0
        if 1.0 - binomial_tail(k + 1, n, mid) > 1.0 - confidence:
            lo = mid
        else:
            hi = mid
    return hi


def is_classifier(value: np.ndarray) -> bool:
    return value.ndim == 2 and value.shape[1] >= 2 and np.issubdtype(value.dtype, np.floating)


@dataclass(frozen=True)
class OutputFidelity:
    name: str
    samples: int
    cosine_mean: float
    cosine_min: float
    sqnr_db: float
    max_abs_error: float
    top1_agreement: float | None  # fraction in [0, 1]
    reference_accuracy: float | None
    candidate_accuracy: float | None
    reference_nonfinite: int = 0  # NaN or infinite values in the reference's output
    candidate_nonfinite: int = 0  # ... and in the candidate's

    @property
    def finite(self) -> bool:
        """Whether both models' values were all finite (else no metric can be trusted)."""
        return self.reference_nonfinite == 0 and self.candidate_nonfinite == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON form. A value that is not a finite number is written as null: an infinite
        SQNR (identical outputs), or any metric of an output holding NaN or inf, which
        ``nonfinite`` counts."""
        return {
            "name": self.name,
            "cosine_mean": _finite(self.cosine_mean),
            "cosine_min": _finite(self.cosine_min),
            "sqnr_db": _finite(self.sqnr_db),
            "max_abs_error": _finite(self.max_abs_error),
            "top1_agreement": self.top1_agreement,
            "nonfinite": {
                "reference": self.reference_nonfinite,
                "candidate": self.candidate_nonfinite,
            },
        }


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


@dataclass(frozen=True)
class Accuracy:
    """Top-1 accuracy of both models against labels on one classifier output."""

    output: str
    reference: float
    candidate: float

    @property
    def drop_pp(self) -> float:
        """Accuracy lost, in percentage points (negative: the candidate gained)."""
        return 100.0 * (self.reference - self.candidate)


def accuracy_of(o: OutputFidelity) -> Accuracy | None:
    """The accuracy of ``o`` against labels, when labels were given."""
    if o.reference_accuracy is None or o.candidate_accuracy is None:
        return None
    return Accuracy(o.name, o.reference_accuracy, o.candidate_accuracy)


class OutputStats:
    """Accumulates the metrics of one output, batch by batch."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.samples = 0
        self._cos_sum = 0.0
        self._cos_min = math.inf
        self._signal = 0.0
        self._noise = 0.0
        self._max_err = 0.0
        self._classifier = True
        self._agree = 0
        self._ref_correct = 0
        self._cand_correct = 0
        self._labelled = 0
        self._nonfinite = [0, 0]  # reference, candidate

    def update(self, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None = None) -> None:
        r = np.asarray(ref, np.float64)
        c = np.asarray(cand, np.float64)
        if r.shape != c.shape:
            raise ModelError(
                f"output '{self.name}' has shape {c.shape} in the candidate but {r.shape} in "
                "the reference; compare a model with its own quantization"
            )
        rows_r = r.reshape(r.shape[0], -1) if r.ndim >= 1 and r.shape[0] else r.reshape(1, -1)
        rows_c = c.reshape(rows_r.shape)
        self._nonfinite[0] += int(r.size - np.count_nonzero(np.isfinite(r)))
        self._nonfinite[1] += int(c.size - np.count_nonzero(np.isfinite(c)))
        # NaN and inf propagate on purpose (the counts above say why), silently
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            cos = cosine_rows(rows_r, rows_c)
            err = r - c
            self._signal += float(np.sum(r * r))
            self._noise += float(np.sum(err * err))
            batch_err = float(np.abs(err).max(initial=0.0))
        self.samples += cos.size
        self._cos_sum += float(cos.sum())
        # np.min / np.max keep a NaN where Python's min / max would drop it
        self._cos_min = float(np.min([self._cos_min, float(cos.min(initial=math.inf))]))
        self._max_err = float(np.max([self._max_err, batch_err]))
        self._classifier = self._classifier and is_classifier(np.asarray(ref))
        if self._classifier:
            top_r, top_c = r.argmax(axis=1), c.argmax(axis=1)
            ok_r, ok_c = _finite_rows(r), _finite_rows(c)  # others never match
            self._agree += int(((top_r == top_c) & ok_r & ok_c).sum())
            if labels is not None and labels.shape[0] == top_r.shape[0]:
                self._ref_correct += int(((top_r == labels) & ok_r).sum())
                self._cand_correct += int(((top_c == labels) & ok_c).sum())
                self._labelled += int(labels.shape[0])

    def result(self) -> OutputFidelity:
        n = max(self.samples, 1)
        sqnr = sqnr_db(self._signal, self._noise)
        classifier = self._classifier and self.samples > 0
        labelled = classifier and self._labelled > 0
        return OutputFidelity(
            name=self.name,
            samples=self.samples,
            cosine_mean=self._cos_sum / n,
            cosine_min=self._cos_min if self.samples else 1.0,
            sqnr_db=sqnr,
            max_abs_error=self._max_err,
            top1_agreement=self._agree / n if classifier else None,
            reference_accuracy=self._ref_correct / self._labelled if labelled else None,
            candidate_accuracy=self._cand_correct / self._labelled if labelled else None,
            reference_nonfinite=self._nonfinite[0],
            candidate_nonfinite=self._nonfinite[1],
        )


def _finite_rows(rows: np.ndarray) -> np.ndarray:
    """Whether each row holds only finite values (its arg-max means something)."""
    return np.asarray(np.isfinite(rows).all(axis=1))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row; 1 when both rows are zero, 0 when one is."""
    dot = np.einsum("ij,ij->i", a, b)
    na = np.sqrt(np.einsum("ij,ij->i", a, a))
    nb = np.sqrt(np.einsum("ij,ij->i", b, b))
    both_zero = (na == 0) & (nb == 0)
    denom = np.where(na * nb == 0, 1.0, na * nb)
    cos = np.where(both_zero, 1.0, dot / denom)
    return np.clip(cos, -1.0, 1.0)

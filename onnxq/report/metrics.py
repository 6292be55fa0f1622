"""Streaming fidelity metrics between a reference and a candidate output (pure numpy).

For one output over all samples:

* cosine similarity per sample (the sample's values flattened), mean and minimum;
* SQNR = 10 log10(Σ ref² / Σ (ref - cand)²) in dB over all values (inf when equal);
* maximum absolute error;
* for classifier-shaped outputs ([batch, classes], classes ≥ 2): top-1 agreement,
  and top-1 accuracy of each model against labels when given.
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

    def to_dict(self) -> dict[str, Any]:
        """JSON form; an infinite SQNR (identical outputs) is written as null."""
        return {
            "name": self.name,
            "cosine_mean": self.cosine_mean,
            "cosine_min": self.cosine_min,
            "sqnr_db": self.sqnr_db if math.isfinite(self.sqnr_db) else None,
            "max_abs_error": self.max_abs_error,
            "top1_agreement": self.top1_agreement,
        }


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
        cos = _cosine_rows(rows_r, rows_c)
        self.samples += cos.size
        self._cos_sum += float(cos.sum())
        self._cos_min = min(self._cos_min, float(cos.min(initial=math.inf)))
        err = r - c
        self._signal += float(np.sum(r * r))
        self._noise += float(np.sum(err * err))
        self._max_err = max(self._max_err, float(np.abs(err).max(initial=0.0)))
        self._classifier = self._classifier and is_classifier(np.asarray(ref))
        if self._classifier:
            top_r, top_c = r.argmax(axis=1), c.argmax(axis=1)
            self._agree += int((top_r == top_c).sum())
            if labels is not None and labels.shape[0] == top_r.shape[0]:
                self._ref_correct += int((top_r == labels).sum())
                self._cand_correct += int((top_c == labels).sum())
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
        )


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row; 1 when both rows are zero, 0 when one is."""
    dot = np.einsum("ij,ij->i", a, b)
    na = np.sqrt(np.einsum("ij,ij->i", a, a))
    nb = np.sqrt(np.einsum("ij,ij->i", b, b))
    both_zero = (na == 0) & (nb == 0)
    denom = np.where(na * nb == 0, 1.0, na * nb)
    cos = np.where(both_zero, 1.0, dot / denom)
    return np.clip(cos, -1.0, 1.0)

"""The ranges file: versioned, human-readable JSON of calibrated activation ranges."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxq.calibration.observers import RangeQuality, TensorRange
from onnxq.config import Scheme
from onnxq.errors import RangesError
from onnxq.quant.methods import CalibrationMethod, Granularity
from onnxq.report.schema import RANGES

__all__ = ["FORMAT", "VERSION", "RangesFile", "read_ranges"]

FORMAT, VERSION = RANGES


@dataclass(frozen=True)
class RangesFile:
    """Calibrated ranges of one model, with how they were made."""

    model_fingerprint: str
    model_path: str
    method: CalibrationMethod
    params: dict[str, Any]
    granularity: Granularity
    samples: int
    onnxq_version: str
    tensors: dict[str, TensorRange] = field(default_factory=dict)

    def to_json(self) -> str:
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "onnxq_version": self.onnxq_version,
            "model": {"path": self.model_path, "fingerprint": self.model_fingerprint},
            "method": {"name": self.method.value, "params": self.params},
            "granularity": self.granularity.value,
            "samples": self.samples,
            "tensors": {name: _encode(r) for name, r in self.tensors.items()},
        }
        return json.dumps(doc, indent=1, allow_nan=False) + "\n"

    def fits(self, scheme: Scheme, bits: int) -> bool:
        """Whether the quality estimates were made for this activation scheme and width."""
        made_for = self.params.get("scheme", "asym")
        return bool(made_for == scheme.value and self.params.get("bits", 8) == bits)

    def check_scheme(self, scheme: Scheme, source: str | Path, bits: int = 8) -> None:
        made_bits = self.params.get("bits", 8)
        minmax = self.method is CalibrationMethod.MINMAX
        if made_bits != bits and not minmax:
            raise RangesError(
                f"ranges file '{source}' was calibrated for {made_bits}-bit activations; "
                f"recalibrate with --bits {bits} or quantize with --activation-bits {made_bits}"
            )
        made_for = self.params.get("scheme", "asym")
        if made_for != scheme.value and not minmax:  # min/max ranges fit any scheme
            raise RangesError(
                f"ranges file '{source}' was calibrated for {made_for} activations; "
                f"recalibrate with --scheme {scheme.value} or quantize with "
                f"--activation-scheme {made_for}"
            )

    def check_model(self, fingerprint: str, source: str | Path) -> None:
        if fingerprint != self.model_fingerprint:
            raise RangesError(
                f"ranges file '{source}' was made for a different model "
                f"('{self.model_path}', onnxq {self.onnxq_version}), or for this model "
                "as an older onnxq prepared it; run onnxq calibrate on this model again"
            )


def _number(v: float) -> float | str:
    if math.isnan(v):
        raise RangesError("a calibrated range is NaN: the model produced NaN on the data")
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def _encode(r: TensorRange) -> dict[str, Any]:
    if r.axis is None:
        entry: dict[str, Any] = {"min": _number(float(r.min)), "max": _number(float(r.max))}
        if r.observed_min is not None and r.observed_max is not None:
            entry["observed"] = {
                "min": _number(float(r.observed_min)),
                "max": _number(float(r.observed_max)),
            }
        if r.quality is not None:
            entry["quality"] = _encode_quality(r.quality)
        return entry
    entry = {
        "axis": r.axis,
        "min": [_number(float(v)) for v in r.min],
        "max": [_number(float(v)) for v in r.max],
    }
    if r.observed_min is not None and r.observed_max is not None:
        entry["observed"] = {
            "min": _number(float(np.min(r.observed_min))),
            "max": _number(float(np.max(r.observed_max))),
        }
    if r.quality is not None:
        entry["quality"] = _encode_quality(r.quality)
    return entry


def _encode_quality(q: RangeQuality) -> dict[str, Any]:
    return {
        "sqnr_db": _number(q.sqnr_db),
        "robust": {
            "min": _number(q.robust_min),
            "max": _number(q.robust_max),
            "sqnr_db": _number(q.robust_sqnr_db),
        },
    }


def _decode_quality(doc: dict[str, Any] | None) -> RangeQuality | None:
    if doc is None:
        return None
    robust = doc["robust"]
    return RangeQuality(
        float(doc["sqnr_db"]), float(robust["min"]), float(robust["max"]), float(robust["sqnr_db"])
    )


def _decode_values(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float64).astype(np.float32)


def read_ranges(path: str | Path) -> RangesFile:
    """Read and validate a ranges file; :class:`RangesError` names what is wrong."""
    path = Path(path)
    if not path.exists():
        raise RangesError(f"ranges file '{path}' does not exist")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RangesError(f"ranges file '{path}' is not JSON ({exc})") from exc
    except RecursionError as exc:  # the parser recurses once per level of nesting
        raise RangesError(
            f"ranges file '{path}' nests lists or objects too deeply to be a ranges file"
        ) from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise RangesError(f'\'{path}\' is not an onnxq ranges file (no "format": "{FORMAT}")')
    if doc.get("version") != VERSION:
        raise RangesError(
            f"ranges file '{path}' has version {doc.get('version')}; this onnxq reads "
            f"version {VERSION}: recalibrate"
        )
    try:
        tensors = {}
        for name, entry in doc["tensors"].items():
            lo, hi = _decode_values(entry["min"]), _decode_values(entry["max"])
            if lo.shape != hi.shape or np.isnan(lo).any() or np.isnan(hi).any():
                raise ValueError(f"tensor '{name}' has malformed min/max")
            if (lo.ndim == 1) != (entry.get("axis") is not None) or lo.ndim > 1:
                raise ValueError(f"tensor '{name}': a list of values needs an \"axis\"")
            if np.any(lo > hi):
                raise ValueError(f"tensor '{name}' has min above max")
            seen = entry.get("observed")
            tensors[name] = TensorRange(
                lo,
                hi,
                entry.get("axis"),
                _decode_values(seen["min"]) if seen else None,
                _decode_values(seen["max"]) if seen else None,
                _decode_quality(entry.get("quality")),
            )
        return RangesFile(
            model_fingerprint=str(doc["model"]["fingerprint"]),
            model_path=str(doc["model"].get("path", "")),
            method=CalibrationMethod(doc["method"]["name"]),
            params=dict(doc["method"].get("params", {})),
            granularity=Granularity(doc.get("granularity", "tensor")),
            samples=int(doc["samples"]),
            onnxq_version=str(doc.get("onnxq_version", "")),
            tensors=tensors,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RangesError(f"ranges file '{path}' is malformed: {exc}") from exc

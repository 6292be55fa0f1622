"""Stage: a ranges file (``--ranges``) checked against data before the model is written.

A range that leaves most of a tensor's values outside — hand-edited, or made on other data —
quantizes without complaint and ruins the model. When the run has data (``--eval``), the
float model runs on its first ``CHECK_SAMPLES`` samples and each tensor of the file that
the model computes is checked: fewer than ``MIN_INSIDE`` of its values inside the file's
range (widened to contain 0, as the integer grid is) is a warning naming the tensor, the
file's range and the range of the data.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from onnxq.calibration.collect import FloatSession, batch_for
from onnxq.calibration.coverage import Coverage
from onnxq.calibration.observers import TensorRange
from onnxq.calibration.ranges import RangesFile
from onnxq.data import Dataset

__all__ = ["CHECK_SAMPLES", "MAX_LINES", "MIN_INSIDE", "ranges_file_warnings"]

log = logging.getLogger(__name__)

CHECK_SAMPLES = 32  # samples run (whole batches); bounded bytes per run as calibration
MIN_INSIDE = 0.5  # share of a tensor's values its range must hold
MAX_LINES = 5  # tensors named; the rest are counted on one more line


def ranges_file_warnings(
    floats: FloatSession,
    data: Dataset | None,
    file: RangesFile | None,
    path: Path | None,
    batch_size: int,
) -> tuple[str, ...]:
    """One line per tensor of the ranges ``file`` (read from ``path``) whose range holds
    fewer than ``MIN_INSIDE`` of its values on ``data`` (at most ``MAX_LINES`` lines and a
    count of the rest); nothing without a file or data."""
    if file is None or data is None:
        return ()
    fetchable = set(floats.candidates)
    names = [t for t in file.tensors if t in fetchable]
    if not names:
        return ()
    coverage = _coverage(floats, data, {t: file.tensors[t] for t in names}, batch_size)
    bad = [(name, c) for name, c in coverage.items() if c.share < MIN_INSIDE]
    lines = [_line(str(path), name, c, file.tensors[name]) for name, c in bad[:MAX_LINES]]
    if len(bad) > MAX_LINES:
        lines.append(
            f"ranges file '{path}': {len(bad) - MAX_LINES} more tensors hold under "
            f"{MIN_INSIDE:.0%} of their values"
        )
    log.info("ranges file checked on %d tensors: %d disagree with the data", len(names), len(bad))
    return tuple(lines)


def _coverage(
    floats: FloatSession, data: Dataset, ranges: Mapping[str, TensorRange], batch_size: int
) -> dict[str, Coverage]:
    coverage = {t: Coverage(_with_zero(r)) for t, r in ranges.items()}
    step = batch_for(floats.bytes_per_sample(data, list(ranges)), batch_size)
    done = 0
    for batch in data.batches(step):
        for name, value in floats.run(batch.feed, list(ranges)).items():
            coverage[name].update(value)
        done += batch.size
        if done >= CHECK_SAMPLES:
            break
    return coverage


def _with_zero(r: TensorRange) -> TensorRange:
    """The range as the integer grid holds it: widened to contain 0 (compute_qparams)."""
    lo, hi = np.minimum(r.min, 0).astype(np.float32), np.maximum(r.max, 0).astype(np.float32)
    return TensorRange(lo, hi, r.axis)


def _line(path: str, name: str, c: Coverage, given: TensorRange) -> str:
    whole = given.per_tensor() if given.axis is not None else given
    seen = f"[{c.min:.4g}, {c.max:.4g}]" if c.total and c.min <= c.max else "no finite values"
    return (
        f"ranges file '{path}': tensor '{name}' has range [{float(whole.min):.4g}, "
        f"{float(whole.max):.4g}] but only {c.share:.0%} of its values on the data fall "
        f"inside (the data spans {seen}); recalibrate or correct the file"
    )

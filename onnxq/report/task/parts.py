"""The per-part rule (pure numpy): an output made by concatenating parts of very different
ranges — a detection head's box coordinates in pixels next to its class scores in [0, 1] —
is judged part by part, so that no part can be lost inside another's noise budget.

Rule: an output produced by a Concat along a non-batch axis (the graph says where its
parts begin and end: :func:`onnxq.graph.concat_parts.concat_parts`) is split when the
largest absolute value of its largest-ranged part is more than ``PART_RANGE_RATIO`` (8)
times that of its smallest-ranged part, on the reference model's values (parts that are
all zero are left out of the comparison). Each part then has its own SQNR, and a target or
threshold on SQNR applies to the worst part. Whole-tensor SQNR weighs parts by their
energy: a part 100× smaller in range holds 10⁻⁴ of the signal, so it can lose all of its
own precision while the whole tensor still reads 40 dB.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnxq.metrics_config import Part
from onnxq.report.task.families import FidelityStats, select

__all__ = [
    "PART_RANGE_RATIO",
    "PartFidelity",
    "PartStats",
    "PartsMeter",
    "parts_of",
    "split_parts",
]

PART_RANGE_RATIO = 8.0


def split_parts(ranges: Sequence[float], ratio: float = PART_RANGE_RATIO) -> bool:
    """Whether parts of these ranges (largest absolute values) are judged one by one."""
    live = [r for r in ranges if r > 0 and math.isfinite(r)]
    return len(live) >= 2 and max(live) > ratio * min(live)


@dataclass(frozen=True)
class PartFidelity:
    output: str
    part: Part
    range: float  # largest absolute reference value
    sqnr_db: float
    cosine: float

    @property
    def label(self) -> str:
        return self.part.label(self.output)

    def to_dict(self) -> dict[str, object]:
        return {
            "output": self.output,
            "axis": self.part.axis,
            "start": self.part.start,
            "stop": self.part.stop,
            "range": self.range,
            "sqnr_db": self.sqnr_db if math.isfinite(self.sqnr_db) else None,
            "cosine": self.cosine,
        }


class PartStats:
    """SQNR and range of each part of one output, batch by batch."""

    def __init__(self, output: str, parts: Sequence[Part]) -> None:
        self.output = output
        self.parts = tuple(parts)
        self.stats = [FidelityStats() for _ in self.parts]
        self.ranges = [0.0 for _ in self.parts]

    def update(self, ref: np.ndarray, cand: np.ndarray) -> None:
        for i, part in enumerate(self.parts):
            r, c = select(ref, part), select(cand, part)
            with np.errstate(invalid="ignore"):
                self.ranges[i] = max(self.ranges[i], float(np.max(np.abs(r), initial=0.0)))
            self.stats[i].update(r, c, None)

    def result(self) -> tuple[PartFidelity, ...]:
        """Every part, when the rule splits this output; else nothing."""
        if not split_parts(self.ranges):
            return ()
        out = []
        for part, stats, rng in zip(self.parts, self.stats, self.ranges, strict=True):
            values = stats.result()
            out.append(PartFidelity(self.output, part, rng, values["sqnr_db"], values["cosine"]))
        return tuple(out)


def parts_of(bounds: tuple[int, tuple[tuple[int, int], ...]]) -> tuple[Part, ...]:
    """:class:`Part` records of a Concat's ``(axis, ((start, stop), ...))``."""
    axis, spans = bounds
    return tuple(Part(axis, a, b) for a, b in spans)


class PartsMeter:
    """:class:`PartStats` of every concatenated output, fed whole batches of outputs."""

    def __init__(self, parts: dict[str, tuple[Part, ...]]) -> None:
        self.stats = [PartStats(name, p) for name, p in parts.items()]

    def update(
        self, ref: Mapping[str, np.ndarray], cand: Mapping[str, np.ndarray], labels: object = None
    ) -> None:
        for s in self.stats:
            if s.output in ref and s.output in cand:
                s.update(np.asarray(ref[s.output]), np.asarray(cand[s.output]))

    def result(self) -> tuple[PartFidelity, ...]:
        return tuple(p for s in self.stats for p in s.result())

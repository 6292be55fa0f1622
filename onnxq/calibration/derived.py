"""Tensors whose values follow element by element from another calibrated tensor's: a
Relu's output, ``max(x, 0)``, and a product by a positive power of two, ``x · 2^k`` (exact
in floating point). A calibration pass fetches the source only; the derived tensor's
observer is fed the batch range read off the source's (min/max clamped or scaled, per
tensor or per channel) and a :class:`DerivedBatch` that computes values only where the
quality histogram reads them (a few rows, or the values beyond its edge), so its
statistics are bit for bit those of observing the tensor itself. Pure numpy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DerivedBatch", "Derivation"]

_ZERO = np.float32(0.0)


@dataclass(frozen=True)
class Derivation:
    """``source``'s values made into this tensor's: ``max(x, 0)`` when ``factor`` is
    None, else ``x · factor`` (a positive power of two)."""

    source: str
    factor: float | None = None

    def values(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray
        if self.factor is None:
            out = np.maximum(x, _ZERO)
        else:
            out = x * np.asarray(self.factor, x.dtype)
        return out

    def extremes(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The batch's min and max (scalars, or per channel) from the source's: the
        element-wise map is monotone non-decreasing, so it maps the extremes."""
        return self.values(lo), self.values(hi)


class DerivedBatch:
    """One batch of a derived tensor, made from its source's batch only where read:
    shape, size and dtype are the source's; indexing makes that part (the rows a quality
    histogram bins), ``reshape`` and ``np.asarray`` make all of it."""

    def __init__(self, source: np.ndarray, how: Derivation) -> None:
        self.source = source
        self.how = how

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.source.shape)

    @property
    def size(self) -> int:
        return int(self.source.size)

    @property
    def ndim(self) -> int:
        return int(self.source.ndim)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.source.dtype

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.how.values(self.source[index])

    def reshape(self, *shape: int) -> np.ndarray:
        return self.how.values(self.source).reshape(*shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        values = self.how.values(self.source)
        return values if dtype is None else values.astype(dtype)

"""Non-uniform (codebook) weights: k-means and power-of-two levels, and index packing.

A codebook weight is a table of ``K = 2^b`` float32 levels (one table for the tensor, or
one per index of a channel axis) and one ``b``-bit index per value::

    w~[i] = levels[idx[i]]                      per tensor
    w~[i] = levels[c(i), idx[i]]                per channel, c(i) the value's channel

Two ways to choose the levels (survey section III-F), next to the uniform grid
(``uniform``: ``lo + k·(hi − lo)/(K − 1)`` per row, k-means' starting point):

* ``kmeans``: Lloyd's algorithm in 1-D, started from the uniform grid, minimising
  ``Σ h·(w − w~)²`` (``h`` optional per-value importance, 1 by default);
* ``log``: ``0`` and ``±2^k`` for the ``2^(b−1) − 1`` exponents below ``round(log2 max|w|)``.

Indices are stored packed into uint32 words (see :func:`pack_indices`), a layout the
graph unpacks with BitShift and BitwiseAnd. Pure numpy: no onnx, no onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
import numpy.typing as npt

__all__ = [
    "Codebook",
    "LevelKind",
    "channel_offsets",
    "decode",
    "fit_codebook",
    "pack_indices",
    "stored_bytes",
    "unpack_indices",
    "word_shifts",
    "words_for",
]

MIN_BITS, MAX_BITS = 2, 8
_WORD_BITS = 32
_F32 = npt.NDArray[np.float32]
_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
_U8 = npt.NDArray[np.uint8]
_U32 = npt.NDArray[np.uint32]


class LevelKind(str, Enum):
    """How the levels of a codebook are chosen (values are the CLI spellings)."""

    UNIFORM = "uniform"  # the integer grid: stored as Q/DQ; as a codebook, k-means' start
    KMEANS = "kmeans"
    LOG = "log"


@dataclass(frozen=True)
class Codebook:
    """The levels of one weight: float32 ``[2^bits]`` when ``axis`` is None, else
    ``[C, 2^bits]``, row ``c`` serving the values at index ``c`` of ``axis`` (which is
    non-negative). The indices are kept apart (see :func:`fit_codebook`)."""

    levels: _F32
    bits: int
    axis: int | None

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        if self.levels.dtype != np.float32:
            raise ValueError(f"codebook levels must be float32, got {self.levels.dtype}")
        rank = 1 if self.axis is None else 2
        if self.levels.ndim != rank or self.levels.shape[-1] != 1 << self.bits:
            raise ValueError(
                f"codebook levels of shape {self.levels.shape} do not fit {self.bits} bits "
                f"{'per tensor' if self.axis is None else f'per channel (axis {self.axis})'}"
            )
        if self.axis is not None and self.axis < 0:
            raise ValueError(f"codebook axis must be non-negative, got {self.axis}")

    @property
    def size(self) -> int:
        """Number of levels ``K = 2^bits`` in one table."""
        return 1 << self.bits


def fit_codebook(
    w: npt.ArrayLike,
    bits: int,
    kind: LevelKind,
    *,
    axis: int | None = None,
    iters: int = 25,
    weights: npt.ArrayLike | None = None,
) -> tuple[Codebook, _U8]:
    """Levels for ``w`` and each value's index (uint8, shaped like ``w``).

    Rows are the whole tensor (``axis=None``) or the values at each index of ``axis``;
    every row gets its own sorted ``K = 2^bits`` levels and each value the index of its
    nearest level (ties go to the upper level).

    * ``kmeans``: start from the row's uniform grid ``lo + k·(hi − lo)/(K − 1)``
      (``lo, hi`` the row's min and max, ``k = 0 … K−1``), then ``iters`` Lloyd steps:
      assign each value to its nearest level, move each level to the ``h``-weighted mean
      of its values (``h`` = ``weights``, else 1). A level left without values (or with
      zero total weight) keeps its place. Each step can only lower ``E = Σ h·(w − w~)²``
      (rounding a mean to its nearest float32 included), and as a guard against
      summation error any row whose k-means ``E`` still ends above the uniform grid's
      keeps the uniform levels: k-means is never worse than uniform on ``E`` (which is
      ``Σ (w − w~)²`` without ``weights``).
      Degenerate: a constant row (``lo == hi``) has all levels equal and ``E = 0``.
    * ``log``: one sign and ``M = 2^(bits−1)`` magnitudes ``2^e, 2^(e−1), …,
      2^(e−M+2)`` and ``0`` with ``e = round(log2 max|w|)`` per row, clipped to 127 so
      that ``2^e`` is a finite float32; the levels are these with both signs, sorted
      (``0`` appears twice, so zero is exact). ``weights`` is ignored. Degenerate: an
      all-zero row takes ``e = 0`` and decodes to zeros; exponents under float32's
      smallest subnormal give the level 0.

    Raises ValueError for ``bits`` outside 2..8, non-finite ``w``, an empty ``w``, an
    ``axis`` outside ``w``'s rank, or ``weights`` not shaped like ``w`` or negative.
    """
    _check_bits(bits)
    if iters < 0:
        raise ValueError(f"iters must be ≥ 0, got {iters}")
    arr = np.asarray(w, dtype=np.float32)
    if arr.size == 0:
        raise ValueError("cannot fit a codebook to an empty tensor")
    if not np.all(np.isfinite(arr)):
        raise ValueError("cannot fit a codebook to non-finite values")
    axis = _normalize_axis(axis, arr.ndim)
    rows = _as_rows(arr, axis)
    if kind in (LevelKind.KMEANS, LevelKind.UNIFORM):
        h = _importance(weights, arr, axis)
        levels, idx = _kmeans_rows(rows, bits, iters if kind is LevelKind.KMEANS else 0, h)
    elif kind is LevelKind.LOG:
        levels = _log_levels(rows, bits)
        idx = _assign(rows, levels)
    else:
        raise ValueError(f"unknown level kind {kind!r}")
    indices = _from_rows(idx.astype(np.uint8), arr.shape, axis)
    table = levels[0] if axis is None else levels
    return Codebook(np.ascontiguousarray(table, dtype=np.float32), bits, axis), indices


def decode(codebook: Codebook, indices: npt.ArrayLike) -> _F32:
    """``levels[idx]`` (per tensor) or ``levels.ravel()[idx + c·K]`` with ``c`` the
    value's index along ``codebook.axis`` (per channel), float32 shaped like ``indices``.
    This is the arithmetic the decode graph does. Raises ValueError for an index ≥ K or
    a channel count that does not match the codebook."""
    idx = np.asarray(indices).astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= codebook.size):
        raise ValueError(f"indices must lie in [0, {codebook.size}) for {codebook.bits} bits")
    flat = codebook.levels.reshape(-1)
    return np.asarray(flat[idx + channel_offsets(codebook, idx.shape)], np.float32)


def channel_offsets(codebook: Codebook, shape: tuple[int, ...]) -> _I64:
    """``c·K`` along ``codebook.axis``, shaped to broadcast against a weight of ``shape``
    (a 0-d zero per tensor): added to the indices, they address the flattened levels."""
    if codebook.axis is None:
        return np.zeros((), np.int64)
    channels = codebook.levels.shape[0]
    if codebook.axis >= len(shape) or shape[codebook.axis] != channels:
        raise ValueError(
            f"a weight of shape {shape} has no {channels} channels on axis {codebook.axis}"
        )
    out = [1] * len(shape)
    out[codebook.axis] = channels
    return (np.arange(channels, dtype=np.int64) * codebook.size).reshape(out)


def pack_indices(indices: npt.ArrayLike, bits: int) -> _U32:
    """Indices (flattened in C order) packed into uint32 words, ``per = 32 // bits`` to a
    word: index ``j`` of word ``n`` is ``indices[n·per + j]`` at bits ``j·bits …
    j·bits + bits − 1`` (lowest first). The last word is padded with zero indices; the
    ``32 − per·bits`` top bits of every word are zero. Raises ValueError for ``bits``
    outside 2..8 or an index that does not fit in ``bits`` bits."""
    _check_bits(bits)
    flat = np.asarray(indices).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= 1 << bits):
        raise ValueError(f"indices must lie in [0, {1 << bits}) to pack them in {bits} bits")
    per = _WORD_BITS // bits
    padded = np.zeros(words_for(flat.size, bits) * per, np.uint32)
    padded[: flat.size] = flat
    shifted = padded.reshape(-1, per) << word_shifts(bits)
    return np.asarray(np.bitwise_or.reduce(shifted, axis=1), np.uint32)


def unpack_indices(words: npt.ArrayLike, bits: int, count: int) -> _U8:
    """The first ``count`` indices of :func:`pack_indices`'s ``words`` (flat uint8):
    ``(word >> j·bits) & (2^bits − 1)`` for ``j = 0 … per − 1``, word after word.
    Raises ValueError when the words hold fewer than ``count`` indices."""
    _check_bits(bits)
    arr = np.asarray(words, dtype=np.uint32).reshape(-1)
    per = _WORD_BITS // bits
    if not 0 <= count <= arr.size * per:
        raise ValueError(
            f"{arr.size} words of {bits}-bit indices hold {arr.size * per}, not {count}"
        )
    mask = np.uint32((1 << bits) - 1)
    every = (arr[:, None] >> word_shifts(bits)) & mask
    return np.asarray(every.reshape(-1)[:count], np.uint8)


def words_for(count: int, bits: int) -> int:
    """uint32 words that hold ``count`` indices of ``bits`` bits: ``⌈count / (32 // bits)⌉``."""
    per = _WORD_BITS // bits
    return -(-count // per)


def word_shifts(bits: int) -> _U32:
    """Bit offsets ``0, bits, 2·bits, …`` of the ``32 // bits`` indices in one word."""
    return np.asarray(np.arange(_WORD_BITS // bits, dtype=np.uint32) * np.uint32(bits), np.uint32)


def stored_bytes(codebook: Codebook, count: int) -> int:
    """Bytes a weight of ``count`` values takes as a codebook: ``4·⌈count / (32 // bits)⌉``
    for the packed words plus ``4`` per float32 level (``K`` per tensor, ``C·K`` per
    channel)."""
    return 4 * words_for(count, codebook.bits) + 4 * codebook.levels.size


def _check_bits(bits: int) -> None:
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"codebook bits must be in {MIN_BITS}..{MAX_BITS}, got {bits}")


def _normalize_axis(axis: int | None, ndim: int) -> int | None:
    if axis is None:
        return None
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is outside a tensor of rank {ndim}")
    return axis % ndim


def _as_rows(arr: np.ndarray, axis: int | None) -> np.ndarray:
    """``arr`` as ``[rows, values]``: one row, or one per index of ``axis``."""
    if axis is None:
        return arr.reshape(1, -1)
    moved = np.moveaxis(arr, axis, 0)
    return moved.reshape(moved.shape[0], -1)


def _from_rows(rows: np.ndarray, shape: tuple[int, ...], axis: int | None) -> np.ndarray:
    """Inverse of :func:`_as_rows`."""
    if axis is None:
        return rows.reshape(shape)
    moved = (shape[axis], *shape[:axis], *shape[axis + 1 :])
    return np.ascontiguousarray(np.moveaxis(rows.reshape(moved), 0, axis))


def _importance(weights: npt.ArrayLike | None, arr: np.ndarray, axis: int | None) -> _F64:
    if weights is None:
        return np.ones((1, 1), np.float64)
    h = np.asarray(weights, dtype=np.float64)
    if h.shape != arr.shape:
        raise ValueError(f"weights of shape {h.shape} do not match values of shape {arr.shape}")
    if not np.all(np.isfinite(h)) or np.any(h < 0):
        raise ValueError("weights must be finite and non-negative")
    return _as_rows(h, axis)


def _sortable_keys(x: np.ndarray) -> npt.NDArray[np.uint64]:
    """float32 → uint64 keys in the same order (negatives flipped, positives offset)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    sign = np.uint64(0x80000000)
    return np.asarray(np.where(u & sign, np.uint64(0xFFFFFFFF) - u, u | sign), np.uint64)


def _assign(rows: np.ndarray, levels: np.ndarray) -> _I64:
    """Index of the nearest level for every value, all rows at once.

    One ``searchsorted`` of the values in the row's midpoints, made global by giving
    row ``r`` the key ``r·2^32 + key(x)``; midpoints are rounded to float32 for the key,
    so each value is then checked against the neighbouring level (exact nearest)."""
    n_rows, k = levels.shape
    lv = levels.astype(np.float64)
    mids = ((lv[:, :-1] + lv[:, 1:]) / 2).astype(np.float32)
    offset = (np.arange(n_rows, dtype=np.uint64) << np.uint64(32))[:, None]
    haystack = (_sortable_keys(mids) + offset).reshape(-1)
    needles = _sortable_keys(rows) + offset
    found = np.searchsorted(haystack, needles, side="right").astype(np.int64)
    idx = found - (np.arange(n_rows, dtype=np.int64) * (k - 1))[:, None]
    x = rows.astype(np.float64)
    for step in (-1, 1):  # the float32 midpoint can sit one level off the exact one
        other = np.clip(idx + step, 0, k - 1)
        near = np.abs(x - np.take_along_axis(lv, other, 1))
        here = np.abs(x - np.take_along_axis(lv, idx, 1))
        idx = np.where(near < here, other, idx)
    return np.asarray(idx, np.int64)


def _row_error(rows: np.ndarray, levels: np.ndarray, idx: _I64, h: _F64) -> _F64:
    """``Σ h·(w − w~)²`` per row, in float64."""
    diff = rows.astype(np.float64) - np.take_along_axis(levels.astype(np.float64), idx, 1)
    return np.asarray(np.sum(h * diff * diff, axis=1), np.float64)


def _uniform_levels(rows: np.ndarray, bits: int) -> _F32:
    """``lo + k·(hi − lo)/(K − 1)`` per row, ``k = 0 … K − 1``."""
    lo = rows.min(axis=1).astype(np.float64)[:, None]
    hi = rows.max(axis=1).astype(np.float64)[:, None]
    steps = np.arange(1 << bits, dtype=np.float64) / ((1 << bits) - 1)
    return np.asarray(lo + (hi - lo) * steps, np.float32)


def _kmeans_rows(rows: np.ndarray, bits: int, iters: int, h: _F64) -> tuple[_F32, _I64]:
    """Lloyd from the uniform grid, vectorised over rows; per row, the better of the two."""
    n_rows, k = rows.shape[0], 1 << bits
    weight = np.broadcast_to(h, rows.shape)
    x = rows.astype(np.float64)
    cluster_row = (np.arange(n_rows, dtype=np.int64) * k)[:, None]
    uniform = _uniform_levels(rows, bits)
    levels = uniform
    for _ in range(iters):
        flat = (_assign(rows, levels) + cluster_row).reshape(-1)
        mass = np.bincount(flat, weight.reshape(-1), n_rows * k).reshape(n_rows, k)
        total = np.bincount(flat, (weight * x).reshape(-1), n_rows * k).reshape(n_rows, k)
        moved = np.where(mass > 0, total / np.where(mass > 0, mass, 1.0), levels)
        new = np.sort(moved.astype(np.float32), axis=1)
        if np.array_equal(new, levels):
            break
        levels = new
    idx = _assign(rows, levels)
    uniform_idx = _assign(rows, uniform)
    worse = _row_error(rows, levels, idx, weight) > _row_error(rows, uniform, uniform_idx, weight)
    levels = np.where(worse[:, None], uniform, levels)
    return levels, np.where(worse[:, None], uniform_idx, idx)


def _log_levels(rows: np.ndarray, bits: int) -> _F32:
    """``±2^e, …, ±2^(e−M+2), 0, 0`` per row, sorted (see :func:`fit_codebook`)."""
    amax = np.abs(rows).max(axis=1).astype(np.float64)
    safe = np.where(amax > 0, amax, 1.0)
    e_max = np.minimum(np.rint(np.log2(safe)), 127.0).astype(np.int64)
    m = 1 << (bits - 1)
    exps = e_max[:, None] - np.arange(m - 1, dtype=np.int64)  # e, e-1, …, e-M+2
    mags = np.ldexp(1.0, exps).astype(np.float32)  # under 2^-149 this rounds to 0
    zeros = np.zeros((rows.shape[0], 2), np.float32)
    return np.sort(np.concatenate([-mags, zeros, mags], axis=1), axis=1)

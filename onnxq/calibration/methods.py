"""Clipping ranges from a histogram: percentile, entropy (KL divergence), MSE.

Pure numpy. Each function takes a :class:`Histogram` and returns ``(alpha, beta)``,
the clipping range, never wider than the observed ``[min, max]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from onnxq.calibration.histogram import Histogram
from onnxq.quant.qtypes import QType

__all__ = ["entropy_range", "mse_range", "percentile_range", "range_sqnr", "range_sqnrs"]

_EPS = 1e-4  # count given to a Q bin that has none where P has some


def _clamp(hist: Histogram, lo: float, hi: float) -> tuple[float, float]:
    return max(lo, hist.min), min(hi, hist.max)


def percentile_range(hist: Histogram, percentile: float, *, symmetric: bool) -> tuple[float, float]:
    """Clip at ``percentile`` of ``|x|`` (symmetric), or at the ``100 - percentile`` and
    ``percentile`` percentiles of ``x`` (asymmetric). Thresholds are bin edges: the upper
    edge of the bin in which the cumulative count reaches the percentile."""
    if hist.total == 0:
        return 0.0, 0.0
    if symmetric:
        mag = hist.magnitude()
        j = int(np.searchsorted(np.cumsum(mag), percentile / 100.0 * mag.sum()))
        t = (j + 1) * hist.width
        return _clamp(hist, -t, t)
    cum = np.cumsum(hist.counts)
    edges = hist.edges()
    low = int(np.searchsorted(cum, (100.0 - percentile) / 100.0 * cum[-1], side="right"))
    high = int(np.searchsorted(cum, percentile / 100.0 * cum[-1]))
    return _clamp(hist, float(edges[low]), float(edges[min(high + 1, edges.size - 1)]))


def entropy_range(hist: Histogram, *, levels: int = 128) -> tuple[float, float]:
    """TensorRT's KL-divergence threshold search on the ``|x|`` histogram, vectorised.

    For each candidate ``i`` (``levels <= i <= n`` occupied bins), the reference P is the
    first ``i`` bins with every count beyond added to the last; the candidate Q merges the
    first ``i`` bins into ``levels`` groups (the last takes the remainder) and spreads each
    group evenly over its bins where P is non-zero. The threshold is the upper edge of
    bin ``i`` minimising KL(P || Q). With per-group constants ``c_j`` on Q,
    ``Σ p log q = Σ_j P_j log c_j``, so every candidate costs O(levels) with prefix sums.

    The zero bin gets its neighbour's count first (see the code). The candidate set is
    never degenerate: there are at least ``n - levels + 1`` of them
    and ``n >= bins / 2`` for any non-zero data; fewer occupied bins than ``levels`` (a
    histogram coarser than the quantization grid) means nothing is clipped.
    """
    mag = hist.magnitude().astype(np.float64)
    occupied = np.nonzero(mag)[0]
    if occupied.size == 0:
        return 0.0, 0.0
    n = int(occupied[-1]) + 1
    if n <= levels:
        return hist.min, hist.max
    h = mag[:n].copy()
    # The bin at zero holds every exact zero (a spike after ReLU) that no threshold can
    # clip; as NVIDIA's pytorch-quantization does, give it its neighbour's count so the
    # spike does not make heavy clipping look cheap.
    h[0] = h[1]
    cand = np.arange(levels, n + 1)  # candidate i: keep bins [0, i)
    cum = np.concatenate([[0.0], np.cumsum(h)])
    nz = np.concatenate([[0], np.cumsum(h > 0)])
    hlogh = np.concatenate(
        [[0.0], np.cumsum(np.where(h > 0, h * np.log(np.where(h > 0, h, 1.0)), 0.0))]
    )
    total = cum[-1]

    tail = total - cum[cand]  # counts beyond bin i-1
    last = h[cand - 1] + tail  # p[i-1]
    # Σ p log p: prefix up to i-1, then the last bin with the outliers added
    plogp = hlogh[cand - 1] + last * np.log(np.maximum(last, 1e-300))
    merged = cand // levels
    j = np.arange(levels + 1)
    bounds = np.minimum(j[None, :] * merged[:, None], cand[:, None])
    bounds[:, -1] = cand  # the last group takes the remainder
    q_sum = np.diff(cum[bounds], axis=1)  # Q mass per group (without outliers)
    p_sum = q_sum.copy()
    p_sum[:, -1] += tail  # P mass per group (outliers in the last bin)
    count = np.diff(nz[bounds], axis=1).astype(np.float64)
    last_was_zero = h[cand - 1] == 0
    count[:, -1] += (last_was_zero & (tail > 0)).astype(np.float64)  # p[i-1] became non-zero
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(count > 0, q_sum / count, 0.0)
    # Where P has mass and Q none (outliers folded into an empty last group), Q gets a
    # small count EPS per bin, as TensorRT's and MXNet's smoothing does: an isolated
    # outlier then costs a finite penalty instead of ruling out every candidate clipping it.
    starved = (p_sum > 0) & (c == 0)
    c = np.where(starved, _EPS, c)
    plogq = np.sum(np.where(p_sum > 0, p_sum * np.log(np.where(c > 0, c, 1.0)), 0.0), axis=1)
    q_total = cum[cand] + _EPS * np.sum(np.where(starved, count, 0.0), axis=1)
    kl = plogp / total - math.log(total) - plogq / total + np.log(q_total)
    best = int(cand[int(np.argmin(kl))])
    t = best * hist.width
    return _clamp(hist, -t, t)


def mse_range(
    hist: Histogram,
    qtype: QType,
    *,
    symmetric: bool,
    restricted: bool = False,
    grid: int = 100,
) -> tuple[float, float]:
    """The clipping range minimising Σ count · (x - dequantize(quantize(x)))² over the
    histogram (each bin represented by its centre), for ``qtype`` and the scheme.

    Symmetric: thresholds ``t = s · max|x|`` for ``grid`` values of ``s`` in (0, 1].
    Asymmetric: pairs ``(s_lo · min, s_hi · max)`` on a ``grid/4 × grid/4`` lattice.
    The histogram is first merged to at most 512 occupied-range bins to bound the cost.

    Only candidates that can win are evaluated (branch and bound): a candidate's error is
    at least its clipping error (the values outside its grid: exact, from prefix sums),
    so once some candidates' errors are known, any whose clipping error alone exceeds
    the least of them is skipped. The result is the exhaustive search's.
    """
    from onnxq.quant.qparams import compute_qparams

    if hist.total == 0 or (hist.min == 0.0 and hist.max == 0.0):
        return 0.0, 0.0
    centers, counts = _compact(hist, 512)
    qmin, qmax = qtype.min(restricted=restricted), qtype.max
    if symmetric:
        amax = max(abs(hist.min), abs(hist.max))
        s = np.linspace(1.0 / grid, 1.0, grid)
        lo, hi = -s * amax, s * amax
    else:
        k = max(grid // 4, 2)
        steps = np.linspace(1.0 / k, 1.0, k)
        lo = np.repeat(steps * hist.min, k)
        hi = np.tile(steps * hist.max, k)
    qp = compute_qparams(lo, hi, qtype, symmetric=symmetric, restricted=restricted, axis=0)
    scale = qp.scale.astype(np.float64)
    zp = qp.zero_point.astype(np.float64)
    clip_floor, margin = _clipping_error(centers, counts, (qmin - zp) * scale, (qmax - zp) * scale)
    # a first bound: the candidates the rounding noise model S²/12 expects best
    first = np.argsort(clip_floor + counts.sum() * scale * scale / 12.0)[:8]
    err = np.full(lo.size, np.inf)
    err[first] = _rounding_error(centers, counts, scale[first], zp[first], qmin, qmax)
    rest = np.flatnonzero((clip_floor - margin <= err.min()) & np.isinf(err))
    err[rest] = _rounding_error(centers, counts, scale[rest], zp[rest], qmin, qmax)
    best = int(np.argmin(err))
    return _clamp(hist, float(lo[best]), float(hi[best]))


def _rounding_error(
    centers: np.ndarray, counts: np.ndarray, scale: np.ndarray, zp: np.ndarray, qmin: int, qmax: int
) -> np.ndarray:
    """Σ count · (deq(q(centre)) − centre)² for each candidate (scale, zp): the same
    arithmetic as clip(rint(c / S) + zp) etc., in one buffer (no temporaries)."""
    work = np.divide(centers[None, :], scale[:, None])
    np.rint(work, out=work)
    work += zp[:, None]
    np.clip(work, qmin, qmax, out=work)
    work -= zp[:, None]
    work *= scale[:, None]
    work -= centers[None, :]
    np.square(work, out=work)
    out: np.ndarray = np.einsum("ij,j->i", work, counts)  # row by row, whatever the rows
    return out


def _clipping_error(
    centers: np.ndarray, counts: np.ndarray, low: np.ndarray, high: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Σ count · (c − low)² over centres below ``low`` plus Σ count · (c − high)² over those
    above ``high``, per candidate (``centers`` ascending), from prefix sums; and a bound on
    the rounding error of those sums (they cancel: a tail near its edge is a difference
    of large terms)."""
    n = np.concatenate([[0.0], np.cumsum(counts)])
    m1 = np.concatenate([[0.0], np.cumsum(counts * centers)])
    m2 = np.concatenate([[0.0], np.cumsum(counts * centers * centers)])
    below = np.searchsorted(centers, low, side="left")  # centres [0, below) are under low
    above = np.searchsorted(centers, high, side="right")  # centres [above, end) are over high
    n_hi, m1_hi, m2_hi = n[-1] - n[above], m1[-1] - m1[above], m2[-1] - m2[above]
    err = low * low * n[below] - 2.0 * low * m1[below] + m2[below]
    err += high * high * n_hi - 2.0 * high * m1_hi + m2_hi
    size = (
        (low * low + high * high) * n[-1]
        + 2.0 * (np.abs(low) + np.abs(high)) * np.abs(m1).max()
        + m2[-1]
    )
    return err, 1e-9 * size


def _compact(hist: Histogram, max_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres and counts of the occupied part of the grid, merged (sum of counts,
    count-weighted centre) to at most ``max_bins`` bins."""
    occupied = np.nonzero(hist.counts)[0]
    first, last = int(occupied[0]), int(occupied[-1]) + 1
    counts = hist.counts[first:last].astype(np.float64)
    centers = hist.centers()[first:last]
    group = max(1, math.ceil(counts.size / max_bins))
    if group == 1:
        keep = counts > 0
        return centers[keep], counts[keep]
    groups = -(-counts.size // group)
    c = np.zeros((groups, group))
    c.reshape(-1)[: counts.size] = counts
    x = np.zeros((groups, group))
    x.reshape(-1)[: centers.size] = centers
    mass = c.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(mass > 0, (c * x).sum(axis=1) / mass, 0.0)
    keep = mass > 0
    return mean[keep], mass[keep]


def range_sqnr(
    hist: Histogram,
    lo: float,
    hi: float,
    qtype: QType,
    *,
    symmetric: bool,
    restricted: bool = False,
) -> float:
    """Estimated SQNR in dB of quantizing the histogram's values with range [lo, hi]:
    uniform rounding noise ``S² / 12`` for each value inside the range plus the exact
    clipping error of each bin outside it (bin centres)."""
    found = range_sqnrs(hist, [lo], [hi], qtype, symmetric=symmetric, restricted=restricted)
    return float(found[0])


def range_sqnrs(
    hist: Histogram,
    lows: Sequence[float],
    highs: Sequence[float],
    qtype: QType,
    *,
    symmetric: bool,
    restricted: bool = False,
) -> np.ndarray:
    """:func:`range_sqnr` of each range ``[lows[i], highs[i]]`` (one set of qparams and
    one pass over the occupied bins for all: calibration estimates two per tensor)."""
    from onnxq.quant.qparams import compute_qparams

    if hist.total == 0:
        return np.full(len(lows), math.inf)
    lo, hi = np.asarray(lows, np.float64), np.asarray(highs, np.float64)
    qp = compute_qparams(lo, hi, qtype, symmetric=symmetric, restricted=restricted, axis=0)
    scale = qp.scale.astype(np.float64)
    zp = qp.zero_point.astype(np.float64)
    low = ((qtype.min(restricted=restricted) - zp) * scale)[:, None]
    high = ((qtype.max - zp) * scale)[:, None]
    occupied = np.flatnonzero(hist.counts)  # empty bins add nothing to any sum
    counts = hist.counts[occupied].astype(np.float64)
    centers = (occupied - hist.bins + 0.5) * hist.width
    inside = (centers >= low) & (centers <= high)
    noise = (inside @ counts) * scale * scale / 12.0
    noise += np.square(centers - np.clip(centers, low, high)) @ counts
    signal = max(float(counts @ np.square(centers)), 1e-300)
    with np.errstate(divide="ignore"):
        out: np.ndarray = np.where(noise == 0.0, math.inf, 10.0 * np.log10(signal / noise))
    return out

"""Rounding of weights other than round-to-nearest (pure numpy): stochastic rounding
(survey section III-H) and AdaRound (III-G), with the input moments AdaRound needs.

Formulas use ONNX's sign convention ``q = saturate(round(w / S) + zp)``. ``w / S`` is
computed in float32, as QuantizeLinear and :func:`onnxq.quant.quantize` do, so the floor
``f = floor(w / S) + zp`` here and the nearest code there always satisfy
``nearest ∈ {f, f + 1}`` (before saturation). Saturation clips to
``[qtype.min(restricted), qtype.max]``.

AdaRound takes a weight as a matrix ``W`` [K, N] (K the reduction width, N outputs) and
the moments of the layer's inputs, so memory is K × K whatever the number of samples:
``G = X_qᵀ X_q`` and ``C = X_qᵀ X_f`` (``X_q`` the inputs the quantized model sees,
``X_f`` the float model's). :class:`DenseMoments` streams them for MatMul / Gemm,
:class:`PatchMoments` for Conv (im2col patches, one pair per group).

Conv weights as matrices
------------------------
A Conv weight ``w`` [Cout, Cin/g, *k] with ``g`` groups computes, for group ``i``,
``y_i = P_i W_i`` where ``P_i`` holds the input patches of the group's channels, one row
per output position, flattened in the order ``(c, *k)``, and
``W_i = w[i·Cout/g : (i+1)·Cout/g].reshape(Cout/g, K).T`` is [K = Cin/g·Πk, Cout/g]
(:func:`conv_as_matrix`; :func:`matrix_as_conv` puts the matrices back).

:func:`matrix_qparams` maps the Conv weight's qparams onto ``W_i``:

* per tensor (``axis=None``): unchanged;
* per output channel (``axis=0``, scale [Cout]): the group's slice of scale and zero point
  becomes the per-column qparams of ``W_i`` (``axis=1``, scale [Cout/g]);
* blocked along the reduction axis 1 (scale [Cout, ⌈(Cin/g)/b⌉, *k]): supported only for
  kernels of one position (1×1, ``Πk = 1``), where it becomes blocked along axis 0 of
  ``W_i`` (scale [⌈(Cin/g)/b⌉, Cout/g]). For larger kernels a block of input channels at
  one kernel position is not a run of consecutive rows of ``W_i`` and no ``QParams`` of
  ``W_i`` describes it, so :func:`matrix_qparams` raises ``ValueError``.

Input moments
-------------
:class:`DenseMoments` and :class:`PatchMoments` sum ``gram = Σ pᵀp`` and
``cross = Σ pᵀp_f`` (float64) over rows ``p`` of the quantized model's inputs and the
matching rows ``p_f`` of the float model's (``x_f=None``: ``p_f = p``), and count
``rows``. They start at zero, so merging shards is a plain sum (``merge``). With
``max_rows``, an update of more rows sums a uniform random subset of ``max_rows`` of them
(without replacement, the same subset for both inputs) drawn from a generator seeded with
``seed``; ``gram / rows`` then still estimates the mean second moment, and memory stays
bounded by ``max_rows`` rows per update.

A caller runs AdaRound on a Conv weight group by group::

    moments = PatchMoments(cin, kernel_shape, strides, pads, dilations, group)
    for x_q, x_f in batches:
        moments.update(x_q, x_f)
    codes = [
        adaround_quantize(m, matrix_qparams(qp, w.shape, i, group),
                          moments.gram[i], moments.cross[i])
        for i, m in enumerate(conv_as_matrix(w, group))
    ]
    conv_codes = matrix_as_conv(codes, w.shape)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from onnxq.quant.qparams import QParams, broadcast_param, quantize

__all__ = [
    "DenseMoments",
    "PatchMoments",
    "adaround_quantize",
    "conv_as_matrix",
    "matrix_as_conv",
    "matrix_qparams",
    "stochastic_quantize",
]

_ZETA, _GAMMA = 1.1, -0.1  # stretch of the rectified sigmoid (Louizos et al., 2018)
_ADAM_B1, _ADAM_B2, _ADAM_EPS = 0.9, 0.999, 1e-8


# --- shared element-wise pieces ---------------------------------------------------------


def _floor_codes(w: np.ndarray, qp: QParams) -> tuple[np.ndarray, np.ndarray]:
    """``floor(w / S) + zp`` and the fractional part of ``w / S`` (float64, ``w``'s shape);
    ``w / S`` in float32 as QuantizeLinear."""
    scale = broadcast_param(qp.scale, w.shape, qp)
    zp = broadcast_param(qp.zero_point, w.shape, qp).astype(np.float64)
    ratio = (w / scale).astype(np.float64)
    low = np.floor(ratio)
    return low + zp, ratio - low


def stochastic_quantize(w: np.ndarray, qp: QParams, rng: np.random.Generator) -> np.ndarray:
    """Stochastic rounding: ``q = saturate(floor(w / S) + zp + u)`` with ``u = 1`` with
    probability ``w / S − floor(w / S)``, else 0 (one ``rng.random`` draw per value).

    ``E[q] = w / S + zp`` for values whose codes lie in the range (before saturation the
    rounding is unbiased); integer ``w / S`` is kept exactly. Same contract as
    :func:`onnxq.quant.quantize` otherwise: per-tensor, per-axis and blocked ``qp``,
    restricted range, output dtype ``qp.qtype.dtype``. The result depends only on ``w``,
    ``qp`` and the generator's state. ``w`` must be finite.
    """
    arr = np.asarray(w, np.float32)
    low, frac = _floor_codes(arr, qp)
    codes = low + (rng.random(arr.shape) < frac)
    lo, hi = qp.qtype.min(restricted=qp.restricted), qp.qtype.max
    out: np.ndarray = np.clip(codes, lo, hi).astype(qp.qtype.dtype)
    return out


# --- AdaRound ---------------------------------------------------------------------------


def _rectified_sigmoid(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``h(V) = clip(σ(V)(ζ − γ) + γ, 0, 1)`` and ``dh/dV`` (0 where clipped)."""
    sig = 1.0 / (1.0 + np.exp(-v))
    raw = sig * (_ZETA - _GAMMA) + _GAMMA
    slope = np.where((raw > 0) & (raw < 1), sig * (1 - sig) * (_ZETA - _GAMMA), 0)
    return np.clip(raw, 0, 1), slope.astype(v.dtype)


def _inverse_rectified_sigmoid(h: np.ndarray) -> np.ndarray:
    """``V`` with ``h(V) = h`` for ``h`` in [0, 1) (finite: ``σ(V)`` stays in (0.08, 0.92))."""
    sig = (h - _GAMMA) / (_ZETA - _GAMMA)
    return np.log(sig / (1 - sig))


def _loss(delta: np.ndarray, gram: np.ndarray, drift: np.ndarray | None) -> float:
    """``tr(ΔᵀGΔ) + 2 tr(ΔᵀD)``: the output error up to a constant (see adaround)."""
    value = float(np.sum(delta * (gram @ delta)))
    return value if drift is None else value + 2 * float(np.sum(delta * drift))


def _square(m: np.ndarray, k: int, name: str) -> np.ndarray:
    arr = np.asarray(m, np.float64)
    if arr.shape != (k, k):
        raise ValueError(f"{name} must be [{k}, {k}] for a weight of {k} rows, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite values; check the calibration data")
    return arr


def adaround_quantize(
    w: np.ndarray,
    qp: QParams,
    gram: np.ndarray,
    cross: np.ndarray | None = None,
    *,
    iters: int = 1000,
    reg: float = 0.01,
    beta: tuple[float, float] = (20.0, 2.0),
    warmup: float = 0.2,
    lr: float = 1e-2,
    rng_seed: int = 0,
) -> np.ndarray:
    """AdaRound (Nagel et al., 2020): codes of ``w`` [K, N] that round each value up or
    down so as to minimise the layer's output error, not each weight's own error.

    ``qp`` is laid out for the [K, N] array (per tensor, per column ``axis=1``, blocked
    along axis 0; any layout :func:`broadcast_param` accepts). With ``G = gram = X_qᵀX_q``
    and ``C = cross = X_qᵀX_f`` (``None``: ``X_q = X_f``, ``C = G``), the loss of
    ``Ŵ = W + Δ`` is::

        ||X_f W − X_q Ŵ||² = tr(ŴᵀGŴ) − 2 tr(ŴᵀCW) + const
                           = tr(ΔᵀGΔ) + 2 tr(ΔᵀD) + const',   D = (G − C) W,

    gradient ``2(GΔ + D) = 2(GŴ − CW)``. Each free code is ``f + h(V)`` with
    ``f = floor(W / S) + zp`` and the rectified sigmoid
    ``h(V) = clip(σ(V)(ζ − γ) + γ, 0, 1)``, ``ζ = 1.1``, ``γ = −0.1``; ``V`` starts where
    ``h(V)`` is the fractional part of ``W / S``. The objective is the loss divided by
    ``tr(G) · mean(S²)`` (so ``lr`` and ``reg`` do not depend on the scale of inputs or
    weights; the default ``reg`` suits K from ~30 to thousands) plus the regulariser
    ``reg · Σ (1 − |2h(V) − 1|^β)`` over the free values, off during the first ``warmup``
    share of ``iters``, then with ``β`` annealed linearly from ``beta[0]`` to ``beta[1]``.
    Adam (``lr``, β₁ = 0.9, β₂ = 0.999) updates the whole matrix at once.

    Saturation: a value whose codes ``f`` and ``f + 1`` clip to the same code (``f ≥ qmax``
    or ``f + 1 ≤ qmin``) is fixed at it and not optimised. The result is
    ``clip(f + [h(V) ≥ 0.5])``, so each code is ``f`` or ``f + 1`` before clipping.

    Never worse than round-to-nearest: both losses are computed at the end (float64) and
    :func:`onnxq.quant.quantize`'s codes are returned if AdaRound's loss is higher.
    ``iters=0`` thus gives ``f + [frac ≥ 0.5]`` or nearest (they differ only at exact
    ties). Degenerate inputs: ``G = 0`` (no signal) leaves every loss equal and the
    rounding at its start; dimensions never active only lose their gradient.

    ``rng_seed`` is accepted so callers can pass one seed to every rounding method; the
    algorithm draws no random numbers and its result does not depend on it. Returns
    codes of dtype ``qp.qtype.dtype``.
    """
    del rng_seed  # deterministic: see the docstring
    arr = np.asarray(w, np.float32)
    if arr.ndim != 2:
        raise ValueError(f"adaround_quantize takes a [K, N] weight, got shape {arr.shape}")
    if iters < 0 or not 0.0 <= warmup <= 1.0 or reg < 0 or lr <= 0:
        raise ValueError("adaround_quantize needs iters >= 0, 0 <= warmup <= 1, reg >= 0, lr > 0")
    if not np.all(np.isfinite(arr)):
        raise ValueError("the weight has non-finite values; AdaRound needs finite weights")
    k = arr.shape[0]
    g = _square(gram, k, "gram")
    w64 = arr.astype(np.float64)
    drift = None if cross is None else (g - _square(cross, k, "cross")) @ w64
    low, frac = _floor_codes(arr, qp)
    qmin, qmax = qp.qtype.min(restricted=qp.restricted), qp.qtype.max
    free = (low >= qmin) & (low + 1 <= qmax)
    base = np.clip(low, qmin, qmax)
    scale = np.broadcast_to(broadcast_param(qp.scale, arr.shape, qp), arr.shape)
    zp = broadcast_param(qp.zero_point, arr.shape, qp).astype(np.float64)
    offset = scale * (base - zp) - w64  # Δ = offset + step · h
    step = scale * free
    h = _optimise(g, drift, offset, step, frac, free, iters, reg, beta, warmup, lr)
    ada = base + (free & (h >= 0.5))
    near = quantize(arr, qp).astype(np.float64)
    ada_loss = _loss(scale * (ada - zp) - w64, g, drift)
    near_loss = _loss(scale * (near - zp) - w64, g, drift)
    best = near if near_loss < ada_loss else ada
    return best.astype(qp.qtype.dtype)


def _optimise(
    gram: np.ndarray,
    drift: np.ndarray | None,
    offset: np.ndarray,
    step: np.ndarray,
    frac: np.ndarray,
    free: np.ndarray,
    iters: int,
    reg: float,
    beta: tuple[float, float],
    warmup: float,
    lr: float,
) -> np.ndarray:
    """Adam on ``V`` (float32; see adaround_quantize); returns the final ``h(V)``."""
    if not free.any():
        return frac  # every value saturates: nothing to choose
    f32 = np.float32
    norm = float(np.trace(gram)) * float(np.mean(step[free] ** 2))
    gain = f32(2.0 / norm) if norm > 0 else f32(0.0)
    g32, off32, step32 = gram.astype(f32), offset.astype(f32), step.astype(f32)
    drift32 = None if drift is None else drift.astype(f32)
    mask = free.astype(f32)
    v = _inverse_rectified_sigmoid(frac).astype(f32)
    m1, m2 = np.zeros_like(v), np.zeros_like(v)
    start = int(round(warmup * iters))
    for t in range(iters):
        h, slope = _rectified_sigmoid(v)
        grad_out = g32 @ (off32 + step32 * h)
        if drift32 is not None:
            grad_out += drift32
        grad_h = gain * grad_out * step32
        if t >= start and reg > 0:
            rel = (t - start) / max(iters - start, 1)
            b = beta[1] + (beta[0] - beta[1]) * (1.0 - rel)
            centred = 2 * h - 1
            grad_h -= f32(2 * reg * b) * np.sign(centred) * np.abs(centred) ** f32(b - 1)
        grad = grad_h * slope * mask
        m1 = _ADAM_B1 * m1 + (1 - _ADAM_B1) * grad
        m2 = _ADAM_B2 * m2 + (1 - _ADAM_B2) * grad * grad
        m_hat = m1 / f32(1 - _ADAM_B1 ** (t + 1))
        v_hat = m2 / f32(1 - _ADAM_B2 ** (t + 1))
        v -= f32(lr) * m_hat / (np.sqrt(v_hat) + f32(_ADAM_EPS))
    return _rectified_sigmoid(v.astype(np.float64))[0]


# --- Conv weights as matrices -----------------------------------------------------------


def conv_as_matrix(w: np.ndarray, group: int) -> list[np.ndarray]:
    """Per group ``i`` of a Conv weight [Cout, Cin/g, *k], the matrix
    ``w[i·Cout/g : (i+1)·Cout/g].reshape(Cout/g, K).T`` [K = Cin/g·Πk, Cout/g] (copies),
    rows in the order ``(c, *k)`` of :class:`PatchMoments`."""
    arr = np.asarray(w)
    if arr.ndim < 3 or group < 1 or arr.shape[0] % group:
        raise ValueError(
            f"a Conv weight [Cout, Cin/g, *k] with Cout divisible by group={group} is "
            f"needed, got shape {arr.shape}"
        )
    per = arr.shape[0] // group
    return [
        np.ascontiguousarray(arr[i * per : (i + 1) * per].reshape(per, -1).T) for i in range(group)
    ]


def matrix_as_conv(mats: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`conv_as_matrix`: the Conv weight of ``shape`` (group = ``len(mats)``)."""
    group = len(mats)
    if group < 1 or len(shape) < 3 or shape[0] % group:
        raise ValueError(f"{group} matrices do not split a Conv weight of shape {shape}")
    per, k = shape[0] // group, math.prod(shape[1:])
    if any(np.shape(m) != (k, per) for m in mats):
        raise ValueError(f"every matrix must be [{k}, {per}] for a Conv weight of shape {shape}")
    return np.concatenate([np.asarray(m).T.reshape(per, *shape[1:]) for m in mats])


def matrix_qparams(qp: QParams, shape: tuple[int, ...], group_index: int, groups: int) -> QParams:
    """The qparams of group ``group_index``'s matrix (:func:`conv_as_matrix`) of a Conv
    weight of ``shape`` with qparams ``qp``: per tensor unchanged, per output channel
    (axis 0) sliced to the group's columns (axis 1), blocked along axis 1 only for 1×1
    kernels (see the module docstring); anything else raises ``ValueError``."""
    if len(shape) < 3 or groups < 1 or shape[0] % groups or not 0 <= group_index < groups:
        raise ValueError(f"group {group_index} of {groups} does not fit a Conv weight {shape}")
    broadcast_param(qp.scale, shape, qp)  # validates the layout against the shape
    if qp.axis is None:
        return qp
    per = shape[0] // groups
    cols = slice(group_index * per, (group_index + 1) * per)
    axis = qp.axis % len(shape)
    if qp.block_size is None and axis == 0:
        scale, zp = qp.scale.reshape(-1)[cols], qp.zero_point.reshape(-1)[cols]
        return QParams(scale, zp, qp.qtype, axis=1, restricted=qp.restricted)
    if qp.block_size is None or axis != 1:
        raise ValueError(
            f"qparams along axis {axis} of a Conv weight have no matrix form; use per-tensor, "
            "per-output-channel (axis 0) or blocked along axis 1"
        )
    if math.prod(shape[2:]) != 1:
        raise ValueError(
            f"blocked qparams on a Conv weight with kernel {tuple(shape[2:])} are not "
            "supported: a block of input channels at one kernel position is not a run of "
            "rows of the [Cin/g·kh·kw, Cout/g] matrix; only 1x1 kernels are. Use per-channel "
            "qparams, or round this weight to nearest"
        )
    scale = qp.scale[cols].reshape(per, -1).T
    zp = qp.zero_point[cols].reshape(per, -1).T
    return QParams(
        np.ascontiguousarray(scale),
        np.ascontiguousarray(zp),
        qp.qtype,
        axis=0,
        block_size=qp.block_size,
        restricted=qp.restricted,
    )


# --- streaming input moments ------------------------------------------------------------


class _Moments:
    """Streaming ``gram``, ``cross`` and ``rows`` (see the module docstring)."""

    def __init__(self, shape: tuple[int, ...], max_rows: int | None, seed: int) -> None:
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be positive, got {max_rows}")
        self.max_rows = max_rows
        self.seed = seed
        self.gram = np.zeros(shape, np.float64)
        self.cross = np.zeros(shape, np.float64)
        self.rows = 0
        self._rng = np.random.default_rng(seed)

    def _pick(self, count: int) -> npt.NDArray[np.intp] | None:
        """Sorted row indices to keep, or None for all."""
        if self.max_rows is None or count <= self.max_rows:
            return None
        return np.sort(self._rng.choice(count, size=self.max_rows, replace=False))

    def _add(self, rows_q: np.ndarray, rows_f: np.ndarray | None) -> None:
        """Adds rows [..., m, K] (leading axes as ``gram``'s, e.g. groups)."""
        gram = np.swapaxes(rows_q, -1, -2) @ rows_q
        self.gram += gram
        self.cross += gram if rows_f is None else np.swapaxes(rows_q, -1, -2) @ rows_f
        self.rows += rows_q.shape[-2]

    def _config(self) -> tuple[object, ...]:
        return (type(self), self.gram.shape, self.max_rows)

    def merge(self, other: _Moments) -> None:
        """Adds the sums of ``other`` (made with the same settings) to these."""
        if other._config() != self._config():
            raise ValueError(
                f"cannot merge moments made with {other._config()} into {self._config()}"
            )
        self.gram += other.gram
        self.cross += other.cross
        self.rows += other.rows


class DenseMoments(_Moments):
    """Moments of MatMul / Gemm inputs ``x`` [..., K]: every ``x[..., :]`` is a row;
    ``gram`` and ``cross`` are [K, K] (see "Input moments" in the module docstring)."""

    def __init__(self, width: int, *, max_rows: int | None = None, seed: int = 0) -> None:
        if width < 1:
            raise ValueError(f"width must be positive, got {width}")
        super().__init__((width, width), max_rows, seed)
        self.width = width

    def update(self, x_q: np.ndarray, x_f: np.ndarray | None = None) -> None:
        """Adds the rows of ``x_q`` (inputs of the quantized model) and of ``x_f`` (the
        float model's, same shape; None: the same as ``x_q``)."""
        q = self._flat(x_q, "x_q")
        f = None if x_f is None else self._flat(x_f, "x_f")
        if f is not None and f.shape != q.shape:
            raise ValueError(f"x_f has {f.shape[0]} rows, x_q {q.shape[0]}")
        keep = self._pick(q.shape[0])
        if keep is not None:
            q, f = q[keep], None if f is None else f[keep]
        self._add(q.astype(np.float64), None if f is None else f.astype(np.float64))

    def _flat(self, x: np.ndarray, name: str) -> np.ndarray:
        arr = np.asarray(x)
        if arr.ndim < 1 or arr.shape[-1] != self.width:
            raise ValueError(f"{name} must end in width {self.width}, got shape {arr.shape}")
        return arr.reshape(-1, self.width)


class PatchMoments(_Moments):
    """Moments of Conv inputs [N, C, *spatial] (NCHW, NCL, ...) as im2col patches, per
    group: ``gram[i] = Σ P_iᵀP_i`` and ``cross[i] = Σ P_iᵀP_{f,i}``, [g, K, K] with
    ``K = C/g · Πkernel_shape``, patch entries ordered ``(c, *k)`` like
    :func:`conv_as_matrix`. One row per output position of every sample.

    ``strides``, ``pads`` (ONNX order: all begins, then all ends) and ``dilations``
    default to 1, 0 and 1, as ONNX Conv attributes (``auto_pad`` must be resolved to
    ``pads`` by the caller). Memory per update: one batch's patches in float64 (twice
    with ``x_f``), or ``max_rows`` of them (see "Input moments" in the module docstring).
    """

    def __init__(
        self,
        channels: int,
        kernel_shape: Sequence[int],
        strides: Sequence[int] | None = None,
        pads: Sequence[int] | None = None,
        dilations: Sequence[int] | None = None,
        group: int = 1,
        *,
        max_rows: int | None = None,
        seed: int = 0,
    ) -> None:
        d = len(kernel_shape)
        self.kernel_shape = tuple(int(k) for k in kernel_shape)
        self.strides = tuple(int(s) for s in strides) if strides is not None else (1,) * d
        self.pads = tuple(int(p) for p in pads) if pads is not None else (0,) * (2 * d)
        self.dilations = tuple(int(s) for s in dilations) if dilations is not None else (1,) * d
        self.channels, self.group = channels, group
        if (
            d < 1
            or min(self.kernel_shape + self.strides + self.dilations) < 1
            or len(self.strides) != d
            or len(self.dilations) != d
            or len(self.pads) != 2 * d
            or min(self.pads) < 0
        ):
            raise ValueError(
                f"bad Conv attributes: kernel_shape={self.kernel_shape} strides={self.strides} "
                f"pads={self.pads} dilations={self.dilations}"
            )
        if group < 1 or channels < 1 or channels % group:
            raise ValueError(f"channels={channels} is not a positive multiple of group={group}")
        self.width = channels // group * math.prod(self.kernel_shape)
        super().__init__((group, self.width, self.width), max_rows, seed)

    def _config(self) -> tuple[object, ...]:
        conv = (self.kernel_shape, self.strides, self.pads, self.dilations, self.group)
        return (*super()._config(), conv)

    def update(self, x_q: np.ndarray, x_f: np.ndarray | None = None) -> None:
        """Adds the patches of ``x_q`` (inputs of the quantized model) and of ``x_f``
        (the float model's, same shape; None: the same as ``x_q``)."""
        if x_f is not None and np.shape(x_f) != np.shape(x_q):
            raise ValueError(
                f"x_f must have the shape of x_q, got {np.shape(x_f)}, {np.shape(x_q)}"
            )
        q = self._windows(x_q, "x_q")
        f = None if x_f is None else self._windows(x_f, "x_f")
        d = len(self.kernel_shape)
        keep = self._pick(math.prod(q.shape[: d + 1]))
        self._add(self._rows(q, keep), None if f is None else self._rows(f, keep))

    def _windows(self, x: np.ndarray, name: str) -> np.ndarray:
        """Strided view [N, *out, C, *k] of the padded input's patches."""
        arr = np.asarray(x)
        d = len(self.kernel_shape)
        if arr.ndim != d + 2 or arr.shape[1] != self.channels:
            raise ValueError(
                f"{name} must be [N, {self.channels}, <{d} spatial dims>], got shape {arr.shape}"
            )
        padded = np.pad(arr, [(0, 0), (0, 0), *zip(self.pads[:d], self.pads[d:], strict=True)])
        extent = tuple(
            (k - 1) * r + 1 for k, r in zip(self.kernel_shape, self.dilations, strict=True)
        )
        if any(n < e for n, e in zip(padded.shape[2:], extent, strict=True)):
            raise ValueError(f"{name} of shape {arr.shape} is smaller than the dilated kernel")
        view = sliding_window_view(padded, extent, axis=tuple(range(2, d + 2)))
        cut = (slice(None),) * 2 + tuple(slice(None, None, s) for s in self.strides)
        view = view[cut + tuple(slice(None, None, r) for r in self.dilations)]
        return np.moveaxis(view, 1, d + 1)

    def _rows(self, windows: np.ndarray, keep: npt.NDArray[np.intp] | None) -> np.ndarray:
        """Rows [g, m, K] (float64) of the windows, all or those at flat positions ``keep``."""
        d = len(self.kernel_shape)
        if keep is not None:
            windows = windows[np.unravel_index(keep, windows.shape[: d + 1])]
        flat = np.array(windows, dtype=np.float64, order="C").reshape(-1, self.group, self.width)
        rows: np.ndarray = flat.transpose(1, 0, 2)
        return rows

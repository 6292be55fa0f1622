"""Cross-layer equalisation and high-bias absorption (pure numpy).

Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
Correction", §4.1 and §4.2. For two layers ``y = W2 · f(W1 · x + b1) + b2`` with ``f``
positive-homogeneous (``f(s·z) = s·f(z)`` for ``s > 0``: ReLU, LeakyReLU, PReLU, or no
activation), dividing output channel ``i`` of layer 1 (weights and bias) by ``s_i > 0``
and multiplying input channel ``i`` of layer 2 by ``s_i`` leaves ``y`` unchanged. With

    r1_i = max |W1[i, ...]|   (output channel i of layer 1)
    r2_i = max |W2[:, i, ...]| (input channel i of layer 2)
    s_i  = sqrt(r1_i / r2_i)

both ranges become ``sqrt(r1_i · r2_i)``, which the paper shows maximises the product
of the per-channel precisions ``r_i / R`` of the two per-tensor quantized weights.

A weight's layout is a :class:`Layout`: the axis of its output channels, the axis of its
(per-group) input channels and its group count, so that one function serves Conv (any
group, depthwise included), Gemm (``transB`` 0 or 1) and 2-D MatMul weights:

    Conv  [O, C/g, *kernel]   Layout(out_axis=0, in_axis=1, group=g)
    Gemm  transB=1 [N, K]     Layout(0, 1)
    Gemm  transB=0 [K, N]     Layout(1, 0)        MatMul [K, N]   Layout(1, 0)

In a grouped convolution input channel ``c = g·(C/g) + j`` is read, at position ``j``
of the input axis, by the output channels of group ``g`` only; for a depthwise layer
(``C/g = 1``) input channel ``i`` is output channel ``i`` (times its multiplier).

Biases here are effective biases: one value per output channel, added after the
weights (a Gemm's ``beta · C``); turning them back into initializers is the caller's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "ChainResult",
    "Layer",
    "Layout",
    "SCALE_MAX",
    "SCALE_MIN",
    "absorb_high_bias",
    "absorption_shift",
    "equalization_scales",
    "equalize_chain",
    "equalize_pair",
    "ACTIVATION_SCALE_LIMIT",
    "activation_scales",
    "input_ranges",
    "input_response",
    "is_depthwise",
    "output_ranges",
    "range_ratio",
    "scale_inputs",
    "scale_outputs",
]

Array = npt.NDArray[np.float64]

SCALE_MIN = 1e-8
SCALE_MAX = 1e8


@dataclass(frozen=True)
class Layout:
    """Where the channels of a weight are: its output-channel axis, its (per-group)
    input-channel axis, and its number of groups (1 but for grouped convolutions)."""

    out_axis: int
    in_axis: int
    group: int = 1

    def __post_init__(self) -> None:
        if self.group < 1:
            raise ValueError(f"group must be at least 1, not {self.group}")
        if self.out_axis == self.in_axis:
            raise ValueError(f"output and input axes are both {self.out_axis}")

    def out_channels(self, weight: npt.NDArray[np.generic]) -> int:
        return int(weight.shape[self.out_axis])

    def in_channels(self, weight: npt.NDArray[np.generic]) -> int:
        """Input channels of the layer: per-group input channels times groups."""
        return int(weight.shape[self.in_axis]) * self.group

    def grouped(self, weight: npt.ArrayLike) -> Array:
        """``weight`` as ``[group, out/group, in/group, rest]`` (a copy in float64)."""
        w = np.moveaxis(np.asarray(weight, np.float64), (self.out_axis, self.in_axis), (0, 1))
        out_ch, in_ch = w.shape[0], w.shape[1]
        if out_ch % self.group:
            raise ValueError(f"{out_ch} output channels do not split into {self.group} groups")
        grouped: Array = w.reshape(self.group, out_ch // self.group, in_ch, -1).copy()
        return grouped

    def ungrouped(self, grouped: Array, shape: tuple[int, ...]) -> Array:
        """Inverse of :meth:`grouped` for a weight of ``shape``."""
        out_axis, in_axis = self.out_axis % len(shape), self.in_axis % len(shape)
        rest = [n for i, n in enumerate(shape) if i not in (out_axis, in_axis)]
        w = grouped.reshape(shape[out_axis], shape[in_axis], *rest)
        return np.moveaxis(w, (0, 1), (out_axis, in_axis))


@dataclass(frozen=True)
class Layer:
    """One weighted layer of a chain: its weight, effective bias (``None``: none) and
    layout."""

    weight: Array
    bias: Array | None
    layout: Layout


@dataclass(frozen=True)
class ChainResult:
    """The equalised layers, the cumulative scale of each pair (``scales[k]`` divides
    the output channels of ``layers[k]``) and the number of sweeps run."""

    layers: tuple[Layer, ...]
    scales: tuple[Array, ...]
    sweeps: int


def output_ranges(weight: npt.ArrayLike, layout: Layout) -> Array:
    """``r1_i = max |W[i, ...]|`` over everything but output channel ``i``."""
    g = np.abs(layout.grouped(weight))  # [group, out/group, in/group, rest]
    return np.asarray(g.max(axis=(2, 3)), np.float64).reshape(-1)


def input_ranges(weight: npt.ArrayLike, layout: Layout) -> Array:
    """``r2_c = max |W[:, c, ...]|`` over the output channels that read input channel
    ``c`` (those of its group) and all kernel positions. Depthwise: ``max |W[c·m:(c+1)·m]|``
    for channel multiplier ``m``."""
    g = np.abs(layout.grouped(weight))
    return np.asarray(g.max(axis=(1, 3)), np.float64).reshape(-1)


def range_ratio(r1: npt.ArrayLike, r2: npt.ArrayLike) -> float:
    """Mean over channels of ``max(r1, r2) / min(r1, r2)`` (1 when equalised); channels
    where either range is zero or not finite are left out (1.0 if none is left)."""
    a, b = np.asarray(r1, np.float64), np.asarray(r2, np.float64)
    ok = (a > 0) & (b > 0) & np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        return 1.0
    return float(np.mean(np.maximum(a[ok], b[ok]) / np.minimum(a[ok], b[ok])))


def equalization_scales(r1: npt.ArrayLike, r2: npt.ArrayLike) -> Array:
    """``s_i = sqrt(r1_i / r2_i)``, so that ``r1_i / s_i = r2_i · s_i = sqrt(r1_i r2_i)``.

    Degenerate cases: a channel with ``r1_i`` or ``r2_i`` zero (a dead filter or an
    unread input) or not finite gets ``s_i = 1``; every scale is clamped to
    ``[SCALE_MIN, SCALE_MAX] = [1e-8, 1e8]`` so no weight is scaled to 0 or inf.
    """
    a, b = np.asarray(r1, np.float64), np.asarray(r2, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{a.size} output ranges do not match {b.size} input ranges")
    ok = (a > 0) & (b > 0) & np.isfinite(a) & np.isfinite(b)
    s = np.ones_like(a)
    s[ok] = np.sqrt(a[ok] / b[ok])
    return np.clip(s, SCALE_MIN, SCALE_MAX)


def scale_outputs(
    weight: npt.ArrayLike, bias: npt.ArrayLike | None, layout: Layout, s: npt.ArrayLike
) -> tuple[Array, Array | None]:
    """``W[i, ...] / s_i`` and ``b_i / s_i``: output channel ``i`` divided by ``s_i``."""
    w = np.asarray(weight, np.float64)
    g = layout.grouped(w)
    scale = np.asarray(s, np.float64).reshape(layout.group, -1, 1, 1)
    new_w = layout.ungrouped(g / scale, w.shape)
    new_b = None if bias is None else np.asarray(bias, np.float64) / np.reshape(s, -1)
    return new_w, new_b


def scale_inputs(weight: npt.ArrayLike, layout: Layout, s: npt.ArrayLike) -> Array:
    """``W[:, c, ...] · s_c``: input channel ``c`` multiplied by ``s_c`` in every output
    channel that reads it (depthwise: ``W[c] · s_c``). The bias is unchanged."""
    w = np.asarray(weight, np.float64)
    g = layout.grouped(w)
    scale = np.asarray(s, np.float64).reshape(layout.group, 1, -1, 1)
    return layout.ungrouped(g * scale, w.shape)


def _check_pair(first: Layer, second: Layer) -> None:
    out_ch = first.layout.out_channels(first.weight)
    in_ch = second.layout.in_channels(second.weight)
    if out_ch != in_ch:
        raise ValueError(f"{out_ch} output channels feed a layer with {in_ch} input channels")


ACTIVATION_SCALE_LIMIT = 256.0


def activation_scales(r1: Array, second: Layer, flat: Array | None = None) -> Array:
    """Scales that balance activation ranges ``r1``: against layer 2's input ranges
    (``sqrt(r1 / r2)``), or, given ``flat`` (a depthwise layer 2), to make every channel's
    range ``flat`` (``r1 / flat``). Clamped to ``[1/256, 256]``: past what an 8-bit grid
    resolves, a larger scale gains nothing and only inflates layer 1's bias and its
    pre-activation values (a dead channel, range near 0, would otherwise be divided by
    up to 1e8 and overflow its int32 bias)."""
    if flat is None:
        s = equalization_scales(r1, input_ranges(second.weight, second.layout))
    else:
        ok = (r1 > 0) & np.isfinite(r1) & (flat > 0)
        s = np.ones_like(r1)
        s[ok] = r1[ok] / flat[ok]
    return np.clip(s, 1.0 / ACTIVATION_SCALE_LIMIT, ACTIVATION_SCALE_LIMIT)


def is_depthwise(layer: Layer) -> bool:
    """Each output channel reads exactly one input channel (a grouped layer with one
    input channel per group)."""
    return layer.layout.group > 1 and int(layer.weight.shape[layer.layout.in_axis]) == 1


def _rescaled(first: Layer, second: Layer, s: Array) -> tuple[Layer, Layer]:
    w1, b1 = scale_outputs(first.weight, first.bias, first.layout, s)
    w2 = scale_inputs(second.weight, second.layout, s)
    return Layer(w1, b1, first.layout), Layer(w2, second.bias, second.layout)


def equalize_pair(
    first: Layer, second: Layer, r1: npt.ArrayLike | None = None
) -> tuple[Layer, Layer, Array]:
    """One equalisation step of a pair: the two layers rescaled and the scales ``s``.
    ``r1``: the ranges to balance against layer 2's input ranges (default: layer 1's
    output ranges; see :func:`equalize_chain` for activation ranges)."""
    _check_pair(first, second)
    left = output_ranges(first.weight, first.layout) if r1 is None else r1
    s = equalization_scales(left, input_ranges(second.weight, second.layout))
    one, two = _rescaled(first, second, s)
    return one, two, s


def equalize_chain(
    layers: Sequence[Layer],
    *,
    tolerance: float = 1e-4,
    max_sweeps: int = 50,
    activations: Sequence[npt.ArrayLike | None] | None = None,
) -> ChainResult:
    """Equalise every consecutive pair of a chain ``L0 → L1 → … → Ln`` (n ≥ 1).

    Pairs share layers (``L1`` is the second of one pair and the first of the next), so
    one sweep over the pairs does not leave them all equalised; sweeps repeat until the
    largest relative change ``|s_i - 1|`` of any cumulative scale in a sweep is below
    ``tolerance``, or ``max_sweeps`` sweeps ran. A single pair settles in one sweep
    (the second only confirms it).

    ``activations[k]`` (optional, per pair): the per-channel range ``a_i`` of the
    activation between layers ``k`` and ``k + 1``, measured before any scaling. Given
    it, that pair balances the activation against layer ``k + 1``'s input ranges
    instead of layer ``k``'s output ranges: ``s_i = sqrt((a_i / S_i) / r2_i)`` with
    ``S_i`` the pair's scale so far, so both become ``sqrt(a_i · r2_i)``. That is the
    right balance when layer ``k``'s weights have one scale per output channel (which
    absorbs any ``s_i``) and the activation has one scale for the whole tensor (the
    same balance as SmoothQuant's with α = ½). When layer ``k + 1`` is depthwise (each
    output channel reads one input channel, so its per-output-channel weight scales
    absorb any ``s_i`` too), nothing on the weight side is worth balancing and the
    activation's channels are made equal instead: ``s_i = a_i / max(a)``, every channel
    then using the whole integer grid.
    """
    if len(layers) < 2:
        raise ValueError(f"a chain needs at least 2 layers, not {len(layers)}")
    if max_sweeps < 1:
        raise ValueError(f"max_sweeps must be at least 1, not {max_sweeps}")
    current = list(layers)
    for a, b in zip(current, current[1:], strict=False):
        _check_pair(a, b)
    acts = list(activations) if activations is not None else [None] * (len(current) - 1)
    if len(acts) != len(current) - 1:
        raise ValueError(f"{len(acts)} activation ranges for {len(current) - 1} pairs")
    scales = [np.ones(a.layout.out_channels(a.weight)) for a in current[:-1]]
    sweeps = 0
    while sweeps < max_sweeps:
        sweeps += 1
        change = 0.0
        for k in range(len(current) - 1):
            act = acts[k]
            r1 = None if act is None else np.asarray(act, np.float64).reshape(-1) / scales[k]
            if r1 is None:
                current[k], current[k + 1], s = equalize_pair(current[k], current[k + 1])
            else:
                target = np.full_like(r1, float(np.max(r1, initial=0.0)))
                r2 = target if is_depthwise(current[k + 1]) else None
                s = activation_scales(r1, current[k + 1], r2)
                current[k], current[k + 1] = _rescaled(current[k], current[k + 1], s)
            scales[k] = scales[k] * s
            change = max(change, float(np.max(np.abs(s - 1.0), initial=0.0)))
        if change < tolerance:
            break
    return ChainResult(tuple(current), tuple(scales), sweeps)


def absorption_shift(pre_min: npt.ArrayLike) -> Array:
    """``c_i = max(0, pre_min_i)`` for an activation that is the identity on ``[0, ∞)``
    (ReLU, LeakyReLU, PReLU); a non-finite minimum gives ``c_i = 0``.

    ``f(z - c) = f(z) - c`` wherever ``z ≥ c ≥ 0``, which holds for every value of the
    data ``pre_min`` was measured on, so the shift is exact there and only approximate
    for inputs whose pre-activation goes below the measured minimum.
    """
    m = np.asarray(pre_min, np.float64).reshape(-1)
    return np.where(np.isfinite(m), np.maximum(m, 0.0), 0.0)


def input_response(weight: npt.ArrayLike, layout: Layout, c: npt.ArrayLike) -> Array:
    """Per output channel, what the layer adds for a constant input ``c`` (one value per
    input channel): ``Σ_i Σ_kernel W[o, i, k] · c_{g(o)·I + i}``, summing within the
    group of ``o``. For a convolution this is exact only where the kernel lies wholly
    inside the input (no zero padding)."""
    g = layout.grouped(weight)  # [group, out/group, in/group, rest]
    taps = g.sum(axis=3)
    cc = np.asarray(c, np.float64).reshape(layout.group, 1, -1)
    if cc.shape[2] != taps.shape[2]:
        raise ValueError(f"{cc.size} shifts do not match {taps.shape[2] * layout.group} inputs")
    return np.asarray((taps * cc).sum(axis=2), np.float64).reshape(-1)


def absorb_high_bias(
    first: Layer, second: Layer, pre_min: npt.ArrayLike
) -> tuple[Layer, Layer, Array]:
    """Move ``c = absorption_shift(pre_min)`` from layer 1's bias into layer 2's:
    ``b1 - c`` and ``b2 + W2 ∗ c`` (:func:`input_response`). A missing bias counts as
    zeros and comes back as an array. Returns the two layers and ``c``.

    ``pre_min`` is the per-channel minimum of layer 1's output *before* the activation,
    in the current scaling (divide minima measured before equalisation by the pair's
    scales). Exact on the data the minima come from, except at the zero-padded borders
    of a convolution layer 2 (callers skip those).
    """
    _check_pair(first, second)
    c = absorption_shift(pre_min)
    out_ch = first.layout.out_channels(first.weight)
    if c.size != out_ch:
        raise ValueError(f"{c.size} minima do not match {out_ch} output channels")
    b1 = np.zeros(out_ch) if first.bias is None else np.asarray(first.bias, np.float64)
    out2 = second.layout.out_channels(second.weight)
    b2 = np.zeros(out2) if second.bias is None else np.asarray(second.bias, np.float64)
    b2 = b2 + input_response(second.weight, second.layout, c)
    return (
        Layer(first.weight, b1 - c, first.layout),
        Layer(second.weight, b2, second.layout),
        c,
    )

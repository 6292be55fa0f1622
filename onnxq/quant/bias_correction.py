"""Bias correction (pure numpy): the shift of a layer's mean output that rounding its
weights causes, so the bias can take it back.

A node ``y = W ∗ x + b`` with quantized weights ``W̃ = W + ε`` gives
``E[ỹ] = E[y] + ε ∗ E[x]``: rounding errors that do not average out over a filter move
every output of a channel by the same amount, and the next layers (ReLU, hard-swish,
normalisations) turn that shift into errors that no longer cancel. With ``E[x]`` the
per-channel mean of the node's input over the calibration data, ``b' = b - ε ∗ E[x]``
restores the mean (Nagel et al. 2019, "Data-free quantization", §4.2, with the
empirical mean in place of batch-norm statistics).

For a convolution every output position sees each filter tap; the shift of output
channel ``o`` is ``Σ_i Σ_taps ε[o, i, taps] · E[x_{g(o)·I + i}]`` (``I`` input channels
per group). It is exact where the kernel lies wholly inside the input and approximate
at zero-padded borders. For ``x @ W`` (MatMul, Gemm) it is ``E[x] @ ε``, exact.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["conv_shift", "matmul_shift"]


def conv_shift(
    error: npt.ArrayLike, mean: npt.ArrayLike, group: int = 1
) -> npt.NDArray[np.float64]:
    """Mean output shift per output channel of a convolution whose weight (layout
    ``[O, C/group, *kernel]``) is off by ``error``, for input channel means ``mean``."""
    err = np.asarray(error, np.float64)
    m = np.asarray(mean, np.float64).reshape(-1)
    out_channels, per_group = err.shape[0], err.shape[1]
    if group < 1 or out_channels % group or m.size != per_group * group:
        raise ValueError(
            f"weight {err.shape} with group {group} does not match {m.size} input channels"
        )
    taps = err.reshape(out_channels, per_group, -1).sum(axis=2)  # [O, C/group]
    by_group = m.reshape(group, per_group)  # the inputs each group reads
    rows = np.repeat(np.arange(group), out_channels // group)
    out: np.ndarray = np.einsum("oc,oc->o", taps, by_group[rows])
    return out


def matmul_shift(error: npt.ArrayLike, mean: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Mean output shift per output column of ``x @ W`` with ``W`` ([K, N]) off by
    ``error``, for the means ``mean`` ([K]) of the columns of ``x``."""
    err = np.asarray(error, np.float64)
    m = np.asarray(mean, np.float64).reshape(-1)
    if err.ndim != 2 or err.shape[0] != m.size:
        raise ValueError(f"weight {err.shape} does not match {m.size} input columns")
    return m @ err

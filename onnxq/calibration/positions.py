"""The positions of a padded batch that count. A sequence model fed an attention mask
(``attention_mask``: 1 for a real token, 0 for padding, one row a sample; the input is
found by :func:`onnxq.graph.padding.padding_mask`) computes every position, but a pooled
output (a sentence embedding, a classifier's first token) never reads the padded ones:
attention masks them out, pooling weights them by the mask. Statistics that stand for the
error a quantized weight adds to the outputs (bias correction's input means, GPTQ's and
AdaRound's input moments) are taken over the real positions only: on MiniLM's calibration
data 69 % of the positions are padding, whose activations differ from the tokens', and
means over all of them made bias correction cost 1.3 dB of output SQNR instead of gaining
0.45 dB. (A per-token output still holds the padded positions, which the output check
compares like the rest.) Pure numpy."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["at_real", "real_positions", "rows_at"]


def real_positions(feed: Mapping[str, np.ndarray], name: str | None) -> np.ndarray | None:
    """The ``[batch, positions]`` boolean mask of the real positions of ``feed``, from its
    input ``name``; None when there is no such input, or it holds values other than 0 and
    1 (then it is not a padding mask), or it marks every position."""
    if name is None or name not in feed:
        return None
    mask = np.asarray(feed[name])
    if mask.ndim != 2 or not np.isin(mask, (0, 1)).all():
        return None
    real = mask.astype(bool)
    return None if real.all() else real


def rows_at(arr: np.ndarray, axis: int, real: np.ndarray | None) -> np.ndarray | None:
    """The rows of ``arr`` (one per position, one column per index of ``axis``) at the
    real positions: when ``arr``'s two leading axes are the mask's ``[batch, positions]``
    and ``axis`` lies after them (a hidden state ``[batch, positions, channels]``, or
    ``[batch, positions, heads, width]``), or ``arr`` is those positions flattened,
    ``[batch · positions, channels]`` (before a Gemm); else None (the tensor is not laid
    out by position, e.g. attention scores ``[batch, heads, positions, positions]``)."""
    if real is None or arr.ndim < 2:
        return None
    axis %= arr.ndim
    if arr.ndim == 2:
        if axis != 1 or arr.shape[0] != real.size or real.shape[1] == 1:
            return None
        flat: np.ndarray = arr[real.reshape(-1)]
        return flat
    if arr.shape[:2] != real.shape or axis < 2:
        return None
    picked = np.moveaxis(arr[real], axis - 1, -1)  # [real positions, ..., channels]
    rows: np.ndarray = picked.reshape(-1, arr.shape[axis])
    return rows


def at_real(x: np.ndarray, real: np.ndarray | None) -> np.ndarray:
    """A layer input's rows (the last axis its channels) at the real positions
    (:func:`rows_at`), or ``x`` itself when it is not laid out by position."""
    picked = rows_at(x, -1, real)
    return x if picked is None else picked

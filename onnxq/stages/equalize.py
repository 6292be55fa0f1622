"""Stage: cross-layer equalisation of the prepared model before anything is calibrated
(``--equalize``; :mod:`onnxq.graph.passes.equalize`, maths in :mod:`onnxq.quant.equalize`).

Scaling alone needs no data and leaves the float function as it was. When activations
are quantized and calibration data is given, one session over the prepared model measures
the per-channel minimum and maximum of each layer 1's output (before its activation):

* with ``--absorb-high-bias``, the minima, means and deviations drive high-bias
  absorption (it narrows activation ranges; weights-only and dynamic runs gain nothing
  from it) by no more than :func:`absorbable_floor`. Absorption is exact on the data it
  was measured on and nowhere else: PP-OCR rec's float output moved by 1.9 % on 20 of its
  evaluation images and by 99 % on 50 (an input that drives a channel below its floor
  flips a time step's argmax). So it is opt-in, and the report measures the changed float
  model against the original, as for ``--relu6-to-relu``;
* the maxima, when weights have a scale per output channel (any granularity but
  ``tensor``), make each pair balance the activation between the layers against layer
  2's input ranges instead of layer 1's weights: per-channel weight scales absorb any
  rescaling of layer 1, so balancing its weights gains nothing, while the activation,
  one scale for the whole tensor, is what loses (PP-OCR rec at int8: string agreement
  0.62 without equalisation, 0.44 balancing weights, 0.68 balancing the activation).

Without data, or for per-tensor weights, pairs balance the two layers' weights (the
paper's data-free rule). A depthwise layer 2 with per-channel weights absorbs any scale
too, so there the activation's channels are simply made equal
(:func:`onnxq.quant.equalize.equalize_chain`).

With ``--relu6-to-relu`` or high-bias absorption the float function changes; that session
then stays the reference the report measures the final model against, and the change of
the float model alone is measured too (:attr:`Equalized.float_change`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from onnxq.calibration.collect import ChannelStats, FloatSession
from onnxq.config import Granularity, QuantConfig
from onnxq.data import Dataset
from onnxq.graph.passes.equalize import equalize, link_tensors
from onnxq.graph.passes.result import Change, ChangeKind
from onnxq.report.fidelity import Fidelity
from onnxq.stages.prepare import PreparedModel

__all__ = ["Equalized", "equalized"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Equalized:
    """The model to plan on, what equalisation did, and the float model's own session
    when the float function changed (ReLU6 replaced), else None."""

    prepared: PreparedModel
    changes: tuple[Change, ...] = ()
    detail: str = ""
    original: FloatSession | None = None
    float_change: Fidelity | None = None  # the changed float model against the original

    @property
    def rescaled(self) -> frozenset[str]:
        """Tensors whose channels equalisation scaled."""
        return frozenset(c.name for c in self.changes if c.kind is ChangeKind.TENSOR_RESCALED)

    @property
    def reported(self) -> tuple[Change, ...]:
        """The changes the report lists (pairs, skips, absorptions, replacements)."""
        return tuple(c for c in self.changes if c.kind is not ChangeKind.TENSOR_RESCALED)

    @property
    def changed_function(self) -> bool:
        """Whether the float function changed: a ReLU6 replaced, or high bias absorbed
        (exact on the calibration data, not beyond)."""
        kinds = (ChangeKind.ACTIVATION_REPLACED, ChangeKind.BIAS_ABSORBED)
        return any(c.kind in kinds for c in self.changes)


def equalized(
    prepared: PreparedModel,
    config: QuantConfig,
    data: Dataset | None,
    *,
    batch_size: int,
    threads: int = 0,
) -> Equalized:
    """``prepared`` equalised as ``config`` asks (unchanged without ``--equalize``)."""
    if not config.equalize:
        return Equalized(prepared)
    heads = link_tensors(prepared.model, relu6_to_relu=config.relu6_to_relu)
    original: FloatSession | None = None
    observed: dict[str, ChannelStats] = {}
    per_tensor = config.weights.granularity is Granularity.TENSOR
    wanted = config.absorb_high_bias or not per_tensor  # what the statistics serve
    if data is not None and config.needs_ranges and heads and wanted:
        original = FloatSession(prepared.model, threads=threads, extra=heads)
        batch = original.affordable_batch(data, batch_size)
        original.release_wide()  # the statistics read the heads: its narrow session has them
        observed = original.channel_stats(data, heads, batch_size=batch)
    result = equalize(
        prepared.model,
        relu6_to_relu=config.relu6_to_relu,
        pre_activation_min={t: st.min for t, st in observed.items()},
        # per-tensor weights: balance the two layers' weights (the activation's range
        # only matters when layer 1 has a scale per output channel)
        pre_activation_max=None if per_tensor else {t: st.max for t, st in observed.items()},
        absorb_floor={
            t: absorbable_floor(st) for t, st in observed.items() if config.absorb_high_bias
        },
    )
    log.info("equalisation: %s", result.detail or "no layer pairs")
    steps = (*prepared.steps, result.detail) if result.changed else prepared.steps
    out = Equalized(
        replace(prepared, model=result.model, steps=steps), result.changes, result.detail
    )
    if not out.changed_function:
        return out
    if original is None:
        original = FloatSession(prepared.model, threads=threads)
    return replace(out, original=original)


def absorbable_floor(stats: ChannelStats) -> np.ndarray:
    """How far high-bias absorption may shift each channel down: the paper's
    ``β − 3γ`` (mean minus three standard deviations of the pre-activation), and never
    more than the minimum seen. The minimum alone is exact on the calibration data only:
    a PP-OCR recognizer's evaluation images went below it, and its float output moved by
    99 %."""
    return np.asarray(np.minimum(stats.min, stats.mean - 3.0 * stats.std))

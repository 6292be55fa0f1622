"""Stage: cross-layer equalisation of the prepared model before anything is calibrated
(``--equalize``; :mod:`onnxq.graph.passes.equalize`, maths in :mod:`onnxq.quant.equalize`).

Scaling alone needs no data and leaves the float function as it was. High-bias absorption
needs the per-channel minimum of each layer 1's pre-activation output: measured here on
the calibration data, in one session over the prepared model, when activations are
quantized (absorption narrows activation ranges; weights-only and dynamic runs gain
nothing from it). With ``--relu6-to-relu`` the float function changes; that session then
stays the reference the report measures the final model against, and the change of the
float model alone is measured too (:attr:`Equalized.float_change`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from onnxq.calibration.collect import FloatSession
from onnxq.config import QuantConfig
from onnxq.data import Dataset
from onnxq.graph.passes.equalize import absorption_tensors, equalize
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
    def changed_function(self) -> bool:
        return any(c.kind is ChangeKind.ACTIVATION_REPLACED for c in self.changes)


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
    heads = absorption_tensors(prepared.model, relu6_to_relu=config.relu6_to_relu)
    original: FloatSession | None = None
    minima = None
    if data is not None and config.needs_ranges and heads:
        original = FloatSession(prepared.model, threads=threads, extra=heads)
        batch = original.affordable_batch(data, batch_size)
        minima = original.minima(data, heads, batch_size=batch)
    result = equalize(prepared.model, relu6_to_relu=config.relu6_to_relu, pre_activation_min=minima)
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

"""Stage: the static plan and its activation ranges — observed on the calibration data or
read from a ranges file — with the remedy for activations one scale cannot hold applied
(those stay float and the plan is made again without them)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from onnxq.calibration.collect import FloatSession, MeansWanted, Progress
from onnxq.calibration.observers import TensorRange
from onnxq.calibration.ranges import RangesFile
from onnxq.calibration.remedy import auto_remedy
from onnxq.config import CalibrationConfig, QuantConfig
from onnxq.data import Dataset
from onnxq.errors import RangesError
from onnxq.graph.plan import QuantPlan, make_plan
from onnxq.stages.prepare import PreparedModel
from onnxq.stages.weights import bias_means

__all__ = ["RangeSource", "StaticRanges", "static_ranges", "with_aliases"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RangeSource:
    """Where activation ranges come from: data to calibrate on, or a ranges file."""

    floats: FloatSession
    data: Dataset | None
    file: RangesFile | None
    path: str
    calibration: CalibrationConfig
    progress: Progress | None = None
    keep_outputs: bool = False  # keep the float outputs for the in-sample report

    def get(self, roots: Sequence[str], means: MeansWanted | None = None) -> dict[str, TensorRange]:
        """Ranges of ``roots``; a calibration pass also sums ``means`` (tensors and their
        channel axes) over the samples bias correction reads (:class:`MeansWanted`)."""
        if self.file is not None:
            missing = [t for t in roots if t not in self.file.tensors]
            if missing:
                raise RangesError(
                    f"ranges file '{self.path}' has no range for tensor '{missing[0]}' "
                    f"({len(missing)} missing); recalibrate with this onnxq version"
                )
            return {t: self.file.tensors[t] for t in roots}
        if self.data is None:
            raise RangesError("static quantization needs --data or --ranges")
        return self.floats.observe(
            self.data,
            roots,
            self.calibration,
            self.progress,
            keep_outputs=self.keep_outputs,
            means=means,
        )

    def describe(self) -> str:
        if self.file is not None:
            return f"{self.path} ({self.file.method.value})"
        return f"calibrated on {self.path} ({self.calibration.method.value})"


@dataclass(frozen=True)
class StaticRanges:
    plan: QuantPlan
    observed: dict[str, TensorRange]  # ranges of every root seen so far (the rewrite's)
    forbidden: dict[str, str]  # activation tensors kept float, with why
    source: str  # for the report
    auto_sqnr: float  # the remedy's SQNR floor as applied (0 with a foreign ranges file)


def with_aliases(forbidden: Mapping[str, str], aliases: Mapping[str, str]) -> dict[str, str]:
    """``forbidden`` plus the integer-domain tensors that share a forbidden root's range."""
    return {**forbidden, **{t: forbidden[r] for t, r in aliases.items() if r in forbidden}}


def static_ranges(
    prepared: PreparedModel, config: QuantConfig, source: RangeSource
) -> StaticRanges:
    """The plan, its activation ranges, where they come from and the tensors kept float."""
    plan = make_plan(prepared.model, config)
    if not plan.roots:
        why = "none needed (weights only)" if config.weights_only else "none needed"
        return StaticRanges(plan, {}, {}, why, config.auto_sqnr)
    auto_sqnr = config.auto_sqnr
    acts = config.activations
    if source.file is not None:
        source.file.check_model(prepared.fingerprint, source.path)
        source.file.check_scheme(acts.scheme, source.path, acts.bits)
        if not source.file.fits(acts.scheme, acts.bits):
            log.info("ranges file made for another activation width: no SQNR remedy")
            auto_sqnr = 0.0
    # bias correction's input means are summed by the same pass (weight_choices reads them)
    observed = source.get(plan.roots, bias_means(prepared.model, plan, config, source.data))
    forbidden, observed = auto_remedy(observed, acts.bits, auto_sqnr)
    if forbidden:
        forbidden = with_aliases(forbidden, plan.aliases)
        log.info("keeping %d activation tensors in float", len(forbidden))
        plan = make_plan(prepared.model, config, forbidden)
        missing = [t for t in plan.roots if t not in observed]
        if missing:
            observed.update(source.get(missing))
    return StaticRanges(plan, observed, forbidden, source.describe(), auto_sqnr)

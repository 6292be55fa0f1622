"""Stage: the output check. The candidate runs next to the float model on calibration
samples; when its outputs miss the target, the decisions that cost the most are kept
float (:mod:`onnxq.tuning.fit`, re-planning through the :class:`Replanner`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from onnxq.calibration.collect import FloatSession, Progress
from onnxq.config import CalibrationConfig, QuantConfig
from onnxq.data import Dataset
from onnxq.graph.candidate import Candidate
from onnxq.runtime import Runner
from onnxq.stages.replan import Replanner
from onnxq.tuning.check import make_check_set
from onnxq.tuning.fit import FitReport, fit_target

__all__ = ["Checked", "output_check"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checked:
    candidate: Candidate
    report: FitReport | None  # None: the check did not run
    runner: Runner | None  # the candidate's session, when the check made one


def output_check(
    first: Candidate,
    replanner: Replanner,
    floats: FloatSession,
    data: Dataset | None,
    config: QuantConfig,
    calibration: CalibrationConfig,
    progress: Progress | None,
) -> Checked:
    """The candidate to write: ``first``, or one with the costliest decisions undone."""
    if not config.target.enabled:
        return Checked(first, None, None)
    if data is None:
        log.info("the output check needs calibration data (--data): skipped")
        return Checked(first, None, None)
    if progress is not None:
        progress("output check", 0, 1)
    check_set = make_check_set(
        floats, data, batch_size=calibration.batch_size, task=config.target.task
    )
    if not check_set.outputs:
        log.info("the output check has no float output with signal to compare: skipped")
        return Checked(first, None, None)
    fitted = fit_target(
        floats.model, first, replanner, check_set, config.target, threads=floats.threads
    )
    if progress is not None:
        progress("output check", 1, 1)
    return Checked(fitted.candidate, fitted.report, fitted.runner)

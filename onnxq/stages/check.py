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
from onnxq.report.fidelity import KnownOutputs
from onnxq.runtime import Runner
from onnxq.stages.replan import Replanner
from onnxq.tuning.check import CheckSet, make_check_set
from onnxq.tuning.fit import FitReport, fit_target

__all__ = ["Checked", "check_set", "output_check", "unchecked"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checked:
    candidate: Candidate
    report: FitReport | None  # None: the check did not run
    runner: Runner | None  # the candidate's session, when the check made one
    # the candidate's graph outputs on the check samples, with the float ones, when the
    # check ran it (the report's in-sample fidelity starts from them)
    outputs: KnownOutputs | None = None


def check_set(
    floats: FloatSession,
    data: Dataset | None,
    config: QuantConfig,
    calibration: CalibrationConfig,
) -> CheckSet | None:
    """The samples the output check runs and the float outputs it compares them with;
    None when the check does not run (turned off, no data, no output with signal)."""
    if not config.target.enabled:
        return None
    if data is None:
        log.info("the output check needs calibration data (--data): skipped")
        return None
    checks = make_check_set(
        floats, data, batch_size=calibration.batch_size, task=config.target.task
    )
    if not checks.outputs:
        log.info("the output check has no float output with signal to compare: skipped")
        return None
    return checks


def unchecked(
    candidate: Candidate, checks: CheckSet | None, threads: int, runner: Runner | None = None
) -> Checked:
    """``candidate`` before the check, with the session the check would run it in (when
    the check runs): timing it first (:mod:`onnxq.stages.latency`) makes no extra session.
    ``runner``: ``candidate``'s session already made (by the timing), taken when it
    fetches every compared tensor (they are graph outputs: no Softmax before them)."""
    if checks is None:
        return Checked(candidate, None, None)
    if runner is not None and set(checks.outputs) <= set(runner.output_names):
        return Checked(candidate, None, runner)
    return Checked(
        candidate, None, checks.runner(candidate.model, threads=threads, record_graph=True)
    )


def output_check(
    first: Checked,
    replanner: Replanner,
    floats: FloatSession,
    checks: CheckSet | None,
    config: QuantConfig,
    progress: Progress | None,
) -> Checked:
    """The candidate to write: ``first``, or one with the costliest decisions undone
    (``checks``: from :func:`check_set`; None: no check). ``first``'s session (from
    :func:`unchecked`: it fetches the compared tensors) runs its first comparison."""
    if checks is None:
        return first
    if progress is not None:
        progress("output check", 0, 1)
    if first.runner is None:
        first = unchecked(first.candidate, checks, floats.threads)
    assert first.runner is not None
    fitted = fit_target(
        floats.model,
        first.candidate,
        replanner,
        checks,
        config.target,
        threads=floats.threads,
        first_runner=first.runner,
        release=floats.release_reference,  # the search runs no float model
        uncorrected=replanner.uncorrected(),
    )
    if progress is not None:
        progress("output check", 1, 1)
    return Checked(fitted.candidate, fitted.report, fitted.runner, fitted.outputs)

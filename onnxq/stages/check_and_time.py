"""Stage: the output check and the latency timing, in the order ``--optimize-for`` asks.
With ``balanced`` (the default) the unchecked int8 model is timed first
(:func:`onnxq.stages.latency.latency_preview`), and the check checks what the timing
chose: the weights-only model when int8 ran no faster, so no check runs on an int8 model
that is not written; the timing is then settled
(:func:`onnxq.stages.latency.settle_preview`). The other settings check, then time. When
a timing after the check replaces the checked int8 model by the weights-only one, that
one is checked too, and a dynamic model that ``latency`` writes is measured on the check
samples (the int8 check's kept-float nodes stay float in it): the report's check is
always of the model written."""

from __future__ import annotations

from dataclasses import dataclass, replace

from onnxq.calibration.collect import FloatSession, Progress
from onnxq.config import CalibrationConfig, OptimizeFor, QuantConfig
from onnxq.data import Dataset
from onnxq.graph.candidate import Candidate
from onnxq.report.latency import DYNAMIC, INT8, LatencyCheck
from onnxq.stages.check import Checked, check_set, output_check, unchecked
from onnxq.stages.latency import latency_choice, latency_preview, settle_preview
from onnxq.stages.replan import Replanner
from onnxq.tuning.check import CheckSet

__all__ = ["CheckAndTime"]


@dataclass(frozen=True)
class CheckAndTime:
    floats: FloatSession
    config: QuantConfig
    calibration: CalibrationConfig
    threads: int
    progress: Progress | None = None

    def __call__(
        self,
        replanner: Replanner,
        first: Candidate,
        calib: Dataset | None,
        evaluation: Dataset | None,
    ) -> tuple[Checked, LatencyCheck | None]:
        """The candidate to write, checked, with its timing against float (None: not
        timed); ``first``: the int8 candidate as planned."""
        floats, config, threads = self.floats, self.config, self.threads
        timing = calib or evaluation
        # the wide session (the batch-sizing probe, GPTQ): a re-plan that observes more
        # builds what it needs again
        floats.release_wide(calib, evaluation)
        checks = check_set(floats, calib, config, self.calibration)
        start = unchecked(first, checks, threads)
        preview = latency_preview(start, replanner, floats, timing, config, threads)
        if preview is None:
            checked = output_check(start, replanner, floats, checks, config, self.progress)
            if config.optimize_for is OptimizeFor.BALANCED:  # nothing to time on: said once
                return checked, None
            timed = latency_choice(checked, replanner, floats, timing, config, threads)
            return self._as_written(timed, checked, checks, replanner)
        chosen, builder = preview.chosen, replanner
        if preview.kind is not INT8:  # weights-only: checked in the check's own session
            del start  # int8's session, not written: released
            if checks is not None:
                chosen = unchecked(chosen.candidate, checks, threads, chosen.runner)
                preview = replace(preview, chosen=Checked(chosen.candidate, None, None))
            builder = replanner.weights_only()
        checked = output_check(chosen, builder, floats, checks, config, self.progress)
        settled = settle_preview(preview, checked, replanner, floats, timing, config, threads)
        return self._as_written(settled, checked, checks, replanner)

    def _as_written(
        self,
        timed: tuple[Checked, LatencyCheck | None],
        checked: Checked,
        checks: CheckSet | None,
        replanner: Replanner,
    ) -> tuple[Checked, LatencyCheck | None]:
        """``timed`` with the output check of the model it writes: a weights-only model a
        timing chose after the check had checked int8 is checked itself (usually one
        comparison), a dynamic one measured (:meth:`_dynamic_measured`), so that the
        report, ``--strict`` and the kept-float record describe the written model."""
        written, timing = timed
        if checks is None or timing is None or written.candidate is checked.candidate:
            return timed
        if timing.written is DYNAMIC:
            return self._dynamic_measured(written, checked, checks), timing
        start = unchecked(written.candidate, checks, self.threads, written.runner)
        rechecked = output_check(
            start, replanner.weights_only(), self.floats, checks, self.config, self.progress
        )
        return rechecked, timing

    def _dynamic_measured(self, written: Checked, checked: Checked, checks: CheckSet) -> Checked:
        """The dynamic model ``latency`` wrote, with the int8 check's report measured on
        it: the nodes that check kept float stay float in it too (they are excluded), and
        ``after`` is the dynamic model's own comparison on the check samples (it cannot be
        re-planned, so nothing is searched)."""
        if checked.report is None:
            return written
        runner = checks.runner(written.candidate.model, threads=self.threads)
        # what the int8 check said of its own model (a search skipped, a correction
        # undone) is not said of this one
        measured = replace(
            checked.report,
            float_tensors=(),
            after=checks.run(runner),
            unsearched=None,
            uncorrected_db=None,
        )
        return Checked(written.candidate, measured, written.runner)

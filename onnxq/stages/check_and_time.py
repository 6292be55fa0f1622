"""Stage: the output check and the latency timing, in the order ``--optimize-for`` asks.
With ``balanced`` (the default) the unchecked int8 model is timed first
(:func:`onnxq.stages.latency.latency_preview`), and the check checks what the timing
chose: the weights-only model when int8 ran slower, so no check runs on an int8 model
that is not written; the timing is then settled
(:func:`onnxq.stages.latency.settle_preview`). The other settings check, then time."""

from __future__ import annotations

from dataclasses import dataclass, replace

from onnxq.calibration.collect import FloatSession, Progress
from onnxq.config import CalibrationConfig, OptimizeFor, QuantConfig
from onnxq.data import Dataset
from onnxq.graph.candidate import Candidate
from onnxq.report.latency import INT8, LatencyCheck
from onnxq.stages.check import Checked, check_set, output_check, unchecked
from onnxq.stages.latency import latency_choice, latency_preview, settle_preview
from onnxq.stages.replan import Replanner

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
            return latency_choice(checked, replanner, floats, timing, config, threads)
        chosen, builder = preview.chosen, replanner
        if preview.kind is not INT8:  # weights-only: checked in the check's own session
            del start  # int8's session, not written: released
            if checks is not None:
                chosen = unchecked(chosen.candidate, checks, threads)
                preview = replace(preview, chosen=Checked(chosen.candidate, None, None))
            builder = replanner.weights_only()
        checked = output_check(chosen, builder, floats, checks, config, self.progress)
        return settle_preview(preview, checked, replanner, floats, timing, config, threads)

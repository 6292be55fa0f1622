"""Stage: the written model as onnxruntime runs it — which quantized nodes became integer
kernels (read from the candidate's own session) — and its fidelity against the float
model on the evaluation data (the float session is the reference)."""

from __future__ import annotations

import logging

from onnxq.calibration.collect import FloatSession, Progress
from onnxq.data import Dataset
from onnxq.graph.candidate import Candidate
from onnxq.graph.external import uses_external_data
from onnxq.report.fidelity import Fidelity, KnownOutputs, Outputs, evaluate
from onnxq.report.preflight import RuntimePreview, runtime_preview
from onnxq.runtime import Runner

__all__ = ["IN_SAMPLE_BYTES", "candidate_session", "measure", "runtime_of"]

log = logging.getLogger(__name__)

IN_SAMPLE_BYTES = 2**32  # float activations of the calibration samples the report runs


def candidate_session(candidate: Candidate, runner: Runner | None, threads: int) -> Runner:
    """The candidate's session: the output check's when it made one, else a new one.
    Made before the model is written, so only a model onnxruntime loads is written."""
    if runner is not None and runner.optimized_nodes is not None:
        return runner
    # a model with external data: no packed second copy of its weights (about half the
    # memory; docs/large_models.md); fidelity runs on it are slower
    return Runner(
        candidate.model,
        threads=threads,
        what="quantized model",
        record_graph=True,
        prepack=not uses_external_data(candidate.model),
    )


def runtime_of(candidate: Candidate, runner: Runner) -> RuntimePreview:
    """Which quantized nodes onnxruntime's CPU provider runs as integer kernels."""
    runtime = runtime_preview(runner.optimized_nodes or [], candidate.decisions)
    if runtime.float_kernels:
        log.info(
            "onnxruntime runs %d quantized nodes with float kernels", len(runtime.float_kernels)
        )
    return runtime


def measure(
    floats: FloatSession,
    quantized: Runner,
    data: Dataset | None,
    *,
    in_sample: bool,
    batch_size: int,
    progress: Progress | None,
    known: KnownOutputs | None = None,
) -> Fidelity | None:
    """Fidelity of every graph output on ``data``. In-sample data (the calibration data,
    no --eval): a bounded share, about IN_SAMPLE_BYTES of float activations (every sample
    of a small model, a few of a large one, at least 8), the first samples read from the
    output check's runs of ``quantized`` when ``known`` holds them (not run again);
    held-out data is measured whole."""
    if data is None:
        return None
    limit = max(8, IN_SAMPLE_BYTES // max(floats.sample_bytes(data), 1)) if in_sample else None
    kept = floats.reference(data)  # the float outputs calibration kept of these samples
    reference: Outputs
    skipped = None
    if kept is not None:
        reference, batch = kept
        skipped = kept[0].skip  # batches whose outputs ``known`` held: not asked for
    else:
        reference, batch = floats.reference_runner, floats.affordable_batch(data, batch_size)
    return evaluate(
        reference,
        quantized,
        data,
        batch_size=batch,
        limit=limit,
        progress=progress,
        outputs=floats.outputs,
        known=known if in_sample else None,
        skipped=skipped,
    )

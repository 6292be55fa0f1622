"""Stage: is the candidate faster than float? It is timed against the float model on one
calibration sample in onnxruntime (float and candidate alternated, threads not spinning,
within a small time budget). With ``--optimize-for balanced`` or ``latency``, an int8
candidate that is not faster than float (by 10 % with ``balanced``, beyond the timing's
3 % noise with ``latency``: :func:`~onnxq.report.latency.worth`) is replaced by the
weights-only model unless int8 is that much faster than that one (its integer weights
are folded into float weights at load, so it runs at float speed; then it is not timed):
it is as small, and closer to float. A timing of too few runs to tell a tie
(:data:`~onnxq.stages.timing.SETTLE_RUNS`) keeps int8 unless it ran slower. With
``balanced`` the int8 model is timed before the output check (:func:`latency_preview`)
and the timing settled after it (:func:`settle_preview`); ``latency`` also times the
dynamic model (onnxruntime's DynamicQuantizeMatMul for transformers' MatMuls) and writes
the fastest. A model still slower than float is written and reported (``--strict`` fails
on it). ``--optimize-for size`` times and reports only."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import onnx

from onnxq.calibration.collect import FloatSession
from onnxq.config import Mode, OptimizeFor, QuantConfig
from onnxq.data import Dataset
from onnxq.errors import ConfigError
from onnxq.graph.candidate import Candidate
from onnxq.graph.passes.embeddings import LOOKUP_DECODE, lookups_of
from onnxq.graph.passes.result import ChangeKind
from onnxq.report.latency import (
    DYNAMIC,
    INT8,
    SLOWER,
    WEIGHTS_ONLY,
    CandidateKind,
    LatencyCheck,
    is_faster,
    is_slower,
    worth,
)
from onnxq.runtime import Runner, op_counts, return_freed
from onnxq.stages.check import Checked
from onnxq.stages.dynamic import quantize_dynamic
from onnxq.stages.replan import Replanner
from onnxq.stages.timing import SETTLE_RUNS, timed
from onnxq.tuning.fit import WHY

__all__ = [
    "LatencyCheck",
    "Preview",
    "latency_choice",
    "latency_preview",
    "settle_preview",
    "weights_only",
]

log = logging.getLogger(__name__)

# a weights-only model decoding int8 embedding rows is not timed when those rows are at most
# this share of a sample's activations (_float_kernels)
DECODE_SHARE = 0.02


def latency_choice(
    checked: Checked,
    replanner: Replanner | None,
    floats: FloatSession,
    data: Dataset | None,
    config: QuantConfig,
    threads: int,
) -> tuple[Checked, LatencyCheck | None]:
    """``checked`` timed against the float model (``floats``' reference session) on the
    first sample of ``data``. ``balanced``: when it is not 10 % faster than float (slower,
    when the timing had too few runs to tell), the weights-only model is tried too (timed
    alone against float, int8's time carried over as its ratio to float; not timed at all
    when it runs the float model's kernels, :func:`_float_kernels`) and written unless
    int8 is faster (:func:`_fastest`). ``latency``: the dynamic model (MatMul/Gemm with
    activations quantized at run time) is timed beside int8 as well, and the fastest
    written. The returned :class:`Checked` carries the written candidate's session (it
    records the optimized graph for the report)."""
    if data is None:
        log.info("latency not measured: no data to time the models on")
        return checked, None
    if floats.external:
        # its weights would be loaded again by a float session and each candidate's
        log.info("latency not measured: the model keeps its weights in external data")
        return checked, None
    feed = _first_sample(data)
    gain = worth(config.optimize_for)  # how much faster int8 must be to be written
    reference = floats.reference_runner  # the float model with its outputs, not spinning
    candidates: dict[CandidateKind, Candidate] = {INT8: checked.candidate}
    sessions = {INT8: checked.runner or _session(checked.candidate.model, threads)}
    float_ms, tried, runs = timed(reference, sessions, feed, gain)
    log.info("latency: float %.3g ms, int8 %.3g ms", float_ms, tried[INT8])
    # a tie (int8 neither faster nor slower) is told apart from a timing of too few runs
    # to say (a large model: PP-OCR det runs five times each in the budget)
    resolved = runs >= SETTLE_RUNS

    def make_room() -> None:
        """int8 is timed again only beside a dynamic model (``latency``); else its
        session waits unloaded while the weights-only model is built and loaded (MiniLM:
        148 MB)."""
        if config.optimize_for is not OptimizeFor.LATENCY:
            sessions[INT8].unload()
            return_freed()

    times = (float_ms, tried[INT8])
    more = (
        _alternatives(checked, replanner, floats.model, config, times, resolved, make_room)
        if replanner
        else {}
    )
    untimed: tuple[CandidateKind, ...] = ()
    if more:
        candidates.update(more)
        others = {k: _session(c.model, threads) for k, c in more.items()}
        sessions.update(others)
        untimed = _float_kernels(others, more, floats, data)
        to_time = {k: r for k, r in others.items() if k not in untimed}
        if DYNAMIC in to_time:  # int8 and dynamic, both integer models, timed side by side
            float_ms, tried, runs = timed(reference, {INT8: sessions[INT8], **to_time}, feed, gain)
        elif to_time:  # a weights-only model against float, without int8 again (known
            # no faster): its time carries over as its ratio to float in the first timing
            first_float, int8_ms = float_ms, tried[INT8]
            float_ms, tried, runs = timed(reference, to_time, feed, gain)
            tried = {INT8: int8_ms * float_ms / first_float, **tried}
        resolved = resolved and runs >= SETTLE_RUNS  # both timings, when there were two
        tried |= dict.fromkeys(untimed, float_ms)
        log.info("latency: %s", ", ".join(f"{k.value} {v:.3g} ms" for k, v in tried.items()))
    written = _fastest(tried, resolved=resolved, gain=gain)
    if written is INT8:
        sessions[INT8].reload(checked.candidate.model)  # a no-op when it stayed loaded
    same = candidates[written] is checked.candidate  # its check's runs: of this model
    outputs = checked.outputs if same else None
    chosen = Checked(candidates[written], checked.report, sessions[written], outputs)
    timing = LatencyCheck(
        config.optimize_for, float_ms, tried, written, runs, untimed, resolved=resolved
    )
    return chosen, timing


@dataclass(frozen=True)
class Preview:
    """The unchecked int8 candidate timed against float before the output check
    (``balanced``), and what that timing chose: int8, or the weights-only model when int8
    ran no faster than it (:func:`_fastest`). The output check then checks the chosen one,
    so no check runs on an int8 model that would not be written."""

    timing: LatencyCheck
    chosen: Checked  # the chosen candidate, unchecked, with its timed session

    @property
    def kind(self) -> CandidateKind:
        return self.timing.written


def latency_preview(
    first: Checked,
    replanner: Replanner,
    floats: FloatSession,
    data: Dataset | None,
    config: QuantConfig,
    threads: int,
) -> Preview | None:
    """With ``--optimize-for balanced`` (the default), ``first`` (the int8 candidate before
    the output check, with its session when it has one) timed against float, and the
    weights-only model too when int8 is not faster (:func:`latency_choice`). None for the
    other settings, or when nothing can be timed: the latency stage then runs after the
    check only."""
    if config.optimize_for is not OptimizeFor.BALANCED:
        return None
    chosen, timing = latency_choice(first, replanner, floats, data, config, threads)
    return None if timing is None else Preview(timing, chosen)


def settle_preview(
    preview: Preview,
    checked: Checked,
    replanner: Replanner,
    floats: FloatSession,
    data: Dataset | None,
    config: QuantConfig,
    threads: int,
) -> tuple[Checked, LatencyCheck | None]:
    """The written candidate and its timing once the output check has checked what the
    preview chose. The preview's timing stands when the check left the candidate as it was,
    and for a weights-only model whatever the check did: it only keeps more weights float
    (weights that were integer, or folded into float ones at load, before). An int8 model
    the check changed (decisions kept float) is timed again as :func:`latency_choice`
    does."""
    if checked.candidate is preview.chosen.candidate or preview.kind is not INT8:
        runner = checked.runner or preview.chosen.runner
        return replace(checked, runner=runner), preview.timing
    return latency_choice(checked, replanner, floats, data, config, threads)


def _alternatives(
    checked: Checked,
    replanner: Replanner,
    float_model: onnx.ModelProto,
    config: QuantConfig,
    times: tuple[float, float],
    resolved: bool,
    make_room: Callable[[], None] = lambda: None,
) -> dict[CandidateKind, Candidate]:
    """The candidates ``config.optimize_for`` asks to time next to int8, whose first
    timing gave ``times`` (float's ms, int8's ms), ``resolved`` when both ran enough times
    to tell a tie (see :func:`_fastest`); ``make_room`` is called before the weights-only
    model is built."""
    float_ms, int8_ms = times
    out: dict[CandidateKind, Candidate] = {}
    if not config.optimize_for.measures:
        return out
    kept = checked.report.float_nodes if checked.report is not None else ()
    # the weights-only model wins a tie that the timing resolved
    gain = worth(config.optimize_for)
    if is_slower(int8_ms, float_ms) or resolved and not is_faster(int8_ms, float_ms, gain):
        make_room()
        candidate = weights_only(replanner, kept)
        if candidate.quantized_nodes:  # else it is the float model (weighted nodes excluded)
            out[WEIGHTS_ONLY] = candidate
    if config.optimize_for is OptimizeFor.LATENCY:
        dynamic = _dynamic(float_model, replace(config, exclude=(*config.exclude, *kept)))
        if dynamic is not None:
            out[DYNAMIC] = dynamic
    return out


def _float_kernels(
    sessions: Mapping[CandidateKind, Runner],
    candidates: Mapping[CandidateKind, Candidate],
    floats: FloatSession,
    data: Dataset,
) -> tuple[CandidateKind, ...]:
    """The weights-only candidates that onnxruntime runs as the float model's kernels:
    their optimized graph holds the same op types as the float model's, every integer
    weight folded into a float one at load, besides the decode of each int8 embedding
    lookup (:data:`~onnxq.graph.passes.embeddings.LOOKUP_DECODE`) when the rows decoded
    are at most :data:`DECODE_SHARE` of the activations of a sample (MiniLM: two lookups of
    384 floats a token, 0.6 % of 32 MB; a model of little more than a lookup is timed).
    Such a model is the float model to the runtime; timing it against float measures only
    noise (PP-OCR cls: 0.93 to 1.16× on 20 runs; MiniLM 0.98×), which could report it
    slower than float, and costs up to a second."""
    kinds = [k for k, r in sessions.items() if k is WEIGHTS_ONLY and r.optimized_nodes]
    if not kinds:
        return ()
    float_ops = floats.optimized_op_types()

    def as_float(kind: CandidateKind) -> bool:
        tables = candidates[kind].result.names(ChangeKind.EMBEDDING_QUANTIZED)
        lookups = lookups_of(floats.model, tables)
        if lookups:
            sizes = floats.measured_bytes(data)  # the batch-sizing probe's; None: timed
            if sizes is None or any(t not in sizes for t in lookups):
                return False
            if sum(sizes[t] for t in lookups) > DECODE_SHARE * sum(sizes.values()):
                return False
        decode = Counter({op: n * len(lookups) for op, n in LOOKUP_DECODE.items()})
        return op_counts(sessions[kind].optimized_nodes or ()) == float_ops + decode

    return tuple(k for k in kinds if as_float(k))


PREFERENCE = (WEIGHTS_ONLY, INT8, DYNAMIC)  # on a tie, in this order (see _fastest)
UNRESOLVED = (INT8, WEIGHTS_ONLY, DYNAMIC)  # the order when the timing had too few runs


def _fastest(
    tried: Mapping[CandidateKind, float], *, resolved: bool = True, gain: float = SLOWER
) -> CandidateKind:
    """The candidate to write: the first of :data:`PREFERENCE` tried, unless another ran
    faster beyond the noise of the timing (:func:`is_faster`), so a microsecond does not
    decide. On a tie the weights-only model wins: it is as small as int8 (integer weights
    either way; activations add no bytes) and closer to float (no activation rounding), so
    activations are quantized only where that makes the model faster. A decision made at
    the noise floor (PP-OCR cls on an AMD EPYC: int8 0.93-1.1x float from run to run) then
    no longer flips between a weights-only model and an int8 one that the output check has
    to search (3.5 s there). A timing of fewer than :data:`SETTLE_RUNS` runs of each model
    (``resolved`` False: a large model in the ~1 s budget) cannot tell a tie from a
    difference of a few percent; then int8, the model the plan made, stays unless another
    ran faster (PP-OCR det, int8 0.8-0.86x float, was once written weights-only from five
    runs each on a busy machine). ``gain``: how many times faster another must run when
    the timing was resolved (:func:`~onnxq.report.latency.worth`: with ``balanced``, int8
    displaces the weights-only model only when 10 % faster)."""
    first = PREFERENCE if resolved else UNRESOLVED
    margin = gain if resolved else SLOWER  # ``gain``: int8 displacing the weights-only model
    order = [k for k in first if k in tried] + [k for k in tried if k not in first]
    # the first in that order that no other ran faster than (the margins do not chain:
    # a candidate that ties the second may still beat the first)
    for kind in order:
        if not any(is_faster(tried[other], tried[kind], margin) for other in order):
            return kind
    return min(order, key=lambda k: tried[k])


def _dynamic(float_model: onnx.ModelProto, config: QuantConfig) -> Candidate | None:
    """The dynamic candidate, when the settings allow one and it quantizes a node (the
    nodes the output check kept float for accuracy are in ``config.exclude``)."""
    try:
        candidate = quantize_dynamic(float_model, replace(config, mode=Mode.DYNAMIC))
    except ConfigError as exc:  # settings dynamic mode does not take (4-bit weights, ...)
        log.info("latency: no dynamic candidate: %s", exc)
        return None
    return candidate if candidate.quantized_nodes else None


def weights_only(replanner: Replanner, float_nodes: tuple[str, ...] = ()) -> Candidate:
    """The weights-only model of the replanner's float model and settings (its bias
    corrections and precomputed weight codes reused), with ``float_nodes`` (the output
    check's costliest weights) kept float."""
    return replanner.weights_only()({}, dict.fromkeys(float_nodes, WHY))


def _session(model: onnx.ModelProto, threads: int) -> Runner:
    return Runner(model, threads=threads, spin=False, what="quantized model", record_graph=True)


def _first_sample(data: Dataset) -> Mapping[str, np.ndarray]:
    return next(data.batches(1)).feed

"""How long the latency stage times models, and when their comparison is settled: the
float model and the candidates alternate in blocks of runs (threads not spinning) within
a wall-time budget, and the timing stops early once every comparison the choice makes is
clear. The statistics only; :mod:`onnxq.stages.latency` decides what to write."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence

import numpy as np

from onnxq.report.latency import (
    FASTER_MS,
    NOISE_MS,
    SLOWER,
    CandidateKind,
    is_faster,
    is_slower,
)
from onnxq.runtime import Runner, measure_latency

__all__ = ["BUDGET_MS", "timed"]

BUDGET_MS = 1000.0  # wall time the timed runs of one timing may take (after a warm-up run
# and a run that prices one run, each model)
MIN_RUNS, MAX_RUNS = 5, 1000  # timed runs of each model (tiny models: many, for a stable median)
BLOCK = 5  # runs of one model in a row
# the timing stops early once every comparison it decides is clear (after SETTLE_RUNS runs
# of each model), either way:
# * the medians differ by CLEAR and by CLEAR_NOISE times the noise floor: no later run
#   moves a median that far;
# * or the last STREAK rounds (a block of each model each) all gave the answer the medians
#   give (is_slower and is_faster, both ways): were the models at a threshold, each round
#   would fall either way, and STREAK rounds agree by chance 1 time in 2**(STREAK - 1)
#   (PP-OCR cls: int8 1.36 ms against float 1.21, 12 % apart, was timed for 1 s; now
#   about 0.1 s). A difference at the noise floors' size (above the preference's 0.02 ms
#   and under three times the warning's 0.03 ms; silero_vad: 0.13 ms against 0.18) is
#   not settled by the streak: such models are timed in full.
CLEAR, CLEAR_NOISE, SETTLE_RUNS, STREAK = 1.2, 3.0, 20, 6


def timed(
    floats: Runner,
    sessions: Mapping[CandidateKind, Runner],
    feed: Mapping[str, np.ndarray],
    margin: float = SLOWER,
) -> tuple[float, dict[CandidateKind, float], int]:
    """Median ms of float and of each session on ``feed`` (:func:`measure_latency` in
    blocks of :data:`BLOCK` runs), and the runs of each: as many as fit
    :data:`BUDGET_MS`, at least :data:`MIN_RUNS`, fewer when the comparisons are clear
    after :data:`SETTLE_RUNS` (:func:`_settled`). Every session must sleep its threads
    between runs (spinning ones would gain from it in a tight loop, and slow the next
    model's first run). ``margin``: the ratio the choice asks of a faster model
    (:func:`~onnxq.report.latency.worth`), whose answer must be settled too."""
    runners = [floats, *sessions.values()]
    for runner in runners:  # warm-up: a fresh session's first run allocates and packs
        runner.run(feed)
    once = [_run_ms(r, feed) for r in runners]  # the cost of one run, warm
    runs = int(min(MAX_RUNS, max(MIN_RUNS, BUDGET_MS / max(sum(once), 1e-3))))
    runs = max(BLOCK, runs - runs % BLOCK)
    stopped: list[int] = []  # the runs made, when the comparison settled early

    def settled(times: list[list[float]]) -> bool:
        if _settled(times, margin):
            stopped.append(len(times[0]))
            return True
        return False

    float_ms, *medians = measure_latency(
        runners, feed, warmup=0, runs=runs, block=BLOCK, settled=settled, min_runs=SETTLE_RUNS
    )
    runs = stopped[0] if stopped else runs
    return float_ms, dict(zip(sessions, medians, strict=True)), runs


def _settled(times: Sequence[Sequence[float]], margin: float = SLOWER) -> bool:
    """Whether every comparison the choice makes is clear (the comment on :data:`STREAK`)
    from the runs of float and of each candidate so far (blocks of :data:`BLOCK`): the
    candidates against each other (the choice among them), and the fastest against float
    (the report says whether the written model is slower)."""
    medians = [statistics.median(t) for t in times]
    candidates = range(1, len(times))
    pairs = [(a, b) for a in candidates for b in candidates if a < b]
    # and the fastest candidate against float: whether the written model is slower than
    # float is reported (and fails --strict), so that comparison must be settled too
    pairs.append((0, min(candidates, key=lambda i: medians[i])))
    return all(
        _apart(medians[a], medians[b]) or _agreeing(times[a], times[b], margin) for a, b in pairs
    )


def _apart(a: float, b: float) -> bool:
    return max(a, b) >= CLEAR * min(a, b) and abs(a - b) >= CLEAR_NOISE * NOISE_MS


def _agreeing(a: Sequence[float], b: Sequence[float], margin: float = SLOWER) -> bool:
    """Whether the last :data:`STREAK` rounds' block medians of ``a`` and ``b`` each
    answer "slower?" and "faster?" both ways as their medians over all runs do, the two
    being apart by more than the noise floors' size or within the smaller one (a tie)."""
    rounds = min(len(a), len(b)) // BLOCK
    if rounds < STREAK:
        return False
    ma, mb = statistics.median(a), statistics.median(b)
    if CLEAR_NOISE * NOISE_MS > abs(ma - mb) > FASTER_MS:  # at the noise floors' size
        return False
    answer = _answers(ma, mb, margin)
    for r in range(rounds - STREAK, rounds):
        block_a = statistics.median(a[r * BLOCK : (r + 1) * BLOCK])
        block_b = statistics.median(b[r * BLOCK : (r + 1) * BLOCK])
        if _answers(block_a, block_b, margin) != answer:
            return False
    return True


def _answers(a: float, b: float, margin: float = SLOWER) -> tuple[bool, ...]:
    """What the choice asks of two medians (``b`` the later model: a candidate after
    float, or after int8): slower (the warning) and faster (the preference), both ways,
    and whether ``b`` is faster by ``margin`` when the choice asks more (``balanced``:
    whether int8 is 10 % faster than float; whether float is 10 % faster than int8 is
    asked by nothing, and asking it kept a model at 0.9x timing to the budget)."""
    return (
        is_slower(a, b),
        is_slower(b, a),
        is_faster(a, b),
        is_faster(b, a),
        is_faster(b, a, margin),
    )


def _run_ms(runner: Runner, feed: Mapping[str, np.ndarray]) -> float:
    start = time.perf_counter()
    runner.run(feed)
    return (time.perf_counter() - start) * 1000.0

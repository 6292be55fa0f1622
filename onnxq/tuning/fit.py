"""The output-driven fallback loop.

After the rewrite, the quantized model runs on a few calibration samples next to the float
model. When its outputs miss the :class:`~onnxq.config.FidelityTarget`, a switchable
simulation (:mod:`onnxq.graph.simulate`) and the group-testing search
(:mod:`onnxq.tuning.search`) find the activations and weights that cost the most, those are
kept float, the model is planned and rewritten again and checked for real. If the real
model still misses, the search goes on with a limit 3 dB stricter (a few rounds). The best
candidate is kept; whether the target was met is reported, never hidden.

With goals on declared task metrics (``target.task``), those are the target: the search
still ranks decisions by the output noise they add (a task metric of a subset cannot be
summed), asking first for 3 dB less noise than the model has, then 3 dB less each round
(up to ``TASK_ROUNDS`` rounds and ``TASK_PASSES`` simulation runs), and each real candidate
is judged by the metrics.

Two things are decided before searching. A miss of top-1 agreement alone, by no more than
chance explains and on near ties of the float model only, is reported without a search
(:func:`within_sampling_noise`). A weights-only candidate with corrected biases is also
checked without the correction, and the search builds its candidates without it when that
has less noise (:func:`_uncorrected`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import onnx

from onnxq.config import FidelityTarget
from onnxq.graph.candidate import Candidate
from onnxq.graph.outputs import add_outputs
from onnxq.graph.plan import QuantPlan
from onnxq.graph.simulate import UnitKind, build_simulation
from onnxq.report.fidelity import KnownOutputs
from onnxq.report.metrics import binomial_upper
from onnxq.report.task import MetricGoal
from onnxq.report.task.measure import check_goals
from onnxq.runtime import OptLevel, Runner, loadable, return_freed
from onnxq.tuning.check import PROBE_BYTES, PROBE_SAMPLES, CheckResult, CheckSet
from onnxq.tuning.search import Measurements, search_fallback

__all__ = ["CandidateBuilder", "Fitted", "FitReport", "fit_target"]

log = logging.getLogger(__name__)

WHY = "kept float by the output check (costs output fidelity)"
MAX_FLOAT_SHARE = 0.2  # the check keeps at most this share of the decisions float
TASK_ROUNDS = 6  # rounds of the search when task metrics are the target
TASK_PASSES = 320  # and its simulation runs (about 16 find one costly decision)
# a top-1 miss alone is searched only when this unlikely at the target's agreement: magika
# (2 of 128 where 1.3 are expected at 99 %, p = 0.37) spent a round floating a node that
# changed neither flip, both on near ties of the float model (0.31 vs 0.30)
SHORTFALL_P = 0.05
# bias correction is undone when the model without it, checked, has at least this much
# less noise (dB, worst output) than the first candidate with it: its means can be
# dominated by samples or positions the outputs ignore (MiniLM: 69 % of the positions are
# padding; 29.9 dB corrected against 31.3 without)
UNCORRECTED_DB = 0.5


class CandidateBuilder(Protocol):
    """Plans and rewrites the model again with more activation tensors and nodes kept
    float (each with why); :class:`onnxq.stages.replan.Replanner` is the one in use."""

    def __call__(
        self, float_tensors: Mapping[str, str], float_nodes: Mapping[str, str]
    ) -> Candidate: ...


class PlanBuilder(CandidateBuilder, Protocol):
    """A :class:`CandidateBuilder` that also rewrites a given plan."""

    def build(self, plan: QuantPlan) -> Candidate: ...


@dataclass(frozen=True)
class FitReport:
    target: FidelityTarget
    before: CheckResult
    after: CheckResult
    float_tensors: tuple[str, ...]
    float_nodes: tuple[str, ...]
    passes: int  # simulation runs over the check samples
    rounds: int  # candidates planned, rewritten and checked after the first
    unsearched: str | None = None  # why no search ran although the target was missed
    # bias correction undone: the first candidate's plan without it, checked, had this
    # many dB less noise, so the candidates were built without it
    uncorrected_db: float | None = None

    @property
    def met(self) -> bool:
        return self.after.meets(self.target)

    @property
    def reason(self) -> str | None:
        """Why the check kept ``float_tensors`` and ``float_nodes`` float (None: it kept
        nothing)."""
        if not self.float_tensors and not self.float_nodes:
            return None
        return (
            f"{WHY}: as first planned, the outputs missed the target "
            f"({describe_target(self.target)}) with {_describe(self.before, self.target)} on "
            f"{self.before.samples} calibration samples, and these decisions added the most "
            "output noise in the switchable simulation"
        )

    def to_dict(self) -> dict[str, Any]:
        goals = self.target.task.goals
        target: dict[str, Any] = {
            "sqnr_db": self.target.sqnr_db,
            "top1_agreement": self.target.top1,
        }
        if goals:  # the target instead of SQNR and top-1
            target = {"task_metrics": {g.name: {_bound(g): g.value} for g in goals}}
        return {
            "target": target,
            "met": self.met,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "float_tensors": list(self.float_tensors),
            "float_nodes": list(self.float_nodes),
            "reason": self.reason,
            "simulation_passes": self.passes,
            "rounds": self.rounds,
            "search_skipped": self.unsearched,
            "bias_correction_undone": self.uncorrected_db is not None,
        }


def _bound(goal: MetricGoal) -> str:
    return "min" if goal.at_least else "max"


def describe_target(target: FidelityTarget) -> str:
    """The check's target in words."""
    if target.task.goals:
        return ", ".join(g.text for g in target.task.goals)
    return f"SQNR {target.sqnr_db:g} dB, top-1 {100 * target.top1:g}%"


def _score(result: CheckResult, target: FidelityTarget) -> tuple[bool, float]:
    if target.task.goals:
        margin = min(g.margin(result.task.get(g.name, math.nan)) for g in target.task.goals)
        return result.meets(target), margin
    top1 = result.worst_top1
    margin = result.sqnr_db - target.sqnr_db
    if top1 is not None:
        margin = min(margin, 100.0 * (top1 - target.top1))
    if math.isnan(margin):
        margin = -math.inf
    return result.meets(target), margin


@dataclass(frozen=True)
class Fitted:
    """The output check's choice, its report, and the session it was checked in (which
    can fetch every graph output: the caller reuses it for evaluation)."""

    candidate: Candidate
    report: FitReport
    runner: Runner
    outputs: KnownOutputs | None = None  # its graph outputs on the check samples


def fit_target(
    model: onnx.ModelProto,
    first: Candidate,
    build: CandidateBuilder,
    check: CheckSet,
    target: FidelityTarget,
    *,
    threads: int = 0,
    first_runner: Runner,
    rounds: int = 3,
    passes: int = 48,
    release: Callable[[], None] | None = None,
    uncorrected: PlanBuilder | None = None,
) -> Fitted:
    """The candidate that meets ``target`` on ``check`` while keeping the fewest
    decisions float (``first`` when it already does). ``model`` is the prepared float
    model ``first`` was rewritten from; ``first_runner``: ``first``'s session from
    ``check.runner`` (:func:`onnxq.stages.check.unchecked`), unloaded while the simulation
    session is alive (loaded again when ``first`` is the choice); ``release``: called then
    too (the caller drops sessions the search does not run). ``uncorrected``: ``build``
    without bias correction; when ``first`` is weights-only with corrected biases, its
    plan built with it is checked too, and when that has :data:`UNCORRECTED_DB` less noise
    it is the best so far and the search's candidates are built with it."""
    first_kept: list[dict[str, np.ndarray]] = []
    before = check.run(first_runner, keep=first_kept)
    check_goals(target.task.goals, before.task)  # a goal naming no measured value: exit 2
    log.info("output check: %s on %d samples", _describe(before, target), before.samples)
    unchanged = FitReport(target, before, before, (), (), 0, 0)
    settled = _unsearched(first, unchanged)
    if settled is not None:
        return Fitted(first, settled, first_runner, check.known(first_kept))
    plan, qparams = first.plan, first.qparams
    assert plan is not None and qparams is not None  # else _unsearched said so
    # None: the first plan without bias correction, best so far; its models are not kept
    # beside the search's (MiniLM: 60 MB), it is built again if it stays best
    best: Candidate | None = first
    best_result, best_runner, best_kept = before, first_runner, first_kept
    best_parts: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    gain = None
    alt = _uncorrected(first, uncorrected, check, threads, first_runner, release)
    if alt is not None and _db_better(alt.result, before) >= UNCORRECTED_DB:
        gain = _db_better(alt.result, before)
        log.info("output check: without bias correction %s", _describe(alt.result, target))
        assert uncorrected is not None  # else no alternative was made
        build, best, best_result, best_kept = uncorrected, None, alt.result, alt.kept
    del alt  # its models and session, before the simulation is built
    sim = build_simulation(model, plan, first.switchable, qparams)
    if not sim.units:
        best, best_runner = _built(best, uncorrected, plan, check, threads, first_runner)
        report = FitReport(target, before, best_result, (), (), 0, 0, uncorrected_db=gain)
        return Fitted(best, report, best_runner, check.known(best_kept))
    probe = check.probe(PROBE_BYTES, before, PROBE_SAMPLES)

    built = [sim.model]  # the first session's model: not built twice
    planned = (model, plan, first.switchable, qparams)

    def proto() -> onnx.ModelProto:
        return built.pop() if built else build_simulation(*planned).model

    def simulation() -> Runner:  # built when a round needs it, released before re-planning
        return _simulation_runner(proto, probe.outputs, threads)

    session = _Lazy(simulation, first_runner, release)
    # its units and feeds only: the model is ``built``'s until the first session takes it
    sim = replace(sim, model=onnx.ModelProto())
    measure = Measurements(lambda active: probe.noise_vector(session.get(), sim.feed(active)))
    limit, rounds, passes = _search_limits(target, before, rounds, passes)
    cap = max(1, int(len(sim.units) * MAX_FLOAT_SHARE))
    keep: frozenset[int] = frozenset()
    done = 0
    for _ in range(rounds):
        left = passes - measure.passes
        if left <= 0:
            break
        found = search_fallback(
            len(sim.units), measure, limit, keep_float=keep, budget=left, max_float=cap
        )
        if found.floated == keep:  # the simulation sees the limit met: nothing new to try
            if not target.task.goals:
                break
            limit /= 2.0  # a task metric still misses: ask the simulation for less noise
            continue
        keep = found.floated
        done += 1
        session.release()  # the re-plan may calibrate new tensors: one model in memory at a time
        chosen = [sim.units[i] for i in sorted(keep)]
        float_tensors = {u.tensor: WHY for u in chosen if u.kind is UnitKind.ACTIVATION}
        float_nodes = {n: WHY for u in chosen if u.kind is UnitKind.WEIGHT for n in u.nodes}
        candidate = build(float_tensors, float_nodes)
        runner = check.runner(candidate.model, threads=threads, record_graph=True)
        kept: list[dict[str, np.ndarray]] = []
        result = check.run(runner, keep=kept)
        log.info(
            "output check, round %d: %d activations and %d nodes float, %s",
            done,
            len(float_tensors),
            len(float_nodes),
            _describe(result, target),
        )
        if _score(result, target) > _score(best_result, target):
            best, best_result, best_runner, best_kept = candidate, result, runner, kept
            session.wait(runner)  # unloaded while a later round's simulation runs
            best_parts = (tuple(float_tensors), tuple(float_nodes))
        del candidate, runner  # a losing candidate's session: not beside the next simulation
        if result.meets(target) or len(keep) >= cap:
            break
        limit /= 2.0
    undone = gain if best is not first else None  # every later candidate is uncorrected
    report = FitReport(
        target, before, best_result, *best_parts, measure.passes, done, uncorrected_db=undone
    )
    session.release()  # the best candidate's session is loaded again by _built
    best, best_runner = _built(best, uncorrected, plan, check, threads, best_runner)
    return Fitted(best, report, best_runner, check.known(best_kept))


def _built(
    best: Candidate | None,
    uncorrected: PlanBuilder | None,
    plan: QuantPlan,
    check: CheckSet,
    threads: int,
    runner: Runner,
) -> tuple[Candidate, Runner]:
    """``best`` with its ``runner`` (loaded again if the alternative's check unloaded
    it); for None (the first plan without bias correction, not kept while the search ran)
    that plan built again by ``uncorrected`` and its session."""
    if best is not None:
        runner.reload(best.model)  # a no-op when loaded
        return best, runner
    assert uncorrected is not None  # else no plan was built without the correction
    again = uncorrected.build(plan)
    return again, check.runner(again.model, threads=threads, record_graph=True)


def _unsearched(first: Candidate, unchanged: FitReport) -> FitReport | None:
    """The report when no search runs (``unchanged``: ``first`` checked): the target is
    met, ``first`` cannot be re-planned (dynamic), or only top-1 misses and by no more
    than chance explains (:func:`within_sampling_noise`); None: search."""
    before, target = unchanged.before, unchanged.target
    if before.meets(target) or first.plan is None or first.qparams is None:
        return unchanged
    within = within_sampling_noise(before, target)
    if within is None:
        return None
    log.info("output check: %s", within)
    return replace(unchanged, unsearched=within)


def within_sampling_noise(before: CheckResult, target: FidelityTarget) -> str | None:
    """Why the search is not run when only top-1 agreement misses (None: search): by no
    more than chance explains (were the agreement exactly the target's, that many
    disagreements or more would happen with probability ``SHORTFALL_P`` or more), and
    every disagreement a near tie of the float model (its top two apart by under
    ``NEAR_TIE`` of its median margin: a float decision found to flip one back would be
    fitted to these samples). The check's samples show no significant miss; how far the
    agreement could be below the target is said too (its 95 % lower bound, which on few
    samples is far below)."""
    if target.task.goals or not before.sqnr_db >= target.sqnr_db:
        return None
    short = before.top1_shortfall(target)
    if short is None or short[3] < SHORTFALL_P:
        return None
    missing = [n for n, a in before.top1.items() if a < target.top1]
    if any(before.clear_flips.get(n, 1) for n in missing):
        return None
    name, k, n, p = short
    expected = n * (1.0 - target.top1)
    lowest = 100.0 * (1.0 - binomial_upper(k, n))
    return (
        f"top-1 of '{name}' disagrees on {k} of {n} decisions, all near ties of the float "
        f"model, where {expected:.1f} are expected at {100 * target.top1:g} % (p = {p:.2f}; "
        f"agreement at least {lowest:.1f} % at 95 % confidence): not searched"
    )


@dataclass(frozen=True)
class _Checked:
    """``first``'s plan rewritten without bias correction and checked: its result and
    kept graph outputs (the model and its session are not kept)."""

    result: CheckResult
    kept: list[dict[str, np.ndarray]]


def _uncorrected(
    first: Candidate,
    uncorrected: PlanBuilder | None,
    check: CheckSet,
    threads: int,
    first_runner: Runner,
    release: Callable[[], None] | None,
) -> _Checked | None:
    """``first``'s plan built without bias correction and checked (None when ``first``
    has no corrected bias or is not weights-only): whether the correction helps is
    measured, not assumed. The correction is fitted to the means of every sample and
    position, which padding can dominate (MiniLM). Only for weights-only plans: a static
    plan corrects only the few nodes it leaves on float inputs, not worth a rewrite and a
    check run of the whole model. ``first_runner`` is unloaded first
    (one candidate's session at a time; reloaded when ``first`` is chosen), and
    ``release`` called (the caller's sessions the check does not run)."""
    plan = first.plan
    if uncorrected is None or not first.corrected_biases or plan is None or plan.roots:
        return None
    first_runner.unload()
    if release is not None:
        release()
    return_freed()
    runner = check.runner(uncorrected.build(plan).model, threads=threads)
    kept: list[dict[str, np.ndarray]] = []
    return _Checked(check.run(runner, keep=kept), kept)


def _db_better(result: CheckResult, than: CheckResult) -> float:
    """How many dB less noise ``result``'s worst output has than ``than``'s (-inf when
    either is not finite)."""
    a, b = result.sqnr_db, than.sqnr_db
    return a - b if math.isfinite(a) and math.isfinite(b) else -math.inf


def _search_limits(
    target: FidelityTarget, before: CheckResult, rounds: int, passes: int
) -> tuple[float, int, int]:
    """The noise ratio the search first asks for, and its rounds and simulation runs."""
    limit = 10.0 ** (-target.sqnr_db / 10.0)
    if target.task.goals:  # the metrics miss: ask for 3 dB less noise than now
        limit = 10.0 ** (-before.sqnr_db / 10.0) / 2.0
        return limit, max(rounds, TASK_ROUNDS), max(passes, TASK_PASSES)
    if before.sqnr_db >= target.sqnr_db:  # only top-1 misses: ask for 3 dB more than now
        limit = min(limit, 10.0 ** (-before.sqnr_db / 10.0) / 2.0)
    return limit, rounds, passes


def _simulation_runner(
    make: Callable[[], onnx.ModelProto], outputs: Sequence[str], threads: int
) -> Runner:
    """The session of the switchable simulation ``make`` gives, fetching ``outputs``
    (loaded from a file: no proto alive beside it, :func:`onnxq.runtime.loadable`; the
    proto is made here, so no caller's frame holds it while the session loads)."""
    built = make()
    add_outputs(built, outputs)
    data = loadable(built)
    del built
    return Runner(data, threads=threads, level=OptLevel.BASIC, what="simulation")


class _Lazy:
    """The simulation's session, made when first needed and released (and made again)
    between rounds: it holds a float and an integer copy of the weights. While it is
    alive the best candidate so far (the first one, then a round's) waits with its
    session unloaded, and ``release`` has dropped the caller's sessions that the search
    does not run (MiniLM: the check's peak 1061 -> about 800 MB; a second round's
    simulation beside round 1's candidate: 1007 MB)."""

    def __init__(
        self,
        make: Callable[[], Runner],
        first: Runner,
        release: Callable[[], None] | None,
    ) -> None:
        self.make = make
        self.waiting = first
        self.release_others = release
        self.runner: Runner | None = None

    def wait(self, best: Runner) -> None:
        """``best`` is the candidate to unload while the simulation is alive."""
        self.waiting = best

    def get(self) -> Runner:
        if self.runner is None:
            self.waiting.unload()
            if self.release_others is not None:
                self.release_others()
            return_freed()  # what they held, before the simulation loads
            self.runner = self.make()
        return self.runner

    def release(self) -> None:
        if self.runner is not None:
            self.runner = None
            return_freed()  # before the next candidate is built


def _describe(result: CheckResult, target: FidelityTarget) -> str:
    """What ``result`` measured of the target's terms."""
    if target.task.goals:
        shown = (f"{g.name} {result.task.get(g.name, math.nan):.4g}" for g in target.task.goals)
        return ", ".join(shown) + f" (SQNR {result.sqnr_db:.1f} dB)"
    top1 = result.worst_top1
    text = f"SQNR {result.sqnr_db:.1f} dB"
    return text if top1 is None else f"{text}, top-1 agreement {100 * top1:.1f} %"

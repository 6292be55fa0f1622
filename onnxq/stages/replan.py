"""Stage: plan and rewrite a candidate — the Q/DQ rewrite followed by the graph passes
(codebook weights, bias correction, embeddings, weight folding) — and plan again with
more tensors and nodes kept float. The :class:`Replanner` is the one re-planning
component: the output check receives it as :class:`onnxq.tuning.fit.CandidateBuilder`."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import onnx

from onnxq.calibration.observers import TensorRange
from onnxq.calibration.remedy import activation_qparams
from onnxq.config import QuantConfig
from onnxq.graph.candidate import Candidate
from onnxq.graph.passes.bias_correction import correct_biases
from onnxq.graph.passes.codebook import CodebookUse, store_codebook_weights
from onnxq.graph.passes.embeddings import quantize_embeddings
from onnxq.graph.passes.fold_rescale import fold_rescales
from onnxq.graph.passes.fold_weights import fold_float_weights
from onnxq.graph.passes.result import Change, PassResult
from onnxq.graph.plan import QuantPlan, make_plan
from onnxq.graph.rewrite_qdq import is_codebook, rewrite_qdq
from onnxq.quant import QParams
from onnxq.quant.methods import Granularity
from onnxq.stages.ranges import RangeSource, StaticRanges, with_aliases
from onnxq.stages.weights import WeightChoices

__all__ = ["Replanner", "codebook_uses"]


class Replanner:
    """Plans and rewrites ``model`` (prepared, float), reusing the ranges observed so far
    (observing the roots a new plan adds), the GPTQ codes and the bias-correction means."""

    def __init__(
        self,
        model: onnx.ModelProto,
        config: QuantConfig,
        source: RangeSource,
        ranges: StaticRanges,
        weights: WeightChoices,
    ) -> None:
        self.model = model
        self.config = config
        self.source = source
        self.observed: dict[str, TensorRange] = dict(ranges.observed)
        self.forbidden = dict(ranges.forbidden)
        self.aliases = dict(ranges.plan.aliases)
        self.weights = weights

    def plan(self, float_tensors: Mapping[str, str], float_nodes: Mapping[str, str]) -> QuantPlan:
        """The plan with ``float_tensors`` (and their aliases) and ``float_nodes`` kept
        float on top of the tensors the range remedy keeps float."""
        forbidden = with_aliases({**self.forbidden, **float_tensors}, self.aliases)
        plan = make_plan(self.model, self.config, forbidden, float_nodes)
        missing = [t for t in plan.roots if t not in self.observed]
        if missing:
            self.observed.update(self.source.get(missing))
        return plan

    def build(self, plan: QuantPlan) -> Candidate:
        """Rewrite ``plan``, then run the graph passes on the result."""
        acts, restricted = self.config.activations, self.config.restricted
        qparams = {
            t: activation_qparams(self.observed[t], acts, restricted=restricted) for t in plan.roots
        }
        result = rewrite_qdq(self.model, plan, qparams, self.config, self.weights.codes)
        result = result.then(self._notes(plan, result.model))
        # codebook weights before bias correction, which reads their decoded error too
        result = result.then(store_codebook_weights(result.model, codebook_uses(plan)))
        result = result.then(correct_biases(result.model, self.model, self.weights.means))
        result = result.then(quantize_embeddings(result.model, plan.decisions))
        result = result.then(fold_rescales(result.model))
        if not self.config.fold_weights:
            return Candidate(plan.decisions, result, plan, qparams)
        folded = fold_float_weights(result.model)
        if not folded.changed:
            return Candidate(plan.decisions, result, plan, qparams)
        return Candidate(plan.decisions, result.then(folded), plan, qparams, result.model)

    def with_config(self, config: QuantConfig) -> Replanner:
        """A replanner of the same model, ranges and weight choices under ``config``
        (the weights-only model next to a static one: no new range is needed)."""
        other = copy.copy(self)
        other.config = config
        other.observed, other.forbidden = dict(self.observed), dict(self.forbidden)
        return other

    def weights_only(self) -> Replanner:
        """This replanner under the same settings with weights only (the weights-only model
        beside a static one)."""
        return self.with_config(replace(self.config, weights_only=True))

    def uncorrected(self) -> Replanner | None:
        """This replanner without bias correction (None: it corrects nothing). The output
        check builds its candidates with it when the correction adds output noise
        (:func:`onnxq.tuning.fit.fit_target`)."""
        if not self.weights.means:
            return None
        other = copy.copy(self)
        other.weights = replace(self.weights, means={})
        other.observed, other.forbidden = dict(self.observed), dict(self.forbidden)
        return other

    def add_codes(
        self, codes: Mapping[str, tuple[np.ndarray, QParams]], notes: tuple[Change, ...]
    ) -> None:
        """Use precomputed ``codes`` (by node name; AdaRound's) in every later build, and
        report ``notes`` (what made them) for the nodes a plan still quantizes."""
        self.weights = replace(
            self.weights,
            codes={**self.weights.codes, **codes},
            notes=(*self.weights.notes, *notes),
        )

    def _notes(self, plan: QuantPlan, model: onnx.ModelProto) -> PassResult:
        quantized = {u.node for u in plan.weights if u.spec is not None}
        notes = tuple(c for c in self.weights.notes if c.name in quantized)
        return PassResult(model, False, notes)

    def __call__(
        self, float_tensors: Mapping[str, str], float_nodes: Mapping[str, str]
    ) -> Candidate:
        return self.build(self.plan(float_tensors, float_nodes))


def codebook_uses(plan: QuantPlan) -> list[CodebookUse]:
    """The weights of ``plan`` stored as codebooks (left float by the rewrite): one table
    per output channel (the axis of their per-channel layout) or per tensor."""
    uses = []
    for use in plan.weights:
        if not is_codebook(use):
            continue
        assert use.spec is not None  # is_codebook
        layout = use.layout
        axis = layout.axis if layout.kind is Granularity.CHANNEL else None
        uses.append(
            CodebookUse(use.node, use.index, use.tensor, use.spec.bits, use.spec.levels, axis)
        )
    return uses

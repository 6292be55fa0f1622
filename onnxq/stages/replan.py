"""Stage: plan and rewrite a candidate — the Q/DQ rewrite followed by the graph passes
(bias correction, embeddings, weight folding) — and plan again with more tensors and nodes
kept float. The :class:`Replanner` is the one re-planning component: the output check
receives it as :class:`onnxq.tuning.fit.CandidateBuilder`."""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from onnxq.calibration.observers import TensorRange
from onnxq.calibration.remedy import activation_qparams
from onnxq.config import QuantConfig
from onnxq.graph.candidate import Candidate
from onnxq.graph.passes.bias_correction import correct_biases
from onnxq.graph.passes.embeddings import quantize_embeddings
from onnxq.graph.passes.fold_weights import fold_float_weights
from onnxq.graph.plan import QuantPlan, make_plan
from onnxq.graph.rewrite_qdq import rewrite_qdq
from onnxq.stages.ranges import RangeSource, StaticRanges, with_aliases
from onnxq.stages.weights import WeightChoices

__all__ = ["Replanner"]


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
        result = result.then(correct_biases(result.model, self.model, self.weights.means))
        result = result.then(quantize_embeddings(result.model, plan.decisions))
        if not self.config.fold_weights:
            return Candidate(plan.decisions, result, plan, qparams)
        folded = fold_float_weights(result.model)
        if not folded.changed:
            return Candidate(plan.decisions, result, plan, qparams)
        return Candidate(plan.decisions, result.then(folded), plan, qparams, result.model)

    def __call__(
        self, float_tensors: Mapping[str, str], float_nodes: Mapping[str, str]
    ) -> Candidate:
        return self.build(self.plan(float_tensors, float_nodes))

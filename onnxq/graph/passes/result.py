"""The one result type of every graph transform: the model it returns, whether anything
changed, and the list of what changed (typed records, never parsed back from names)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import onnx

__all__ = ["Change", "ChangeKind", "PassResult"]


class ChangeKind(str, Enum):
    """What one change did (the value is the word the report uses)."""

    # preparation
    CONSTANT_MOVED = "constant to initializer"
    OPSET_UPGRADED = "opset upgraded"
    NODE_NAMED = "node named"
    SHAPES_INFERRED = "shapes inferred"
    OPTIMIZED = "onnxruntime basic optimizations"
    AFFINE_FOLDED = "constant Mul/Add folded into a convolution"
    HARD_SIGMOID = "hard-sigmoid arithmetic written as HardSigmoid"
    # quantization rewrites
    NODE_QUANTIZED = "node quantized"
    WEIGHT_QUANTIZED = "weight stored as integers"
    QDQ_PAIR = "activation Q/DQ"
    # name: the integer tensor of a quantized activation; detail: the float tensor it holds
    ACTIVATION_CODES = "activation held as integers"
    BIAS_KEPT_FLOAT = "bias kept float"
    BIAS_CORRECTED = "bias corrected"
    EMBEDDING_QUANTIZED = "embedding rows stored as int8"
    WEIGHT_FOLDED = "integer weight folded at load"
    RESCALE_FOLDED = "constant Div/Mul folded into a scale"
    # weight transforms before rounding
    PAIR_EQUALIZED = "layer pair equalized"
    PAIR_SKIPPED = "layer pair not equalized"
    BIAS_ABSORBED = "high bias absorbed"
    ACTIVATION_REPLACED = "activation replaced"
    TENSOR_RESCALED = "tensor rescaled per channel by equalisation"
    WEIGHT_CODEBOOK = "weight stored as codebook indices"
    WEIGHT_ADAROUND = "weight rounded by AdaRound"
    WEIGHT_ADAROUND_SKIPPED = "weight not rounded by AdaRound"


@dataclass(frozen=True)
class Change:
    """One thing a pass did: its kind, the node/tensor it concerns, and why or how."""

    kind: ChangeKind
    name: str
    detail: str = ""
    group: str = ""  # a label shared by changes of one cause, for reports to count by


@dataclass(frozen=True)
class PassResult:
    """What every graph transform returns. ``model`` is a new model or the input
    unchanged (a pass never mutates its input); ``changed`` says which."""

    model: onnx.ModelProto
    changed: bool
    changes: tuple[Change, ...] = ()
    detail: str = ""  # one line for the report's list of steps ("" when nothing to say)

    @staticmethod
    def unchanged(model: onnx.ModelProto) -> PassResult:
        return PassResult(model, False)

    def count(self, kind: ChangeKind) -> int:
        return sum(c.kind is kind for c in self.changes)

    def names(self, kind: ChangeKind) -> tuple[str, ...]:
        return tuple(c.name for c in self.changes if c.kind is kind)

    def then(self, later: PassResult) -> PassResult:
        """This result followed by ``later`` (a pass run on ``self.model``)."""
        details = "; ".join(d for d in (self.detail, later.detail) if d)
        return PassResult(
            later.model,
            self.changed or later.changed,
            self.changes + later.changes,
            details,
        )

"""The written model timed against float: what :mod:`onnxq.stages.latency` measured and
chose, for the report and ``--strict``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from onnxq.config import OptimizeFor

__all__ = [
    "DYNAMIC",
    "INT8",
    "WEIGHTS_ONLY",
    "CandidateKind",
    "LatencyCheck",
    "is_faster",
    "is_slower",
    "worth",
]

# A model counts as slower than float when both hold (one sample's median on a shared
# machine moves by a few percent; tiny models differ by microseconds of per-node overhead,
# which a timing of up to 1000 runs each still resolves: silero_vad's int8 model ran
# 0.14 -> 0.19 ms in two bench runs and was kept under a 0.05 ms floor)
SLOWER = 1.03  # latency ratio (model / float)
NOISE_MS = 0.03  # and milliseconds (the test CNN: int8 and float 0.02 ms apart either way)
# A model counts as faster than another (int8 worth writing instead of the weights-only
# model) when it runs SLOWER times faster and by this many milliseconds: a smaller floor
# than the warning's, whose false alarm fails --strict, but one that a model of a few
# hundredths of a millisecond does not cross by chance (the digits CNN: int8 0.08-0.09
# against float 0.13-0.15 ms in three runs, int8 written; the test CNN: float 0.015-0.027,
# int8 0.020-0.034 ms, so weights-only every time, where 0.01 let int8 win by chance in
# about 1 test run in 2)
FASTER_MS = 0.02
# With --optimize-for balanced, int8 is written instead of the weights-only model only when
# it runs at least this many times faster: quantized activations cost accuracy, and a gain
# of a few percent sits in the timing's run-to-run noise (MiniLM: int8 0.96-0.99x float
# from run to run, so each run wrote the one or the other; cosine 0.991 against 0.9998)
WORTH = 1.10


class CandidateKind(str, Enum):
    """A model the latency stage can write; the values are the report's spellings."""

    INT8 = "int8"  # the plan as made, after the output check
    WEIGHTS_ONLY = "weights-only"  # integer weights folded to float at load
    DYNAMIC = "dynamic"  # MatMul/Gemm with activation ranges at run time


INT8 = CandidateKind.INT8
WEIGHTS_ONLY = CandidateKind.WEIGHTS_ONLY
DYNAMIC = CandidateKind.DYNAMIC


@dataclass(frozen=True)
class LatencyCheck:
    """Median single-sample latencies (ms) of the float model and of the candidates tried,
    in onnxruntime on this machine (of the last timing; a candidate in ``untimed`` has
    float's, and int8's may come from a first timing as its ratio to float); ``written``
    names the one written."""

    optimize_for: OptimizeFor
    float_ms: float
    tried: dict[CandidateKind, float]  # median ms of each model timed
    written: CandidateKind
    runs: int  # timed runs of each model
    # candidates not timed: onnxruntime runs them as the float model's very kernels (a
    # weights-only model whose integer weights all fold at load); float's time stands
    untimed: tuple[CandidateKind, ...] = ()
    # whether the timing had runs enough to tell a tie (onnxq.stages.timing.SETTLE_RUNS):
    # when not, int8 stood unless another model ran faster by the noise margin alone, not
    # by the choice's (worth)
    resolved: bool = True

    @property
    def ratio(self) -> float:
        """Written model's latency over float's (> 1: slower)."""
        return self.tried[self.written] / self.float_ms if self.float_ms > 0 else 1.0

    @property
    def slower(self) -> bool:
        return is_slower(self.tried[self.written], self.float_ms)

    @property
    def replaced(self) -> bool:
        return self.written != INT8 and INT8 in self.tried

    def describe(self) -> str:
        tried = ", ".join(
            f"{k.value} {v:.3g} ms"
            + (" (the float kernels: not timed)" if k in self.untimed else "")
            for k, v in self.tried.items()
        )
        text = f"latency on one sample: float {self.float_ms:.3g} ms, {tried} ({self.runs} runs)"
        if self.replaced:
            int8_ms = self.tried[INT8]
            margin = worth(self.optimize_for) if self.resolved else SLOWER
            tie = not is_slower(int8_ms, self.float_ms) and not is_faster(
                int8_ms, self.float_ms, margin
            )
            text += (
                f"; int8 was {int8_ms / self.float_ms if self.float_ms > 0 else 1.0:.2f}× "
                f"float{_not_faster(margin) if tie else ''}, the "
                f"{self.written.value} model {self.ratio:.2f}×: it was written "
                f"(--optimize-for {self.optimize_for.value})"
            )
        return text

    def warning(self) -> str | None:
        """What ``--strict`` fails on: the written model measured slower than float."""
        if not self.slower:
            return None
        hint = (
            " (--optimize-for balanced would try the weights-only model)"
            if not self.optimize_for.measures
            else ""
        )
        return (
            f"the quantized model ran {self.ratio:.2f}× as long as float on one sample "
            f"({self.tried[self.written]:.3g} vs {self.float_ms:.3g} ms){hint}"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "optimize_for": self.optimize_for.value,
            "float_ms": self.float_ms,
            "tried_ms": {k.value: v for k, v in self.tried.items()},
            "written": self.written.value,
            "ratio": self.ratio,
            "slower_than_float": self.slower,
            "runs": self.runs,
            "not_timed": [k.value for k in self.untimed],
        }


def _not_faster(margin: float) -> str:
    return f", not faster by {100 * (margin - 1):.0f} % and {FASTER_MS:g} ms"


def is_faster(model_ms: float, than_ms: float, ratio: float = SLOWER) -> bool:
    """Whether a model that ran ``model_ms`` is faster than one that ran ``than_ms`` beyond
    the noise of the measurement (``ratio`` times, :data:`SLOWER` unless a choice asks for
    more, and by :data:`FASTER_MS`)."""
    return model_ms * ratio < than_ms and than_ms - model_ms > FASTER_MS


def worth(optimize_for: OptimizeFor) -> float:
    """How many times faster int8 must run than the model it would replace to be written:
    :data:`WORTH` with ``balanced``, the timing's noise margin otherwise."""
    return WORTH if optimize_for is OptimizeFor.BALANCED else SLOWER


def is_slower(model_ms: float, float_ms: float) -> bool:
    """Whether a model that ran ``model_ms`` is slower than float's ``float_ms``, beyond
    the noise of the measurement (:data:`SLOWER` and :data:`NOISE_MS`)."""
    return model_ms > float_ms * SLOWER and model_ms - float_ms > NOISE_MS

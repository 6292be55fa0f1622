"""Task metrics over batches: every declared metric fed the outputs of both models, batch
by batch, and their values named ``METRIC.VALUE``; goals checked against them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from onnxq.errors import ConfigError
from onnxq.metrics_config import MetricGoal, MetricKind, MetricSpec, TaskTarget
from onnxq.report.task.custom import CustomStats, load_function
from onnxq.report.task.families import Accumulator, accumulator, select

__all__ = ["GoalResult", "TaskMeter", "check_goals", "load_table", "output_names"]


def load_table(spec: MetricSpec) -> list[str] | None:
    """The CTC decoding table of ``spec``: the charset file's lines, the blank inserted at
    its index, a space appended with ``space`` (None without a charset)."""
    if spec.charset is None:
        return None
    try:
        text = spec.charset.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"metric '{spec.name}': charset '{spec.charset}' cannot be read: {exc}"
        ) from exc
    symbols = text.split("\n")
    if symbols and symbols[-1] == "":
        symbols.pop()
    symbols = [s.rstrip("\r") for s in symbols]
    symbols.insert(min(spec.blank, len(symbols)), "")
    return symbols + ([" "] if spec.space else [])


def output_names(target: TaskTarget, outputs: Sequence[str]) -> tuple[str, ...]:
    """The outputs the metrics read (a spec without ``output``: the first), checked."""
    names = []
    for spec in target.metrics:
        if spec.kind is MetricKind.CUSTOM:
            names += list(outputs)
            continue
        name = spec.output or outputs[0]
        if name not in outputs:
            raise ConfigError(
                f"metric '{spec.name}' reads output '{name}', which the model does not have "
                f"(outputs: {', '.join(outputs)})"
            )
        names.append(name)
    return tuple(dict.fromkeys(names))


class TaskMeter:
    """The declared metrics of ``target`` over a model with ``outputs``; custom functions
    are imported and charsets read here, so a bad declaration fails before any run."""

    def __init__(self, target: TaskTarget, outputs: Sequence[str]) -> None:
        self.target = target
        self.outputs = tuple(outputs)
        self.reads = output_names(target, outputs)
        self._items: list[tuple[MetricSpec, Accumulator | CustomStats]] = []
        for spec in target.metrics:
            if spec.kind is MetricKind.CUSTOM:
                assert spec.function is not None  # MetricSpec checks it
                self._items.append((spec, CustomStats(spec.function, load_function(spec.function))))
            else:
                self._items.append((spec, accumulator(spec, load_table(spec))))

    def update(
        self,
        ref: Mapping[str, np.ndarray],
        cand: Mapping[str, np.ndarray],
        labels: np.ndarray | None = None,
    ) -> None:
        for spec, acc in self._items:
            if isinstance(acc, CustomStats):
                acc.update({n: ref[n] for n in self.outputs if n in ref}, cand)
                continue
            name = spec.output or self.outputs[0]
            r, c = np.asarray(ref[name]), np.asarray(cand[name])
            if spec.kind is not MetricKind.DETECT:  # detect reads its parts itself
                r, c = self._part(spec, r), self._part(spec, c)
            else:
                self._detect_parts(spec, r)
            acc.update(r, c, labels)

    @classmethod
    def _detect_parts(cls, spec: MetricSpec, value: np.ndarray) -> None:
        """Detect's score and box parts exist, and the boxes are four rows."""
        cls._part(spec, value)
        if spec.boxes is None:
            return
        boxes = cls._part(replace(spec, part=spec.boxes), value)
        if boxes.shape[spec.boxes.axis] != 4:
            raise ConfigError(
                f"metric '{spec.name}': boxes={spec.boxes.text} selects "
                f"{boxes.shape[spec.boxes.axis]} rows of axis {spec.boxes.axis}, not 4"
            )

    @staticmethod
    def _part(spec: MetricSpec, value: np.ndarray) -> np.ndarray:
        if not spec.part.whole and not -value.ndim <= spec.part.axis < value.ndim:
            raise ConfigError(
                f"metric '{spec.name}': axis {spec.part.axis} of a slice of a rank-"
                f"{value.ndim} output"
            )
        out = select(value, spec.part)
        if out.size == 0:
            raise ConfigError(
                f"metric '{spec.name}': slice {spec.part.text} of axis {spec.part.axis} is "
                f"empty for an output of shape {list(value.shape)}"
            )
        return out

    def result(self) -> dict[str, float]:
        """Every value, named ``METRIC.VALUE``, in declaration order."""
        out: dict[str, float] = {}
        for spec, acc in self._items:
            for key, value in acc.result().items():
                out[f"{spec.name}.{key}"] = value
        return out


@dataclass(frozen=True)
class GoalResult:
    goal: MetricGoal
    value: float

    @property
    def met(self) -> bool:
        return self.goal.met(self.value)


def check_goals(goals: Sequence[MetricGoal], values: Mapping[str, float]) -> list[GoalResult]:
    """Each goal with its measured value; a goal naming no measured value is an error."""
    out = []
    for goal in goals:
        if goal.name not in values:
            raise ConfigError(
                f"no metric value is named '{goal.name}'; measured: {', '.join(values)}"
            )
        out.append(GoalResult(goal, values[goal.name]))
    return out

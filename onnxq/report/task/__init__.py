"""Task metrics: what a user judges a quantized model by (recognised strings, detected
boxes, mask overlap, retrieval rank), declared once and read by ``compare`` (reported,
gated) and by ``quantize``'s output check (its target)."""

from onnxq.metrics_config import (
    BoxFormat,
    MetricGoal,
    MetricKind,
    MetricSpec,
    Part,
    TaskTarget,
    parse_goal,
    parse_metric,
    target_from_document,
)
from onnxq.report.task.measure import GoalResult, TaskMeter, check_goals

__all__ = [
    "BoxFormat",
    "GoalResult",
    "MetricGoal",
    "MetricKind",
    "MetricSpec",
    "Part",
    "TaskMeter",
    "TaskTarget",
    "check_goals",
    "parse_goal",
    "parse_metric",
    "target_from_document",
]

"""``--metric``, ``--metric-file``, ``--min-metric`` and ``--max-metric``: the task metrics
of ``compare`` (reported and gated) and of ``quantize``'s output check (its target), declared
the same way for both and handed to the command as one ``task`` argument."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from onnxq.cli.config_file import read_document
from onnxq.report.task import TaskTarget, parse_goal, parse_metric, target_from_document

__all__ = ["declared_target", "metric_options"]

F = TypeVar("F", bound=Callable[..., Any])


def declared_target(
    metrics: tuple[str, ...],
    metric_file: Path | None,
    min_metric: tuple[str, ...],
    max_metric: tuple[str, ...],
) -> TaskTarget:
    """The metrics and goals of the options and of the metric file, as one target."""
    target = TaskTarget()
    if metric_file is not None:
        target = target_from_document(read_document(metric_file), metric_file)
    goals = tuple(parse_goal(g) for g in min_metric) + tuple(
        parse_goal(g, at_least=False) for g in max_metric
    )
    return TaskTarget(
        target.metrics + tuple(parse_metric(m) for m in metrics), target.goals + goals
    )


def metric_options(func: F) -> F:
    """The four options, passed on as ``task`` (goes below ``handle_errors``: a bad
    declaration is a one-line error, exit 2)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs["task"] = declared_target(
            tuple(kwargs.pop("metric")),
            kwargs.pop("metric_file"),
            tuple(kwargs.pop("min_metric")),
            tuple(kwargs.pop("max_metric")),
        )
        return func(*args, **kwargs)

    for decorator in reversed(_OPTIONS):
        wrapper = decorator(wrapper)
    return wrapper  # type: ignore[return-value]


_OPTIONS = (
    click.option(
        "--metric",
        multiple=True,
        metavar="SPEC",
        help="A task metric: KIND[:key=value,...] with KIND classify, detect, mask, ctc, embed "
        "or fidelity (e.g. ctc:charset=dict.txt, detect:slice=4:,k=20, "
        "fidelity:output=out,slice=:4), or MODULE:FUNCTION / FILE.py:FUNCTION of your own; "
        "repeatable. See docs/cli.md.",
    ),
    click.option(
        "--metric-file",
        type=click.Path(path_type=Path, dir_okay=False),
        help="TOML, YAML or JSON file declaring metrics ([[metric]] tables) and goals "
        "([min] / [max] tables of NAME = VALUE).",
    ),
    click.option(
        "--min-metric",
        multiple=True,
        metavar="NAME=VALUE",
        help="Goal: task metric NAME (METRIC.VALUE, e.g. ctc.string_agreement) at least "
        "VALUE; compare exits 1 when missed, quantize's output check aims at it instead of "
        "SQNR; repeatable.",
    ),
    click.option(
        "--max-metric",
        multiple=True,
        metavar="NAME=VALUE",
        help="Goal: task metric NAME at most VALUE (e.g. ctc.cer=0.02); repeatable.",
    ),
)

"""What a task metric is asked to measure: a frozen :class:`MetricSpec` per metric, the
goals set on their values, and the compact option syntax and metric-file form they are
read from (pure; no onnx, no click). Configuration, beside :mod:`onnxq.config` (whose
``FidelityTarget`` holds a :class:`TaskTarget`); :mod:`onnxq.report.task` measures it.

Option syntax (``--metric``)::

    KIND[:key=value,key=value,...]       a built-in family (MetricKind values)
    MODULE:FUNCTION  or  FILE.py:FUNCTION  a user-defined metric (see custom.py)

Keys every built-in takes: ``output`` (default: the model's first output), ``slice``
(``START:STOP`` along ``axis``, either end may be left out; default: the whole output),
``axis`` (of the slice, default 1) and ``name`` (what the values are called, default the
kind). Family keys: ``k``, ``threshold``, ``charset``, ``blank``, ``space``, ``boxes``,
``format``, ``conf``, ``iou`` (see :class:`MetricSpec`). Values are named
``NAME.VALUE``, e.g. ``ctc.string_agreement``; goals (``--min-metric`` / ``--max-metric``)
name them so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from onnxq.errors import ConfigError

__all__ = [
    "BoxFormat",
    "MetricGoal",
    "MetricKind",
    "MetricSpec",
    "Part",
    "TaskTarget",
    "parse_goal",
    "parse_metric",
    "target_from_document",
]


class MetricKind(str, Enum):
    """A family of task metrics; the values are the ``--metric`` spellings."""

    CLASSIFY = "classify"  # top-1 / top-k agreement, accuracy with labels
    DETECT = "detect"  # per-anchor scores (and boxes): top-k agreement, cosine, box F1
    MASK = "mask"  # probability maps: IoU of the masks at a threshold
    CTC = "ctc"  # CTC sequences: greedy decode, string agreement, character error rate
    EMBED = "embed"  # embeddings: cosine, retrieval top-1 agreement, recall@k
    FIDELITY = "fidelity"  # SQNR and cosine (of a slice: the per-part rule uses it)
    CUSTOM = "custom"  # a user's function, MODULE:FUNCTION

    @property
    def keys(self) -> frozenset[str]:
        """The option keys this family takes besides output, slice, axis and name."""
        return _KEYS[self]


_KEYS: dict[MetricKind, frozenset[str]] = {
    MetricKind.CLASSIFY: frozenset({"k"}),
    MetricKind.DETECT: frozenset({"k", "boxes", "format", "conf", "iou"}),
    MetricKind.MASK: frozenset({"threshold"}),
    MetricKind.CTC: frozenset({"charset", "blank", "space"}),
    MetricKind.EMBED: frozenset({"k"}),
    MetricKind.FIDELITY: frozenset(),
    MetricKind.CUSTOM: frozenset(),
}
_COMMON = frozenset({"output", "slice", "axis", "name"})


class BoxFormat(str, Enum):
    """How the four box rows of a detection head are written."""

    XYWH = "xywh"  # centre x, centre y, width, height (YOLO)
    XYXY = "xyxy"  # corners


@dataclass(frozen=True)
class Part:
    """``[start:stop]`` along ``axis`` of an output (``None``: that end of the axis)."""

    axis: int = 1
    start: int | None = None
    stop: int | None = None

    def __post_init__(self) -> None:
        if self.axis == 0:
            raise ConfigError("a metric's slice cannot be along axis 0 (the samples)")
        for end in (self.start, self.stop):
            if end is not None and end < 0:
                raise ConfigError(f"a metric's slice takes ends ≥ 0, got {self.text}")

    @property
    def whole(self) -> bool:
        return self.start is None and self.stop is None

    @property
    def text(self) -> str:
        """``START:STOP`` as written on the command line."""
        a = "" if self.start is None else str(self.start)
        b = "" if self.stop is None else str(self.stop)
        return f"{a}:{b}"

    def label(self, output: str) -> str:
        """``output[4:, axis 1]`` (the output alone when the part is all of it)."""
        return output if self.whole else f"{output}[{self.text}, axis {self.axis}]"

    @staticmethod
    def parse(text: str, axis: int = 1) -> Part:
        start, sep, stop = text.partition(":")
        if not sep:
            raise ConfigError(f"a slice is START:STOP (either may be left out), got '{text}'")
        return Part(axis, _int_or_none(start, "slice"), _int_or_none(stop, "slice"))


def _int_or_none(text: str, key: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError as exc:
        raise ConfigError(f"metric key '{key}' takes integers, got '{text}'") from exc


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its family, the output (and part of it) it reads, and its parameters.

    ``k``: top-k (classify: the reference's top-1 among the candidate's top k; detect: the
    k highest-scored anchors; embed: recall@k). ``threshold``: mask probability threshold.
    ``charset``: CTC decoding table, one symbol a line (None: strings of indices);
    ``blank``: index of the CTC blank; ``space``: a space appended to the table (PaddleOCR).
    ``boxes``: the rows of the detection head that hold the boxes (the slice holds the
    class scores), ``format`` their layout, ``conf`` / ``iou`` the score threshold and NMS
    IoU of the box-match F1 (decoded only when ``boxes`` is given). ``function``: the
    ``MODULE:FUNCTION`` of a custom metric.
    """

    kind: MetricKind
    output: str | None = None
    part: Part = field(default_factory=Part)
    name: str = ""
    k: int = 5
    threshold: float = 0.5
    charset: Path | None = None
    blank: int = 0
    space: bool = False
    boxes: Part | None = None
    format: BoxFormat = BoxFormat.XYWH
    conf: float = 0.25
    iou: float = 0.5
    function: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            default = self.kind.value
            if self.function is not None:
                default = self.function.rpartition(":")[2]
            object.__setattr__(self, "name", default)
        if not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"metric name '{self.name}' must be letters, digits, '_' or '-'")
        if self.k < 1:
            raise ConfigError(f"metric '{self.name}': k must be at least 1, got {self.k}")
        for key, value in (("threshold", self.threshold), ("conf", self.conf), ("iou", self.iou)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"metric '{self.name}': {key} must be in [0, 1], got {value}")
        if self.blank < 0:
            raise ConfigError(f"metric '{self.name}': blank must be ≥ 0, got {self.blank}")
        if (self.kind is MetricKind.CUSTOM) != (self.function is not None):
            raise ConfigError("a custom metric is written MODULE:FUNCTION or FILE.py:FUNCTION")
        if self.boxes is not None and self.part.whole:
            raise ConfigError(
                f"metric '{self.name}': boxes= needs slice= for the score rows (else the box "
                "coordinates would be ranked as scores), e.g. detect:slice=4:,boxes=0:4"
            )

    def describe(self) -> str:
        what = self.function if self.function is not None else self.kind.value
        return f"{self.name} ({what} on {self.part.label(self.output or 'the first output')})"


@dataclass(frozen=True)
class MetricGoal:
    """``name`` (``METRIC.VALUE``) at least (or at most) ``value``."""

    name: str
    value: float
    at_least: bool = True

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ConfigError(f"the goal on '{self.name}' must be a finite number")

    def met(self, measured: float) -> bool:
        """Written so that a NaN measurement misses the goal."""
        return measured >= self.value if self.at_least else measured <= self.value

    def margin(self, measured: float) -> float:
        """How far ``measured`` is on the good side of the goal (negative: missed)."""
        gap = measured - self.value if self.at_least else self.value - measured
        return -math.inf if math.isnan(gap) else gap

    @property
    def text(self) -> str:
        return f"{self.name} {'≥' if self.at_least else '≤'} {self.value:g}"


@dataclass(frozen=True)
class TaskTarget:
    """The declared metrics and the goals set on their values. With goals, the output
    check's target is them (instead of SQNR); compare gates on them."""

    metrics: tuple[MetricSpec, ...] = ()
    goals: tuple[MetricGoal, ...] = ()

    def __post_init__(self) -> None:
        names = [m.name for m in self.metrics]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(
                f"two metrics are named '{dup[0]}': give one of them name=... to tell them apart"
            )
        for goal in self.goals:
            head = goal.name.partition(".")[0]
            if head not in names:
                known = ", ".join(names) or "none declared"
                raise ConfigError(
                    f"goal on '{goal.name}' names no declared metric (its part before the "
                    f"dot must be one of: {known}); declare it with --metric"
                )

    def __bool__(self) -> bool:
        return bool(self.metrics)

    def merged(self, other: TaskTarget) -> TaskTarget:
        return TaskTarget(self.metrics + other.metrics, self.goals + other.goals)


def parse_metric(text: str, base: Path | None = None) -> MetricSpec:
    """A ``--metric`` value as a spec (``base``: where a relative charset path starts)."""
    text = text.strip()
    head, _, rest = text.partition(":")
    kinds = {k.value: k for k in MetricKind if k is not MetricKind.CUSTOM}
    if head in kinds:
        params = _pairs(rest, text)
        return spec_from_mapping(kinds[head], params, f"--metric '{text}'", base)
    if head and rest and "=" not in text and "," not in text:
        return MetricSpec(MetricKind.CUSTOM, function=text)
    known = ", ".join(kinds)
    raise ConfigError(
        f"--metric '{text}' is neither a built-in metric ({known}, then :key=value,...) nor "
        "MODULE:FUNCTION"
    )


def _pairs(text: str, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--metric '{where}': '{item}' is not key=value")
        out[key.strip()] = value.strip()
    return out


def spec_from_mapping(
    kind: MetricKind, params: Mapping[str, Any], where: str, base: Path | None = None
) -> MetricSpec:
    """A spec from ``key -> value`` (strings from an option, typed values from a file)."""
    unknown = sorted(set(params) - _COMMON - kind.keys)
    if unknown:
        allowed = ", ".join(sorted(_COMMON | kind.keys))
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' for {kind.value} ({allowed})")
    axis = _typed(params, "axis", int, 1, where)
    spec = MetricSpec(kind, name=str(params.get("name", "")))
    if "output" in params:
        spec = replace(spec, output=str(params["output"]))
    if "slice" in params:
        spec = replace(spec, part=Part.parse(str(params["slice"]), axis))
    if "boxes" in params:
        spec = replace(spec, boxes=Part.parse(str(params["boxes"]), axis))
    if "charset" in params:
        path = Path(str(params["charset"]))
        spec = replace(spec, charset=path if base is None or path.is_absolute() else base / path)
    if "format" in params:
        try:
            spec = replace(spec, format=BoxFormat(str(params["format"])))
        except ValueError as exc:
            raise ConfigError(f"{where}: format is xywh or xyxy") from exc
    return replace(
        spec,
        k=_typed(params, "k", int, spec.k, where),
        threshold=_typed(params, "threshold", float, spec.threshold, where),
        blank=_typed(params, "blank", int, spec.blank, where),
        space=_typed(params, "space", bool, spec.space, where),
        conf=_typed(params, "conf", float, spec.conf, where),
        iou=_typed(params, "iou", float, spec.iou, where),
    )


def _typed(params: Mapping[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    if key not in params:
        return default
    value = params[key]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{where}: {key} takes true or false, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {key} takes a number, got {value!r}") from exc


def parse_goal(text: str, at_least: bool = True) -> MetricGoal:
    """``NAME=VALUE`` of ``--min-metric`` (``at_least``) or ``--max-metric``."""
    flag = "--min-metric" if at_least else "--max-metric"
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"{flag} takes NAME=VALUE (e.g. ctc.string_agreement=0.95), got '{text}'")
    try:
        number = float(value)
    except ValueError as exc:
        raise ConfigError(f"{flag} '{text}': '{value}' is not a number") from exc
    return MetricGoal(name.strip(), number, at_least)


def target_from_document(doc: Mapping[str, Any], source: Path) -> TaskTarget:
    """A metric file's declaration (TOML, YAML or JSON, already parsed)::

    [[metric]]
    kind = "ctc"                # or function = "my_metrics:f1"
    output = "softmax_11.tmp_0"
    charset = "dict.txt"        # relative to the metric file

    [min]
    "ctc.string_agreement" = 0.95
    [max]
    "ctc.cer" = 0.02
    """
    where = f"metric file '{source}'"
    unknown = sorted(set(doc) - {"metric", "min", "max"})
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (metric, min, max)")
    entries = doc.get("metric", [])
    if isinstance(entries, Mapping):
        entries = [entries]
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: 'metric' must be a list of tables")
    specs = [
        _file_metric(entry, f"{where}, metric {i + 1}", source.parent)
        for i, entry in enumerate(entries)
    ]
    goals = []
    for key, at_least in (("min", True), ("max", False)):
        table = doc.get(key, {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: '{key}' must be a table of NAME = VALUE")
        for name, value in table.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}: {key}.{name} must be a number, got {value!r}")
            goals.append(MetricGoal(str(name), float(value), at_least))
    return TaskTarget(tuple(specs), tuple(goals))


def _file_metric(entry: Any, where: str, base: Path) -> MetricSpec:
    """One ``[[metric]]`` table: ``kind`` and its keys, or ``function`` (and ``name``)."""
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: must be a table of key = value")
    params = dict(entry)
    if "function" in params:
        func = str(params.pop("function"))
        module, sep, attr = func.rpartition(":")
        if sep and module.endswith(".py") and not Path(module).is_absolute():
            func = f"{base / module}:{attr}"  # a file beside the metric file, like charset
        name = str(params.pop("name", ""))
        if params:
            raise ConfigError(f"{where}: a custom metric takes function and name only")
        return MetricSpec(MetricKind.CUSTOM, function=func, name=name)
    kind_text = str(params.pop("kind", ""))
    try:
        kind = MetricKind(kind_text)
    except ValueError as exc:
        raise ConfigError(f"{where}: kind '{kind_text}' is not a metric family") from exc
    return spec_from_mapping(kind, params, where, base)

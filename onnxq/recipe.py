"""Recipe files: per-node weight settings and exclusions, as JSON or YAML.

::

    {"version": 1,
     "rules": [
       {"match": "MatMul", "weight_bits": 4, "granularity": "block", "block_size": 32},
       {"match": "/encoder/layer.0/*", "exclude": true}
     ]}

``match`` is a glob over node names and op types. Keys: ``exclude``,
``weight_scheme``, ``weight_bits``, ``granularity``, ``group_size``, ``block_size``,
``weight_method``. Two rules that give one node different values for one key are a
conflict; a rule that matches nothing is an error (both name what is wrong).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnxq.config import (
    CalibrationMethod,
    Granularity,
    Recipe,
    RecipeRule,
    Scheme,
    WeightOverride,
    WeightSpec,
)
from onnxq.errors import ConfigError

__all__ = ["exclusion_recipe", "glob_literal", "read_recipe"]


def _strict(kind: type) -> Any:
    """A converter that accepts only values already of ``kind`` (no "false" -> True)."""

    def convert(value: Any) -> Any:
        if type(value) is not kind:
            raise TypeError(f"expected {kind.__name__}")
        return value

    return convert


_CONVERT: dict[str, Any] = {
    "exclude": _strict(bool),
    "weight_scheme": Scheme,
    "weight_bits": _strict(int),
    "granularity": Granularity,
    "group_size": _strict(int),
    "block_size": _strict(int),
    "weight_method": CalibrationMethod,
}
# recipe key -> WeightOverride field
_WEIGHT_FIELD = {
    "weight_scheme": "scheme",
    "weight_bits": "bits",
    "granularity": "granularity",
    "group_size": "group_size",
    "block_size": "block_size",
    "weight_method": "method",
}


def read_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"recipe file '{path}' does not exist")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            doc = yaml.safe_load(text)
        else:
            doc = json.loads(text)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"recipe file '{path}' cannot be parsed: {first}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        raise ConfigError(f"recipe file '{path}' needs a top-level \"rules\" list")
    unknown_top = set(doc) - {"version", "rules"}
    if unknown_top:
        raise ConfigError(f"recipe file '{path}': unknown key '{sorted(unknown_top)[0]}'")
    rules = [_rule(path, i, entry) for i, entry in enumerate(doc["rules"])]
    return Recipe(tuple(rules), str(path))


def _rule(path: Path, i: int, entry: Any) -> RecipeRule:
    where = f"recipe file '{path}', rule {i + 1}"
    if not isinstance(entry, dict) or not isinstance(entry.get("match"), str) or not entry["match"]:
        raise ConfigError(f'{where}: each rule needs a "match" glob')
    values: dict[str, Any] = {}
    for key, value in entry.items():
        if key == "match":
            continue
        if key not in _CONVERT:
            raise ConfigError(
                f"{where} ('{entry['match']}'): unknown key '{key}' "
                f"(known: {', '.join(sorted(_CONVERT))})"
            )
        try:
            values[key] = _CONVERT[key](value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where} ('{entry['match']}'): bad {key} {value!r}") from exc
    if not values:
        raise ConfigError(f"{where} ('{entry['match']}') sets nothing")
    override = WeightOverride(**{_WEIGHT_FIELD[k]: v for k, v in values.items() if k != "exclude"})
    rule = RecipeRule(entry["match"], values.get("exclude"), override)
    try:
        rule.apply(WeightSpec())
    except ConfigError as exc:
        raise ConfigError(f"{where} ('{entry['match']}'): {exc}") from exc
    return rule


def glob_literal(name: str) -> str:
    """A ``match`` glob that matches exactly ``name`` (``*``, ``?`` and ``[`` bracketed)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def exclusion_recipe(nodes: Sequence[str]) -> dict[str, Any]:
    """A recipe document (as :func:`read_recipe` reads it) keeping ``nodes`` float."""
    return {
        "version": 1,
        "rules": [{"match": glob_literal(n), "exclude": True} for n in nodes],
    }

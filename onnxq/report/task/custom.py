"""User-defined metrics: ``--metric MODULE:FUNCTION`` or ``--metric path/to/file.py:FUNCTION``.

The module is imported only when such a metric is declared. The function is called once,
after the last batch, with every sample's outputs::

    def my_metric(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray])
            -> dict[str, float]:

``reference`` holds the float (reference) model's outputs by name, ``candidate`` the
quantized one's, samples stacked along axis 0; it returns named numbers (reported as
``FUNCTION.NAME``, gated with ``--min-metric`` / ``--max-metric``). It keeps every output of
the samples in memory: a metric that needs less can sum what it needs itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from onnxq.errors import ConfigError

__all__ = ["CustomStats", "load_function"]

Function = Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], Mapping[str, Any]]


def load_function(text: str) -> Function:
    """The callable ``MODULE:FUNCTION`` (an importable module) or ``FILE.py:FUNCTION``."""
    where, _, name = text.rpartition(":")
    if not where or not name:
        raise ConfigError(f"--metric '{text}': write MODULE:FUNCTION or FILE.py:FUNCTION")
    try:
        if where.endswith(".py"):
            module = _from_file(Path(where))
        else:
            module = importlib.import_module(where)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raises on import
        raise ConfigError(
            f"--metric '{text}': cannot import '{where}': {type(exc).__name__}: {exc}"
        ) from exc
    func = getattr(module, name, None)
    if not callable(func):
        raise ConfigError(f"--metric '{text}': '{where}' has no function '{name}'")
    return func  # type: ignore[no-any-return]


def _from_file(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"metric file '{path}' does not exist")
    name = f"onnxq_metric_{path.stem}"
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return loaded  # the output check measures on every candidate: import once
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"'{path}' cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class CustomStats:
    """Collects every output of both models; calls the function once at the end."""

    def __init__(self, text: str, func: Function) -> None:
        self.text, self.func = text, func
        self.ref: dict[str, list[np.ndarray]] = {}
        self.cand: dict[str, list[np.ndarray]] = {}

    def update(self, ref: Mapping[str, np.ndarray], cand: Mapping[str, np.ndarray]) -> None:
        for name, value in ref.items():
            self.ref.setdefault(name, []).append(np.asarray(value))
            self.cand.setdefault(name, []).append(np.asarray(cand[name]))

    def result(self) -> dict[str, float]:
        ref = {n: np.concatenate(v) for n, v in self.ref.items()}
        cand = {n: np.concatenate(v) for n, v in self.cand.items()}
        try:
            values = self.func(ref, cand)
        except Exception as exc:  # noqa: BLE001 - the user's code, reported in one line
            raise ConfigError(
                f"metric '{self.text}' failed: {type(exc).__name__}: {exc}".replace("\n", " ")
            ) from exc
        if not isinstance(values, Mapping):
            raise ConfigError(f"metric '{self.text}' must return a dict of name -> number")
        out: dict[str, float] = {}
        for key, value in values.items():
            try:
                out[str(key)] = float(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"metric '{self.text}' returned {key}={value!r}, not a number"
                ) from exc
        return {k: v if not math.isnan(v) else math.nan for k, v in out.items()}

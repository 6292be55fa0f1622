"""What onnxq records in the models it writes, in one place: the keys of
``metadata_props``, the writer (:func:`stamp`) and the reader (:func:`recorded`).

* ``onnxq.version`` — the onnxq that wrote the model;
* ``onnxq.settings`` — every setting of the run (JSON object);
* ``onnxq.tensors`` — integer tensor of each quantized activation -> the float tensor it
  holds (JSON object), which ``onnxq diagnose`` matches tensors by.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import onnx

from onnxq._version import __version__

__all__ = ["SETTINGS_KEY", "TENSORS_KEY", "VERSION_KEY", "recorded", "stamp"]

VERSION_KEY = "onnxq.version"
SETTINGS_KEY = "onnxq.settings"
TENSORS_KEY = "onnxq.tensors"


def _compact(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def stamp(
    model: onnx.ModelProto,
    settings: Mapping[str, object],
    tensors: Mapping[str, str] | None = None,
) -> None:
    """Record onnxq's version, ``settings`` and, when given, ``tensors`` in ``model``,
    replacing earlier ones."""
    model.producer_name = "onnxq"
    model.producer_version = __version__
    ours = (SETTINGS_KEY, VERSION_KEY, TENSORS_KEY)
    kept = [p for p in model.metadata_props if p.key not in ours]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entries = [(VERSION_KEY, __version__), (SETTINGS_KEY, _compact(settings))]
    if tensors:
        entries.append((TENSORS_KEY, _compact(dict(tensors))))
    for key, value in entries:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def recorded(model: onnx.ModelProto, key: str) -> dict[str, Any] | None:
    """The JSON object recorded under ``key``, or None when there is none (a model from
    another tool) or it is not a readable JSON object."""
    for prop in model.metadata_props:
        if prop.key == key:
            try:
                value = json.loads(prop.value)
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None

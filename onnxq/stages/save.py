"""Stage: write the quantized model — refused when nothing was quantized, trimmed of the
shapes inferred during preparation, stamped with onnxq's version and every setting used
(``producer_name``/``producer_version``, ``metadata_props``) and with the record of which
integer tensor holds which float activation (``onnxq.tensors``, read by ``onnxq diagnose``),
checked by onnx and written atomically."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import onnx

from onnxq._version import __version__
from onnxq.errors import ModelError
from onnxq.graph.candidate import Candidate
from onnxq.graph.model_io import save_model
from onnxq.graph.outputs import restrict_value_info
from onnxq.graph.qdq_points import TENSORS_KEY
from onnxq.stages.inputs import QuantizeRequest

__all__ = ["SETTINGS_KEY", "TENSORS_KEY", "save", "stamp"]

log = logging.getLogger(__name__)

SETTINGS_KEY = "onnxq.settings"  # metadata_props key of the settings (JSON)


def save(
    candidate: Candidate,
    original: onnx.ModelProto,
    request: QuantizeRequest,
    settings: Mapping[str, object],
    rescaled: frozenset[str] = frozenset(),
) -> int:
    """Write ``candidate`` to the request's output path; returns the bytes written. The
    record of quantized activations leaves out ``rescaled`` float tensors (equalisation scaled
    their channels: they no longer hold the original model's values)."""
    if candidate.quantized_nodes == 0:
        raise ModelError(
            f"nothing in '{request.model_path}' can be quantized with these settings (weights "
            "inside If/Loop/Scan bodies are not quantized); run onnxq inspect for why each node "
            "stays float; no file written"
        )
    model = candidate.model
    restrict_value_info(model, (vi.name for vi in original.graph.value_info))
    if candidate.folded_weights:
        log.info(
            "%d integer weights of float nodes are dequantized at load", candidate.folded_weights
        )
    log.info(
        "rewrote %d nodes, %d weights, %d Q/DQ pairs",
        candidate.quantized_nodes,
        candidate.quantized_weights,
        candidate.qdq_pairs,
    )
    codes = {q: f for q, f in candidate.activation_codes.items() if f not in rescaled}
    stamp(model, settings, codes)
    return save_model(model, request.output_path)


def _compact(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def stamp(
    model: onnx.ModelProto,
    settings: Mapping[str, object],
    tensors: Mapping[str, str] | None = None,
) -> None:
    """Record onnxq's version, ``settings`` and, when given, ``tensors`` (integer tensor of
    each quantized activation -> the float tensor it holds) in ``model``, replacing
    earlier ones."""
    model.producer_name = "onnxq"
    model.producer_version = __version__
    ours = (SETTINGS_KEY, "onnxq.version", TENSORS_KEY)
    kept = [p for p in model.metadata_props if p.key not in ours]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entries = [("onnxq.version", __version__), (SETTINGS_KEY, _compact(settings))]
    if tensors:
        entries.append((TENSORS_KEY, _compact(dict(tensors))))
    for key, value in entries:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value

"""Stage: write the quantized model — refused when nothing was quantized, trimmed of the
shapes inferred during preparation, stamped with onnxq's version and every setting used
(``producer_name``/``producer_version``, ``metadata_props``) and with the record of which
integer tensor holds which float activation (``onnxq.tensors``, read by ``onnxq diagnose``),
checked by onnx and written atomically."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from onnxq.errors import ModelError
from onnxq.graph.candidate import Candidate
from onnxq.graph.metadata import stamp
from onnxq.graph.model_io import save_model
from onnxq.graph.outputs import restrict_value_info
from onnxq.stages.inputs import QuantizeRequest

__all__ = ["save"]

log = logging.getLogger(__name__)


def save(
    candidate: Candidate,
    value_info: Iterable[str],
    request: QuantizeRequest,
    settings: Mapping[str, object],
    rescaled: frozenset[str] = frozenset(),
) -> int:
    """Write ``candidate`` to the request's output path (its shapes kept for the tensors
    of ``value_info`` only: the user's model's); returns the bytes written. The
    record of quantized activations leaves out ``rescaled`` float tensors (equalisation scaled
    their channels: they no longer hold the original model's values)."""
    if candidate.quantized_nodes == 0:
        raise ModelError(
            f"nothing in '{request.model_path}' can be quantized with these settings (weights "
            "inside If/Loop/Scan bodies are not quantized); run onnxq inspect for why each node "
            "stays float; no file written"
        )
    model = candidate.model
    restrict_value_info(model, value_info)
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
    made = {o for n in model.graph.node for o in n.output}  # a folded rescale drops some
    codes = {q: f for q, f in candidate.activation_codes.items() if f not in rescaled and q in made}
    stamp(model, settings, codes)
    return save_model(model, request.output_path, external=request.external_data)

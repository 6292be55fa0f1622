"""Pass: upgrade the default-domain opset (per-axis Q/DQ needs 13; 4- and 16-bit types and
blocked scales need 21), with onnx's version converter."""

from __future__ import annotations

import onnx
from onnx import version_converter

from onnxq.errors import ModelError
from onnxq.graph.model_io import opset_version
from onnxq.graph.passes.result import Change, ChangeKind, PassResult

__all__ = ["upgrade_opset"]


def upgrade_opset(model: onnx.ModelProto, minimum: int) -> PassResult:
    """``model`` converted to opset ``minimum`` when its opset is lower, else unchanged."""
    current = opset_version(model)
    if current >= minimum:
        return PassResult.unchanged(model)
    try:
        converted = version_converter.convert_version(model, minimum)
        onnx.checker.check_model(converted)
    except Exception as exc:  # noqa: BLE001 - the converter raises many kinds; one message
        raise ModelError(
            f"cannot upgrade the model from opset {current} to {minimum} "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            f"onnxq needs opset {minimum} for the Q/DQ it writes (13: per-axis scales; "
            "21: 4- and 16-bit types, blocked scales)"
        ) from exc
    detail = f"opset {current} -> {minimum}"
    return PassResult(converted, True, (Change(ChangeKind.OPSET_UPGRADED, "", detail),), detail)

"""Which graph input marks a padded batch's real positions (see
:mod:`onnxq.calibration.positions` for what is done with it)."""

from __future__ import annotations

import onnx

__all__ = ["MASK_NAMES", "padding_mask"]

# the names of an input whose 1s mark the real tokens (Hugging Face's attention_mask,
# BERT's original input_mask); others named like masks mean the opposite (PyTorch's
# key_padding_mask: True where padded; ViTMAE's bool_masked_pos) or another thing
# (head_mask, a decoder's encoder_attention_mask), so they are never guessed at
MASK_NAMES = ("attention_mask", "input_mask")

_TYPES = {
    onnx.TensorProto.INT64,
    onnx.TensorProto.INT32,
    onnx.TensorProto.BOOL,
    onnx.TensorProto.FLOAT,
}


def padding_mask(model: onnx.ModelProto) -> str | None:
    """The rank-2 ``[batch, positions]`` input of integer, bool or float type named one
    of :data:`MASK_NAMES` (case aside); None when there is none (or, names differing only
    in case, more than one)."""
    found = []
    for vi in model.graph.input:
        t = vi.type.tensor_type
        if vi.name.lower() not in MASK_NAMES or t.elem_type not in _TYPES:
            continue
        if t.HasField("shape") and len(t.shape.dim) == 2:
            found.append(vi.name)
    return found[0] if len(found) == 1 else None

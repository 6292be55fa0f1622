"""Loading, fingerprinting and atomically saving ONNX models."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxq.data.dataset import InputSpec
from onnxq.errors import ModelError

__all__ = [
    "check_distinct",
    "check_writable",
    "fingerprint",
    "input_specs",
    "load_model",
    "opset_version",
    "save_model",
]


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read and check an ONNX model; one-line :class:`ModelError` when that fails."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file '{path}' does not exist")
    if path.is_dir():
        raise ModelError(f"model path '{path}' is a folder, not an .onnx file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises several unrelated types
        raise ModelError(f"'{path}' is not an ONNX model ({_first_line(exc)})") from exc
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"'{path}' is not an ONNX model (it holds no graph)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"'{path}' is not a valid ONNX model: {_first_line(exc)}") from exc
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def fingerprint(model: onnx.ModelProto) -> str:
    """A stable digest of the graph (nodes, initializers, inputs and outputs)."""
    digest = hashlib.sha256(model.graph.SerializeToString(deterministic=True))
    return "sha256:" + digest.hexdigest()


def opset_version(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def input_specs(model: onnx.ModelProto) -> tuple[InputSpec, ...]:
    """The graph inputs a caller must feed (initializers listed as inputs excluded)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        ttype = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise ModelError(f"model input '{vi.name}' is not a tensor; onnxq feeds tensors only")
        if ttype.elem_type == onnx.TensorProto.UNDEFINED:
            raise ModelError(f"model input '{vi.name}' has no element type; fix the model")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type))
        dims: list[int | None] = []
        for d in ttype.shape.dim:
            dims.append(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None)
        specs.append(InputSpec(vi.name, dtype, tuple(dims)))
    return tuple(specs)


def check_distinct(source: str | Path | None, target: str | Path, what: str = "model") -> None:
    """Refuse to write ``target`` over the input ``source``."""
    if source is None:
        return
    src, dst = Path(source).resolve(), Path(target).resolve()
    if src == dst or (dst.exists() and src.exists() and os.path.samefile(src, dst)):
        raise ModelError(f"output '{target}' is the input {what}; choose another path")


def check_writable(target: str | Path) -> None:
    """Fail early, before any work, when ``target`` cannot be written."""
    path = Path(target)
    if path.is_dir():
        raise ModelError(f"output '{target}' is a folder; give a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelError(f"cannot write '{target}': folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK):
        raise ModelError(f"cannot write '{target}': folder '{folder}' is not writable")


def save_model(model: onnx.ModelProto, path: str | Path) -> int:
    """Check ``model`` and write it atomically (temporary file in the target folder, then
    rename). Returns the size in bytes. Nothing is left behind when this fails."""
    path = Path(path)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"the quantized model failed onnx.checker: {_first_line(exc)}") from exc
    data = model.SerializeToString()
    write_atomic(path, data)
    return len(data)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelError(f"cannot write '{path}': folder '{folder}' does not exist")
    check_writable(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ModelError(f"cannot write '{path}': {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # durable before it takes the final name
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a new file's usual mode
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ModelError(f"cannot write '{path}': {exc.strerror}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

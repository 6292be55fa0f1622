"""Loading, fingerprinting and atomically saving ONNX models."""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import helper

from onnxq.data.dataset import InputSpec
from onnxq.errors import ModelError
from onnxq.graph.external import (
    PROTOBUF_LIMIT,
    checkable,
    external_files,
    externalized,
    inlined,
    pin_external_data,
    referenced_files,
    stored_bytes,
    uses_external_data,
)

__all__ = [
    "PROTOBUF_LIMIT",
    "TEMP_SUFFIX",
    "check_distinct",
    "check_outputs",
    "check_writable",
    "data_path",
    "fingerprint",
    "input_specs",
    "load_model",
    "model_files",
    "opset_version",
    "remove_stale_temps",
    "save_model",
    "write_atomic",
    "written_files",
]

log = logging.getLogger(__name__)

# write_atomic's temporary files: ".<name>.<pid>.<random>.onnxq-tmp" beside <name>
TEMP_SUFFIX = ".onnxq-tmp"
_STARTED = time.time()  # when this process loaded onnxq: temporary files older are stale


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read and check an ONNX model; one-line :class:`ModelError` when that fails.

    Initializers in external data files stay in their files: each reference is checked
    and pinned to its file (:func:`onnxq.graph.external.pin_external_data`), and passes
    read the values one tensor at a time (:func:`onnxq.graph.external.tensor_values`)."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file '{path}' does not exist")
    if path.is_dir():
        raise ModelError(f"model path '{path}' is a folder, not an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types
        raise ModelError(f"'{path}' is not an ONNX model ({_first_line(exc)})") from exc
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"'{path}' is not an ONNX model (it holds no graph)")
    pin_external_data(model, path)  # before the checker, which names no path
    try:
        onnx.checker.check_model(checkable(model))
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"'{path}' is not a valid ONNX model: {_first_line(exc)}") from exc
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def fingerprint(model: onnx.ModelProto) -> str:
    """A stable digest of the graph (nodes, initializers, inputs and outputs). External
    initializers count by their file name, offset and length, not their bytes."""
    graph = model.graph
    if uses_external_data(model):  # the same model wherever its folder is
        graph = onnx.GraphProto()
        graph.CopyFrom(model.graph)
        for tensor in graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = Path(entry.value).name
    digest = hashlib.sha256(graph.SerializeToString(deterministic=True))
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


def check_outputs(
    inputs: Mapping[str, str | Path | None], outputs: Mapping[str, str | Path | None]
) -> None:
    """Refuse, before any work, a run that would write one of its ``outputs`` (option →
    path) over one of its ``inputs`` (what it is → path) or over another output."""
    written = [(option, Path(p)) for option, p in outputs.items() if p is not None]
    for i, (option, target) in enumerate(written):
        for what, source in inputs.items():
            check_distinct(source, target, what)
        for other, earlier in written[:i]:
            if _same_file(earlier, target):
                raise ModelError(
                    f"{option} '{target}' is also the {other} output; choose another path"
                )


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


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


def data_path(path: str | Path) -> Path:
    """The external data file onnxq writes beside model ``path``: ``<name>.data``."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def model_files(what: str, path: str | Path | None) -> dict[str, Path | None]:
    """The files reading the model at ``path`` reads, as :func:`check_outputs` takes its
    inputs: the model under ``what`` and each external data file it names under
    "<what>'s external data" (see :func:`onnxq.graph.external.referenced_files`)."""
    if path is None:
        return {what: None}
    files: dict[str, Path | None] = {what: Path(path)}
    for i, data in enumerate(referenced_files(path)):
        files[f"{what}'s external data" + (f" ({i + 1})" if i else "")] = data
    return files


def written_files(option: str, path: str | Path | None) -> dict[str, Path | None]:
    """The files :func:`save_model` may write for the model output ``option``, as
    :func:`check_outputs` takes its outputs: the model and its data file
    (:func:`data_path`)."""
    if path is None:
        return {option: None}
    return {option: Path(path), f"{option} data file": data_path(path)}


def save_model(model: onnx.ModelProto, path: str | Path, *, external: bool | None = None) -> int:
    """Check ``model`` and write it atomically (temporary files in the target folder, then
    renames). Returns the bytes written, data file included. Nothing is left behind when
    this fails.

    ``external``: write the tensors to ``<name>.data`` beside the model (True), inside the
    one protobuf (False), or (None) the former when ``model`` reads external data or its
    tensors pass PROTOBUF_LIMIT. With a data file, the data is written and renamed first,
    the model last, so a model never names a data file that is not there in full."""
    path = Path(path)
    try:
        onnx.checker.check_model(checkable(model))
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"the quantized model failed onnx.checker: {_first_line(exc)}") from exc
    if external is None:
        external = uses_external_data(model) or stored_bytes(model) > PROTOBUF_LIMIT
    _check_not_read(model, [path, data_path(path)] if external else [path])
    if external:
        return _save_external(model, path)
    whole = inlined(model) if uses_external_data(model) else model
    if whole.ByteSize() > PROTOBUF_LIMIT:
        raise ModelError(
            f"the quantized model holds {whole.ByteSize() / 1e9:.2f} GB, past protobuf's "
            "2 GB limit for one file; write it with --external-data"
        )
    data = whole.SerializeToString()
    write_atomic(path, data)
    return len(data)


def _check_not_read(model: onnx.ModelProto, targets: list[Path]) -> None:
    """Refuse to write one of ``targets`` over a data file ``model`` reads its weights
    from (renaming over it would change the input model)."""
    for source in external_files(model):
        for target in targets:
            if _same_file(source, target):
                raise ModelError(
                    f"output '{target}' is the input model's external data; choose another path"
                )


def _save_external(model: onnx.ModelProto, path: Path) -> int:
    """Both files written to temporary files first, then renamed: the data, then the
    model. The data file the output replaces is kept (a hard link beside it) until the
    model is in place and put back if that fails, so an earlier output stays whole."""
    data = data_path(path)
    for target in (path, data):
        check_writable(target)
        remove_stale_temps(target)
    made: list[onnx.ModelProto] = []
    data_tmp = _write_temp(data, lambda fh: made.append(externalized(model, data.name, fh)))
    model_tmp: Path | None = None
    try:
        proto = made[0].SerializeToString()

        def write_model(fh: BinaryIO) -> None:
            fh.write(proto)

        model_tmp = _write_temp(path, write_model)
        _replace_pair(data_tmp, data, model_tmp, path)
    finally:  # gone when renamed; left only by a failure
        data_tmp.unlink(missing_ok=True)
        if model_tmp is not None:
            model_tmp.unlink(missing_ok=True)
    _sync_folder(data.parent)
    return len(proto) + data.stat().st_size


def _replace_pair(data_tmp: Path, data: Path, model_tmp: Path, model: Path) -> None:
    """Rename ``data_tmp`` to ``data``, then ``model_tmp`` to ``model``; when either
    fails, ``data`` is what it was before (the earlier file, or none)."""
    backup = _backup(data)
    renamed = False
    try:
        _rename(data_tmp, data)
        renamed = True
        _rename(model_tmp, model)
    except BaseException:
        if backup is not None:
            _restore(backup, data)
        elif renamed:
            data.unlink(missing_ok=True)  # no data file without its model
        raise
    if backup is not None:
        backup.unlink(missing_ok=True)


def _backup(path: Path) -> Path | None:
    """A second name for the file at ``path`` (a temporary name beside it: a hard link, or
    the file itself renamed where links are not supported); None when there is no file."""
    if not path.exists():
        return None
    backup = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        os.link(path, backup)
    except FileNotFoundError:
        return None
    except OSError:
        _rename(path, backup)
    return backup


def _restore(backup: Path, path: Path) -> None:
    try:
        os.replace(backup, path)
    except OSError as exc:
        log.error("could not put back '%s' (%s); its earlier bytes are in '%s'", path, exc, backup)


def _rename(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError as exc:
        raise ModelError(f"cannot write '{dst}': {exc.strerror}") from exc


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder
    (``.<name>.<pid>.<random>.onnxq-tmp``) flushed to disk, a rename, and the folder
    flushed. Temporary files of ``path`` that a killed run left behind are removed first
    (:func:`remove_stale_temps`)."""
    path = Path(path)
    check_writable(path)
    remove_stale_temps(path)

    def write(fh: BinaryIO) -> None:
        fh.write(data)

    tmp = _write_temp(path, write)
    try:
        _rename(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone when renamed
    _sync_folder(tmp.parent)


def _write_temp(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """A temporary file beside ``path`` (``.<name>.<pid>.<random>.onnxq-tmp``, the mode of
    a new file) holding what ``write`` wrote, flushed to disk; removed if writing fails."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelError(f"cannot write '{path}': folder '{folder}' does not exist")
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=folder
        )
    except OSError as exc:
        raise ModelError(f"cannot write '{path}': {exc.strerror}") from exc
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())  # durable before it takes the final name
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a new file's usual mode
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"cannot write '{path}': {exc.strerror}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; elsewhere, and where a folder cannot be
    opened, the rename is left to the file system)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete the temporary files of ``path`` that a killed run left behind, and return
    them: named ``.<name>.<pid>.<random>.onnxq-tmp``, their process no longer running, and
    last written before this process loaded onnxq. Another live run's file is never
    touched, nor is any file whose name does not follow the scheme."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    prefix = f".{path.name}."
    removed = []
    for tmp in folder.glob(glob.escape(prefix) + "*" + TEMP_SUFFIX):
        pid = _temp_owner(tmp.name[len(prefix) : -len(TEMP_SUFFIX)])
        if pid is None or _running(pid):
            continue
        try:
            if tmp.stat().st_mtime < _STARTED:
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # gone meanwhile, or not ours to delete: leave it
            continue
    return removed


def _temp_owner(middle: str) -> int | None:
    """The process id in the ``<pid>.<random>`` part of a temporary file's name."""
    parts = middle.split(".")
    if len(parts) != 2 or not parts[0].isdigit() or not parts[1]:
        return None
    return int(parts[0])


def _running(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows: os.kill would end the process
        return True  # this process writes it, or wrote it before a failure it handled
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but another user's: not ours to judge
        return True
    return True

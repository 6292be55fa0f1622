"""Initializers whose bytes live in files beside the model (ONNX external data).

A model read by :func:`onnxq.graph.model_io.load_model` keeps such initializers as
references: ``data_location`` EXTERNAL with ``location``, ``offset`` and ``length``. Their
``location`` is checked once (relative, inside the model's folder once symlinks are
resolved, the file present and long enough) and then *pinned*: rewritten to the resolved
absolute path, so that a reference means the same file wherever the proto travels. Every
pass reads a weight with :func:`tensor_values`, one tensor at a time, and the model proto
itself stays a few kilobytes: memory follows the largest tensor, not the model.

New tensors a rewrite makes from a model that uses external data are appended to this
process's spill file (:func:`stored_tensor`), a private temporary file removed at exit;
:func:`onnxq.graph.model_io.save_model` copies every referenced tensor, tensor by tensor,
into the output's own data file.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.errors import ModelError

__all__ = [
    "ALIGN",
    "PROTOBUF_LIMIT",
    "SPILL_BYTES",
    "ExternalRef",
    "checkable",
    "chunks",
    "external_files",
    "external_ref",
    "externalized",
    "inline",
    "inlined",
    "is_external",
    "model_bytes",
    "pin_external_data",
    "read_bytes",
    "referenced_files",
    "relocate",
    "row_reader",
    "spilled_array",
    "stored_bytes",
    "stored_tensor",
    "tensor_nbytes",
    "tensor_values",
    "uses_external_data",
]

ALIGN = 4096  # offsets of tensors in a data file onnxq writes (a page: mmap-friendly)
# a model past this many bytes of tensors is written with external data (protobuf's limit
# for one message is 2 GiB; the margin holds the graph itself)
PROTOBUF_LIMIT = 2**31 - 2**26
SPILL_BYTES = 1024  # new tensors at least this large are spilled (onnx's own threshold)
_CHUNK = 64 * 2**20  # bytes copied at once between data files


class ExternalRef:
    """Where one external tensor's bytes are: a file, an offset and a length."""

    __slots__ = ("length", "offset", "path")

    def __init__(self, path: Path, offset: int, length: int) -> None:
        self.path, self.offset, self.length = path, offset, length


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def uses_external_data(model: onnx.ModelProto) -> bool:
    """Whether any initializer of the main graph keeps its bytes in a file."""
    return any(is_external(t) for t in model.graph.initializer)


def _entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def tensor_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes of ``tensor``'s values in raw form (4-bit types packed two to a byte); None
    for strings, which have no raw form."""
    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    count = int(math.prod(tensor.dims))
    bits = 4 if tensor.data_type in _FOUR_BIT else 8 * _itemsize(tensor.data_type)
    return (count * bits + 7) // 8


_FOUR_BIT = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
if hasattr(onnx.TensorProto, "FLOAT4E2M1"):
    _FOUR_BIT.add(onnx.TensorProto.FLOAT4E2M1)


_PLAIN = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.INT16,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.INT32,
    onnx.TensorProto.UINT32,
    onnx.TensorProto.INT64,
    onnx.TensorProto.UINT64,
    onnx.TensorProto.BOOL,
}


def _itemsize(data_type: int) -> int:
    return int(np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize)


def external_ref(tensor: onnx.TensorProto) -> ExternalRef:
    """The pinned file, offset and length of an external tensor."""
    e = _entries(tensor)
    length = int(e["length"]) if "length" in e else tensor_nbytes(tensor) or 0
    return ExternalRef(Path(e["location"]), int(e.get("offset", "0") or 0), length)


def pin_external_data(model: onnx.ModelProto, model_path: Path) -> None:
    """Check every external reference of ``model`` (read from ``model_path``) and rewrite
    its ``location`` to the resolved absolute path; one-line :class:`ModelError` naming
    the tensor and the file when one is absolute, escapes the model's folder (``..`` or a
    symlink pointing out), is missing, or is shorter than the tensor needs."""
    folder = model_path.resolve().parent
    for tensor in _all_tensors(model):
        if not is_external(tensor):
            continue
        entries = _entries(tensor)
        location = entries.get("location", "")
        where = f"'{model_path}': tensor '{tensor.name}'"
        path = _resolved(location, folder, where)
        offset, length = _span(entries, tensor, where)
        size = path.stat().st_size
        if offset + length > size:
            raise ModelError(
                f"{where} needs bytes {offset}..{offset + length} of '{location}', which holds "
                f"{size}; the data file is truncated: copy it again with the model"
            )
        _set_entry(tensor, "location", str(path))


def _resolved(location: str, folder: Path, where: str) -> Path:
    if not location:
        raise ModelError(f"{where} is external but names no data file; fix the model")
    if "\0" in location:
        raise ModelError(f"{where} names a data file with a NUL byte in it; fix the model")
    given = Path(location)
    if given.is_absolute() or location.startswith(("/", "\\")) or given.drive:
        raise ModelError(
            f"{where} reads data from absolute path '{location}'; external data must sit "
            "beside the model (a relative location)"
        )
    if ".." in given.parts:
        raise ModelError(
            f"{where} reads data from '{location}', outside the model's folder; "
            "external data must sit beside the model"
        )
    try:
        path = (folder / given).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # a link loop, say (RuntimeError < 3.13)
        raise ModelError(
            f"{where} reads data from '{location}', which cannot be resolved ({exc})"
        ) from exc
    if not path.is_relative_to(folder):
        raise ModelError(
            f"{where} reads data from '{location}', a link to '{path}' outside the model's "
            "folder; copy the data beside the model"
        )
    if not path.is_file():
        raise ModelError(
            f"{where} reads data from '{location}', which does not exist beside the model; "
            "copy the data file with the model"
        )
    return path


def _span(entries: dict[str, str], tensor: onnx.TensorProto, where: str) -> tuple[int, int]:
    try:
        offset = int(entries.get("offset", "0") or 0)
        needed = tensor_nbytes(tensor)
        length = int(entries["length"]) if "length" in entries else (needed or 0)
    except ValueError as exc:
        raise ModelError(f"{where} has a malformed offset or length; fix the model") from exc
    if needed is None:
        raise ModelError(f"{where} is an external string tensor; onnxq cannot read those")
    if offset < 0 or length < needed:
        raise ModelError(
            f"{where} declares {length} bytes at offset {offset} but its shape needs "
            f"{needed}; the model and its data do not match"
        )
    return offset, needed


def _set_entry(tensor: onnx.TensorProto, key: str, value: str) -> None:
    for entry in tensor.external_data:
        if entry.key == key:
            entry.value = value
            return
    tensor.external_data.add(key=key, value=value)


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Initializers of every graph and tensors held in node attributes (subgraphs too)."""

    def graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    yield from graph_tensors(attr.g)
                for sub in attr.graphs:
                    yield from graph_tensors(sub)

    yield from graph_tensors(model.graph)


def read_bytes(ref: ExternalRef) -> bytes:
    """The bytes of one external tensor, read from its file (no mapping: the memory is
    the caller's and returns to the system when dropped)."""
    with open(ref.path, "rb") as fh:
        fh.seek(ref.offset)
        data = fh.read(ref.length)
    if len(data) != ref.length:
        raise ModelError(
            f"'{ref.path}' ended before {ref.length} bytes at offset {ref.offset}; "
            "the data file changed while onnxq read it"
        )
    return data


def tensor_values(tensor: onnx.TensorProto) -> np.ndarray:
    """``numpy_helper.to_array`` that reads a pinned external tensor from its file and
    leaves the proto as it was (onnx's own loader writes the bytes into the proto)."""
    if not is_external(tensor):
        return numpy_helper.to_array(tensor)
    ref = external_ref(tensor)
    if tensor.data_type in _PLAIN:  # straight into the array: one copy of the bytes
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        arr = np.empty(tuple(tensor.dims), dtype)
        with open(ref.path, "rb") as fh:
            fh.seek(ref.offset)
            got = fh.readinto(arr.reshape(-1).view(np.uint8).data)
        if got != arr.nbytes:
            raise ModelError(f"'{ref.path}' ended early; the data file changed meanwhile")
        return arr if np.little_endian else arr.byteswap()  # ONNX stores little-endian
    inline = onnx.TensorProto()
    inline.name, inline.data_type = tensor.name, tensor.data_type
    inline.dims.extend(tensor.dims)
    inline.raw_data = read_bytes(ref)
    return numpy_helper.to_array(inline)


def row_reader(tensor: onnx.TensorProto) -> Callable[[int, int], np.ndarray] | None:
    """For an external tensor of a plain numeric type: a function reading its indices
    ``start:stop`` along axis 0 (contiguous in the file) straight from the file, so that a
    pass holds a slab of the tensor, never all of it. None for other tensors."""
    if not is_external(tensor) or tensor.data_type not in _PLAIN or not tensor.dims:
        return None
    ref = external_ref(tensor)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    rest = tuple(tensor.dims[1:])
    row_bytes = math.prod(rest) * dtype.itemsize

    def read(start: int, stop: int) -> np.ndarray:
        arr = np.empty((stop - start, *rest), dtype)
        with open(ref.path, "rb") as fh:
            fh.seek(ref.offset + start * row_bytes)
            got = fh.readinto(arr.reshape(-1).view(np.uint8).data)
        if got != arr.nbytes:
            raise ModelError(f"'{ref.path}' ended early; the data file changed meanwhile")
        return arr if np.little_endian else arr.byteswap()

    return read


def stored_tensor(arr: np.ndarray, name: str, *, spill: bool) -> onnx.TensorProto:
    """``numpy_helper.from_array``; with ``spill`` and at least SPILL_BYTES of values, the
    bytes go straight to this process's spill file and the tensor refers to them (the
    bytes never enter a proto: protobuf keeps a cleared field's memory until the message
    is freed)."""
    data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
    if not spill or arr.nbytes < SPILL_BYTES or data_type not in _PLAIN | _FOUR_BIT:
        return numpy_helper.from_array(arr, name)
    raw = (
        _packed(arr)
        if data_type in _FOUR_BIT
        else np.ascontiguousarray(arr, arr.dtype.newbyteorder("<"))
    )
    path, offset = _SPILL.append(raw)
    tensor = onnx.TensorProto()
    tensor.name, tensor.data_type = name, data_type
    tensor.dims.extend(arr.shape)
    _refer(tensor, str(path), offset, raw.nbytes)
    return tensor


def _packed(arr: np.ndarray) -> np.ndarray:
    """4-bit values two to a byte, the first in the low nibble (ONNX's raw layout)."""
    nibbles = arr.reshape(-1).view(np.uint8) & 0x0F
    if nibbles.size % 2:
        nibbles = np.concatenate([nibbles, np.zeros(1, np.uint8)])
    return np.asarray(nibbles[0::2] | (nibbles[1::2] << 4), np.uint8)


def _refer(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Make ``tensor`` an external reference to ``length`` bytes at ``offset`` of
    ``location`` (its inline bytes dropped)."""
    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)


SPILL_PREFIX = "onnxq-spill-"  # + "<pid>-<random>": the temporary folder of one process


def remove_dead_spills(folder: Path) -> None:
    """Remove the spill folders in ``folder`` whose process is gone (killed before its exit
    handler ran, e.g. by the kernel when memory ran out): they can hold gigabytes."""
    for path in folder.glob(f"{SPILL_PREFIX}*"):
        pid = path.name[len(SPILL_PREFIX) :].partition("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


class _Spill:
    """One append-only file in a private temporary folder, removed at exit (and by the
    next onnxq process when this one was killed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._folder: Path | None = None
        self._size = 0

    def append(self, data: np.ndarray) -> tuple[Path, int]:
        with self._lock:
            if self._folder is None:
                remove_dead_spills(Path(tempfile.gettempdir()))
                prefix = f"{SPILL_PREFIX}{os.getpid()}-"
                self._folder = Path(tempfile.mkdtemp(prefix=prefix))
                atexit.register(shutil.rmtree, self._folder, True)
            path = self._folder / "tensors.bin"
            offset = -(-self._size // ALIGN) * ALIGN
            with open(path, "ab") as fh:
                fh.write(b"\0" * (offset - self._size))
                fh.write(np.ascontiguousarray(data).reshape(-1).view(np.uint8).data)
            self._size = offset + data.nbytes
            return path, offset


_SPILL = _Spill()


def spilled_array(arr: np.ndarray) -> np.ndarray:
    """``arr`` written to this process's spill file and read back as a read-only memory
    map: large intermediate results (GPTQ codes of a big model) then cost page cache, not
    resident memory."""
    data = np.ascontiguousarray(arr)
    path, offset = _SPILL.append(data)
    return np.memmap(path, dtype=data.dtype, mode="r", offset=offset, shape=data.shape)


def chunks(ref: ExternalRef) -> Iterator[bytes]:
    """The bytes of ``ref``, read in pieces of at most 64 MiB."""
    with open(ref.path, "rb") as fh:
        fh.seek(ref.offset)
        left = ref.length
        while left > 0:
            chunk = fh.read(min(_CHUNK, left))
            if not chunk:
                raise ModelError(f"'{ref.path}' ended early; the data file changed meanwhile")
            left -= len(chunk)
            yield chunk


def externalized(model: onnx.ModelProto, location: str, fh: BinaryIO) -> onnx.ModelProto:
    """A copy of ``model`` whose external tensors, and inline initializers of at least
    SPILL_BYTES, are written to ``fh`` (a new file, ``location`` beside the model) one by
    one at ALIGN-ed offsets, and refer to it."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    written = 0
    for tensor in _all_tensors(out):
        if is_external(tensor):
            ref = external_ref(tensor)
            pieces: Iterable[bytes] = chunks(ref)
            length = ref.length
        elif tensor.HasField("raw_data") and len(tensor.raw_data) >= SPILL_BYTES:
            pieces, length = (tensor.raw_data,), len(tensor.raw_data)
        else:
            continue
        offset = -(-written // ALIGN) * ALIGN
        fh.write(b"\0" * (offset - written))
        for piece in pieces:
            fh.write(piece)
        written = offset + length
        _refer(tensor, location, offset, length)
    return out


def inlined(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every external tensor's bytes held in the proto."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in _all_tensors(out):
        if is_external(tensor):
            inline(tensor)
    return out


def checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` as onnx.checker can take it: external tensors become one-value
    placeholders (the checker looks for their files relative to the working directory and
    refuses the pinned absolute paths; :func:`pin_external_data` checked the files)."""
    if not any(is_external(t) for t in _all_tensors(model)):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in _all_tensors(out):
        if is_external(tensor):
            del tensor.external_data[:]
            del tensor.dims[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = b"\0" * (tensor_nbytes(tensor) or 1)
    return out


def inline(tensor: onnx.TensorProto) -> None:
    """Move an external tensor's bytes into the proto."""
    data = read_bytes(external_ref(tensor))
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT
    tensor.raw_data = data


def relocate(tensor: onnx.TensorProto, location: str) -> None:
    """Point an external tensor at ``location`` (same offset and length)."""
    _set_entry(tensor, "location", location)


def stored_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every tensor's values, inline or external: about the size written."""
    total = 0
    for tensor in _all_tensors(model):
        total += external_ref(tensor).length if is_external(tensor) else tensor.ByteSize()
    return total


def external_files(model: onnx.ModelProto) -> list[Path]:
    """The distinct files a pinned model's external tensors read."""
    return list(dict.fromkeys(external_ref(t).path for t in _all_tensors(model) if is_external(t)))


def referenced_files(path: str | Path) -> list[Path]:
    """The data files the model at ``path`` names inside its folder, resolved, each once,
    whether they are there or not. Best effort, for checks before loading: an unreadable
    model names none, and a location that is absolute, leaves the folder or is no path is
    skipped (:func:`pin_external_data` refuses those when the model is loaded)."""
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - loading the model reports the error
        return []
    folder = path.resolve().parent
    files: dict[Path, None] = {}
    for tensor in _all_tensors(model):
        location = _entries(tensor).get("location", "") if is_external(tensor) else ""
        if not location or "\0" in location:
            continue
        try:
            candidate = (folder / location).resolve()
        except (OSError, ValueError, RuntimeError):
            continue
        if candidate.is_relative_to(folder):
            files[candidate] = None
    return list(files)


def model_bytes(path: str | Path) -> int:
    """Bytes on disk of the model at ``path`` with every external data file it names
    (each counted once); an unreadable model counts its own file only."""
    size = Path(path).stat().st_size
    return size + sum(f.stat().st_size for f in referenced_files(path) if f.is_file())

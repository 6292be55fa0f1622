"""The sizes an ``.npz`` archive declares, checked before numpy allocates them.

``np.load`` reads a member's ``.npy`` header and allocates ``shape × itemsize`` bytes before
it reads a byte of data, so a damaged or crafted header (10^10 samples in a 1 kB file) ends
in a ``MemoryError``. :func:`check_declared_sizes` reads only the headers and refuses, naming
the file and the array, a member whose declared size exceeds the bytes it holds, or whose
uncompressed size (``ZipInfo.file_size``) its compressed bytes cannot produce.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import numpy as np

from onnxq.errors import DataError

__all__ = ["MAX_DEFLATE_RATIO", "check_declared_sizes"]

# deflate cannot expand by more than about 1032:1 (258-byte matches from 2-bit codes)
MAX_DEFLATE_RATIO = 1100


def check_declared_sizes(path: Path, keys: Iterable[str]) -> None:
    """Raise :class:`DataError` when an array of ``keys`` in the archive ``path`` declares
    more data than the archive holds. Keys the archive lacks are left to the caller."""
    on_disk = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: info for info in archive.infolist()}
        for key in keys:
            info = members.get(f"{key}.npy")
            if info is None:
                continue
            _check_stored_size(path, key, info, on_disk)
            with archive.open(info) as member:
                shape, dtype, header = _header(path, key, member)
            if dtype.hasobject:
                continue  # pickled objects: np.load refuses them without allocating
            declared = math.prod(shape) * dtype.itemsize
            held = info.file_size - header
            if declared > held:
                raise DataError(
                    f"{path}: array '{key}' declares shape {shape} of {dtype} "
                    f"({_size(declared)}) but holds {_size(max(held, 0))}; the file is "
                    "damaged or not written by numpy.savez"
                )


def _check_stored_size(path: Path, key: str, info: zipfile.ZipInfo, on_disk: int) -> None:
    """The member's uncompressed size must be one its compressed bytes can give."""
    if info.compress_size > on_disk:
        possible = False
    elif info.compress_type == zipfile.ZIP_STORED:
        possible = info.file_size == info.compress_size
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        possible = info.file_size <= MAX_DEFLATE_RATIO * info.compress_size + 1024
    else:
        possible = True  # other methods (bzip2, lzma): np.load's own checks apply
    if not possible:
        raise DataError(
            f"{path}: array '{key}' claims {_size(info.file_size)} uncompressed from "
            f"{_size(info.compress_size)} stored; the archive is damaged"
        )


def _header(path: Path, key: str, member: IO[bytes]) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and header length of one ``.npy`` member."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(member)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _fortran, dtype = read(member)
    except (ValueError, EOFError) as exc:
        raise DataError(f"{path}: array '{key}' has no valid .npy header ({exc})") from exc
    return tuple(int(d) for d in shape), np.dtype(dtype), member.tell()


def _size(n: int) -> str:
    for unit, step in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= step:
            return f"{n / step:.3g} {unit}"
    return f"{n} bytes"

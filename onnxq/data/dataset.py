"""Reading ``.npz`` data for a model, validated before anything runs.

``--data PATH`` is one ``.npz`` whose keys are the model's input names, or a folder
of such files read one at a time. Extra keys (``labels``, …) are never fed. For a
model with one input it may also be a ``.npy`` file (:mod:`onnxq.data.npy`) or a
folder of them, or a folder of images (:mod:`onnxq.data.images`). Each source is read
as :class:`Part` objects (a file, a chunk of images, arrays in memory), one in memory
at a time. Each array is told apart by rank:

* the input's rank (``Layout.BATCHED``): samples along the input's batch axis 0,
  which onnxq cuts into batches;
* the input's rank + 1 (``Layout.FEEDS``): one complete feed per index of a new
  leading axis, for inputs with a fixed batch or no batch axis at all.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol

import numpy as np

from onnxq.data.images import IMAGE_SUFFIXES, image_parts
from onnxq.data.npy import npy_part
from onnxq.data.npz_sizes import check_declared_sizes
from onnxq.data.preprocess import Preprocess
from onnxq.errors import DataError

__all__ = [
    "Batch",
    "Dataset",
    "InputSpec",
    "Layout",
    "NpzPart",
    "Part",
    "open_dataset",
    "open_parts",
]


CACHE_BYTES = 2**29  # a file's arrays kept in memory between passes when at most this


class Layout(str, Enum):
    BATCHED = "batched"
    FEEDS = "feeds"


@dataclass(frozen=True)
class InputSpec:
    """What a model input accepts: element dtype and shape (None for a free dimension)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"


@dataclass(frozen=True)
class Batch:
    """One feed for the model, the labels of its samples if asked for, and its size."""

    feed: dict[str, np.ndarray]
    labels: np.ndarray | None
    size: int


class Part(Protocol):
    """What a dataset reads at a time: a file, a chunk of images, arrays in memory.
    ``str()`` names it in messages."""

    def read(self, names: list[str], label_key: str | None) -> dict[str, np.ndarray]:
        """The arrays of ``names`` (and of the label key), or a DataError."""
        ...


@dataclass(frozen=True)
class NpzPart:
    """One ``.npz`` file; ``label`` names it in messages instead of its path, ``owner``
    (e.g. the temporary folder the file is in) lives as long as the part."""

    path: Path
    label: str | None = None
    owner: object = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return self.label or str(self.path)

    def read(self, names: list[str], label_key: str | None) -> dict[str, np.ndarray]:
        return _load_arrays(self.path, names, label_key)


@dataclass(frozen=True)
class Dataset:
    """Validated data: its parts, how each input is laid out, and the sample count."""

    parts: tuple[Part, ...]
    specs: tuple[InputSpec, ...]
    layouts: dict[str, Layout]
    num_samples: int
    label_key: str | None
    part_sizes: tuple[int, ...] = ()  # samples (or feeds) of each part, when known
    # the arrays of the part read last, when small: quantize reads the data several times
    # (calibration, output check, evaluation) and a compressed .npz is slow to inflate
    _cache: dict[Part, dict[str, np.ndarray]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def batches(self, batch_size: int, first: int = 0, stop: int | None = None) -> Iterator[Batch]:
        """Feeds of at most ``batch_size`` samples, one part in memory at a time.

        Inputs with a fixed batch dimension ``k`` are fed ``k`` samples at a time;
        with any input in the FEEDS layout, one feed (one sample) at a time. ``first`` and
        ``stop``: only the feeds with these indices (a shard); the batches are the same
        whatever the span, and parts wholly before it are not read.
        """
        step = self._step(batch_size)
        index = 0
        for number, part in enumerate(self.parts):
            if stop is not None and index >= stop:
                return
            if self.part_sizes and index + math.ceil(self.part_sizes[number] / step) <= first:
                index += math.ceil(self.part_sizes[number] / step)
                continue
            arrays = self._arrays(part)
            count = _file_count(arrays, self.specs, self.layouts)
            for start in range(0, count, step):
                index += 1
                if index <= first or (stop is not None and index > stop):
                    continue
                end = min(start + step, count)
                feed = {s.name: self._slice(arrays[s.name], s, start, end) for s in self.specs}
                labels = arrays[self.label_key][start:end] if self.label_key else None
                yield Batch(feed=feed, labels=labels, size=end - start)

    def num_batches(self, batch_size: int) -> int:
        """How many feeds :meth:`batches` yields for ``batch_size`` (exact when the part
        sizes are known; else a folder whose file sizes the step does not divide gives up
        to one more per file)."""
        if self.part_sizes:
            return len(self.batch_ends(batch_size))
        return math.ceil(self.num_samples / self._step(batch_size))

    def batch_ends(self, batch_size: int) -> tuple[int, ...]:
        """Where each batch of :meth:`batches` ends, in samples from the start (from the
        part sizes; empty when they are not known)."""
        step = self._step(batch_size)
        ends: list[int] = []
        offset = 0
        for n in self.part_sizes:
            ends.extend(offset + min(start + step, n) for start in range(0, n, step))
            offset += n
        return tuple(ends)

    def _arrays(self, part: Part) -> dict[str, np.ndarray]:
        if part not in self._cache:
            arrays = part.read([s.name for s in self.specs], self.label_key)
            self._cache.clear()
            if sum(a.nbytes for a in arrays.values()) <= CACHE_BYTES:
                self._cache[part] = arrays
            return arrays
        return self._cache[part]

    def _step(self, batch_size: int) -> int:
        if any(layout is Layout.FEEDS for layout in self.layouts.values()):
            return 1
        fixed = {s.shape[0] for s in self.specs if s.shape and s.shape[0] is not None}
        return fixed.pop() if fixed else batch_size

    def _slice(self, arr: np.ndarray, spec: InputSpec, start: int, stop: int) -> np.ndarray:
        if self.layouts[spec.name] is Layout.FEEDS:
            return np.ascontiguousarray(arr[start])
        return np.ascontiguousarray(arr[start:stop])


def open_dataset(
    path: str | Path,
    specs: Sequence[InputSpec],
    *,
    label_key: str | None = None,
    preprocess: Preprocess | None = None,
) -> Dataset:
    """Validate every file under ``path`` against ``specs`` and return the dataset
    (``preprocess``: how a folder of images becomes the input; other data ignores it).

    Raises :class:`DataError` naming the file and input for a missing or unknown
    key, wrong dtype, rank or fixed dimension, NaN or Inf, or zero samples.
    """
    parts = _list_parts(Path(path), specs, label_key, preprocess)
    return open_parts(parts, specs, label_key=label_key, origin=str(path))


def open_parts(
    parts: Sequence[Part],
    specs: Sequence[InputSpec],
    *,
    label_key: str | None = None,
    origin: str,
) -> Dataset:
    """Validate every part against ``specs`` (``origin`` names the whole in messages)."""
    layouts: dict[str, Layout] = {}
    sizes: list[int] = []
    arrays: dict[str, np.ndarray] = {}
    for file in parts:
        arrays = file.read([s.name for s in specs], label_key)
        file_layouts = {s.name: _check_array(file, s, arrays[s.name]) for s in specs}
        for name, layout in file_layouts.items():
            if layouts.setdefault(name, layout) is not layout:
                raise DataError(
                    f"{file}: input '{name}' is laid out as {layout.value} here but as "
                    f"{layouts[name].value} in an earlier file; use one layout throughout"
                )
        count = _file_count(arrays, specs, layouts)
        _check_fixed_batch(file, specs, arrays, layouts)
        if label_key is not None:
            _check_labels(file, label_key, arrays[label_key], count)
        sizes.append(count)
    total = sum(sizes)
    if total == 0:
        raise DataError(
            f"{origin}: holds zero samples; calibration and evaluation need at least one"
        )
    dataset = Dataset(tuple(parts), tuple(specs), layouts, total, label_key, tuple(sizes))
    if len(parts) == 1 and sum(a.nbytes for a in arrays.values()) <= CACHE_BYTES:
        dataset._cache[parts[0]] = arrays
    return dataset


ARRAY_SUFFIXES = frozenset({".npz", ".npy"})


def _list_parts(
    path: Path, specs: Sequence[InputSpec], label_key: str | None, pre: Preprocess | None
) -> list[Part]:
    if not path.exists():
        raise DataError(f"data path '{path}' does not exist")
    files = _folder_files(path) if path.is_dir() else [path]
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if images and len(images) < len(files):
        raise DataError(
            f"data folder '{path}' mixes {len(images)} images with {len(files) - len(images)} "
            ".npz/.npy files; keep one kind of data per folder"
        )
    if images:
        where = f"data folder '{path}'" if path.is_dir() else str(path)
        return list(image_parts(images, specs, pre, where=where, label_key=label_key))
    return [_array_part(f, specs, label_key) for f in files]


def _folder_files(folder: Path) -> list[Path]:
    """The data files of ``folder`` in sorted order; hidden entries are skipped and
    anything else that is not an .npz, .npy or image file is an error naming it."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    known = ARRAY_SUFFIXES | IMAGE_SUFFIXES
    unknown = [p for p in entries if p.suffix.lower() not in known or not p.is_file()]
    if unknown:
        named = ", ".join(p.name + ("/" if p.is_dir() else "") for p in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise DataError(
            f"data folder '{folder}' holds what onnxq cannot read: {named}{more} "
            f"(it reads .npz, .npy and {', '.join(sorted(IMAGE_SUFFIXES))} files; "
            "hidden files are skipped)"
        )
    if not entries:
        raise DataError(f"data folder '{folder}' holds no .npz files, .npy files or images")
    return entries


def _array_part(path: Path, specs: Sequence[InputSpec], label_key: str | None) -> Part:
    if path.suffix.lower() == ".npy":
        return npy_part(path, specs, label_key)
    return NpzPart(path)


def _load_arrays(path: Path, names: list[str], label_key: str | None) -> dict[str, np.ndarray]:
    """The arrays of ``names`` (and the label key) in one .npz, never unpickling."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"data file '{path}' is not a .npz archive (numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            wanted = names + ([label_key] if label_key is not None else [])
            missing = [n for n in wanted if n not in keys]
            if missing:
                what = "label key" if missing == [label_key] else "model input"
                raise DataError(
                    f"{path}: no array for {what} '{missing[0]}' "
                    f"(found keys: {', '.join(keys) or 'none'}; model inputs: {', '.join(names)})"
                )
            check_declared_sizes(path, wanted)  # before np.load allocates what they declare
            return {n: npz[n] for n in wanted}
    except DataError:
        raise
    except MemoryError as exc:
        raise DataError(f"{path}: its arrays do not fit in memory; split the data") from exc
    except ValueError as exc:
        raise DataError(f"{path}: cannot read without unpickling objects ({exc})") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: cannot read .npz archive ({exc})") from exc


def _check_array(path: Part, spec: InputSpec, arr: np.ndarray) -> Layout:
    where = f"{path}: input '{spec.name}'"
    if arr.dtype != spec.dtype:
        raise DataError(
            f"{where} expects dtype {spec.dtype}, found {arr.dtype} "
            f"(convert with .astype(np.{spec.dtype}))"
        )
    rank = len(spec.shape)
    if arr.ndim == rank + 1:
        layout, sample_dims, expect = Layout.FEEDS, arr.shape[1:], spec.shape
    elif arr.ndim == rank and rank >= 1:
        layout, sample_dims, expect = Layout.BATCHED, arr.shape[1:], spec.shape[1:]
    else:
        feeds = f" or rank {rank + 1} with one feed per index" if rank else ""
        raise DataError(
            f"{where} expects {spec.describe()} (rank {rank}{feeds}); found shape {arr.shape}"
        )
    for i, (want, got) in enumerate(zip(expect, sample_dims, strict=True)):
        if want is not None and want != got:
            dim = i + (1 if layout is Layout.BATCHED else 0)
            raise DataError(
                f"{where} expects {spec.describe()}; dimension {dim} is {got} in the data "
                f"(shape {arr.shape}, {layout.value} layout)"
            )
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            first = np.unravel_index(int(np.argmax(bad)), arr.shape)
            raise DataError(
                f"{where} holds {int(bad.sum())} NaN or Inf values (first at index "
                f"{tuple(int(i) for i in first)})"
            )
    return layout


def _file_count(
    arrays: dict[str, np.ndarray], specs: Sequence[InputSpec], layouts: dict[str, Layout]
) -> int:
    counts = {s.name: int(arrays[s.name].shape[0]) for s in specs}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"'{k}' {v}" for k, v in counts.items())
        raise DataError(f"inputs hold different numbers of samples: {listing}")
    return next(iter(counts.values()), 0)


def _check_fixed_batch(
    path: Part,
    specs: Sequence[InputSpec],
    arrays: dict[str, np.ndarray],
    layouts: dict[str, Layout],
) -> None:
    mixed = any(layout is Layout.FEEDS for layout in layouts.values())
    fixed = {s.shape[0] for s in specs if layouts[s.name] is Layout.BATCHED and s.shape[0]}
    if mixed and fixed - {1}:
        raise DataError(
            f"{path}: inputs mix the feeds layout with a fixed batch of {fixed.pop()}; "
            "give every input one feed per index"
        )
    if len(fixed) > 1:
        raise DataError(f"{path}: inputs have different fixed batch sizes {sorted(fixed)}")
    for spec in specs:
        k = spec.shape[0] if spec.shape else None
        n = arrays[spec.name].shape[0]
        if layouts[spec.name] is Layout.BATCHED and k and not mixed and n % k:
            raise DataError(
                f"{path}: input '{spec.name}' has a fixed batch of {k} but {n} samples; "
                f"give a multiple of {k} or one feed per index"
            )


def _check_labels(path: Part, key: str, labels: np.ndarray, count: int) -> None:
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: labels '{key}' must be a 1-D integer array, "
            f"found {labels.dtype}{labels.shape}"
        )
    if labels.shape[0] != count:
        raise DataError(f"{path}: labels '{key}' has {labels.shape[0]} entries for {count} samples")

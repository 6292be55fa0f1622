"""Reading ``.npz`` data for a model, validated before anything runs.

``--data PATH`` is one ``.npz`` whose keys are the model's input names, or a folder
of such files read one at a time. Extra keys (``labels``, …) are never fed. Each
array is told apart by rank:

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

import numpy as np

from onnxq.errors import DataError

__all__ = ["Batch", "Dataset", "InputSpec", "Layout", "open_dataset"]


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


@dataclass(frozen=True)
class Dataset:
    """Validated data: the files, how each input is laid out, and the sample count."""

    files: tuple[Path, ...]
    specs: tuple[InputSpec, ...]
    layouts: dict[str, Layout]
    num_samples: int
    label_key: str | None
    # the arrays of the file read last, when small: quantize reads the data several times
    # (calibration, output check, evaluation) and a compressed .npz is slow to inflate
    _cache: dict[Path, dict[str, np.ndarray]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Feeds of at most ``batch_size`` samples, one file in memory at a time.

        Inputs with a fixed batch dimension ``k`` are fed ``k`` samples at a time;
        with any input in the FEEDS layout, one feed (one sample) at a time.
        """
        step = self._step(batch_size)
        for path in self.files:
            arrays = self._arrays(path)
            count = _file_count(arrays, self.specs, self.layouts)
            for start in range(0, count, step):
                stop = min(start + step, count)
                feed = {s.name: self._slice(arrays[s.name], s, start, stop) for s in self.specs}
                labels = arrays[self.label_key][start:stop] if self.label_key else None
                yield Batch(feed=feed, labels=labels, size=stop - start)

    def num_batches(self, batch_size: int) -> int:
        """How many feeds :meth:`batches` yields for ``batch_size``: exact for one file; a
        folder whose file sizes the step does not divide gives up to one more per file."""
        return math.ceil(self.num_samples / self._step(batch_size))

    def _arrays(self, path: Path) -> dict[str, np.ndarray]:
        if path not in self._cache:
            arrays = _load_arrays(path, [s.name for s in self.specs], self.label_key)
            self._cache.clear()
            if sum(a.nbytes for a in arrays.values()) <= CACHE_BYTES:
                self._cache[path] = arrays
            return arrays
        return self._cache[path]

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
    path: str | Path, specs: Sequence[InputSpec], *, label_key: str | None = None
) -> Dataset:
    """Validate every file under ``path`` against ``specs`` and return the dataset.

    Raises :class:`DataError` naming the file and input for a missing or unknown
    key, wrong dtype, rank or fixed dimension, NaN or Inf, or zero samples.
    """
    files = _list_files(Path(path))
    layouts: dict[str, Layout] = {}
    total = 0
    for file in files:
        arrays = _load_arrays(file, [s.name for s in specs], label_key)
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
        total += count
    if total == 0:
        raise DataError(f"{path}: holds zero samples; calibration and evaluation need at least one")
    dataset = Dataset(tuple(files), tuple(specs), layouts, total, label_key)
    if len(files) == 1 and sum(a.nbytes for a in arrays.values()) <= CACHE_BYTES:
        dataset._cache[files[0]] = arrays
    return dataset


def _list_files(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(f"data path '{path}' does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".npz" and p.is_file())
        if not files:
            raise DataError(f"data folder '{path}' holds no .npz files")
        return files
    return [path]


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
            return {n: npz[n] for n in wanted}
    except DataError:
        raise
    except ValueError as exc:
        raise DataError(f"{path}: cannot read without unpickling objects ({exc})") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: cannot read .npz archive ({exc})") from exc


def _check_array(path: Path, spec: InputSpec, arr: np.ndarray) -> Layout:
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
    path: Path,
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


def _check_labels(path: Path, key: str, labels: np.ndarray, count: int) -> None:
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: labels '{key}' must be a 1-D integer array, "
            f"found {labels.dtype}{labels.shape}"
        )
    if labels.shape[0] != count:
        raise DataError(f"{path}: labels '{key}' has {labels.shape[0]} entries for {count} samples")

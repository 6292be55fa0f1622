"""What the Python API accepts as data, and how each kind becomes a :class:`Dataset`.

* a path (``str`` or ``os.PathLike``): an ``.npz`` or ``.npy`` file, or a folder of them
  or of images (:func:`~onnxq.data.dataset.open_dataset`);
* a numpy array, for a model with one input; a mapping of input name to array, like the
  keys of an ``.npz``: read in memory, as they are;
* an iterable of feeds (mappings of input name to array) or an object with
  ``get_next()`` returning a feed or None (onnxruntime's ``CalibrationDataReader``): read
  once, on first use, and spilled to a temporary folder of ``.npz`` files that every
  pass reads again; the folder is removed when the data is released.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeAlias

import numpy as np

from onnxq.data.dataset import Dataset, InputSpec, Part, open_dataset, open_parts
from onnxq.data.feeds import FeedReader, Feeds, spill_feeds
from onnxq.data.memory import ArrayPart
from onnxq.data.npy import single_input
from onnxq.data.preprocess import Preprocess
from onnxq.errors import DataError

__all__ = [
    "ArraySource",
    "DataSource",
    "FeedSource",
    "PathSource",
    "Source",
    "as_source",
    "as_sources",
    "open_data",
    "path_of",
]

DataSource: TypeAlias = (
    str
    | os.PathLike[str]
    | np.ndarray
    | Mapping[str, np.ndarray]
    | Iterable[Mapping[str, np.ndarray]]
    | FeedReader
)


class Source(Protocol):
    """Data given one way or another; ``str()`` names it in reports and messages."""

    @property
    def path(self) -> Path | None:
        """The file or folder, for data read from one."""
        ...

    def open(self, specs: Sequence[InputSpec], *, label_key: str | None = None) -> Dataset:
        """The data validated against the model's inputs."""
        ...


@dataclass(frozen=True)
class PathSource:
    path: Path
    preprocess: Preprocess | None = None

    def __str__(self) -> str:
        return str(self.path)

    def open(self, specs: Sequence[InputSpec], *, label_key: str | None = None) -> Dataset:
        return open_dataset(self.path, specs, label_key=label_key, preprocess=self.preprocess)


@dataclass(frozen=True, eq=False)
class ArraySource:
    arrays: np.ndarray | Mapping[str, np.ndarray]

    @property
    def path(self) -> Path | None:
        return None

    def __str__(self) -> str:
        if isinstance(self.arrays, np.ndarray):
            return f"array {_describe(self.arrays)}"
        described = (f"{k}: {_describe(np.asarray(v))}" for k, v in self.arrays.items())
        return "arrays {" + ", ".join(described) + "}"

    def open(self, specs: Sequence[InputSpec], *, label_key: str | None = None) -> Dataset:
        arrays = self.arrays
        if isinstance(arrays, np.ndarray):
            if label_key is not None:
                raise DataError(
                    f"one array holds no labels '{label_key}'; give a dict of arrays "
                    "with the labels under that key"
                )
            arrays = {single_input(specs, "one array"): arrays}
        part: Part = ArrayPart(arrays, str(self))
        return open_parts([part], specs, label_key=label_key, origin=str(self))


class FeedSource:
    """Feeds read once (on the first :meth:`open`) into a temporary folder of ``.npz``
    files; the folder lives as long as this source or a dataset opened from it."""

    def __init__(self, feeds: Feeds, *, keep: str | None = None) -> None:
        self._feeds: Feeds | None = feeds
        self._keep = keep
        self._name = f"feeds from a {type(feeds).__name__}"
        self._parts: list[Part] | None = None

    @property
    def path(self) -> Path | None:
        return None

    def __str__(self) -> str:
        return self._name

    def open(self, specs: Sequence[InputSpec], *, label_key: str | None = None) -> Dataset:
        if self._parts is None:
            self._parts = self._spill(specs)
        return open_parts(self._parts, specs, label_key=label_key, origin=str(self))

    def _spill(self, specs: Sequence[InputSpec]) -> list[Part]:
        if self._feeds is None:
            raise DataError(f"{self}: could not be read")  # an earlier spill failed
        feeds, self._feeds = self._feeds, None
        folder = tempfile.TemporaryDirectory(prefix="onnxq-feeds-")
        try:
            written = spill_feeds(feeds, specs, Path(folder.name), keep=self._keep, owner=folder)
        except BaseException:
            folder.cleanup()
            raise
        return list(written)


def _describe(array: np.ndarray) -> str:
    return f"{array.dtype}[{', '.join(map(str, array.shape))}]"


def as_source(
    data: DataSource | Source, preprocess: Preprocess | None = None, *, labels: str | None = None
) -> Source:
    """``data`` as a :class:`Source` (``preprocess``: for image folders; ``labels``: the
    label key kept from streamed feeds)."""
    if isinstance(data, (PathSource, ArraySource, FeedSource)):
        return data
    if isinstance(data, (str, os.PathLike)):
        return PathSource(Path(data), preprocess)
    if isinstance(data, (np.ndarray, Mapping)):
        return ArraySource(data)
    if callable(getattr(data, "get_next", None)) or (
        isinstance(data, Iterable) and not isinstance(data, (bytes, bytearray))
    ):
        return FeedSource(data, keep=labels)  # type: ignore[arg-type]
    raise DataError(
        "data must be a path, a numpy array, a dict of arrays, or an iterable (or "
        f"get_next() reader) of feeds; got {type(data).__name__}"
    )


def as_sources(
    data: DataSource | None,
    eval_data: DataSource | None,
    preprocess: Preprocess | None = None,
    *,
    labels: str | None = None,
) -> tuple[Source | None, Source | None]:
    """Calibration and evaluation data as sources; the same object given twice is one
    source (streamed feeds are read once), which keeps ``labels`` when it is evaluated."""
    same = eval_data is data
    kept = labels if eval_data is None or same else None
    first = None if data is None else as_source(data, preprocess, labels=kept)
    if eval_data is None or same:
        return first, first if same else None
    return first, as_source(eval_data, preprocess, labels=labels)


def open_data(
    data: DataSource | Source,
    specs: Sequence[InputSpec],
    *,
    label_key: str | None = None,
    preprocess: Preprocess | None = None,
) -> Dataset:
    """``data`` validated against ``specs``: :func:`as_source` then open."""
    return as_source(data, preprocess, labels=label_key).open(specs, label_key=label_key)


def path_of(source: Source | None) -> Path | None:
    """The file or folder ``source`` reads, if any."""
    return None if source is None else source.path

"""Feeds streamed by an iterable or by an object with ``get_next()`` (onnxruntime's
``CalibrationDataReader``), read once and written to a folder of ``.npz`` files so that
every pass (calibration, output check, evaluation) can read them again, with at most
about :data:`SPILL_BYTES` of them in memory."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import numpy as np
from numpy.lib import format as npy_format

from onnxq.data.dataset import NpzPart
from onnxq.errors import DataError

if TYPE_CHECKING:
    from onnxq.data.dataset import InputSpec

__all__ = ["SPILL_BYTES", "FeedReader", "Feeds", "iter_feeds", "spill_feeds"]

SPILL_BYTES = 2**26  # feeds buffered before they are written as one file, about


class FeedReader(Protocol):
    """onnxruntime's ``CalibrationDataReader`` protocol: a feed, or None when done."""

    def get_next(self) -> Mapping[str, Any] | None: ...


Feeds: TypeAlias = Iterable[Mapping[str, Any]] | FeedReader


def iter_feeds(feeds: Feeds) -> Iterator[object]:
    """The feeds one by one, from ``get_next()`` when the object has it."""
    get_next = getattr(feeds, "get_next", None)
    if callable(get_next):
        while (feed := get_next()) is not None:
            yield feed
    else:
        yield from feeds  # type: ignore[misc]


def spill_feeds(
    feeds: Feeds,
    specs: Sequence[InputSpec],
    folder: Path,
    *,
    keep: str | None = None,
    owner: object = None,
) -> list[NpzPart]:
    """Write ``feeds`` to ``folder``: consecutive feeds of the same shapes concatenated
    on axis 0 when every input has a free batch dimension (else stacked on a new axis,
    one complete feed per index), a new file when a shape changes or the buffer is full.
    ``keep`` is an extra key kept (labels); ``owner`` is held by every part."""
    batched = all(s.shape and s.shape[0] is None for s in specs)
    names = [s.name for s in specs]
    writer = _Writer(folder, owner)
    for index, feed in enumerate(iter_feeds(feeds)):
        writer.add(index, _feed_arrays(feed, index, names, keep, batched))
    return writer.close()


def _feed_arrays(
    feed: object, index: int, names: list[str], keep: str | None, batched: bool
) -> dict[str, np.ndarray]:
    if not isinstance(feed, Mapping):
        raise DataError(
            f"feed {index} is a {type(feed).__name__}, not a mapping of input name to array"
        )
    wanted = names + ([keep] if keep is not None else [])
    missing = [n for n in wanted if n not in feed]
    if missing:
        found = ", ".join(map(str, feed)) or "none"
        raise DataError(
            f"feed {index}: no array for '{missing[0]}' "
            f"(found keys: {found}; model inputs: {', '.join(names)})"
        )
    out = {}
    for name in wanted:
        array = np.asarray(feed[name])
        if array.dtype.hasobject:
            raise DataError(f"feed {index}: '{name}' is not a numeric array ({array.dtype})")
        stack = array.ndim == 0 or (name != keep and not batched)
        out[name] = array[np.newaxis] if stack else array
    return out


class _Writer:
    """Buffers feeds of one signature (names, dtypes, shapes after axis 0) and writes
    them as one ``.npz`` file."""

    def __init__(self, folder: Path, owner: object) -> None:
        self.folder, self.owner = folder, owner
        self.parts: list[NpzPart] = []
        self.pending: list[dict[str, np.ndarray]] = []
        self.signature: tuple[object, ...] = ()
        self.first = self.last = self.nbytes = 0

    def add(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        signature = tuple((n, a.dtype.str, a.shape[1:]) for n, a in arrays.items())
        if self.pending and (signature != self.signature or self.nbytes >= SPILL_BYTES):
            self._flush()
        if not self.pending:
            self.first, self.signature = index, signature
        self.pending.append(arrays)
        self.last = index
        self.nbytes += sum(a.nbytes for a in arrays.values())

    def close(self) -> list[NpzPart]:
        if self.pending:
            self._flush()
        return self.parts

    def _flush(self) -> None:
        path = self.folder / f"{len(self.parts):05d}.npz"
        with zipfile.ZipFile(path, "w") as archive:
            for name in self.pending[0]:
                joined = np.concatenate([feed[name] for feed in self.pending])
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    npy_format.write_array(member, joined, allow_pickle=False)
        span = f"{self.first}-{self.last}" if self.last > self.first else str(self.first)
        label = f"feeds {span}" if self.last > self.first else f"feed {span}"
        self.parts.append(NpzPart(path, label, self.owner))
        self.pending, self.nbytes = [], 0

"""``.npy`` files as data for a model with one input: the one array is that input's.

The array is memory-mapped (never unpickled), so a file larger than memory is read a
batch at a time. Its layout follows the ``.npz`` rules (rank = batched, rank + 1 = feeds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onnxq.errors import DataError

if TYPE_CHECKING:
    from onnxq.data.dataset import InputSpec

__all__ = ["NpyPart", "npy_part", "single_input"]


@dataclass(frozen=True)
class NpyPart:
    """One ``.npy`` file, the array of ``input``."""

    path: Path
    input: str

    def __str__(self) -> str:
        return str(self.path)

    def read(self, names: list[str], label_key: str | None) -> dict[str, np.ndarray]:
        try:
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise DataError(
                f"{self.path}: not a .npy array readable without unpickling ({exc})"
            ) from exc
        except (OSError, EOFError) as exc:
            raise DataError(f"{self.path}: cannot read .npy file ({exc})") from exc
        if not isinstance(array, np.ndarray):  # an .npz archive named .npy
            array.close()
            raise DataError(f"{self.path}: is an .npz archive; name it .npz")
        return {self.input: array}


def single_input(specs: Sequence[InputSpec], what: str) -> str:
    """The name of the model's one input, for data that holds one unnamed array."""
    if len(specs) == 1:
        return specs[0].name
    names = ", ".join(s.name for s in specs) or "none"
    raise DataError(
        f"{what} holds one array, for a model with one input; this model has {len(specs)} "
        f"inputs ({names}): give an .npz (or a dict) keyed by input name"
    )


def npy_part(path: Path, specs: Sequence[InputSpec], label_key: str | None) -> NpyPart:
    """``path`` as the data of the model's one input; refused for other models and
    with labels (a ``.npy`` holds one array)."""
    name = single_input(specs, f"{path}: a .npy file")
    if label_key is not None:
        raise DataError(
            f"{path}: a .npy file holds no labels '{label_key}'; save the inputs and the "
            "labels together in an .npz"
        )
    return NpyPart(path, name)

"""Arrays already in memory (the Python API): one array for a model with one input, or
a mapping of input name to array, like the keys of an ``.npz``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from onnxq.errors import DataError

__all__ = ["ArrayPart"]


@dataclass(frozen=True, eq=False)
class ArrayPart:
    """Arrays in memory as the one part of a dataset; ``label`` names them in messages."""

    arrays: Mapping[str, np.ndarray]
    label: str

    def __str__(self) -> str:
        return self.label

    def read(self, names: list[str], label_key: str | None) -> dict[str, np.ndarray]:
        wanted = names + ([label_key] if label_key is not None else [])
        missing = [n for n in wanted if n not in self.arrays]
        if missing:
            what = "label key" if missing == [label_key] else "model input"
            found = ", ".join(map(str, self.arrays)) or "none"
            raise DataError(
                f"{self}: no array for {what} '{missing[0]}' "
                f"(found keys: {found}; model inputs: {', '.join(names)})"
            )
        return {n: np.asarray(self.arrays[n]) for n in wanted}

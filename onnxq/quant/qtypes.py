"""Integer types that quantized tensors are stored in, with their ranges."""

from __future__ import annotations

from enum import Enum

import numpy as np

__all__ = ["QType"]


class QType(str, Enum):
    """An integer storage type. Values are ONNX's lower-case type names."""

    INT8 = "int8"
    UINT8 = "uint8"
    INT32 = "int32"

    @classmethod
    def for_bits(cls, bits: int, *, signed: bool) -> QType:
        """The type of ``bits`` bits and the given signedness."""
        for qtype in cls:
            if qtype.bits == bits and qtype.signed == signed:
                return qtype
        raise ValueError(f"no {'signed' if signed else 'unsigned'} {bits}-bit type")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.value)

    @property
    def bits(self) -> int:
        return int(self.dtype.itemsize * 8)

    @property
    def signed(self) -> bool:
        return bool(np.issubdtype(self.dtype, np.signedinteger))

    @property
    def max(self) -> int:
        return int(np.iinfo(self.dtype).max)

    def min(self, *, restricted: bool = False) -> int:
        """Lowest code; restricted range drops it (int8: -127, uint8: 1).

        Dropping the lowest code makes the signed range symmetric around zero,
        as in the survey's restricted range [-127, 127]; for unsigned types it
        follows TensorFlow's ``narrow_range`` ([1, 255]).
        """
        low = int(np.iinfo(self.dtype).min)
        return low + 1 if restricted else low

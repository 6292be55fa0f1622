"""Integer types that quantized tensors are stored in, with their ranges."""

from __future__ import annotations

from enum import Enum

import numpy as np

__all__ = ["QType"]

_BITS = {"int4": 4, "uint4": 4, "int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "int32": 32}


class QType(str, Enum):
    """An integer storage type. Values are ONNX's lower-case type names.

    ``dtype`` is the numpy type the maths computes codes in; 4-bit codes live in an
    8-bit container here and are packed two per byte only when a model is written.
    """

    INT4 = "int4"
    UINT4 = "uint4"
    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"

    @classmethod
    def for_bits(cls, bits: int, *, signed: bool) -> QType:
        """The type of ``bits`` bits and the given signedness."""
        for qtype in cls:
            if qtype.bits == bits and qtype.signed == signed:
                return qtype
        raise ValueError(f"no {'signed' if signed else 'unsigned'} {bits}-bit type")

    @property
    def bits(self) -> int:
        return _BITS[self.value]

    @property
    def signed(self) -> bool:
        return not self.value.startswith("u")

    @property
    def dtype(self) -> np.dtype:
        container = max(self.bits, 8)
        return np.dtype(f"{'' if self.signed else 'u'}int{container}")

    @property
    def max(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def min(self, *, restricted: bool = False) -> int:
        """Lowest code; restricted range drops it (int8: -127, uint8: 1, int4: -7).

        Dropping the lowest code makes the signed range symmetric around zero,
        as in the survey's restricted range [-127, 127]; for unsigned types it
        follows TensorFlow's ``narrow_range`` ([1, 255]).
        """
        low = -(1 << (self.bits - 1)) if self.signed else 0
        return low + 1 if restricted else low

"""How a folder of images becomes a model input.

:class:`Preprocess` is what the user declares (``--image-*`` options, a ``--preprocess``
TOML file or the Python API); :func:`plan_images` resolves it against the image input's
shape and dtype into an :class:`ImagePlan`, which turns one image's pixels into one sample.
Pure numpy: reading the files is :mod:`onnxq.data.images`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxq.errors import ConfigError, DataError

if TYPE_CHECKING:
    from onnxq.data.dataset import InputSpec

__all__ = [
    "PREPROCESS_KEYS",
    "ColourOrder",
    "ImageLayout",
    "ImagePlan",
    "Preprocess",
    "declared_preprocess",
    "plan_images",
    "preprocess_from",
    "read_preprocess",
]

PREPROCESS_KEYS = ("size", "layout", "scale", "mean", "std", "order")


class ImageLayout(str, Enum):
    NCHW = "nchw"
    NHWC = "nhwc"


class ColourOrder(str, Enum):
    RGB = "rgb"
    BGR = "bgr"


@dataclass(frozen=True)
class Preprocess:
    """Declared preprocessing of image folders: each image is resized to ``size``
    (height, width), scaled by ``scale``, then ``(x - mean) / std`` per channel (in the
    channel order fed, after ``order``). ``None`` takes the default from the input."""

    size: tuple[int, int] | None = None
    layout: ImageLayout | None = None
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    order: ColourOrder = ColourOrder.RGB

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.layout is not None:
            set_(self, "layout", _enum(ImageLayout, self.layout, "layout"))
        set_(self, "order", _enum(ColourOrder, self.order, "order"))
        set_(self, "mean", tuple(float(v) for v in self.mean))
        set_(self, "std", tuple(float(v) for v in self.std))
        if self.size is not None:
            set_(self, "size", tuple(int(v) for v in self.size))
            if len(self.size) != 2 or min(self.size) < 1:
                raise ConfigError(f"image size must be two positive integers H,W, got {self.size}")
        values = (self.scale, *self.mean, *self.std)
        if not all(math.isfinite(v) for v in values) or not self.mean or not self.std:
            raise ConfigError("image scale, mean and std must be finite numbers")
        if self.scale == 0 or 0.0 in self.std:
            raise ConfigError("image scale and std must not be zero")

    def settings(self) -> dict[str, object]:
        """JSON-ready, as the ``--preprocess`` file spells it."""
        return {
            "size": None if self.size is None else list(self.size),
            "layout": None if self.layout is None else self.layout.value,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "order": self.order.value,
        }


def _enum(kind: type[Enum], value: object, key: str) -> Any:
    try:
        return kind(value.lower() if isinstance(value, str) else value)
    except ValueError:
        allowed = "|".join(str(e.value) for e in kind)
        raise ConfigError(f"image {key} must be {allowed}, got {value!r}") from None


def preprocess_from(values: Mapping[str, Any], *, origin: str | None = None) -> Preprocess:
    """A :class:`Preprocess` from option strings (``origin`` None: named ``--image-KEY``)
    or from a TOML table (numbers, lists or the same strings; ``origin`` names the file)."""
    unknown = sorted(set(values) - set(PREPROCESS_KEYS))
    if unknown:
        raise ConfigError(
            f"{origin}: unknown key {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(PREPROCESS_KEYS)})"
        )
    parsed: dict[str, Any] = {}
    for key, value in values.items():
        if value is not None:
            name = f"--image-{key}" if origin is None else f"{origin}: {key}"
            parsed[key] = _PARSERS[key](value, name)
    return Preprocess(**parsed)


def read_preprocess(path: str | Path) -> Preprocess:
    """The preprocessing a ``--preprocess`` TOML file declares (keys: size, layout, scale,
    mean, std, order)."""
    if sys.version_info < (3, 11):
        raise ConfigError("reading a --preprocess file needs Python 3.11 or later (tomllib)")
    import tomllib

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read preprocess file '{path}' ({exc})") from exc
    try:
        table = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:  # or nested too deeply
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    return preprocess_from(table, origin=str(path))


def declared_preprocess(options: Mapping[str, Any], file: str | Path | None) -> Preprocess | None:
    """The preprocessing the command line declares: ``--preprocess FILE`` or the
    ``--image-*`` options (not both), None when neither is given."""
    given = {k: v for k, v in options.items() if v is not None}
    if file is not None and given:
        flags = ", ".join(f"--image-{k}" for k in given)
        raise ConfigError(f"give --preprocess or the --image-* options, not both ({flags})")
    if file is not None:
        return read_preprocess(file)
    return preprocess_from(given) if given else None


def _number(value: object, name: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(Fraction(str(value).strip()))  # "1/255" as well as "0.5"
    except (ValueError, ZeroDivisionError):
        raise ConfigError(
            f"{name}: expected a number such as 0.5 or 1/255, got {value!r}"
        ) from None


def _numbers(value: object, name: str) -> tuple[float, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        items = [items]
    if not items:
        raise ConfigError(f"{name}: expected one number or one per channel, got none")
    return tuple(_number(v, name) for v in items)


def _size(value: object, name: str) -> tuple[int, int]:
    items = value.split(",") if isinstance(value, str) else value
    try:
        if not isinstance(items, (list, tuple)) or len(items) != 2:
            raise ValueError
        dims = tuple(_integer(v) for v in items)
    except ValueError:
        raise ConfigError(f"{name}: expected height,width such as 224,224, got {value!r}") from None
    return dims[0], dims[1]


def _integer(value: object) -> int:
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError
    number = int(str(value).strip())
    if number < 1:
        raise ValueError
    return number


def _choice(kind: type[Enum]) -> Callable[[object, str], Enum]:
    def parse(value: object, name: str) -> Enum:
        try:
            return kind(str(value).strip().lower())
        except ValueError:
            allowed = "|".join(str(e.value) for e in kind)
            raise ConfigError(f"{name}: expected {allowed}, got {value!r}") from None

    return parse


_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "size": _size,
    "layout": _choice(ImageLayout),
    "scale": _number,
    "mean": _numbers,
    "std": _numbers,
    "order": _choice(ColourOrder),
}


@dataclass(frozen=True, eq=False)
class ImagePlan:
    """The preprocessing resolved for one input: what each image becomes."""

    input: str
    height: int
    width: int
    channels: int  # 1: grayscale, 3: colour
    layout: ImageLayout
    order: ColourOrder
    dtype: np.dtype
    scale: float
    mean: np.ndarray  # float32, one per channel
    std: np.ndarray

    @property
    def sample_bytes(self) -> int:
        return self.height * self.width * self.channels * self.dtype.itemsize

    def tensor(self, pixels: np.ndarray) -> np.ndarray:
        """One sample from one image's uint8 pixels ([H, W] gray or [H, W, 3] RGB)."""
        hwc = pixels.reshape(self.height, self.width, self.channels)
        if self.order is ColourOrder.BGR and self.channels == 3:
            hwc = hwc[..., ::-1]
        if self.dtype == np.uint8:
            out = hwc
        else:
            scaled = hwc.astype(np.float32) * np.float32(self.scale)
            out = ((scaled - self.mean) / self.std).astype(self.dtype)
        if self.layout is ImageLayout.NCHW:
            out = out.transpose(2, 0, 1)
        return np.ascontiguousarray(out)


def plan_images(spec: InputSpec, pre: Preprocess) -> ImagePlan:
    """Resolve ``pre`` for the image input ``spec`` (rank 4, batch first): the layout from
    the channel dimension (1 or 3), the size from the input's static height and width."""
    if len(spec.shape) != 4:
        raise DataError(
            f"image folders feed a rank-4 input [N, C, H, W] or [N, H, W, C]; input "
            f"'{spec.name}' is {spec.describe()}"
        )
    layout = pre.layout or _layout(spec)
    channels = _channels(spec, layout)
    height, width = pre.size or _static_size(spec, layout)
    dtype = _dtype(spec, pre)
    mean = _per_channel(pre.mean, channels, "mean", spec.name)
    std = _per_channel(pre.std, channels, "std", spec.name)
    return ImagePlan(
        spec.name, height, width, channels, layout, pre.order, dtype, pre.scale, mean, std
    )


def _layout(spec: InputSpec) -> ImageLayout:
    first, last = spec.shape[1] in (1, 3), spec.shape[3] in (1, 3)
    if first != last:
        return ImageLayout.NCHW if first else ImageLayout.NHWC
    raise ConfigError(
        f"cannot tell whether input '{spec.name}' {spec.describe()} is NCHW or NHWC: "
        "give --image-layout nchw|nhwc"
    )


def _channels(spec: InputSpec, layout: ImageLayout) -> int:
    dim = spec.shape[1 if layout is ImageLayout.NCHW else 3]
    if dim is None:
        return 3
    if dim not in (1, 3):
        raise DataError(
            f"input '{spec.name}' {spec.describe()} has {dim} channels in the "
            f"{layout.value.upper()} layout; images give 1 (grayscale) or 3 (colour)"
        )
    return dim


def _static_size(spec: InputSpec, layout: ImageLayout) -> tuple[int, int]:
    h, w = spec.shape[2:4] if layout is ImageLayout.NCHW else spec.shape[1:3]
    if h is None or w is None:
        raise ConfigError(
            f"input '{spec.name}' {spec.describe()} has no static height and width: "
            "give --image-size H,W"
        )
    return h, w


def _dtype(spec: InputSpec, pre: Preprocess) -> np.dtype:
    if np.issubdtype(spec.dtype, np.floating):
        return spec.dtype
    if spec.dtype != np.uint8:
        raise DataError(
            f"input '{spec.name}' is {spec.dtype}; images feed float or uint8 inputs only"
        )
    if pre.scale != 1 or any(pre.mean) or any(v != 1 for v in pre.std):
        raise ConfigError(
            f"input '{spec.name}' is uint8: images are fed as raw pixels 0-255; "
            "drop the image scale, mean and std"
        )
    return spec.dtype


def _per_channel(values: tuple[float, ...], channels: int, key: str, name: str) -> np.ndarray:
    if len(values) not in (1, channels):
        raise ConfigError(
            f"image {key} has {len(values)} values; input '{name}' has {channels} "
            f"channel{'s' if channels > 1 else ''}: give 1 or {channels}"
        )
    out: np.ndarray = np.full(channels, values[0], np.float32)
    out[:] = values
    return out

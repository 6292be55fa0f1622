"""Folders of images as data for a model with one image input, read with Pillow.

Images are read in sorted order, a chunk at a time (one part of the dataset); each is
turned upright from its EXIF orientation, converted to grayscale (``L``) or RGB, resized
to the plan's size (bilinear; the aspect ratio is not kept) and preprocessed by its
:class:`~onnxq.data.preprocess.ImagePlan`. Pillow is an optional dependency
(``pip install 'onnxq[images]'``), imported only when an image is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from onnxq.data.preprocess import ImagePlan, Preprocess, plan_images
from onnxq.errors import DataError

if TYPE_CHECKING:
    from onnxq.data.dataset import InputSpec

__all__ = ["IMAGE_SUFFIXES", "ImageChunk", "image_parts", "pillow", "read_image"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
CHUNK_BYTES = 2**26  # preprocessed images held in memory at a time, at most about this


def pillow() -> tuple[ModuleType, ModuleType]:
    """Pillow's ``Image`` and ``ImageOps`` modules, or a one-line error saying how to
    install them."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise DataError(
            "reading a folder of images needs Pillow: pip install 'onnxq[images]'"
        ) from None
    return Image, ImageOps


@dataclass(frozen=True)
class ImageChunk:
    """Images read together, as one part of a dataset: one batched array."""

    files: tuple[Path, ...]
    plan: ImagePlan

    def __str__(self) -> str:
        first, last = self.files[0], self.files[-1]
        return str(first) if first == last else f"{first} … {last.name}"

    def read(self, names: list[str], label_key: str | None) -> dict[str, np.ndarray]:
        return {self.plan.input: np.stack([read_image(f, self.plan) for f in self.files])}


def read_image(path: Path, plan: ImagePlan) -> np.ndarray:
    """One image file as one sample of ``plan``'s input."""
    image_mod, ops = pillow()
    errors = (OSError, SyntaxError, ValueError, image_mod.DecompressionBombError)
    try:
        with image_mod.open(path) as image:
            image = ops.exif_transpose(image)
            image = image.convert("L" if plan.channels == 1 else "RGB")
            if image.size != (plan.width, plan.height):
                image = image.resize((plan.width, plan.height), image_mod.Resampling.BILINEAR)
            pixels = np.asarray(image)
    except errors as exc:
        raise DataError(f"{path}: cannot read as an image ({exc})") from exc
    return plan.tensor(pixels)


def image_parts(
    files: Sequence[Path],
    specs: Sequence[InputSpec],
    preprocess: Preprocess | None,
    *,
    where: str,
    label_key: str | None,
) -> list[ImageChunk]:
    """The image ``files`` (of the folder ``where``) in chunks, for the model's one input."""
    pillow()
    if len(specs) != 1:
        names = ", ".join(s.name for s in specs) or "none"
        raise DataError(
            f"{where}: images feed a model with one input; this model has {len(specs)} "
            f"({names}): give an .npz keyed by input name"
        )
    if label_key is not None:
        raise DataError(
            f"{where}: a folder of images holds no labels '{label_key}'; give labelled "
            "data as an .npz (images and labels as arrays)"
        )
    plan = plan_images(specs[0], preprocess or Preprocess())
    fixed = specs[0].shape[0] or 1
    step = max(fixed, CHUNK_BYTES // plan.sample_bytes // fixed * fixed)
    return [ImageChunk(tuple(files[i : i + step]), plan) for i in range(0, len(files), step)]

"""A public detector with a concatenated box/score head, for ``bench/compare_ort.py``:
NudeNet's YOLOv8n (``nudenet/320n.onnx`` in the ``nudenet`` 3.4.2 wheel; no weights from
the internet). Its one output ``output0`` [N, 22, anchors] concatenates 4 box rows (centre
x, centre y, width, height, in input pixels 0..320) with 18 class-score rows in [0, 1]: the
case where whole-tensor SQNR hides the scores (onnxq's per-part rule, docs/maths.md).

Images: the ones scikit-image bundles (``skimage.data``: astronaut, camera, coffee,
chelsea, rocket, ...; no download), each cut into random crops (50–100 % of each side),
half of them mirrored, padded to a square at the bottom/right and resized to 320x320 as
NudeNet does, RGB in [0, 1], NCHW: 64 calibration and 64 evaluation samples, from
different crops of the same images (seeded). nudenet's own dependencies are not needed: when
the package is not installed, its pinned wheel is fetched with ``pip download --no-deps``
into the cache and the .onnx read out of it.

Run by ``prepare.py --models nudenet`` (and so by compare_ort.py when the files are missing).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

NUDENET_VERSION = "3.4.2"
NUDENET_WHEEL_SHA256 = "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331"
SIZE = 320
IMAGES = [
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "colorwheel",
    "horse",
    "coins",
    "clock",
    "page",
    "text",
    "brick",
    "grass",
    "gravel",
]
#: the metric onnxq measures for it (bench/compare_ort.py declares it through onnxq)
METRIC = "detect:slice=4:,boxes=0:4,k=20"


def nudenet_source(cache: Path, wheel_files: Callable[..., Path]) -> tuple[Path, str] | None:
    """(package folder, version): None when nudenet is installed, else the .onnx read out of
    its pinned wheel (``prepare.wheel_files``)."""
    if importlib.util.find_spec("nudenet") is not None:
        return None
    ver = NUDENET_VERSION
    return wheel_files(cache, "nudenet", ver, NUDENET_WHEEL_SHA256, "nudenet/320n"), ver


def bundled_images() -> list[np.ndarray]:
    """scikit-image's bundled images as RGB uint8 (grey ones repeated, alpha dropped)."""
    import skimage.data

    out = []
    for name in IMAGES:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = img[:, :, :3]
        if img.dtype != np.uint8:
            f = img.astype(np.float64)
            img = (255 * (f - f.min()) / max(float(np.ptp(f)), 1e-9)).astype(np.uint8)
        out.append(img)
    return out


def letterbox(img: np.ndarray) -> np.ndarray:
    """NudeNet's preprocessing: pad to a square at the bottom/right, resize to 320, RGB in
    [0, 1], CHW float32."""
    import cv2

    h, w = img.shape[:2]
    side = max(h, w)
    square = np.zeros((side, side, 3), np.uint8)
    square[:h, :w] = img
    resized = cv2.resize(square, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32) / 255.0


def samples(images: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    out = []
    for i in range(n):
        img = images[i % len(images)]
        h, w = img.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = img[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(letterbox(crop))
    return np.stack(out)

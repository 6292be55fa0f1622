"""Make docs/report.png: quantize the sample model with --html and take a screenshot of
the report in headless Chromium (Debian's package: apt-get install -y chromium).

    python bench/screenshot_report.py [--out docs/report.png] [--chromium chromium]

Needs the report extra (pip install -e '.[report]'). The PNG is a committed doc asset:
when pillow is installed it is reduced to a 256-colour palette to stay well under 400 kB.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
LIMIT = 400_000  # bytes


def make_report(folder: Path) -> Path:
    """The README's quantize command with --html, run in ``folder`` (the sample models
    linked in) so that the report shows the same short paths."""
    (folder / "sample_models").symlink_to(SAMPLES, target_is_directory=True)
    command = (
        "quantize sample_models/digits_cnn.onnx -o digits_cnn.int8.onnx "
        "--data sample_models/digits_calib.npz --eval sample_models/digits_eval.npz "
        "--labels labels --html report.html -q"
    )
    subprocess.run(
        [sys.executable, "-m", "onnxq", *command.split()],
        check=True,
        cwd=folder,
        stdout=subprocess.DEVNULL,
    )
    return folder / "report.html"


def screenshot(chromium: str, html: Path, png: Path) -> None:
    flags = "--headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,2000"
    subprocess.run(
        [chromium, *flags.split(), f"--screenshot={png}", html.as_uri()],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def shrink(png: Path) -> None:
    """A 256-colour palette (flat colours and text survive it); skipped without pillow."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(png) as image:
        reduced = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    reduced.save(png, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="onnxq-shot-") as tmp:
        html = make_report(Path(tmp))
        screenshot(args.chromium, html, args.out)
    shrink(args.out)
    size = args.out.stat().st_size
    print(f"wrote {args.out}: {size / 1e3:.0f} kB")
    if size >= LIMIT:
        sys.exit(f"{args.out} is {size} bytes, over the {LIMIT} bytes a doc asset may take")


if __name__ == "__main__":
    main()

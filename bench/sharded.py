"""Sharded calibration benchmark: ``onnxq.calibrate`` with 1 and N local worker processes
on the same data, in the same run, and a check that the ranges are identical bit for bit.

Run it from the repository root, under the shared benchmark lock::

    flock /tmp/onnxq-bench.lock python bench/sharded.py            # PP-OCR det, 256 samples
    python bench/sharded.py --methods minmax percentile --workers 1 2 --out /tmp/s.md

The calibration data is the model's ``*_calib.npz`` repeated until it holds ``--samples``
samples, written as a folder of ``.npz`` files of ``--part`` samples each (a worker reads
only the files its shard covers). Each configuration is timed as the whole
``onnxq.calibrate`` call (model loading, data validation, preparation, worker start-up,
the pass over the data, the merge and the range search): one worker runs in this process
with onnxruntime's default threads (all cores); N workers get ``cores // N`` threads each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from onnxq import calibrate
from onnxq.calibration.ranges import RangesFile
from onnxq.config import CalibrationConfig, CalibrationMethod

REAL = Path("/tmp/onnxq-real")


def cpu() -> tuple[str, str]:
    """The CPU model name and flags from /proc/cpuinfo."""
    name = flags = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown":
                name = value.strip()
            if key.strip() == "flags" and flags == "unknown":
                flags = value.strip()
    except OSError:
        pass
    return name, flags


def make_folder(data: Path, samples: int, part: int, out: Path) -> int:
    """``data`` repeated to ``samples`` samples, in files of ``part`` samples."""
    with np.load(data) as npz:
        arrays = {k: npz[k] for k in npz.files}
    have = next(iter(arrays.values())).shape[0]
    reps = -(-samples // have)
    full = {k: np.concatenate([v] * reps)[:samples] for k, v in arrays.items()}
    for i, start in enumerate(range(0, samples, part)):
        np.savez(out / f"{i:03d}.npz", **{k: v[start : start + part] for k, v in full.items()})
    return have


def same(a: RangesFile, b: RangesFile) -> bool:
    for name, x in a.tensors.items():
        y = b.tensors[name]
        for field in ("min", "max", "observed_min", "observed_max"):
            if not np.array_equal(getattr(x, field), getattr(y, field)):
                return False
        if x.quality != y.quality:
            return False
    return a.tensors.keys() == b.tensors.keys()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ppocr_det")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--part", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--methods", nargs="+", default=["minmax"])
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    model = REAL / f"{args.model}.onnx"
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="onnxq-sharded-") as tmp:
        have = make_folder(REAL / f"{args.model}_calib.npz", args.samples, args.part, Path(tmp))
        for method in args.methods:
            reference: RangesFile | None = None
            base = 0.0
            for workers in args.workers:
                config = CalibrationConfig(method=CalibrationMethod(method), workers=workers)
                start = time.perf_counter()
                ranges = calibrate(model, tmp, config)
                seconds = time.perf_counter() - start
                if reference is None:
                    reference, base = ranges, seconds
                identical = same(ranges, reference)
                rows.append(
                    f"| {method} | {workers} | {seconds:.1f} | {base / seconds:.2f}x | "
                    f"{'yes' if identical else 'NO'} |"
                )
                results.append(
                    {"method": method, "workers": workers, "seconds": seconds, "same": identical}
                )
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    name, flags = cpu()
    text = "\n".join(
        [
            f"`python bench/sharded.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
            "",
            f"onnxq {commit} (working tree), {platform.python_version()}, "
            f"{os.cpu_count()} cores: {name}",
            f"CPU flags: {flags}",
            "",
            f"{args.model}: {args.samples} samples ({have} calibration samples repeated), "
            f"{-(-args.samples // args.part)} files of {args.part}",
            "",
            "| method | workers | seconds | speed-up | ranges identical to 1 worker |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

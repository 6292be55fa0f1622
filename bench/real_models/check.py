"""Sanity check of the prepared real models: each float model runs in onnxruntime on its data.

Usage (any env with numpy and onnxruntime, e.g. /work/venv or /work/venv-models)::

    python bench/real_models/check.py [--dir /tmp/onnxq-real] [--samples 3] [NAME ...]

For every model of ``DIR/manifest.json`` (or the NAMEs given): loads the model and its
calib and eval .npz, checks that every input has an array of the exact dtype, with the
input's rank (batched) or rank + 1 (one feed per index) and matching fixed dimensions,
that both files hold the same layout, runs the first few samples of each file and prints
the output shapes. Exit status 1 if anything fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import layouts, run, session  # noqa: E402

ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


def check_model(name: str, entry: dict, samples: int) -> list[str]:
    errors: list[str] = []
    sess = session(entry["path"])
    ins = sess.get_inputs()
    print(
        f"== {name}: {Path(entry['path']).name} "
        f"({entry.get('package')} {entry.get('version')}, opset {entry.get('opset')})"
    )
    for i in ins:
        print(f"   input  {i.name}: {i.type} {i.shape}")
    lays = {}
    for split in ("calib", "eval"):
        path = entry[split]
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
        extra = sorted(set(data) - {i.name for i in ins})
        for i in ins:
            arr = data.get(i.name)
            if arr is None:
                errors.append(f"{path}: no array for input {i.name}")
                continue
            want = ORT_TYPES.get(i.type)
            if want is None or arr.dtype != np.dtype(want):
                errors.append(f"{path}: input {i.name} dtype {arr.dtype}, model wants {i.type}")
            dims = arr.shape[1:] if arr.ndim == len(i.shape) + 1 else arr.shape
            for k, (d, g) in enumerate(zip(i.shape, dims, strict=False)):
                if isinstance(d, int) and d > 0 and k > 0 and d != g and arr.ndim == len(i.shape):
                    errors.append(f"{path}: input {i.name} dim {k} is {g}, model fixes {d}")
                if isinstance(d, int) and d > 0 and arr.ndim == len(i.shape) + 1 and d != g:
                    errors.append(f"{path}: input {i.name} feed dim {k} is {g}, model fixes {d}")
            if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                errors.append(f"{path}: input {i.name} holds NaN/Inf")
        if errors:
            break
        lay, n = layouts(sess, data)
        lays[split] = lay
        outs = run(sess, data, lay, min(samples, n), samples)
        desc = ", ".join(f"{i.name} {data[i.name].dtype}{list(data[i.name].shape)}" for i in ins)
        print(
            f"   {split}: {n} samples ({', '.join(sorted(set(lay.values())))}): {desc}"
            + (f"; extra keys {extra}" if extra else "")
        )
        for o, v in zip(sess.get_outputs(), outs, strict=True):
            print(
                f"      output {o.name}: {v.dtype}{list(v.shape)} "
                f"(first {min(samples, n)}; range {float(v.min()):.4g}..{float(v.max()):.4g})"
            )
    if len(lays) == 2 and lays["calib"] != lays["eval"]:
        errors.append(f"calib and eval layouts differ: {lays}")
    return errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/onnxq-real"))
    ap.add_argument("--samples", type=int, default=3)
    a = ap.parse_args(argv)
    manifest = json.loads((a.dir / "manifest.json").read_text())["models"]
    names = a.names or list(manifest)
    failed = 0
    for name in names:
        try:
            errs = check_model(name, manifest[name], a.samples)
        except Exception as exc:  # report and go on with the next model
            errs = [f"{type(exc).__name__}: {exc}"]
        for e in errs:
            print(f"   ERROR {e}")
        failed += bool(errs)
    print(f"{len(names) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

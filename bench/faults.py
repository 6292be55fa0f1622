"""Faults a quantize run must survive, outside pytest (slow: signals and races).

Run it from the repository root, one benchmark process at a time::

    python bench/faults.py                 # under a minute; exit 1 if a check fails
    python bench/faults.py --keep /tmp/f   # keep the model, data and outputs there

A fixed-seed encoder (``bench/models.py``, 1 layer) and 16 calibration samples make a run of
a few seconds. One unsignalled run gives its duration T; then, each case in a fresh folder:

* **SIGINT at 10 %, 30 %, 50 %, 70 %, 90 % of T**: the run ends with exit 130 and one line
  ``Error: interrupted; ...`` saying whether the model was already written (complete) or
  no output was; signalled too late, exit 0 and a complete output; no ``*.onnxq-tmp`` file
  is left. A SIGINT while Python still imports onnxq (the first second) ends the process
  as Python does, by the signal (a shell reports 130), with its traceback and no output.
* **SIGKILL at the same points**, then one normal run: the output is absent or complete after
  the kill, and complete with no temporary file after the next run.
* **SIGKILL at the final rename** (``os.replace`` patched to kill the process): a complete
  temporary file is stranded; the next run removes it.
* **three concurrent writers** of one output: all exit 0, the output is complete, no
  temporary file is left.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))
from models import encoder, save_model  # noqa: E402

KILL_AT_RENAME = (
    "import os, signal, sys; from onnxq.cli.main import main; "
    "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL); "
    "sys.argv[0] = 'onnxq'; main()"
)


def quantize(folder: Path, *, kill_at_rename: bool = False) -> subprocess.Popen[str]:
    head = ["-c", KILL_AT_RENAME] if kill_at_rename else ["-m", "onnxq"]
    args = ["quantize", "m.onnx", "-o", "q.onnx", "--data", "d.npz", "-q"]
    return subprocess.Popen(
        [sys.executable, *head, *args],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def state(folder: Path) -> tuple[str, list[str]]:
    """The output ('absent', 'complete' or 'BROKEN') and the temporary files left."""
    temps = sorted(p.name for p in folder.iterdir() if p.name.endswith(".onnxq-tmp"))
    out = folder / "q.onnx"
    if not out.exists():
        return "absent", temps
    try:
        onnx.checker.check_model(onnx.load(str(out)))
    except Exception:  # noqa: BLE001 - any failure to load is a broken output
        return "BROKEN", temps
    return "complete", temps


def fresh(root: Path, name: str) -> Path:
    folder = root / name.replace(" ", "-").replace("%", "pct")
    folder.mkdir()
    for f in ("m.onnx", "d.npz"):
        os.link(root / f, folder / f)
    return folder


def signalled(root: Path, name: str, sig: signal.Signals, delay: float) -> list[str]:
    folder = fresh(root, name)
    proc = quantize(folder)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate()
    out, temps = state(folder)
    problems = []
    if sig is signal.SIGINT:
        problems += interrupted(proc.returncode, out, err)
        if temps:
            problems.append(f"temporary files left: {temps}")
    elif out == "BROKEN":
        problems.append("a broken output after SIGKILL")
    return problems + (after_next_run(folder) if sig is signal.SIGKILL else [])


def interrupted(rc: int, out: str, err: str) -> list[str]:
    """Exit 130 and the one line saying what was written; 0 and a complete output when
    the signal came too late; killed by SIGINT (a shell's 130) only while Python imports,
    before onnxq runs, with nothing written."""
    said = err.strip().splitlines()[-1] if err.strip() else ""
    written = "already written (complete)" in said
    if rc == 0 and out == "complete":
        return []
    if rc == 130 and said.startswith("Error: interrupted") and written == (out == "complete"):
        return []
    if rc == -signal.SIGINT and out == "absent":
        return []
    return [f"exit {rc} with output {out}: {said[-200:]}"]


def after_next_run(folder: Path) -> list[str]:
    rc = quantize(folder).wait()
    out, temps = state(folder)
    return [] if rc == 0 and out == "complete" and not temps else [f"next run: {rc} {out} {temps}"]


def killed_at_rename(root: Path) -> list[str]:
    folder = fresh(root, "kill-at-rename")
    rc = quantize(folder, kill_at_rename=True).wait()
    out, temps = state(folder)
    if rc != -signal.SIGKILL or out != "absent" or len(temps) != 1:
        return [f"expected a stranded temporary file: exit {rc}, output {out}, {temps}"]
    return after_next_run(folder)


def concurrent(root: Path, writers: int = 3) -> list[str]:
    folder = fresh(root, "concurrent")
    codes = [p.wait() for p in [quantize(folder) for _ in range(writers)]]
    out, temps = state(folder)
    ok = codes == [0] * writers and out == "complete" and not temps
    return [] if ok else [f"exits {codes}, output {out}, temporary files {temps}"]


def prepare(root: Path) -> float:
    """Model and data in ``root``; the duration of one unsignalled run."""
    save_model(encoder(layers=1), root, "m")
    rng = np.random.default_rng(0)
    np.savez(root / "d.npz", x=rng.normal(0, 1, (16, 64, 256)).astype(np.float32))
    folder = fresh(root, "timing")
    start = time.perf_counter()
    proc = quantize(folder)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"the unsignalled run failed: {err}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True)
    root = args.keep or Path(tempfile.mkdtemp(prefix="onnxq-faults-"))
    duration = prepare(root)
    print(f"one run: {duration:.2f} s ({root})")
    cases = {"kill at the final rename": lambda: killed_at_rename(root)}
    for sig in (signal.SIGINT, signal.SIGKILL):
        for share in (0.1, 0.3, 0.5, 0.7, 0.9):
            name = f"{sig.name} at {share:.0%}"
            cases[name] = lambda s=sig, f=share, n=name: signalled(root, n, s, f * duration)
    cases["3 concurrent writers"] = lambda: concurrent(root)
    failed = 0
    for name, case in cases.items():
        problems = case()
        failed += bool(problems)
        print(f"{name:<28} {'ok' if not problems else 'FAILED: ' + '; '.join(problems)}")
    if not args.keep:
        shutil.rmtree(root)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

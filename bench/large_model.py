"""Large models: onnxq's 4-bit weights-only quantization of a ~3 GB decoder against
onnxruntime's ``MatMulNBitsQuantizer``, and static int8 of the same model.

    flock /tmp/onnxq-bench.lock python bench/large_model.py            # the ~3 GB model
    python bench/large_model.py --size small --out /tmp/onnxq-large-s  # a quick try

The model is generated here (numpy, a fixed seed, never committed): a decoder with token
embeddings, ``--layers`` blocks of causal multi-head attention and a gated MLP, layer
norms, and an untied lm_head; ``input_ids [batch, seq] int64 -> logits [batch, seq,
vocab]``; every weight in one external data file, written tensor by tensor.

Each quantizer runs in a fresh child process; its wall time and peak resident memory
(``wait4``'s ``ru_maxrss``, the whole process) are measured. Then, in this process, each
written model is loaded (its optimized graph checked for ``MatMulNBits``), timed (first
token of a ``--prompt``-token prompt and one decode step, seq 1, batch 1) and compared with
the float model on ``--sequences`` random token sequences (logit cosine per position,
next-token top-1 agreement). Results go to ``<out>/results.json``; the markdown table is
printed for docs/benchmarks.md.

onnxruntime's quantizer needs ``onnx-ir`` (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

SEED = 1234


@dataclass(frozen=True)
class Shape:
    vocab: int
    hidden: int
    ffn: int
    layers: int
    heads: int
    max_seq: int = 128

    @property
    def params(self) -> int:
        per_layer = 4 * self.hidden**2 + 3 * self.hidden * self.ffn + 2 * self.hidden
        return 2 * self.vocab * self.hidden + self.layers * per_layer + self.hidden


SIZES = {
    # 2 x 65.5 M (embeddings, lm_head) + 12 x 51.4 M = 748 M parameters, 2.99 GB float32
    "full": Shape(vocab=32000, hidden=2048, ffn=5632, layers=12, heads=16),
    "medium": Shape(vocab=32000, hidden=1024, ffn=2816, layers=4, heads=8),
    "small": Shape(vocab=1000, hidden=256, ffn=704, layers=2, heads=4),
}


# --------------------------------------------------------------------------- generation


class _Writer:
    """Initializers written one by one to one external data file (4 KiB-aligned)."""

    def __init__(self, data_path: Path) -> None:
        self.path = data_path
        self.fh = data_path.open("wb")
        self.offset = 0
        self.tensors: list[TensorProto] = []

    def add(self, name: str, arr: np.ndarray) -> str:
        arr = np.ascontiguousarray(arr)
        pad = -self.offset % 4096
        self.fh.write(b"\0" * pad)
        self.offset += pad
        self.fh.write(arr.tobytes())
        t = TensorProto()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
        t.dims.extend(arr.shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.path.name), ("offset", self.offset), ("length", arr.nbytes)):
            t.external_data.add(key=k, value=str(v))
        self.offset += arr.nbytes
        self.tensors.append(t)
        return name

    def small(self, name: str, arr: np.ndarray) -> str:
        self.tensors.append(onnx.numpy_helper.from_array(arr, name))
        return name


def generate(shape: Shape, folder: Path) -> Path:
    """The decoder, written to ``folder/model.onnx`` + ``model.onnx.data``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    rng = np.random.default_rng(SEED)
    w = _Writer(folder / "model.onnx.data")
    H, F, V, nh = shape.hidden, shape.ffn, shape.vocab, shape.heads
    hd = H // nh

    def dense(name: str, rows: int, cols: int) -> str:
        return w.add(name, (rng.standard_normal((rows, cols), np.float32) / math.sqrt(rows)))

    def norm(name: str) -> str:
        return w.add(name, (1.0 + 0.1 * rng.standard_normal(H, np.float32)).astype(np.float32))

    nodes: list[onnx.NodeProto] = []

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=f"{out}_{op}", **attrs))
        return out

    zero_b = w.small("zero_bias", np.zeros(H, np.float32))
    heads_shape = w.small("heads_shape", np.array([0, 0, nh, hd], np.int64))
    merge_shape = w.small("merge_shape", np.array([0, 0, H], np.int64))
    inv = w.small("inv_sqrt_hd", np.array(1.0 / math.sqrt(hd), np.float32))
    mask = np.triu(np.full((shape.max_seq, shape.max_seq), -1e4, np.float32), k=1)
    mask_all = w.small("causal_mask", mask)
    zero2 = w.small("zeros2", np.array([0, 0], np.int64))
    one = w.small("one", np.array([1], np.int64))
    seq = node("Shape", ["input_ids"], "seq_len", start=1, end=2)
    ends = node("Concat", [seq, seq], "mask_ends", axis=0)
    causal = node("Slice", [mask_all, zero2, ends], "mask")
    del one

    h = node(
        "Gather",
        [w.add("embed_tokens", rng.standard_normal((V, H), np.float32)), "input_ids"],
        "h0",
    )
    for i in range(shape.layers):
        p = f"l{i}"
        x = node(
            "LayerNormalization", [h, norm(f"{p}.ln1"), zero_b], f"{p}.x", axis=-1, epsilon=1e-5
        )
        qkv = []
        for k in ("q", "k", "v"):
            m = node("MatMul", [x, dense(f"{p}.{k}_proj", H, H)], f"{p}.{k}")
            r = node("Reshape", [m, heads_shape], f"{p}.{k}_heads")
            qkv.append(node("Transpose", [r], f"{p}.{k}_t", perm=[0, 2, 1, 3]))
        kt = node("Transpose", [qkv[1]], f"{p}.kT", perm=[0, 1, 3, 2])
        s = node("MatMul", [qkv[0], kt], f"{p}.scores")
        s = node("Mul", [s, inv], f"{p}.scaled")
        s = node("Add", [s, causal], f"{p}.masked")
        a = node("Softmax", [s], f"{p}.probs", axis=-1)
        o = node("MatMul", [a, qkv[2]], f"{p}.attn")
        o = node("Transpose", [o], f"{p}.attn_t", perm=[0, 2, 1, 3])
        o = node("Reshape", [o, merge_shape], f"{p}.attn_merged")
        o = node("MatMul", [o, dense(f"{p}.o_proj", H, H)], f"{p}.o")
        h = node("Add", [h, o], f"{p}.h_attn")
        x = node(
            "LayerNormalization", [h, norm(f"{p}.ln2"), zero_b], f"{p}.x2", axis=-1, epsilon=1e-5
        )
        g = node("MatMul", [x, dense(f"{p}.gate_proj", H, F)], f"{p}.gate")
        u = node("MatMul", [x, dense(f"{p}.up_proj", H, F)], f"{p}.up")
        sg = node("Sigmoid", [g], f"{p}.gate_sig")
        act = node("Mul", [node("Mul", [g, sg], f"{p}.silu"), u], f"{p}.act")
        d = node("MatMul", [act, dense(f"{p}.down_proj", F, H)], f"{p}.down")
        h = node("Add", [h, d], f"{p}.h")
    x = node("LayerNormalization", [h, norm("final_ln"), zero_b], "xf", axis=-1, epsilon=1e-5)
    node("MatMul", [x, dense("lm_head", H, V)], "logits")
    w.fh.close()
    graph = helper.make_graph(
        nodes,
        "decoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", V])],
        w.tensors,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    path.write_bytes(model.SerializeToString())
    return path


# --------------------------------------------------------------------------- children


def _child_ort(model: str, out: str, block: int, symmetric: bool) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    cfg = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=symmetric, accuracy_level=4)
    quant = MatMulNBitsQuantizer(
        onnx.load(model),
        block_size=block,
        is_symmetric=symmetric,
        accuracy_level=4,
        algo_config=cfg,
    )
    quant.process()
    quant.model.save_model_to_file(out, use_external_data_format=True)


def run_child(cmd: list[str], log: Path) -> dict[str, Any]:
    """Run ``cmd``; its wall time and peak RSS (of that process alone, from wait4)."""
    t0 = time.perf_counter()
    with log.open("w") as fl:
        proc = subprocess.Popen(cmd, stdout=fl, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = {"seconds": wall, "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9, "rc": proc.returncode}
    if proc.returncode != 0:
        result["log_tail"] = log.read_text(errors="replace")[-1500:]
    return result


def files_bytes(model: Path) -> int:
    from onnxq.graph.external import model_bytes

    return model_bytes(model)


# --------------------------------------------------------------------------- measuring


def session(path: Path, optimized: Path | None = None, threads: int = 0) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", optimized.name + ".data"
        )
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def kernels(path: Path) -> dict[str, Any]:
    """Op types of the optimized graph onnxruntime runs (MatMulNBits and its accuracy
    level, float MatMuls left)."""
    with tempfile.TemporaryDirectory(prefix="onnxq-large-") as tmp:
        opt = Path(tmp) / "optimized.onnx"
        s = session(path, opt)
        del s
        g = onnx.load(str(opt), load_external_data=False).graph
    ops: dict[str, int] = {}
    levels = set()
    for n in g.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
        if n.op_type == "MatMulNBits":
            for a in n.attribute:
                if a.name == "accuracy_level":
                    levels.add(int(a.i))
    return {
        "MatMulNBits": ops.get("MatMulNBits", 0),
        "MatMul": ops.get("MatMul", 0),
        "accuracy_levels": sorted(levels),
    }


def latency(path: Path, vocab: int, prompt: int, runs: int) -> dict[str, float]:
    s = session(path)
    rng = np.random.default_rng(7)
    out = {}
    for name, seq in (("first_token_ms", prompt), ("decode_step_ms", 1)):
        ids = rng.integers(0, vocab, (1, seq), dtype=np.int64)
        for _ in range(2):
            s.run(None, {"input_ids": ids})
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            s.run(None, {"input_ids": ids})
            times.append((time.perf_counter() - t0) * 1000)
        out[name] = statistics.median(times)
    return out


def logits_of(path: Path, ids: np.ndarray, batch: int) -> np.ndarray:
    s = session(path)
    parts = [s.run(None, {"input_ids": ids[i : i + batch]})[0] for i in range(0, len(ids), batch)]
    return np.concatenate(parts).astype(np.float32)


def fidelity(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    r = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    g = got.reshape(-1, got.shape[-1]).astype(np.float64)
    cos = (r * g).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1) + 1e-30)
    top1 = float((r.argmax(1) == g.argmax(1)).mean())
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "top1": top1}


# --------------------------------------------------------------------------- main


def cpu() -> dict[str, Any]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if "model name" in ln), "")
    flags = next(
        (ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []
    )
    return {
        "model": name or platform.processor(),
        "cores": os.cpu_count(),
        "avx2": "avx2" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
    }


def _quantized(
    out: Path, key: str, head: list[str], tail: list[str], flag: str | None = "-o"
) -> dict[str, Any]:
    """Run one quantizer in a child process into ``out/key/model.onnx`` (emptied first):
    ``head``, the output (after ``flag``; positional when None), ``tail``; its wall time,
    peak RSS and the bytes written."""
    dst = out / key / "model.onnx"
    dst.parent.mkdir(exist_ok=True)
    for f in dst.parent.iterdir():
        f.unlink()
    target = [flag, str(dst)] if flag is not None else [str(dst)]
    quiet = ["--quiet"] if flag is not None else []
    r = run_child([*head, *target, *tail, *quiet], out / f"{key}.log")
    r["bytes"] = files_bytes(dst) if dst.exists() else None
    print(key, json.dumps(r), flush=True)
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--out", type=Path, default=Path("/tmp/onnxq-large"))
    ap.add_argument("--blocks", default="32,128")
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--seq", type=int, default=8, help="tokens per fidelity sequence")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens (first-token latency)")
    ap.add_argument("--runs", type=int, default=10, help="latency runs (median)")
    ap.add_argument("--static", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--calib", type=int, default=32, help="static: calibration sequences")
    ap.add_argument(
        "--scheme",
        choices=("sym", "asym"),
        default="asym",
        help="4-bit weight scheme of both quantizers (asym: onnxruntime's default)",
    )
    ap.add_argument("--child-ort", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_ort:
        m, o, b, scheme = args.child_ort
        _child_ort(m, o, int(b), scheme == "sym")
        return 0
    shape = SIZES[args.size]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = out / "float" / "model.onnx"
    if not model.exists():
        t0 = time.perf_counter()
        generate(shape, model.parent)
        print(f"generated {model} in {time.perf_counter() - t0:.0f} s", flush=True)
    float_bytes = files_bytes(model)
    results: dict[str, Any] = {
        "size": args.size,
        "shape": asdict(shape),
        "params": shape.params,
        "float_bytes": float_bytes,
        "cpu": cpu(),
        "commit": _commit(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "scheme": args.scheme,
        "runs": {},
    }
    py = sys.executable
    runs: dict[str, dict[str, Any]] = {}
    for block in [int(b) for b in args.blocks.split(",")]:
        onnxq_4bit = [
            *("--weights-only", "--weight-bits", "4", "--granularity", "block"),
            *("--block-size", str(block), "--weight-scheme", args.scheme),
        ]
        for tool in ("onnxq", "ort"):
            key = f"{tool}-b{block}"
            if tool == "onnxq":
                runs[key] = _quantized(
                    out, key, [py, "-m", "onnxq", "quantize", str(model)], onnxq_4bit
                )
            else:
                ort_cmd = [py, str(Path(__file__).resolve()), "--child-ort", str(model)]
                runs[key] = _quantized(out, key, ort_cmd, [str(block), args.scheme], flag=None)
    if args.static:
        ids = np.random.default_rng(11).integers(
            0, shape.vocab, (args.calib, 1, args.seq), np.int64
        )
        data = out / "calib.npz"
        np.savez(data, input_ids=ids)
        onnxq_cmd = [py, "-m", "onnxq", "quantize", str(model)]
        runs["onnxq-int8"] = _quantized(out, "onnxq-int8", onnxq_cmd, ["--data", str(data)])
    results["runs"] = runs
    _write(out, results)

    ids = np.random.default_rng(5).integers(0, shape.vocab, (args.sequences, args.seq), np.int64)
    batch = 32
    ref = logits_of(model, ids, batch)
    results["float_latency"] = latency(model, shape.vocab, args.prompt, args.runs)
    print("float", results["float_latency"], flush=True)
    for key, r in runs.items():
        dst = out / key / "model.onnx"
        if r["rc"] != 0 or not dst.exists():
            continue
        r["kernels"] = kernels(dst)
        r["fidelity"] = fidelity(ref, logits_of(dst, ids, batch))
        r["latency"] = latency(dst, shape.vocab, args.prompt, args.runs)
        print(key, json.dumps({k: r[k] for k in ("kernels", "fidelity", "latency")}), flush=True)
        _write(out, results)
    print(table(results))
    return 0


def _write(out: Path, results: dict[str, Any]) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2))


def _commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return ""


def table(results: dict[str, Any]) -> str:
    fb = results["float_bytes"]
    fl = results.get("float_latency", {})
    lines = [
        "| run | time s | peak RSS GB | RSS / float size | file MB | MatMulNBits | "
        "first token ms | decode ms | logit cosine (min) | top-1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        f"| float | | | | {fb / 1e6:.0f} | | {fl.get('first_token_ms', 0):.1f} | "
        f"{fl.get('decode_step_ms', 0):.1f} | | |",
    ]
    for key, r in results["runs"].items():
        fid, lat, k = r.get("fidelity", {}), r.get("latency", {}), r.get("kernels", {})
        size = f"{r['bytes'] / 1e6:.0f}" if r.get("bytes") else "-"
        cos = f"{fid['cosine_mean']:.5f} ({fid['cosine_min']:.4f})" if fid else "-"
        lines.append(
            f"| {key} | {r['seconds']:.1f} | {r['peak_rss_gb']:.2f} | "
            f"{r['peak_rss_gb'] * 1e9 / fb:.2f} | {size} | {k.get('MatMulNBits', '-')} | "
            f"{lat.get('first_token_ms', 0):.1f} | {lat.get('decode_step_ms', 0):.1f} | {cos} | "
            f"{fid.get('top1', 0):.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

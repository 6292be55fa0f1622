"""Fingerprints of the models onnxq writes, to prove a refactor changes no output.

Each case quantizes one model under one setting through the CLI (whose flags are the
stable interface) and hashes the written graph: every node (op, inputs, outputs,
attributes, name) and every integer initializer (name, type, shape, bytes) exactly; float
initializers (scales, biases, weights left float) by name and shape exactly and by three
sums (Σx, Σx², max|x|) compared to a relative 1e-5, because the float model's activations
(hence calibrated ranges, bias-correction means, GPTQ moments) move in the last bit when
onnxruntime optimises a session differently. Provenance meant to change with the version
(producer, metadata) is left out.

``python tests/regression/fingerprint.py`` rewrites ``fingerprints.json`` from the code as
it is; do that only for a change that is meant to change outputs, and say so in the commit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
STORE = HERE / "fingerprints.json"
sys.path.insert(0, str(HERE.parent))

import models  # noqa: E402


@dataclass(frozen=True)
class Case:
    model: str
    setting: str
    flags: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.model}/{self.setting}"


W4_BLOCK = ("--weights-only", "--weight-bits", "4", "--granularity", "block", "--block-size", "16")
SETTINGS: dict[str, tuple[str, ...]] = {
    "default": (),
    "dynamic": ("--mode", "dynamic"),
    "w4_block": W4_BLOCK,
    "w4_block_gptq": (*W4_BLOCK, "--gptq"),
    "recipe": ("--recipe", "{recipe}"),
    "check_acts": ("--target-sqnr", "60"),
    "tensor_entropy_sym": ("--granularity", "tensor", "--method", "entropy", "--scheme", "sym"),
    "a16_percentile": ("--activation-bits", "16", "--method", "percentile", "--no-fold-weights"),
}
RECIPES = {
    "digits": [
        {"match": "Gemm", "weight_bits": 4, "granularity": "block", "block_size": 16},
        {"match": "/res_b/*", "exclude": True},
    ],
    "cnn": [
        {"match": "conv2", "exclude": True},
        {"match": "Gemm", "weight_bits": 4, "granularity": "block", "block_size": 16},
    ],
    "encoder": [
        {"match": "fc2", "exclude": True},
        {"match": "*_proj", "weight_bits": 4, "granularity": "block", "block_size": 16},
    ],
}
CASES = tuple(Case(m, s, f) for m in RECIPES for s, f in SETTINGS.items())


def materialize(folder: Path) -> dict[str, tuple[Path, Path, Path]]:
    """Each model with its calibration data and recipe, written into ``folder``."""
    out = {}
    rng = np.random.default_rng(7)
    cnn = folder / "cnn.onnx"
    onnx.save(models.cnn(), str(cnn))
    np.savez(folder / "cnn.npz", input=rng.random((48, 1, 8, 8), dtype=np.float32))
    out["cnn"] = (cnn, folder / "cnn.npz")
    enc, feed = models.tiny_encoder()
    onnx.save(enc, str(folder / "encoder.onnx"))
    np.savez(folder / "encoder.npz", **feed)
    out["encoder"] = (folder / "encoder.onnx", folder / "encoder.npz")
    out["digits"] = (
        ROOT / "sample_models" / "digits_cnn.onnx",
        ROOT / "sample_models" / "digits_calib.npz",
    )
    files = {}
    for name, (model, data) in out.items():
        recipe = folder / f"{name}.recipe.json"
        recipe.write_text(json.dumps({"version": 1, "rules": RECIPES[name]}))
        files[name] = (model, data, recipe)
    return files


def fingerprint(model: onnx.ModelProto) -> dict:
    """Hashes of the nodes and integer initializers, sums of the float initializers."""
    nodes = hashlib.sha256()
    for node in model.graph.node:
        nodes.update(node.SerializeToString(deterministic=True))
    inits = hashlib.sha256()
    floats = {}
    for t in model.graph.initializer:
        inits.update(t.name.encode())
        inits.update(str((t.data_type, tuple(t.dims))).encode())
        value = onnx.numpy_helper.to_array(t)
        if np.issubdtype(value.dtype, np.floating):
            v = value.astype(np.float64)
            floats[t.name] = [float(v.sum()), float((v * v).sum()), float(np.abs(v).max(initial=0))]
        else:
            inits.update(value.tobytes())
    io = hashlib.sha256()
    for v in (*model.graph.input, *model.graph.output):
        io.update(v.SerializeToString(deterministic=True))
    opsets = sorted((o.domain, o.version) for o in model.opset_import)
    return {
        "nodes": nodes.hexdigest()[:16],
        "initializers": inits.hexdigest()[:16],
        "float_sums": floats,
        "io": io.hexdigest()[:16],
        "opsets": str(opsets),
    }


def run_case(case: Case, files: dict[str, tuple[Path, Path, Path]], folder: Path) -> dict:
    from click.testing import CliRunner

    from onnxq.cli.main import cli

    model, data, recipe = files[case.model]
    out = folder / f"{case.model}.{case.setting}.onnx"
    flags = [f.replace("{recipe}", str(recipe)) for f in case.flags]
    # --optimize-for size: the model written must not depend on a timing of this machine
    args = ["quantize", str(model), "-o", str(out), "--data", str(data), "-q", "--json"]
    args += ["--optimize-for", "size", *flags]
    result = CliRunner().invoke(cli, args)
    if result.exit_code != 0:
        raise AssertionError(f"{case.key}: exit {result.exit_code}: {result.output}")
    return {**fingerprint(onnx.load(str(out))), "report": report_summary(json.loads(result.stdout))}


def report_summary(report: dict) -> dict:
    """The parts of the JSON report that describe the model written."""
    check = report["output_check"]
    return {
        **{k: report[k] for k in ("quantized_nodes", "quantized_weights", "qdq_pairs")},
        **{k: report[k] for k in ("float_biases", "corrected_biases", "folded_weights")},
        "check": None
        if check is None
        else {k: check[k] for k in ("met", "float_tensors", "float_nodes", "rounds")},
        "actions": [[d["name"], d["action"]] for d in report["nodes"]],
    }


def versions() -> dict[str, str]:
    import onnxruntime

    return {
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def same(got: dict, stored: dict, rtol: float = 1e-5) -> list[str]:
    """What differs between two fingerprints (empty: the same output)."""
    diffs = [k for k in stored if k != "float_sums" and got.get(k) != stored[k]]
    a, b = got.get("float_sums", {}), stored["float_sums"]
    if sorted(a) != sorted(b):
        diffs.append(f"float initializers {sorted(set(a) ^ set(b))}")
    for name in set(a) & set(b):
        if not np.allclose(a[name], b[name], rtol=rtol, atol=1e-12):
            diffs.append(f"float initializer {name}: {a[name]} vs {b[name]}")
    return diffs


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = materialize(folder)
        prints = {c.key: run_case(c, files, folder) for c in CASES}
    STORE.write_text(json.dumps({"versions": versions(), "cases": prints}, indent=1) + "\n")
    print(f"wrote {len(prints)} fingerprints to {STORE}")


if __name__ == "__main__":
    main()

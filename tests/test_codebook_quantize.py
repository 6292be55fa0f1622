"""Codebook weights through ``quantize`` (``--weight-levels kmeans|log``, and the uniform
codebook of widths ONNX has no integer type for): the written model runs in onnxruntime,
its decode subgraphs give exactly the numpy codebook, the counts and the report say what
was stored, bias correction and the output check see the decoded weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from onnxq import QuantConfig, quantize
from onnxq.cli.main import cli
from onnxq.config import FidelityTarget, WeightSpec
from onnxq.graph.outputs import with_outputs
from onnxq.graph.passes.bias_correction import correct_biases
from onnxq.graph.passes.codebook import (
    CodebookUse,
    find_codebook,
    find_codebooks,
    store_codebook_weights,
)
from onnxq.graph.passes.result import ChangeKind
from onnxq.graph.plan import make_plan
from onnxq.graph.rewrite_qdq import rewrite_qdq
from onnxq.graph.rules import GraphIndex
from onnxq.inspect import inspect_model
from onnxq.quant.bias_correction import conv_shift, matmul_shift
from onnxq.quant.codebook import LevelKind, decode, fit_codebook
from onnxq.quant.methods import Granularity
from onnxq.stages.prepare import prepare
from onnxq.stages.replan import codebook_uses

import models
from conftest import SAMPLES
from helpers import NO_CHECK, run

_MODELS = {
    "cnn": lambda: (
        models.cnn(),
        {"input": np.random.default_rng(3).random((32, 1, 8, 8), dtype=np.float32)},
    ),
    "encoder": models.tiny_encoder,
}


def _files(tmp_path: Path, which: str) -> tuple[Path, Path, onnx.ModelProto, dict]:
    model, feed = _MODELS[which]()
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **feed)
    return tmp_path / "m.onnx", tmp_path / "d.npz", model, feed


def _config(bits: int, kind: LevelKind, **kw) -> QuantConfig:
    gran = kw.pop("granularity", Granularity.CHANNEL)
    spec = WeightSpec(bits=bits, levels=kind, granularity=gran)
    return QuantConfig(weights_only=True, weights=spec, **{"target": NO_CHECK, **kw})


def _sqnr(w: np.ndarray, w_hat: np.ndarray) -> float:
    w64 = w.astype(np.float64)
    return float(10 * np.log10(np.sum(w64**2) / np.sum((w64 - w_hat) ** 2)))


def _decoded_by_onnxruntime(
    written: onnx.ModelProto, uses: list[CodebookUse], feed: dict
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The model's outputs and the weight each use's node reads, as onnxruntime computes
    them with every optimisation off (BitShift, BitwiseAnd, Gather run as nodes)."""
    by_node = {n.name: n for n in written.graph.node}
    names = [by_node[u.node].input[u.index] for u in uses]
    assert len(set(names)) == len(names)
    outputs = len(written.graph.output)
    got = run(with_outputs(written, names), feed, optimize=False)
    return got[:outputs], got[outputs:]


@pytest.mark.parametrize("which", ["cnn", "encoder"])
@pytest.mark.parametrize("bits", [3, 4])
def test_decoded_weights_are_the_numpy_codebook(tmp_path, which, bits):
    """(a) runs in onnxruntime, the decode subgraphs give ``decode(fit_codebook(w))``
    exactly, the optimised session (decoders folded at load) gives the same outputs as
    the float model with the decoded weights; (b) k-means keeps at least the SQNR of the
    uniform codebook on every weight; (c) the count is the number of codebook weights."""
    m, d, model, feed = _files(tmp_path, which)
    cfg = _config(bits, LevelKind.KMEANS, bias_correction=False)
    report = quantize(m, tmp_path / "q.onnx", cfg, data=d)
    written = onnx.load(str(tmp_path / "q.onnx"))
    prepared = prepare(model, min_opset=cfg.min_opset).model
    uses = codebook_uses(make_plan(prepared, cfg))
    assert uses and all(u.axis is not None for u in uses)
    outputs, decoded = _decoded_by_onnxruntime(written, uses, feed)
    floats = {t.name: numpy_helper.to_array(t) for t in prepared.graph.initializer}
    substituted = onnx.ModelProto()
    substituted.CopyFrom(prepared)
    for use, got in zip(uses, decoded, strict=True):
        w = floats[use.tensor]
        book, idx = fit_codebook(w, bits, LevelKind.KMEANS, axis=use.axis)
        np.testing.assert_array_equal(got, decode(book, idx))
        assert np.unique(np.moveaxis(got, use.axis, 0)[0]).size <= 1 << bits
        uniform = decode(*fit_codebook(w, bits, LevelKind.UNIFORM, axis=use.axis))
        assert _sqnr(w, got) >= _sqnr(w, uniform) - 1e-9, use.tensor
        init = next(t for t in substituted.graph.initializer if t.name == use.tensor)
        init.CopyFrom(numpy_helper.from_array(got, use.tensor))
    optimized = run(written, feed)
    for a, b, c in zip(outputs, optimized, run(substituted, feed), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b, c, rtol=1e-4, atol=1e-5)
    books = find_codebooks(written)
    assert report.quantized_weights == len(uses) == len(books)
    floats_left = {t.name for t in written.graph.initializer}
    assert not floats_left & {u.tensor for u in uses}  # stored as words and levels only
    want = f"weights stored as a {bits}-bit kmeans codebook per channel"
    quantized = [x for x in report.decisions if x.quantized]
    assert quantized and all(x.reason.startswith(want) for x in quantized)
    assert report.settings["quantize"]["weights"]["levels"] == "kmeans"


@pytest.mark.parametrize("granularity", [Granularity.TENSOR, Granularity.CHANNEL])
def test_log_levels_are_signed_powers_of_two_in_the_model(tmp_path, granularity):
    m, d, model, feed = _files(tmp_path, "encoder")
    cfg = _config(4, LevelKind.LOG, granularity=granularity)
    report = quantize(m, tmp_path / "q.onnx", cfg, data=d)
    written = onnx.load(str(tmp_path / "q.onnx"))
    prepared = prepare(model, min_opset=cfg.min_opset).model
    uses = codebook_uses(make_plan(prepared, cfg))
    assert all((u.axis is None) is (granularity is Granularity.TENSOR) for u in uses)
    _, decoded = _decoded_by_onnxruntime(written, uses, feed)
    floats = {t.name: numpy_helper.to_array(t) for t in prepared.graph.initializer}
    for use, got in zip(uses, decoded, strict=True):
        np.testing.assert_array_equal(
            got, decode(*fit_codebook(floats[use.tensor], 4, LevelKind.LOG, axis=use.axis))
        )
        mags = np.abs(got[got != 0]).astype(np.float64)
        np.testing.assert_array_equal(np.exp2(np.round(np.log2(mags))), mags)
    assert report.quantized_weights == len(uses) == len(find_codebooks(written))
    assert report.corrected_biases  # fc1 and fc2: the MatMul + Add biases


def test_file_holds_packed_indices_and_levels(tmp_path):
    """The written size is the real stored size: on the sample CNN 4-bit k-means per
    channel is smaller than 8-bit integers, 3 bits smaller still, and the codebook
    initializers are 4 bytes per packed word and level."""
    model, data = SAMPLES / "digits_cnn.onnx", SAMPLES / "digits_calib.npz"
    sizes = {}
    for name, cfg in {
        "k3": _config(3, LevelKind.KMEANS),
        "k4": _config(4, LevelKind.KMEANS),
        "u8": QuantConfig(weights_only=True, target=NO_CHECK),
    }.items():
        report = quantize(model, tmp_path / f"{name}.onnx", cfg, data=data)
        sizes[name] = (tmp_path / f"{name}.onnx").stat().st_size
        assert report.quantized_bytes == sizes[name]
    assert sizes["k3"] < sizes["k4"] < sizes["u8"]
    written = onnx.load(str(tmp_path / "k3.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in written.graph.initializer}
    for book in find_codebooks(written):
        values = int(np.prod(book.shape))
        words = -(-values // (32 // 3))
        levels = book.shape[0] * 8
        assert book.stored_bytes == 4 * (words + levels)
        words_init, levels_init = book.nodes[0].input[0], book.nodes[-1].input[0]
        assert inits[words_init].dtype == np.uint32 and inits[words_init].size == words
        assert inits[levels_init].dtype == np.float32 and inits[levels_init].size == levels


def test_bias_correction_takes_back_the_decoded_error(tmp_path):
    """The corrected bias of a codebook node is ``b − ε ∗ E[x]`` with ``ε`` the decoded
    weight minus the float one."""
    prepared = prepare(models.cnn(), min_opset=18).model
    cfg = _config(3, LevelKind.KMEANS)
    plan = make_plan(prepared, cfg)
    result = rewrite_qdq(prepared, plan, {}, cfg)
    stored = store_codebook_weights(result.model, codebook_uses(plan)).model
    rng = np.random.default_rng(0)
    means = {"input": rng.random(1), "r1": rng.random(8), "flat": rng.random(64)}
    corrected = correct_biases(stored, prepared, means)
    assert set(corrected.names(ChangeKind.BIAS_CORRECTED)) == {"conv1", "conv2", "conv3", "fc"}
    idx, floats = GraphIndex(corrected.model), GraphIndex(prepared)
    by_name = {n.name: n for n in corrected.model.graph.node}
    for name, x, shift in [
        ("conv2", "r1", conv_shift),
        ("fc", "flat", lambda e, m: matmul_shift(e.T, m)),
    ]:
        node = by_name[name]
        book = find_codebook(idx, node.input[1])
        assert book is not None
        original = next(n for n in prepared.graph.node if n.name == name)
        w = numpy_helper.to_array(floats.initializers[original.input[1]]).astype(np.float64)
        b = numpy_helper.to_array(floats.initializers[original.input[2]]).astype(np.float64)
        want = b - shift(book.decoded().astype(np.float64) - w, means[x])
        got = numpy_helper.to_array(idx.initializers[node.input[2]])
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_output_check_keeps_costly_codebook_nodes_float(tmp_path):
    """Codebook weights are units of the output check's simulation: at 2 bits the check
    keeps some nodes float, and those read their float weight in the written model."""
    m, d, _, feed = _files(tmp_path, "cnn")
    cfg = _config(2, LevelKind.KMEANS, target=FidelityTarget(sqnr_db=30))
    report = quantize(m, tmp_path / "q.onnx", cfg, data=d)
    assert report.check is not None and report.check.passes > 0
    assert report.check.float_nodes
    written = onnx.load(str(tmp_path / "q.onnx"))
    books = find_codebooks(written)
    assert report.quantized_weights == len(books) > 0
    inits = {t.name for t in written.graph.initializer}
    for node in written.graph.node:
        if node.name in report.check.float_nodes:
            assert node.input[1] in inits  # its float weight
    run(written, feed)


def test_inspect_recognises_codebook_weights(tmp_path):
    m, d, model, _ = _files(tmp_path, "encoder")
    quantize(m, tmp_path / "q.onnx", _config(3, LevelKind.KMEANS), data=d)
    summary = inspect_model(tmp_path / "q.onnx").summary
    books = summary.codebook_weights
    assert len(books) == 6 and all(b.bits == 3 and b.axis == 1 for b in books)
    weights = sum(int(np.prod(b.shape)) for b in books)
    assert summary.parameters >= weights  # decoded values, not packed words
    assert summary.parameter_bytes < 4 * weights
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "q.onnx")])
    assert result.exit_code == 0, result.output
    assert "weights stored as codebooks" in result.output


def _one_line_error(args: list[str], *fragments: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert all(f in lines[0] for f in fragments), lines[0]


def test_codebook_refusals(cnn_files, tmp_path):
    base = ["quantize", str(cnn_files["model"]), "-o", str(tmp_path / "q.onnx")]
    base += ["--data", str(cnn_files["data"])]
    _one_line_error([*base, "--weight-levels", "kmeans"], "add --weights-only")
    _one_line_error(
        [*base, "--weights-only", "--weight-levels", "kmeans", "--granularity", "block"],
        "use --granularity tensor or channel",
    )
    _one_line_error([*base, "--weights-only", "--weight-levels", "log", "--gptq"], "drop --gptq")
    assert not (tmp_path / "q.onnx").exists()


def test_cli_three_bit_weights_are_a_uniform_codebook(cnn_files, tmp_path):
    """``--weights-only --weight-bits 3`` (no integer type): the uniform codebook, one
    table per output channel, through the command line."""
    out = tmp_path / "q.onnx"
    args = ["quantize", str(cnn_files["model"]), "-o", str(out), "--data", str(cnn_files["data"])]
    result = CliRunner().invoke(
        cli, [*args, "--weights-only", "--weight-bits", "3", "--target-sqnr", "0", "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    written = onnx.load(str(out))
    books = find_codebooks(written)
    assert doc["quantized_weights"] == len(books) == 4
    reasons = [n["reason"] for n in doc["nodes"] if n["action"] == "quantize"]
    assert all(
        r.startswith("weights stored as a 3-bit uniform codebook per channel") for r in reasons
    )
    w2 = numpy_helper.to_array(next(t for t in models.cnn().graph.initializer if t.name == "w2"))
    conv2 = next(n for n in written.graph.node if n.name == "conv2")
    book = find_codebook(GraphIndex(written), conv2.input[1])
    assert book is not None and book.codebook.axis == 0
    want = decode(*fit_codebook(w2, 3, LevelKind.UNIFORM, axis=0))
    np.testing.assert_array_equal(book.decoded(), want)

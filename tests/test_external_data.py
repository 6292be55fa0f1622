"""Models whose weights live in external data files (issue #13): unsafe or broken
references refused before anything is written, quantized models written with their data
file atomically and loaded by onnxruntime, sizes that count the data, weights quantized
slab by slab exactly as whole."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.cli.main import cli
from onnxq.config import Granularity, QuantConfig, WeightSpec
from onnxq.errors import ModelError
from onnxq.graph import model_io
from onnxq.graph.external import model_bytes, row_reader, tensor_values, uses_external_data
from onnxq.graph.model_io import load_model
from onnxq.quant import QType, quantize
from onnxq.quant.methods import CalibrationMethod
from onnxq.quant.weights import WeightLayout, in_slabs, slicer, weight_qparams

VOCAB, K, N = 300, 64, 48


def _decoder() -> onnx.ModelProto:
    """Embedding Gather -> MatMul -> Relu -> MatMul: ids [1, 8] -> y [1, 8, N]."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((VOCAB, K)).astype(np.float32), "emb"),
        numpy_helper.from_array(rng.standard_normal((K, K)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["h"], name="embed"),
        helper.make_node("MatMul", ["h", "w1"], ["a"], name="mm1"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes,
        "decoder",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, N])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _save_external(folder: Path, location: str = "model.data") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(
        _decoder(), str(path), save_as_external_data=True, location=location, size_threshold=0
    )
    return path


def _set_location(path: Path, location: str) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())


def _invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _refused(result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _quantize_4bit(model: Path, out: Path, *extra: object):
    return _invoke(
        "quantize", model, "-o", out, "--weights-only", "--weight-bits", "4",
        "--granularity", "block", "--block-size", "16", "-q", *extra,
    )  # fmt: skip


def _feed() -> dict[str, np.ndarray]:
    return {"ids": np.random.default_rng(1).integers(0, VOCAB, (1, 8), dtype=np.int64)}


def _run(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, _feed())[0]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---------------------------------------------------------------- references refused


def test_absolute_location_refused_before_anything_is_written(tmp_path: Path) -> None:
    model = _save_external(tmp_path / "m")
    _set_location(model, str((tmp_path / "m" / "model.data").resolve()))
    out = tmp_path / "q.onnx"
    _refused(_quantize_4bit(model, out), "tensor 'emb'", "absolute path")
    assert not out.exists() and not model_io.data_path(out).exists()


def test_location_with_dotdot_refused(tmp_path: Path) -> None:
    model = _save_external(tmp_path / "m")
    (tmp_path / "m" / "model.data").rename(tmp_path / "outside.data")
    _set_location(model, "../outside.data")
    _refused(_quantize_4bit(model, tmp_path / "q.onnx"), "'../outside.data'", "outside")
    with pytest.raises(ModelError, match="outside the model's folder"):
        load_model(model)


def test_symlink_pointing_out_refused_and_inside_accepted(tmp_path: Path) -> None:
    model = _save_external(tmp_path / "m")
    data = tmp_path / "m" / "model.data"
    data.rename(tmp_path / "elsewhere.data")
    data.symlink_to(tmp_path / "elsewhere.data")
    with pytest.raises(ModelError, match="a link to .* outside the model's folder"):
        load_model(model)
    data.unlink()
    (tmp_path / "elsewhere.data").rename(tmp_path / "m" / "real.data")
    data.symlink_to("real.data")  # a link that stays in the folder is fine
    assert uses_external_data(load_model(model))


def test_missing_data_file_refused(tmp_path: Path) -> None:
    model = _save_external(tmp_path / "m")
    (tmp_path / "m" / "model.data").unlink()
    out = tmp_path / "q.onnx"
    _refused(_quantize_4bit(model, out), "'model.data'", "does not exist")
    assert not out.exists()
    _refused(_invoke("inspect", model), "does not exist")


def test_short_data_file_refused(tmp_path: Path) -> None:
    model = _save_external(tmp_path / "m")
    data = tmp_path / "m" / "model.data"
    data.write_bytes(data.read_bytes()[:-100])
    out = tmp_path / "q.onnx"
    _refused(_quantize_4bit(model, out), "truncated")
    assert not out.exists() and not model_io.data_path(out).exists()


# ---------------------------------------------------------------- round trip


def test_external_model_quantizes_to_external_data_that_onnxruntime_loads(
    tmp_path: Path,
) -> None:
    model = _save_external(tmp_path / "m")
    out = tmp_path / "q" / "model.onnx"
    out.parent.mkdir()
    report = tmp_path / "report.json"
    result = _quantize_4bit(model, out, "--report", report)
    assert result.exit_code == 0, result.output
    data = model_io.data_path(out)
    assert data.exists()
    written = onnx.load(str(out), load_external_data=False)
    external = [t.name for t in written.graph.initializer if t.data_location == 1]
    assert external and all(
        e.value == data.name for t in written.graph.initializer for e in t.external_data
        if e.key == "location"
    )  # fmt: skip
    # the float tensors stay in their file; the written model does not read them
    assert out.stat().st_size < 20_000
    assert _cos(_run(out), _run(model)) > 0.97
    doc = json.loads(report.read_text())
    sizes = json.dumps(doc)
    float_bytes = model.stat().st_size + (tmp_path / "m" / "model.data").stat().st_size
    quant_bytes = out.stat().st_size + data.stat().st_size
    assert str(float_bytes) in sizes and str(quant_bytes) in sizes


def test_no_external_data_writes_one_file(tmp_path: Path) -> None:
    model = _save_external(tmp_path / "m")
    out = tmp_path / "one.onnx"
    assert _quantize_4bit(model, out, "--no-external-data").exit_code == 0
    assert not model_io.data_path(out).exists()
    assert not uses_external_data(onnx.load(str(out)))
    assert _cos(_run(out), _run(tmp_path / "m" / "model.onnx")) > 0.97


def test_inline_model_past_the_lowered_limit_is_written_external(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "inline.onnx"
    onnx.save_model(_decoder(), str(model))
    small = tmp_path / "small.onnx"
    assert _quantize_4bit(model, small).exit_code == 0
    assert not model_io.data_path(small).exists()  # under the limit: one file
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", 10_000)
    big = tmp_path / "big.onnx"
    assert _quantize_4bit(model, big).exit_code == 0
    assert model_io.data_path(big).exists()
    np.testing.assert_array_equal(_run(big), _run(small))
    with pytest.raises(ModelError, match="--external-data"):
        model_io.save_model(onnx.load(str(small)), tmp_path / "x.onnx", external=False)
    assert not (tmp_path / "x.onnx").exists()


def test_failed_model_write_leaves_no_data_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(_save_external(tmp_path / "m"))
    out = tmp_path / "q.onnx"
    real = os.replace

    def refuse_model(src: object, dst: object) -> None:
        if Path(str(dst)) == out:
            raise OSError(28, "disk full")
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", refuse_model)
    with pytest.raises(ModelError, match="disk full"):
        model_io.save_model(model, out, external=True)
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_compare_and_inspect_count_external_files(tmp_path: Path) -> None:
    model = _save_external(tmp_path / "m")
    out = tmp_path / "q.onnx"
    assert _quantize_4bit(model, out).exit_code == 0
    ids = np.random.default_rng(2).integers(0, VOCAB, (4, 1, 8), dtype=np.int64)
    np.savez(tmp_path / "ids.npz", ids=ids)
    report = onnxq.compare(model, out, tmp_path / "ids.npz", latency_runs=0)
    assert report.reference_bytes == model_bytes(model) > 100_000
    assert report.candidate_bytes == out.stat().st_size + model_io.data_path(out).stat().st_size
    assert report.fidelity.outputs[0].cosine_mean > 0.97
    result = _invoke("inspect", model, "--json")
    assert result.exit_code == 0, result.output


def test_static_int8_of_an_external_model(tmp_path: Path) -> None:
    model = _save_external(tmp_path / "m")
    ids = np.random.default_rng(3).integers(0, VOCAB, (16, 1, 8), dtype=np.int64)
    np.savez(tmp_path / "ids.npz", ids=ids)
    out = tmp_path / "int8.onnx"
    result = _invoke("quantize", model, "-o", out, "--data", tmp_path / "ids.npz", "-q")
    assert result.exit_code == 0, result.output
    assert model_io.data_path(out).exists()
    assert _cos(_run(out), _run(model)) > 0.99


def test_weights_are_read_without_touching_the_proto(tmp_path: Path) -> None:
    model = load_model(_save_external(tmp_path / "m"))
    w1 = next(t for t in model.graph.initializer if t.name == "w1")
    before = w1.SerializeToString()
    want = numpy_helper.to_array(_decoder().graph.initializer[1])
    np.testing.assert_array_equal(tensor_values(w1), want)
    read = row_reader(w1)
    assert read is not None
    np.testing.assert_array_equal(read(5, 17), want[5:17])
    assert w1.SerializeToString() == before  # still a reference, no bytes loaded into it


# ---------------------------------------------------------------- slabs


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 70),
    cols=st.integers(1, 40),
    kind=st.sampled_from([Granularity.BLOCK, Granularity.CHANNEL]),
    axis=st.integers(0, 1),
    block=st.sampled_from([4, 16, 32]),
    symmetric=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_slabs_give_the_codes_and_qparams_of_the_whole(
    rows: int, cols: int, kind: Granularity, axis: int, block: int, symmetric: bool, seed: int
) -> None:
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    layout = WeightLayout(kind, axis, block if kind is Granularity.BLOCK else 1)
    qtype = QType.INT4 if symmetric else QType.UINT4

    def quantized(part: np.ndarray) -> tuple[np.ndarray, object]:
        qp = weight_qparams(part, layout, CalibrationMethod.MINMAX, qtype, symmetric=symmetric)
        return quantize(part, qp), qp

    whole_codes, whole = quantized(w)
    axis_of = 0 if kind is Granularity.BLOCK else axis
    codes, qp = in_slabs(w.shape, layout, slicer(w, axis_of), quantized, max_bytes=24)
    np.testing.assert_array_equal(codes, whole_codes)
    np.testing.assert_array_equal(qp.scale, whole.scale)
    np.testing.assert_array_equal(qp.zero_point, whole.zero_point)
    assert (qp.axis, qp.block_size) == (whole.axis, whole.block_size)


def test_quantize_api_external_data_flag(tmp_path: Path) -> None:
    model = _save_external(tmp_path / "m")
    config = QuantConfig(
        weights=WeightSpec(bits=4, granularity=Granularity.BLOCK, block_size=16),
        weights_only=True,
    )
    out = tmp_path / "api.onnx"
    report = onnxq.quantize(model, out, config, external_data=False)
    assert not model_io.data_path(out).exists()
    assert report.float_bytes == model_bytes(model)
    assert report.quantized_bytes == out.stat().st_size


@pytest.mark.parametrize("dtype", ["int4", "uint4", "float32", "int8"])
@pytest.mark.parametrize("shape", [(64, 33), (7, 5, 31)])
def test_spilled_tensors_hold_the_bytes_onnx_would_write(dtype: str, shape: tuple) -> None:
    import ml_dtypes

    from onnxq.graph.external import external_ref, read_bytes, stored_tensor

    np_dtype = getattr(ml_dtypes, dtype, None) or np.dtype(dtype)
    low = 0 if dtype == "uint4" else -8
    arr = np.random.default_rng(4).integers(low, 8, shape).astype(np_dtype)
    spilled = stored_tensor(arr, "x", spill=True)
    assert spilled.data_location == TensorProto.EXTERNAL and not spilled.raw_data
    assert read_bytes(external_ref(spilled)) == numpy_helper.from_array(arr, "x").raw_data
    assert stored_tensor(arr[:1, :1], "y", spill=True).data_location == TensorProto.DEFAULT


def test_dynamic_mode_of_an_external_model(tmp_path: Path) -> None:
    model = _save_external(tmp_path / "m")
    out = tmp_path / "dyn.onnx"
    result = _invoke("quantize", model, "-o", out, "--mode", "dynamic", "-q")
    assert result.exit_code == 0, result.output
    assert model_io.data_path(out).exists()
    assert _cos(_run(out), _run(model)) > 0.99


# ---------------------------------------------------------------- review fixes


def _scaled(model: onnx.ModelProto, factor: float) -> onnx.ModelProto:
    """``model`` (inline) with every initializer multiplied by ``factor``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * factor, t.name))
    return out


def test_failed_model_rename_keeps_the_earlier_output_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "q.onnx"
    model_io.save_model(_decoder(), out, external=True)
    first = _run(out)
    real = os.replace

    def refuse_model(src: object, dst: object) -> None:
        if Path(str(dst)) == out:
            raise OSError(28, "No space left on device")
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", refuse_model)
    with pytest.raises(ModelError, match="No space left"):
        model_io.save_model(_scaled(_decoder(), 2.0), out, external=True)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["q.onnx", "q.onnx.data"]  # no backup left over
    np.testing.assert_array_equal(_run(out), first)
    model_io.save_model(_scaled(_decoder(), 2.0), out, external=True)  # the pair replaced
    np.testing.assert_allclose(_run(out), 8 * first, rtol=1e-5, atol=1e-3)  # 2 * 2 * 2
    assert sorted(os.listdir(tmp_path)) == ["q.onnx", "q.onnx.data"]


def test_output_data_file_that_is_an_input_data_file_is_refused(tmp_path: Path) -> None:
    """a.onnx keeps its weights in b.onnx.data: ``-o b.onnx`` would write over them."""
    model = _save_external(tmp_path, location="b.onnx.data")
    data = tmp_path / "b.onnx.data"
    before = data.read_bytes()
    out = tmp_path / "b.onnx"
    _refused(_quantize_4bit(model, out), f"'{data}'", "input model's external data")
    assert data.read_bytes() == before and not out.exists()
    # the library refuses it too, before writing
    with pytest.raises(ModelError, match="input model's external data"):
        model_io.save_model(load_model(model), out, external=True)
    assert data.read_bytes() == before and not out.exists()
    # a report over the output's data file is refused before any work
    other = tmp_path / "q.onnx"
    report = tmp_path / "q.onnx.data"
    _refused(_quantize_4bit(model, other, "--report", report), f"'{report}'", "-o/--output")
    assert not other.exists() and not report.exists()


def test_location_with_a_nul_byte_is_a_model_error(tmp_path: Path) -> None:
    model = _save_external(tmp_path / "m")
    _set_location(model, "model\0.data")
    with pytest.raises(ModelError, match="tensor 'emb'"):
        load_model(model)
    _refused(_invoke("inspect", model), "tensor 'emb'")
    _refused(_quantize_4bit(model, tmp_path / "q.onnx"), "tensor 'emb'")
    assert model_bytes(model) == model.stat().st_size


def test_spill_folders_of_dead_processes_are_removed(tmp_path):
    from onnxq.graph.external import SPILL_PREFIX, remove_dead_spills

    dead = tmp_path / f"{SPILL_PREFIX}{2**22 + 12345}-abc"  # above Linux's pid_max default
    dead.mkdir()
    (dead / "tensors.bin").write_bytes(b"\0" * 16)
    alive = tmp_path / f"{SPILL_PREFIX}{os.getpid()}-def"
    alive.mkdir()
    other = tmp_path / "onnxq-spill-notapid"
    other.mkdir()
    remove_dead_spills(tmp_path)
    assert not dead.exists() and alive.exists() and other.exists()


def test_codebook_weights_of_an_external_model_stay_external(tmp_path: Path) -> None:
    model = _save_external(tmp_path / "m")
    out = tmp_path / "kmeans.onnx"
    result = _invoke(
        "quantize", model, "-o", out, "--weights-only", "--weight-levels", "kmeans",
        "--weight-bits", "4", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    written = onnx.load(str(out), load_external_data=False)
    inline = [t.name for t in written.graph.initializer if t.data_location != 1]
    assert sum(t.data_location == 1 for t in written.graph.initializer) > 0
    big_inline = [t for t in written.graph.initializer if len(t.raw_data) > 4096]
    assert not big_inline, [t.name for t in big_inline]  # indices went to the data file
    assert inline  # small tensors (levels, shapes) stay in the proto
    assert _cos(_run(out), _run(model)) > 0.95


def test_session_refuses_more_than_protobuf_takes_inline(tmp_path: Path, monkeypatch) -> None:
    import shutil

    from onnxq.errors import RuntimeFailure
    from onnxq.runtime import Runner, session

    model_path = _save_external(tmp_path / "a")
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "model.data", tmp_path / "b" / "model.data")
    model = load_model(model_path)  # locations pinned to absolute paths
    moved = model.graph.initializer[0]
    for entry in moved.external_data:
        if entry.key == "location":
            entry.value = str(tmp_path / "b" / "model.data")
    Runner(model)  # the other folder's tensor is small: put inline
    monkeypatch.setattr(session, "PROTOBUF_LIMIT", 16)
    with pytest.raises(RuntimeFailure, match="lie in 2 folders"):
        Runner(model)


def test_gptq_moments_in_groups_give_the_codes_of_one_pass(tmp_path: Path, monkeypatch) -> None:
    from onnxq.stages import weights

    model = _save_external(tmp_path / "m")
    ids = np.random.default_rng(3).integers(0, VOCAB, (16, 1, 8), dtype=np.int64)
    np.savez(tmp_path / "ids.npz", ids=ids)
    args = [
        "--data", tmp_path / "ids.npz", "--weights-only", "--gptq", "--weight-bits", "4",
        "--granularity", "block", "--block-size", "16", "--no-bias-correction", "-q",
    ]  # fmt: skip
    passes: list[int] = []
    moments = weights.FloatSession.moments

    def counted(self, data, tensors, **kw):
        passes.append(len(tensors))
        return moments(self, data, tensors, **kw)

    monkeypatch.setattr(weights.FloatSession, "moments", counted)
    assert _invoke("quantize", model, "-o", tmp_path / "one.onnx", *args).exit_code == 0
    one_pass = list(passes)
    monkeypatch.setattr(weights, "MOMENT_BYTES", 1)  # every input its own pass
    passes.clear()
    assert _invoke("quantize", model, "-o", tmp_path / "many.onnx", *args).exit_code == 0
    assert len(one_pass) == 1 and one_pass[0] > 1 and passes == [1] * one_pass[0]
    a = {t.name: tensor_values(t) for t in load_model(tmp_path / "one.onnx").graph.initializer}
    b = {t.name: tensor_values(t) for t in load_model(tmp_path / "many.onnx").graph.initializer}
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_an_external_data_model_keeps_one_float_session(tmp_path: Path) -> None:
    """Two float sessions would each hold the weights: a model with external data runs its
    reference outputs in the wide session, and releasing it after calibration keeps it."""
    from onnxq.calibration.collect import FloatSession
    from onnxq.graph.model_io import load_model

    model = load_model(_save_external(tmp_path / "m"))
    assert uses_external_data(model)
    floats = FloatSession(model)
    assert floats.reference_runner is floats.runner
    wide = floats.runner
    floats.release_wide()
    assert floats.runner is wide

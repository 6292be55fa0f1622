"""Data people have: .npy files, folders of images with a declared preprocessing, arrays
and feeds from Python, and folders holding files onnxq cannot read."""

from __future__ import annotations

import sys
import tempfile

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxq
from onnxq.cli.main import cli
from onnxq.data import Preprocess, open_data
from onnxq.data.preprocess import read_preprocess
from onnxq.errors import ConfigError, DataError
from onnxq.graph.model_io import input_specs

import models
from helpers import graph_bytes

try:
    from PIL import Image
except ImportError:  # the tests that decode images are skipped
    Image = None

needs_pillow = pytest.mark.skipif(Image is None, reason="needs Pillow: pip install 'onnxq[images]'")

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def nhwc_model(seed: int = 0) -> onnx.ModelProto:
    """An image classifier with an NHWC RGB input [N, 8, 8, 3]."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(f32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(f32), "b"),
        numpy_helper.from_array(rng.normal(0, 0.5, (5, 4)).astype(f32), "wfc"),
    ]
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "wfc"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "nhwc",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 8, 8, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save_images(folder, pixels: np.ndarray, suffix: str = ".png") -> None:
    folder.mkdir(exist_ok=True)
    for i, pix in enumerate(pixels):
        Image.fromarray(pix).save(folder / f"img{i:03d}{suffix}")


def fake_images(folder, count: int) -> None:
    """Files named as images, for checks made before any image is decoded."""
    folder.mkdir(exist_ok=True)
    for i in range(count):
        (folder / f"img{i}.png").write_bytes(b"not decoded")


def stacked(dataset) -> np.ndarray:
    name = dataset.specs[0].name
    return np.concatenate([b.feed[name] for b in dataset.batches(4)])


# --- .npy -----------------------------------------------------------------------------


def test_npy_quantizes_byte_for_byte_like_the_npz(cnn_files):
    folder = cnn_files["dir"]
    with np.load(cnn_files["data"]) as npz:
        np.save(folder / "x.npy", npz["input"])
    outputs = {}
    for name, data in (("npz", cnn_files["data"]), ("npy", folder / "x.npy")):
        outputs[name] = folder / f"{name}.onnx"
        result = invoke("quantize", cnn_files["model"], "-o", outputs[name], "--data", data, "-q")
        assert result.exit_code == 0, result.output
    assert graph_bytes(outputs["npz"]) == graph_bytes(outputs["npy"])


def test_npy_folder_and_eval_npy(cnn_files, tmp_path):
    with np.load(cnn_files["data"]) as npz:
        x = npz["input"]
    (tmp_path / "parts").mkdir()
    np.save(tmp_path / "parts" / "a.npy", x[:40])
    np.save(tmp_path / "parts" / "b.npy", x[40:])
    np.save(tmp_path / "eval.npy", x)
    by_npz = onnxq.calibrate(cnn_files["model"], cnn_files["data"])
    by_folder = onnxq.calibrate(cnn_files["model"], tmp_path / "parts")
    assert by_folder.to_json() == by_npz.to_json()
    out = tmp_path / "q.onnx"
    result = invoke(
        "quantize",
        cnn_files["model"],
        "-o",
        out,
        "--data",
        tmp_path / "parts",
        "--eval",
        tmp_path / "eval.npy",
        "--json",
        "-q",
    )
    assert result.exit_code == 0, result.output


def test_npy_is_refused_for_a_model_with_several_inputs(tmp_path):
    model, feed = models.masked_attention()
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "x.npy", feed["x"])
    result = invoke(
        "quantize", tmp_path / "m.onnx", "-o", tmp_path / "q.onnx", "--data", tmp_path / "x.npy"
    )
    line = one_line_error(result, "x.npy", "2 inputs", "x, mask")
    assert "give an .npz" in line
    assert not (tmp_path / "q.onnx").exists()


def test_npy_holds_no_labels(cnn_files, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(DataError, match="holds no labels 'labels'"):
        open_data(tmp_path / "x.npy", input_specs(models.cnn()), label_key="labels")


# --- image folders ----------------------------------------------------------------------


@needs_pillow
def test_grayscale_nchw_images_are_preprocessed_as_declared(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    save_images(tmp_path / "gray", pixels)
    big = rng.integers(0, 256, (16, 12), dtype=np.uint8)  # resized to the input's 8x8
    Image.fromarray(big).save(tmp_path / "gray" / "z_big.bmp")
    pre = Preprocess(scale=1 / 255, mean=(0.5,), std=(0.25,))
    dataset = open_data(tmp_path / "gray", input_specs(models.cnn()), preprocess=pre)
    resized = np.asarray(Image.fromarray(big).resize((8, 8), Image.Resampling.BILINEAR))
    raw = np.concatenate([pixels, resized[None]]).astype(np.float32)
    expected = ((raw * np.float32(1 / 255) - np.float32(0.5)) / np.float32(0.25))[:, None]
    got = stacked(dataset)
    assert got.shape == (7, 1, 8, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@needs_pillow
def test_rgb_nhwc_images_in_bgr_order(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    save_images(tmp_path / "rgb", pixels)
    pre = Preprocess(scale=1 / 255, mean=MEAN[::-1], std=STD[::-1], order="bgr")
    dataset = open_data(tmp_path / "rgb", input_specs(nhwc_model()), preprocess=pre)
    bgr = pixels[..., ::-1].astype(np.float32) * np.float32(1 / 255)
    expected = (bgr - np.float32(MEAN[::-1])) / np.float32(STD[::-1])
    got = stacked(dataset)
    assert got.shape == (5, 8, 8, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@needs_pillow
def test_image_options_and_preprocess_file_give_the_same_ranges(tmp_path):
    rng = np.random.default_rng(2)
    save_images(tmp_path / "rgb", rng.integers(0, 256, (12, 6, 6, 3), dtype=np.uint8), ".jpg")
    onnx.save(nhwc_model(), str(tmp_path / "m.onnx"))
    (tmp_path / "pre.toml").write_text(
        'size = [8, 8]\nlayout = "nhwc"\nscale = "1/255"\n'
        f"mean = {list(MEAN)}\nstd = {list(STD)}\norder = 'rgb'\n"
    )
    flags = [
        "--image-size",
        "8,8",
        "--image-layout",
        "nhwc",
        "--image-scale",
        "1/255",
        "--image-mean",
        ",".join(map(str, MEAN)),
        "--image-std",
        ",".join(map(str, STD)),
    ]
    runs = {"options": flags, "file": ["--preprocess", tmp_path / "pre.toml"]}
    for name, extra in runs.items():
        result = invoke(
            "calibrate",
            tmp_path / "m.onnx",
            "--data",
            tmp_path / "rgb",
            "-o",
            tmp_path / f"{name}.json",
            "-q",
            *extra,
        )
        assert result.exit_code == 0, result.output
    assert (tmp_path / "options.json").read_text() == (tmp_path / "file.json").read_text()
    result = invoke(
        "quantize",
        tmp_path / "m.onnx",
        "-o",
        tmp_path / "q.onnx",
        "--data",
        tmp_path / "rgb",
        "--json",
        "-q",
        "--preprocess",
        tmp_path / "pre.toml",
    )
    assert result.exit_code == 0, result.output


@needs_pillow
@pytest.mark.parametrize(
    "extra,fragments",
    [
        (["--image-scale", "x"], ["--image-scale", "1/255"]),
        (["--image-size", "8"], ["--image-size", "height,width"]),
        (["--image-mean", "1,2"], ["mean has 2 values", "1 channel"]),
        (["--labels", "labels"], ["holds no labels 'labels'"]),
    ],
)
def test_bad_image_settings_are_one_line_errors(cnn_files, tmp_path, extra, fragments):
    save_images(tmp_path / "gray", np.zeros((2, 8, 8), np.uint8))
    result = invoke(
        "compare", cnn_files["model"], cnn_files["model"], "--data", tmp_path / "gray", *extra
    )
    assert one_line_error(result, *fragments)


def test_preprocess_file_errors(tmp_path):
    (tmp_path / "pre.toml").write_text('sizes = [8, 8]\nscale = "1/255"\n')
    with pytest.raises(ConfigError, match="unknown key 'sizes'"):
        read_preprocess(tmp_path / "pre.toml")
    result = invoke(
        "calibrate",
        "m.onnx",
        "--data",
        tmp_path,
        "-o",
        tmp_path / "r.json",
        "--preprocess",
        tmp_path / "pre.toml",
        "--image-order",
        "bgr",
    )
    one_line_error(result, "not both", "--image-order")


@needs_pillow
def test_layout_and_size_must_be_known(tmp_path):
    save_images(tmp_path / "img", np.zeros((2, 8, 8, 3), np.uint8))
    spec = input_specs(nhwc_model())[0]
    free = type(spec)(spec.name, spec.dtype, (None, None, None, 3))
    with pytest.raises(ConfigError, match="give --image-size H,W"):
        open_data(tmp_path / "img", [free])
    square = type(spec)(spec.name, spec.dtype, (None, 3, 8, 3))
    with pytest.raises(ConfigError, match="give --image-layout"):
        open_data(tmp_path / "img", [square])
    resized = open_data(tmp_path / "img", [free], preprocess=Preprocess(size=(4, 5)))
    assert stacked(resized).shape == (2, 4, 5, 3)


def test_missing_pillow_says_how_to_install_it(cnn_files, tmp_path, monkeypatch):
    fake_images(tmp_path / "gray", 2)
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now fails
    with pytest.raises(DataError, match=r"pip install 'onnxq\[images\]'"):
        open_data(tmp_path / "gray", input_specs(models.cnn()))
    result = invoke(
        "calibrate", cnn_files["model"], "--data", tmp_path / "gray", "-o", tmp_path / "r.json"
    )
    one_line_error(result, "needs Pillow", "pip install 'onnxq[images]'")


# --- arrays and feeds from Python -----------------------------------------------------


class Reader:
    """onnxruntime's CalibrationDataReader protocol: get_next() until None."""

    def __init__(self, x: np.ndarray, step: int) -> None:
        self.feeds = iter([{"input": x[i : i + step]} for i in range(0, len(x), step)])

    def get_next(self):
        return next(self.feeds, None)


def test_api_arrays_dicts_and_feeds_give_the_npz_ranges(cnn_files):
    with np.load(cnn_files["data"]) as npz:
        x = npz["input"]
    expected = onnxq.calibrate(cnn_files["model"], cnn_files["data"]).to_json()
    config = onnxq.CalibrationConfig(method=onnxq.CalibrationMethod.PERCENTILE)
    expected_pct = onnxq.calibrate(cnn_files["model"], str(cnn_files["data"]), config).to_json()
    sources = {
        "array": lambda: x,
        "dict": lambda: {"input": x, "ids": np.arange(64)},
        "generator": lambda: ({"input": x[i : i + 5]} for i in range(0, 64, 5)),
        "list of single samples": lambda: [{"input": x[i : i + 1]} for i in range(64)],
        "reader": lambda: Reader(x, 7),
    }
    for name, make in sources.items():
        assert onnxq.calibrate(cnn_files["model"], make()).to_json() == expected, name
        pct = onnxq.calibrate(cnn_files["model"], make(), config).to_json()
        assert pct == expected_pct, name


def test_api_quantize_and_compare_with_feeds(cnn_files, tmp_path, monkeypatch):
    spill_root = tmp_path / "tmp"
    spill_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill_root))
    with np.load(cnn_files["data"]) as npz:
        x, labels = npz["input"], npz["labels"]
    by_npz = onnxq.quantize(
        cnn_files["model"], tmp_path / "a.onnx", data=cnn_files["data"], labels="labels"
    )

    def feeds():
        for i in range(0, 64, 16):
            yield {"input": x[i : i + 16], "labels": labels[i : i + 16]}

    by_feeds = onnxq.quantize(
        cnn_files["model"], tmp_path / "b.onnx", data=feeds(), labels="labels"
    )
    assert graph_bytes(tmp_path / "a.onnx") == graph_bytes(tmp_path / "b.onnx")
    assert by_feeds.fidelity == by_npz.fidelity
    assert by_feeds.settings["data"] == "feeds from a generator"
    assert list(spill_root.iterdir()) == []  # the spilled feeds are removed with the run
    report = onnxq.compare(
        cnn_files["model"],
        tmp_path / "b.onnx",
        {"input": x, "labels": labels},
        labels="labels",
        latency_runs=0,
    )
    assert report.data.startswith("arrays {input: float32[64, 1, 8, 8], labels: int64[64]}")
    ours, theirs = report.fidelity.outputs[0], by_npz.fidelity.outputs[0]
    assert (ours.samples, ours.top1_agreement) == (theirs.samples, theirs.top1_agreement)
    assert ours.candidate_accuracy == theirs.candidate_accuracy
    assert ours.sqnr_db == pytest.approx(theirs.sqnr_db, abs=1e-3)


@pytest.mark.parametrize(
    "data,message",
    [
        (np.zeros((3, 1, 8, 8), np.float64), "expects dtype float32"),
        ([[1, 2]], "feed 0 is a list"),
        ([{"x": np.zeros((1, 1, 8, 8), np.float32)}], "feed 0: no array for 'input'"),
        (iter([]), "zero samples"),
        (3.5, "data must be a path"),
    ],
)
def test_bad_api_data_is_a_data_error(cnn_files, data, message):
    with pytest.raises(DataError, match=message):
        onnxq.calibrate(cnn_files["model"], data)


def test_one_array_is_refused_for_a_model_with_several_inputs(tmp_path):
    model, feed = models.masked_attention()
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(DataError, match=r"2 inputs \(x, mask\)"):
        onnxq.calibrate(tmp_path / "m.onnx", feed["x"])
    assert onnxq.calibrate(tmp_path / "m.onnx", feed).samples == len(feed["x"])


# --- what a data folder may hold --------------------------------------------------------


def test_unknown_files_in_a_data_folder_are_named(cnn_files, tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    with np.load(cnn_files["data"]) as npz:
        np.savez(folder / "a.npz", input=npz["input"])
    (folder / ".DS_Store").write_bytes(b"\0")  # hidden: skipped
    ok = invoke("calibrate", cnn_files["model"], "--data", folder, "-o", tmp_path / "r.json", "-q")
    assert ok.exit_code == 0, ok.output
    (folder / "notes.txt").write_text("calibration set v2")
    (folder / "old").mkdir()
    result = invoke("calibrate", cnn_files["model"], "--data", folder, "-o", tmp_path / "s.json")
    one_line_error(result, "notes.txt", "old/", "hidden files are skipped")


def test_a_folder_holds_one_kind_of_data(cnn_files, tmp_path):
    folder = tmp_path / "mixed"
    fake_images(folder, 2)
    np.save(folder / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(DataError, match="mixes 2 images with 1 .npz/.npy files"):
        open_data(folder, input_specs(models.cnn()))

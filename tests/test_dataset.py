"""Data validation: every bad input is a one-line DataError naming the input."""

from __future__ import annotations

import numpy as np
import pytest

from onnxq.data import InputSpec, Layout, open_dataset
from onnxq.errors import DataError

SPEC = InputSpec("x", np.dtype("float32"), (None, 3, 4))
FIXED = InputSpec("state", np.dtype("float32"), (2, 1, 5))


def _save(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_batched_layout_is_cut_into_batches(tmp_path):
    path = _save(tmp_path, x=np.zeros((10, 3, 4), np.float32), labels=np.arange(10))
    ds = open_dataset(path, [SPEC], label_key="labels")
    assert ds.layouts == {"x": Layout.BATCHED} and ds.num_samples == 10
    sizes = [b.size for b in ds.batches(4)]
    assert sizes == [4, 4, 2]
    assert [b.feed["x"].shape[0] for b in ds.batches(4)] == sizes
    assert np.concatenate([b.labels for b in ds.batches(3)]).tolist() == list(range(10))


def test_feeds_layout_gives_one_complete_feed_per_index(tmp_path):
    path = _save(tmp_path, state=np.ones((6, 2, 1, 5), np.float32))
    ds = open_dataset(path, [FIXED])
    assert ds.layouts == {"state": Layout.FEEDS} and ds.num_samples == 6
    feeds = list(ds.batches(32))
    assert len(feeds) == 6 and feeds[0].feed["state"].shape == (2, 1, 5)


@pytest.mark.parametrize("batch", [1, 2, 3, 8])
def test_batch_ends_are_where_the_batches_end(tmp_path, batch):
    """Read off the part sizes without reading the data: the same as counting the
    batches, part by part (a batch never spans two files)."""
    folder = tmp_path / "parts"
    folder.mkdir()
    _save(folder, "a.npz", x=np.zeros((5, 3, 4), np.float32))
    _save(folder, "b.npz", x=np.zeros((3, 3, 4), np.float32))
    ds = open_dataset(folder, [SPEC])
    counted = np.cumsum([b.size for b in ds.batches(batch)]).tolist()
    assert list(ds.batch_ends(batch)) == counted
    if batch == 2:
        assert counted == [2, 4, 5, 7, 8]
    feeds = open_dataset(_save(tmp_path, state=np.ones((3, 2, 1, 5), np.float32)), [FIXED])
    assert feeds.batch_ends(batch) == (1, 2, 3)  # one feed at a time


@pytest.mark.parametrize(
    "arrays,message",
    [
        ({"y": np.zeros((2, 3, 4), np.float32)}, "no array for model input 'x'"),
        ({"x": np.zeros((2, 3, 4), np.float64)}, "input 'x' expects dtype float32, found float64"),
        ({"x": np.zeros((2, 4), np.float32)}, "input 'x' expects float32[?, 3, 4]"),
        ({"x": np.zeros((2, 3, 5), np.float32)}, "dimension 2 is 5"),
        ({"x": np.zeros((0, 3, 4), np.float32)}, "zero samples"),
        ({"x": np.full((2, 3, 4), np.nan, np.float32)}, "input 'x' holds 24 NaN or Inf"),
        ({"x": np.array([[[np.inf] * 4] * 3], np.float32)}, "NaN or Inf values"),
    ],
)
def test_bad_data_names_the_problem(tmp_path, arrays, message):
    path = _save(tmp_path, **arrays)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("?", r"\?")) as err:
        open_dataset(path, [SPEC])
    assert "\n" not in str(err.value)


def test_fixed_batch_must_divide_the_samples(tmp_path):
    path = _save(tmp_path, state=np.ones((3, 1, 5), np.float32))
    with pytest.raises(DataError, match="fixed batch of 2 but 3 samples"):
        open_dataset(path, [FIXED])


def test_missing_file_folder_and_non_npz(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "nope.npz", [SPEC])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .npz files"):
        open_dataset(tmp_path / "empty", [SPEC])
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    with pytest.raises(DataError, match="not a .npz archive"):
        open_dataset(bad, [SPEC])


def test_object_arrays_are_never_unpickled(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="unpickling"):
        open_dataset(path, [SPEC])


def test_labels_must_match_the_samples(tmp_path):
    path = _save(tmp_path, x=np.zeros((4, 3, 4), np.float32), labels=np.arange(3))
    with pytest.raises(DataError, match="labels 'labels' has 3 entries for 4 samples"):
        open_dataset(path, [SPEC], label_key="labels")
    with pytest.raises(DataError, match="no array for label key 'lbl'"):
        open_dataset(path, [SPEC], label_key="lbl")

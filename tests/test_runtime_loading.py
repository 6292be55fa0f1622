"""Sessions loaded from a spooled file (:func:`onnxq.runtime.loadable`): the same model, the
file removed once loaded or refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxq.errors import RuntimeFailure
from onnxq.runtime import Runner, loadable
from onnxq.runtime.session import Spooled

import models


def test_a_spooled_model_runs_as_the_proto_and_its_file_is_removed():
    model = models.cnn()
    shape = [d.dim_value or 2 for d in model.graph.input[0].type.tensor_type.shape.dim]
    feed = {model.graph.input[0].name: np.random.default_rng(0).random(shape, np.float32)}
    spooled = loadable(model)
    assert isinstance(spooled, Spooled) and spooled.path.is_file()
    runner = Runner(spooled, record_graph=True)
    assert not spooled.folder.exists()
    expected = Runner(model).run(feed)
    for name, value in runner.run(feed).items():
        np.testing.assert_array_equal(value, expected[name])
    assert runner.optimized_nodes  # its optimized graph read back without its weights


def test_a_spooled_model_onnxruntime_refuses_is_removed_too():
    bad = helper.make_model(
        helper.make_graph(
            [helper.make_node("NoSuchOp", ["x"], ["y"])],
            "bad",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    spooled = loadable(bad)
    assert isinstance(spooled, Spooled)
    with pytest.raises(RuntimeFailure, match="cannot load"):
        Runner(spooled)
    assert not spooled.folder.exists()


def test_a_model_that_cannot_be_spooled_is_a_one_line_error_and_leaves_nothing(monkeypatch):
    import errno
    import pathlib

    made: list[pathlib.Path] = []
    real_write = pathlib.Path.write_bytes

    def full(self, data):
        made.append(self)
        real_write(self, data[:10])  # part written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    with pytest.raises(RuntimeFailure, match="No space left on device.*TMPDIR"):
        loadable(models.cnn())
    assert made and not made[0].parent.exists()

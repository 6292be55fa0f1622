from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"


@pytest.fixture
def cnn_files(tmp_path: Path) -> dict[str, Path]:
    """The in-code CNN saved with calibration data (64 samples, with labels)."""
    import onnx

    import models

    model = tmp_path / "cnn.onnx"
    onnx.save(models.cnn(), str(model))
    rng = np.random.default_rng(1)
    data = tmp_path / "data.npz"
    np.savez(
        data,
        input=rng.random((64, 1, 8, 8), dtype=np.float32),
        labels=rng.integers(0, 10, 64),
    )
    return {"model": model, "data": data, "dir": tmp_path}

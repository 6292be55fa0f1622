"""Train the small digits CNN shipped in ``sample_models/`` and export it to ONNX.

Run it from the repository root, in an environment that has torch (CPU build is enough):

  pip install torch==2.13.0 scikit-learn onnx onnxruntime && python sample_models/make_digits_cnn.py

It writes, next to this script (or into ``--out-dir``):

* ``digits_cnn.onnx``   - float32 CNN, opset 17, input ``input`` [batch, 1, 8, 8],
  output ``logits`` [batch, 10], dynamic batch axis, weights stored as initializers;
* ``digits_calib.npz``  - 200 calibration samples from the TRAIN split
  (``input`` float32 [200, 1, 8, 8], ``labels`` int64 [200]);
* ``digits_eval.npz``   - the whole held-out test split (``input`` float32 [N, 1, 8, 8],
  ``labels`` int64 [N]).

Data: scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``, a copy of
the test part of the UCI "optdigits" set), 8x8 pixels with values 0..16, scaled to [0, 1].
Everything is seeded and torch runs single-threaded with deterministic algorithms, so
re-running the script reproduces the same split, the same weights and the same accuracy.
"""

from __future__ import annotations

import argparse
import random
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort  # noqa: TID251 - standalone script, not part of onnxq
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

SEED = 0
OPSET = 17
N_CALIB = 200
EPOCHS = 80
BATCH_SIZE = 32
LR = 3e-3


def seed_everything(seed: int) -> None:
    """Make every random source used here deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def load_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, y_train, x_test, y_test); x is float32 [N, 1, 8, 8] in [0, 1]."""
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
    return x_tr, y_tr, x_te, y_te


class DigitsCNN(nn.Module):
    """Small CNN with a residual Add, a channel Concat, MaxPool, GlobalAveragePool and Gemm."""

    def __init__(self, width: int = 48, n_classes: int = 10) -> None:
        super().__init__()
        # ReLUs are modules (not F.relu) so the exported nodes get readable names.
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.stem_relu = nn.ReLU()
        self.res_a = nn.Conv2d(width, width, 3, padding=1)
        self.res_b = nn.Conv2d(width, width, 1)
        self.res_relu = nn.ReLU()
        self.cat_a = nn.Conv2d(width, width, 3, padding=1)
        self.cat_a_relu = nn.ReLU()
        self.cat_b = nn.Conv2d(width, width, 1)
        self.cat_b_relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.head_conv = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.head_relu = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_relu(self.stem(x))  # [B, 16, 8, 8]
        x = self.res_relu(self.res_a(x) + self.res_b(x))  # residual: two conv branches summed
        a = self.cat_a_relu(self.cat_a(x))
        b = self.cat_b_relu(self.cat_b(x))
        x = torch.cat([a, b], dim=1)  # Concat on channels -> [B, 32, 8, 8]
        x = self.pool(x)  # [B, 32, 4, 4]
        x = self.head_relu(self.head_conv(x))
        x = torch.flatten(self.gap(x), 1)  # [B, 32]
        return self.fc(x)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, seed: int) -> None:
    """Train with Adam + cosine LR; shuffling uses its own seeded generator."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(xt), generator=gen).split(BATCH_SIZE):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
        sched.step()
    model.eval()


@torch.no_grad()
def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(x)).numpy()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def export_onnx(model: nn.Module, path: Path) -> None:
    """Export with the TorchScript exporter (plain Conv/Gemm graph, weights as initializers)."""
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but still works
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True,
            export_params=True,
        )


def check_onnx(path: Path) -> onnx.ModelProto:
    """Validate the exported file: checker, self-contained, no BN / Constant nodes."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    for init in model.graph.initializer:
        assert init.data_location != onnx.TensorProto.EXTERNAL, f"{init.name} is external"
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops, "BatchNormalization left in graph"
    assert "Constant" not in ops, "weights must be initializers, not Constant nodes"
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    return model


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def pick_calibration(n_train: int, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` distinct train samples, chosen with a fixed seed."""
    return np.sort(np.random.default_rng(seed).choice(n_train, size=n, replace=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)

    seed_everything(SEED)
    x_tr, y_tr, x_te, y_te = load_split(SEED)
    model = DigitsCNN()
    train(model, x_tr, y_tr, SEED)
    ref = torch_logits(model, x_te)
    print(f"train: {len(x_tr)}  test: {len(x_te)}")
    print(f"torch train accuracy: {accuracy(torch_logits(model, x_tr), y_tr):.4f}")
    print(f"torch test accuracy:  {accuracy(ref, y_te):.4f}")

    onnx_path = out / "digits_cnn.onnx"
    export_onnx(model, onnx_path)
    check_onnx(onnx_path)

    calib = pick_calibration(len(x_tr), N_CALIB, SEED)
    np.savez_compressed(out / "digits_calib.npz", input=x_tr[calib], labels=y_tr[calib])
    np.savez_compressed(out / "digits_eval.npz", input=x_te, labels=y_te)

    with np.load(out / "digits_eval.npz") as ev:
        got = ort_logits(onnx_path, ev["input"])
        eval_labels = ev["labels"]
    diff = float(np.abs(got - ref).max())
    assert diff < 1e-4, f"onnxruntime differs from torch: max abs diff {diff}"
    print(f"onnxruntime vs torch max abs diff: {diff:.2e}")
    print(f"onnxruntime test accuracy (digits_eval.npz): {accuracy(got, eval_labels):.4f}")
    for name in ("digits_cnn.onnx", "digits_calib.npz", "digits_eval.npz"):
        print(f"{name}: {(out / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()

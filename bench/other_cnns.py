"""Train two more small CNNs (not stored in the repo) to exercise ``onnxq`` beyond the sample.

Needs torch, scikit-learn, onnx and onnxruntime (no network: the data is scikit-learn's bundled
``load_digits``, the UCI optdigits test part, 1797 images of 8x8 pixels):

    pip install torch==2.13.0 scikit-learn onnx onnxruntime
    python bench/other_cnns.py --out /tmp/onnxq-cnns        # default: a fresh temp dir

For each model NAME it writes into ``--out``:

* ``NAME.onnx``       - float32, opset 17, input ``input`` [batch, 1, H, W] (dynamic batch),
  output ``logits`` [batch, 10], weights stored as initializers, no BatchNormalization;
* ``NAME_calib.npz``  - 200 TRAIN samples: ``input`` float32 [200, 1, H, W], ``labels`` int64;
* ``NAME_eval.npz``   - the whole held-out test split: ``input`` float32 [N, 1, H, W], ``labels``.

Models (``--models`` picks a subset):

* ``digits_mbv2`` (8x8): MobileNet-style. Conv+BN+ReLU6 (Clip) stem, depthwise-separable
  block (depthwise 3x3 Conv, pointwise Conv), grouped 3x3 Conv (groups=4) with a residual Add,
  squeeze-excite (GlobalAveragePool, 1x1 Convs, Sigmoid, Mul), AveragePool, strided Conv,
  Reshape, Gemm. Trained with BatchNorm, which is folded into the Convs before export.
  Unlike the sample model it keeps the exporter's Constant nodes (Clip min/max, Reshape
  shape), as real exported models often do.
* ``digits16_mbv2_relu`` (16x16, upsampled): MobileNetV2-style with ReLU: stem Conv, four
  inverted residual blocks (1x1 expand, ReLU, 3x3 depthwise, ReLU, 1x1 linear project,
  residual Add where shapes allow), 1x1 head Conv, global average pool, Linear. BatchNorm
  folded before export. The cross-layer equalisation case (``--equalize``).
* ``digits28_lenet`` (28x28): the same digits bilinearly upsampled to 28x28. LeNet-style:
  5x5 Conv, MaxPool, dilated 3x3 Conv + LeakyRelu, MaxPool, strided Conv + Tanh, AveragePool,
  Flatten, bias-free Linear (MatMul), Relu, Linear (Gemm).

It only produces models and data. Quantize and compare each one with the CLI, e.g.:

    onnxq quantize OUT/NAME.onnx -o OUT/NAME.int8.onnx \\
        --data OUT/NAME_calib.npz --eval OUT/NAME_eval.npz --labels labels

Everything is seeded and single-threaded, so the files are reproducible run to run.
"""

from __future__ import annotations

import argparse
import collections
import random
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

SEED = 0
OPSET = 17
N_CALIB = 200

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def digits_split(size: int, seed: int = SEED) -> Split:
    """Stratified 70/30 split of sklearn digits as float32 [N, 1, size, size] in [0, 1]."""
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    if size != 8:
        up = nn.functional.interpolate(
            torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False
        )
        x = up.clamp(0.0, 1.0).numpy()
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
    return x_tr, y_tr, x_te, y_te


class ConvBNAct(nn.Module):
    """Conv + BatchNorm + activation; ``fuse()`` folds the BN into the Conv for export."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        k: int,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
        relu: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c_out)
        self.act: nn.Module = (nn.ReLU() if relu else nn.ReLU6()) if act else nn.Identity()

    def fuse(self) -> None:
        assert isinstance(self.bn, nn.BatchNorm2d)
        self.conv = fuse_conv_bn_eval(self.conv.eval(), self.bn.eval())
        self.bn = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(c, hidden, 1)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(hidden, c, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))


class DigitsMBv2(nn.Module):
    """MobileNet-flavoured 8x8 digits CNN (depthwise / grouped conv, SE, AveragePool)."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.stem = ConvBNAct(1, 24, 3)
        self.dw = ConvBNAct(24, 24, 3, groups=24)  # depthwise
        self.pw = ConvBNAct(24, 48, 1)  # pointwise
        self.grouped = ConvBNAct(48, 48, 3, groups=4, act=False)
        self.add_relu = nn.ReLU6()
        self.se = SqueezeExcite(48, 12)
        self.avgpool = nn.AvgPool2d(2)  # 8x8 -> 4x4
        self.down = ConvBNAct(48, 64, 3, stride=2)  # 4x4 -> 2x2
        self.fc = nn.Linear(64 * 2 * 2, n_classes)

    def fuse(self) -> None:
        for m in self.modules():
            if isinstance(m, ConvBNAct):
                m.fuse()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(self.dw(self.stem(x)))
        x = self.add_relu(x + self.grouped(x))  # residual Add around the grouped conv
        x = self.down(self.avgpool(self.se(x)))
        return self.fc(x.reshape(-1, 64 * 2 * 2))


class InvertedResidual(nn.Module):
    """MobileNetV2 block with ReLU: 1x1 expand, ReLU, 3x3 depthwise, ReLU, 1x1 linear
    project, and the residual Add when the shape allows it."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = ConvBNAct(c_in, hidden, 1, relu=True)
        self.dw = ConvBNAct(hidden, hidden, 3, stride, groups=hidden, relu=True)
        self.project = ConvBNAct(hidden, c_out, 1, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.residual else y


class DigitsMBv2Relu(nn.Module):
    """MobileNetV2-style CNN with ReLU (not ReLU6), for cross-layer equalisation:
    depthwise -> ReLU -> pointwise pairs whose per-channel weight ranges differ widely
    once BatchNorm is folded."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.stem = ConvBNAct(1, 16, 3, relu=True)
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1),
            InvertedResidual(16, 24, 2),
            InvertedResidual(24, 24, 1),
            InvertedResidual(24, 32, 2),
        )
        self.head = ConvBNAct(32, 64, 1, relu=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, n_classes)

    def fuse(self) -> None:
        for m in self.modules():
            if isinstance(m, ConvBNAct):
                m.fuse()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.head(self.blocks(self.stem(x))))
        return self.fc(x.flatten(1))


class Digits28LeNet(nn.Module):
    """LeNet-flavoured CNN for 28x28 upsampled digits."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)  # 28 -> 14
        self.conv2 = nn.Conv2d(8, 16, 3, padding=2, dilation=2)
        self.act2 = nn.LeakyReLU(0.1)
        self.pool2 = nn.MaxPool2d(2)  # 14 -> 7
        self.conv3 = nn.Conv2d(16, 32, 3, stride=2, padding=1)  # 7 -> 4
        self.act3 = nn.Tanh()
        self.avg = nn.AvgPool2d(2)  # 4 -> 2
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 2 * 2, 64, bias=False)  # exported as MatMul
        self.relu_fc = nn.ReLU()
        self.fc2 = nn.Linear(64, n_classes)  # exported as Gemm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        x = self.avg(self.act3(self.conv3(x)))
        return self.fc2(self.relu_fc(self.fc1(self.flatten(x))))


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float) -> None:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(32):
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


def export_onnx(model: nn.Module, size: int, path: Path) -> onnx.ModelProto:
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but still works
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, size, size),),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}
    return proto


def build_one(
    name: str, out: Path, size: int, make: Callable[[], nn.Module], epochs: int, lr: float
) -> None:
    seed_everything(SEED)
    x_tr, y_tr, x_te, y_te = digits_split(size)
    model = make()
    t0 = time.perf_counter()
    train(model, x_tr, y_tr, epochs, lr)
    fuse = getattr(model, "fuse", None)
    before = torch_logits(model, x_te)
    if fuse is not None:
        fuse()
    ref = torch_logits(model, x_te)
    fuse_diff = float(np.abs(ref - before).max())

    onnx_path = out / f"{name}.onnx"
    proto = export_onnx(model, size, onnx_path)
    calib = np.sort(np.random.default_rng(SEED).choice(len(x_tr), size=N_CALIB, replace=False))
    np.savez_compressed(out / f"{name}_calib.npz", input=x_tr[calib], labels=y_tr[calib])
    np.savez_compressed(out / f"{name}_eval.npz", input=x_te, labels=y_te)

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": x_te})[0]
    diff = float(np.abs(got - ref).max())
    assert diff < 1e-4, f"{name}: onnxruntime differs from torch by {diff}"
    ops = dict(sorted(collections.Counter(n.op_type for n in proto.graph.node).items()))
    print(f"== {name}: input [batch, 1, {size}, {size}], {time.perf_counter() - t0:.1f}s")
    print(
        f"   torch test acc {accuracy(ref, y_te):.4f} (BN-fold max diff {fuse_diff:.1e}), "
        f"onnxruntime test acc {accuracy(got, y_te):.4f} (max diff {diff:.1e})"
    )
    print(f"   ops: {ops}")
    for suffix in (".onnx", "_calib.npz", "_eval.npz"):
        f = out / f"{name}{suffix}"
        print(f"   {f} ({f.stat().st_size} bytes)")


MODELS: dict[str, tuple[int, Callable[[], nn.Module], int, float]] = {
    # name: (image size, constructor, epochs, learning rate)
    "digits_mbv2": (8, DigitsMBv2, 60, 3e-3),
    "digits28_lenet": (28, Digits28LeNet, 30, 3e-3),
    "digits16_mbv2_relu": (16, DigitsMBv2Relu, 40, 3e-3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description="Train and export extra CNNs for onnxq.")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default: temp dir)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    args = parser.parse_args()
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="onnxq-cnns-"))
    out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        size, make, epochs, lr = MODELS[name]
        build_one(name, out, size, make, epochs, lr)
    print(f"wrote to {out}")


if __name__ == "__main__":
    main()

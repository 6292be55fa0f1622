"""Calibration and evaluation data: .npz files validated against the model's inputs."""

from onnxq.data.dataset import Batch, Dataset, InputSpec, Layout, open_dataset

__all__ = ["Batch", "Dataset", "InputSpec", "Layout", "open_dataset"]

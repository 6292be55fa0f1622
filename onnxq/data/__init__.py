"""Calibration and evaluation data: .npz and .npy files, folders of them or of images,
and arrays or feeds from Python, validated against the model's inputs."""

from onnxq.data.dataset import Batch, Dataset, InputSpec, Layout, open_dataset
from onnxq.data.preprocess import ColourOrder, ImageLayout, Preprocess
from onnxq.data.source import DataSource, Source, as_source, as_sources, open_data, path_of

__all__ = [
    "Batch",
    "ColourOrder",
    "DataSource",
    "Dataset",
    "ImageLayout",
    "InputSpec",
    "Layout",
    "Preprocess",
    "Source",
    "as_source",
    "as_sources",
    "open_data",
    "open_dataset",
    "path_of",
]

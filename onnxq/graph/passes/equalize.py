"""Cross-layer equalisation (and, given pre-activation minima, high-bias absorption) of a
prepared float model: the graph side of :mod:`onnxq.quant.equalize`.

A pair is ``layer1 → [activation] → layer2`` where both layers are Conv (any group),
Gemm or 2-D MatMul with float32 initializer weights read by no other node, layer 1's
output (and the activation's) has exactly one reader and is not a graph output, and the
activation is Relu, LeakyRelu, PRelu with a scalar slope, Clip(0, no max), or nothing.
Each candidate pair that does not qualify is reported as ``PAIR_SKIPPED`` with the
reason. Pairs sharing a layer (``A → B → C``) form chains, equalised jointly by
:func:`onnxq.quant.equalize.equalize_chain`.

Clip(0, 6) (ReLU6) is not positive-homogeneous: it caps at 6 whatever the scale. With
``relu6_to_relu=True`` it becomes Relu (``ACTIVATION_REPLACED``), which changes the
float function wherever the activation exceeded 6.

High-bias absorption (with ``pre_activation_min``, after the scaling, whose scales divide
the minima too): ``c = max(0, min)`` moves from layer 1's bias into layer 2's as
``W2 ∗ c``. It needs an activation that is the identity on ``[0, ∞)`` (Relu, LeakyRelu,
PRelu, Clip(0, ∞), a replaced ReLU6; with no activation it is not applied), a bias
input on both layers (MatMul has none; a missing Conv / Gemm bias is added), and a
layer 2 that does not zero-pad: a padded Conv would see ``W2 ∗ c`` only partly at its
borders, so absorption is skipped there and the PAIR_EQUALIZED detail says why.

The pass never runs a session: the pre-activation minima come from the caller (measured
on calibration data, keyed by layer 1's output tensor). Equalised weights are rewritten
in place in the copy (they are read by no other node); a bias read elsewhere gets a new
initializer named by :class:`~onnxq.graph.names.NameFactory`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx

from onnxq.errors import ConfigError, DataError
from onnxq.graph.external import stored_tensor, tensor_values, uses_external_data
from onnxq.graph.names import NameFactory
from onnxq.graph.passes.result import Change, ChangeKind, PassResult
from onnxq.graph.rules import GraphIndex, attribute, node_reads
from onnxq.quant.equalize import (
    Layer,
    Layout,
    absorb_high_bias,
    equalize_chain,
    input_ranges,
    is_depthwise,
    output_ranges,
    range_ratio,
)

__all__ = ["equalize", "link_tensors"]

log = logging.getLogger(__name__)

_WEIGHTED = ("Conv", "Gemm", "MatMul")
# Positive-homogeneous, or linear, but not handled here (keep pairs simple).
_UNSUPPORTED = frozenset(
    {
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "Identity",
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Pad",
        "Dropout",
    }
)
_F32_MAX = float(np.finfo(np.float32).max)
_RELU6_MAX = 6.0


@dataclass(frozen=True)
class _Link:
    """``first → [act] → second``; ``replace``: ``act`` is a ReLU6 to become Relu."""

    first: onnx.NodeProto
    second: onnx.NodeProto
    act: onnx.NodeProto | None
    replace: bool = False

    @property
    def name(self) -> str:
        return _pair_name(self.first, self.second)


@dataclass(frozen=True)
class _Site:
    """A weighted node's weight and bias as read from its initializers (float64)."""

    node: onnx.NodeProto
    layout: Layout
    weight: np.ndarray
    bias: np.ndarray | None  # raw values of the bias input (Gemm: C), flattened
    bias_shape: tuple[int, ...]
    alpha: float = 1.0  # Gemm: y = alpha · A B + beta · C
    beta: float = 1.0
    no_bias: str | None = None  # why this node's bias cannot be written, or None

    def effective(self) -> Layer:
        """The node as ``W_eff ∗ x + b_eff`` (Gemm's alpha and beta folded in)."""
        bias = None if self.bias is None else self.beta * self.bias
        return Layer(self.alpha * self.weight, bias, self.layout)

    def with_effective_bias(self, bias: np.ndarray) -> _Site:
        raw = bias / self.beta
        return replace(self, bias=raw, bias_shape=self.bias_shape or raw.shape)


def equalize(
    model: onnx.ModelProto,
    *,
    relu6_to_relu: bool = False,
    pre_activation_min: Mapping[str, np.ndarray] | None = None,
    pre_activation_max: Mapping[str, np.ndarray] | None = None,
    absorb_floor: Mapping[str, np.ndarray] | None = None,
    iterations: int = 50,
) -> PassResult:
    """Cross-layer equalisation of ``model`` (prepared: initializers, folded batch norms,
    unique node names). ``pre_activation_min`` maps a layer 1's output tensor to the
    per-channel minimum of its values over calibration data; given it, high bias is
    absorbed into layer 2 after the scaling. ``pre_activation_max`` (with the minimum
    of the same tensor) makes that pair balance the activation's per-channel range
    against layer 2 rather than layer 1's weights (see
    :func:`onnxq.quant.equalize.equalize_chain`): for layer-1 weights with one scale
    per output channel. ``absorb_floor`` (default: the minima) bounds each channel's
    absorbed shift, per tensor like the minima. ``iterations``: most sweeps per chain.
    The input model is never modified."""
    if iterations < 1:
        raise ConfigError(f"equalize: iterations must be at least 1, not {iterations}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    idx = GraphIndex(out)
    fixed = {v.name for v in out.graph.input} | idx.graph_outputs  # can't change in place
    links, sites, changes = _find_links(out, idx, fixed, relu6_to_relu)
    minima = dict(pre_activation_min or {})
    floor = dict(absorb_floor) if absorb_floor is not None else minima
    stats = _Stats(minima, dict(pre_activation_max or {}), floor)
    for chain in _chains(links):
        changes.extend(_equalize_chain(chain, sites, stats, iterations))
    _rewrite(out, links, sites, idx, fixed)
    changes.extend(_rescaled(links))
    if not changes:
        return PassResult.unchanged(model)
    skipped = sum(c.kind is ChangeKind.PAIR_SKIPPED for c in changes)
    detail = f"{len(links)} of {len(links) + skipped} layer pairs equalized"
    if not links:
        return PassResult(model, False, tuple(changes), detail)
    return PassResult(out, True, tuple(changes), detail)


def _rescaled(links: Sequence[_Link]) -> list[Change]:
    """The tensors between equalised layers: their channels now hold scaled values (a
    per-layer comparison with the original model must leave them out)."""
    names = [link.first.output[0] for link in links]
    names += [link.act.output[0] for link in links if link.act is not None]
    return [Change(ChangeKind.TENSOR_RESCALED, name) for name in names]


def link_tensors(model: onnx.ModelProto, *, relu6_to_relu: bool = False) -> dict[str, int]:
    """The output tensor of every layer 1 of an equalisable pair (whose per-channel
    minimum and maximum the pass can use), with its channel axis."""
    idx = GraphIndex(model)
    fixed = {v.name for v in model.graph.input} | idx.graph_outputs
    links, _, _ = _find_links(model, idx, fixed, relu6_to_relu)
    return {link.first.output[0]: 1 if link.first.op_type == "Conv" else -1 for link in links}


@dataclass(frozen=True)
class _Stats:
    """Per-channel minima and maxima of layer-1 outputs (before the activation), measured
    on calibration data before equalisation, by tensor."""

    minima: dict[str, np.ndarray]
    maxima: dict[str, np.ndarray]
    floor: dict[str, np.ndarray]  # how far absorption may shift each channel down

    def activation_range(self, link: _Link) -> np.ndarray | None:
        """Per channel, the largest magnitude the tensor between the layers takes (after
        the activation), or None without both statistics."""
        tensor = link.first.output[0]
        if tensor not in self.minima or tensor not in self.maxima:
            return None
        low = np.asarray(self.minima[tensor], np.float64).reshape(-1)
        high = np.asarray(self.maxima[tensor], np.float64).reshape(-1)
        op = "" if link.act is None else link.act.op_type
        if link.replace or op in ("Relu", "Clip"):  # Clip(0, ∞): negatives are cut
            return np.maximum(high, 0.0)
        leaky = op == "LeakyRelu" and link.act is not None
        slope = float(attribute(link.act, "alpha", 0.01)) if leaky and link.act else 1.0
        return np.maximum(np.abs(high), np.abs(low) * abs(slope))  # nothing, PRelu: both


# --- finding pairs --------------------------------------------------------------------


def _find_links(
    model: onnx.ModelProto, idx: GraphIndex, fixed: set[str], relu6_to_relu: bool
) -> tuple[list[_Link], dict[str, _Site], list[Change]]:
    """The pairs that can be equalised, their layers keyed by output tensor, and a
    PAIR_SKIPPED change for every candidate pair that cannot."""
    links: list[_Link] = []
    sites: dict[str, _Site] = {}
    skipped: list[Change] = []
    for node in model.graph.node:
        if node.op_type not in _WEIGHTED or not node.output or not node.output[0]:
            continue
        found = _find_link(node, idx, relu6_to_relu)
        if isinstance(found, Change):
            skipped.append(found)
        elif found is not None:
            why = _check_sites(found, idx, fixed, sites)
            if why:
                group = "a layer's weight, bias or channels cannot be rescaled"
                skipped.append(Change(ChangeKind.PAIR_SKIPPED, found.name, why, group))
            else:
                links.append(found)
    return links, sites, skipped


def _pair_name(first: onnx.NodeProto, second: onnx.NodeProto) -> str:
    return f"{first.name} -> {second.name}"


def _weighted_reader(tensor: str, idx: GraphIndex) -> onnx.NodeProto | None:
    """A Conv / Gemm / MatMul reading ``tensor`` as its data input, if any."""
    for reader in idx.consumers.get(tensor, []):
        if reader.op_type in _WEIGHTED and reader.input and reader.input[0] == tensor:
            return reader
    return None


def _shared_group(tensors: Sequence[str], idx: GraphIndex) -> str:
    """The skip group of a pair whose link is shared: by the readers' op types."""
    for tensor in tensors:
        if tensor in idx.graph_outputs:
            return "output is a graph output"
        ops = sorted(n.op_type for n in idx.consumers.get(tensor, []))
        if len(ops) != 1:
            swish = " (hard-swish)" if ops == ["HardSigmoid", "Mul"] else ""
            return f"output read by {len(ops)} nodes: {', '.join(ops)}{swish}"
    return "output shared"


def _single_use(tensor: str, idx: GraphIndex) -> str | None:
    """None when ``tensor`` has exactly one reader and is not a graph output."""
    if tensor in idx.graph_outputs:
        return f"'{tensor}' is a graph output"
    readers = idx.consumers.get(tensor, [])
    if len(readers) != 1:
        ops = sorted(n.op_type for n in readers)
        swish = " (hard-swish: not positive-homogeneous)" if ops == ["HardSigmoid", "Mul"] else ""
        return f"'{tensor}' is read by {len(readers)} nodes: {', '.join(ops)}{swish}"
    return None


def _find_link(node: onnx.NodeProto, idx: GraphIndex, relu6_to_relu: bool) -> _Link | Change | None:
    """The pair starting at ``node``, a PAIR_SKIPPED change saying why there is none
    though a weighted layer follows (directly or after one op), or None."""
    out = node.output[0]
    second = _weighted_reader(out, idx)
    if second is not None:
        why = _single_use(out, idx)
        if why:
            group = _shared_group([out], idx)
            return Change(ChangeKind.PAIR_SKIPPED, _pair_name(node, second), why, group)
        return _Link(node, second, None)
    for mid in idx.consumers.get(out, []):
        if not mid.output or not mid.output[0]:
            continue
        second = _weighted_reader(mid.output[0], idx)
        if second is None:
            continue
        why = _single_use(out, idx) or _single_use(mid.output[0], idx)
        group = _shared_group([out, mid.output[0]], idx)
        if why is None:
            act = _activation(mid, node, second, idx, relu6_to_relu)
            if isinstance(act, _Link):
                return act
            why, group = act, f"{mid.op_type} between the layers"
        return Change(ChangeKind.PAIR_SKIPPED, _pair_name(node, second), why, group)
    return None


def _activation(
    act: onnx.NodeProto,
    first: onnx.NodeProto,
    second: onnx.NodeProto,
    idx: GraphIndex,
    relu6_to_relu: bool,
) -> _Link | str:
    """The link through ``act``, or why ``act`` cannot sit between two equalised layers."""
    between = f"{act.op_type} between {first.name} and {second.name}"
    if act.input[0] != first.output[0] or len([o for o in act.output if o]) != 1:
        return f"{between} does not take {first.name}'s output as its data input"
    if act.op_type in ("Relu", "LeakyRelu"):
        return _Link(first, second, act)
    if act.op_type == "PRelu":
        slope = idx.initializers.get(act.input[1]) if len(act.input) > 1 else None
        if slope is None or int(np.prod(slope.dims)) != 1:
            return f"{between} has a slope that is not one constant value"
        return _Link(first, second, act)
    if act.op_type == "Clip":
        bounds = _clip_bounds(act, idx)
        if bounds is None:
            return f"{between} has bounds that are not constants"
        low, high = bounds
        if low == 0.0 and high is None:
            return _Link(first, second, act)  # Clip(0, ∞) is Relu
        if low == 0.0 and high == _RELU6_MAX:
            if relu6_to_relu:
                return _Link(first, second, act, replace=True)
            return (
                f"{between} (ReLU6) is not positive-homogeneous; "
                "relu6_to_relu=True replaces it by Relu"
            )
        return f"{between} is not positive-homogeneous"
    if act.op_type in _UNSUPPORTED:
        return f"{between} is not supported (only a direct link or Relu, LeakyRelu, PRelu)"
    return f"{between} is not positive-homogeneous"


def _clip_bounds(node: onnx.NodeProto, idx: GraphIndex) -> tuple[float, float | None] | None:
    """(min, max) of a Clip (max None when absent), or None when not constant."""
    if idx.opset < 11:
        low = float(attribute(node, "min", -_F32_MAX))
        top = float(attribute(node, "max", _F32_MAX))
        return low, None if top >= _F32_MAX else top
    values: list[float | None] = []
    for i in (1, 2):
        name = node.input[i] if len(node.input) > i else ""
        if not name:
            values.append(None)
            continue
        init = idx.initializers.get(name)
        if init is None or int(np.prod(init.dims)) != 1:
            return None
        values.append(float(tensor_values(init).reshape(-1)[0]))
    floor, ceiling = values
    return (-_F32_MAX if floor is None else floor), ceiling


# --- reading layers ---------------------------------------------------------------------


def _check_sites(
    link: _Link, idx: GraphIndex, fixed: set[str], sites: dict[str, _Site]
) -> str | None:
    """None when both layers of ``link`` can be equalised (their sites cached in
    ``sites``), else why not."""
    read: list[_Site] = []
    for node in (link.first, link.second):
        site = sites.get(node.output[0]) or _read_site(node, idx, fixed)
        if isinstance(site, str):
            return site
        read.append(site)
    first, second = read
    axes = {op: "axis 1" if op == "Conv" else "the last axis" for op in _WEIGHTED}
    a_op, b_op = link.first.op_type, link.second.op_type
    if (a_op == "Conv") != (b_op == "Conv"):
        return (
            f"{a_op} {link.first.name} has its channels on {axes[a_op]} but {b_op} "
            f"{link.second.name} reads {axes[b_op]}"
        )
    out_ch = first.layout.out_channels(first.weight)
    in_ch = second.layout.in_channels(second.weight)
    if out_ch != in_ch:
        return (
            f"channel counts do not line up: {link.first.name} has {out_ch} output channels, "
            f"{link.second.name} reads {in_ch}"
        )
    sites[link.first.output[0]] = first
    sites[link.second.output[0]] = second
    return None


def _read_site(node: onnx.NodeProto, idx: GraphIndex, fixed: set[str]) -> _Site | str:
    """The weight and bias of ``node``, or why they cannot be rescaled."""
    w_name = node.input[1] if len(node.input) > 1 else ""
    init = idx.initializers.get(w_name)
    if init is None:
        return f"weight '{w_name}' of {node.name} is not an initializer"
    if init.data_type != onnx.TensorProto.FLOAT:
        return f"weight '{w_name}' of {node.name} is not float32"
    if w_name in fixed:
        return f"weight '{w_name}' of {node.name} is also a graph input or output"
    readers = idx.consumers.get(w_name, [])
    others = [n.name or n.op_type for n in readers if list(n.output) != list(node.output)]
    if others or node.input[0] == w_name:
        return f"weight '{w_name}' of {node.name} is shared with {', '.join(others) or 'itself'}"
    weight = tensor_values(init).astype(np.float64)
    layout = _layout(node, weight)
    if isinstance(layout, str):
        return layout
    out_ch = layout.out_channels(weight)
    site = _Site(node, layout, weight, None, ())
    if node.op_type == "Gemm":
        site = replace(
            site,
            alpha=float(attribute(node, "alpha", 1.0)),
            beta=float(attribute(node, "beta", 1.0)),
        )
        if site.beta == 0.0:
            site = replace(site, no_bias=f"Gemm {node.name} has beta=0")
    elif node.op_type == "MatMul":
        return replace(site, no_bias=f"MatMul {node.name} has no bias input")
    b_name = node.input[2] if len(node.input) > 2 else ""
    if not b_name:
        return site
    b_init = idx.initializers.get(b_name)
    if b_init is None or b_init.data_type != onnx.TensorProto.FLOAT:
        return f"bias '{b_name}' of {node.name} is not a float32 initializer"
    shape = tuple(int(d) for d in b_init.dims)
    if shape not in ((out_ch,), (1, out_ch)):
        return f"bias '{b_name}' of {node.name} is not one value per output channel"
    bias = tensor_values(b_init).astype(np.float64).reshape(-1)
    return replace(site, bias=bias, bias_shape=shape)


def _layout(node: onnx.NodeProto, weight: np.ndarray) -> Layout | str:
    if node.op_type == "Conv":
        group = int(attribute(node, "group", 1))
        if weight.ndim < 3 or group < 1 or weight.shape[0] % group:
            return f"Conv {node.name} has a weight of shape {weight.shape} for group {group}"
        return Layout(0, 1, group)
    if weight.ndim != 2:
        return f"{node.op_type} {node.name} has a {weight.ndim}-D weight (only 2-D is equalized)"
    if node.op_type == "Gemm":
        if int(attribute(node, "transA", 0)):
            return f"Gemm {node.name} has transA=1"
        return Layout(0, 1) if int(attribute(node, "transB", 0)) else Layout(1, 0)
    return Layout(1, 0)


def _chains(links: Sequence[_Link]) -> list[list[_Link]]:
    """Links grouped into chains ``A → B → C …`` (each layer has at most one successor
    and one predecessor: layer 1's output has one reader, layer 2 one data input)."""
    after = {link.first.output[0]: link for link in links}
    seconds = {link.second.output[0] for link in links}
    chains = []
    for link in links:
        if link.first.output[0] in seconds:
            continue
        chain = [link]
        while chain[-1].second.output[0] in after:
            chain.append(after[chain[-1].second.output[0]])
        chains.append(chain)
    return chains


# --- equalising -------------------------------------------------------------------------


def _equalize_chain(
    chain: list[_Link],
    sites: dict[str, _Site],
    stats: _Stats,
    iterations: int,
) -> list[Change]:
    """Equalise one chain in ``sites`` (replaced by the rescaled layers); the changes."""
    keys = [chain[0].first.output[0], *(link.second.output[0] for link in chain)]
    before = [sites[k] for k in keys]
    ratios = [_ratio(a, b) for a, b in zip(before, before[1:], strict=False)]
    acts = [stats.activation_range(link) for link in chain]
    result = equalize_chain(
        [Layer(s.weight, s.bias, s.layout) for s in before],
        max_sweeps=iterations,
        activations=acts,
    )
    minima = stats.floor
    after = [
        replace(s, weight=layer.weight, bias=layer.bias)
        for s, layer in zip(before, result.layers, strict=True)
    ]
    changes: list[Change] = []
    for k, link in enumerate(chain):
        note = ""
        if link.first.output[0] in minima:
            absorbed = _absorb(link, after[k], after[k + 1], minima, result.scales[k])
            if isinstance(absorbed, str):
                note = f"; bias not absorbed: {absorbed}"
            else:
                after[k], after[k + 1], change = absorbed
                changes.append(change)
        if link.replace and link.act is not None:
            changes.append(
                Change(ChangeKind.ACTIVATION_REPLACED, link.act.name, "Clip(0, 6) -> Relu")
            )
        basis = (
            "weights"
            if acts[k] is None
            else "activation channels made equal (depthwise layer 2)"
            if is_depthwise(result.layers[k + 1])
            else "activation vs weights"
        )
        detail = (
            f"mean weight range ratio {ratios[k]:.3g} -> {_ratio(after[k], after[k + 1]):.3g}"
            f" (balanced: {basis}; {result.sweeps} sweeps, chain of {len(chain) + 1} "
            f"layers){note}"
        )
        changes.append(Change(ChangeKind.PAIR_EQUALIZED, link.name, detail))
        log.debug("equalized %s: %s", link.name, detail)
    sites.update(zip(keys, after, strict=True))
    return changes


def _ratio(first: _Site, second: _Site) -> float:
    return range_ratio(
        output_ranges(first.weight, first.layout), input_ranges(second.weight, second.layout)
    )


def _absorb(
    link: _Link,
    first: _Site,
    second: _Site,
    minima: Mapping[str, np.ndarray],
    scales: np.ndarray,
) -> tuple[_Site, _Site, Change] | str:
    """High-bias absorption for one equalised pair, or why it is not done."""
    tensor = link.first.output[0]
    pre_min = np.asarray(minima[tensor], np.float64).reshape(-1)
    if pre_min.size != scales.size:
        raise DataError(
            f"pre-activation minimum of '{tensor}' has {pre_min.size} values, but "
            f"{link.first.name} has {scales.size} output channels; measure one per channel"
        )
    if link.act is None:
        return "no activation between the layers"
    why = first.no_bias or second.no_bias or _padded(link.second)
    if why:
        return why
    # minima were measured before the scaling, which divided channel i by scales[i]
    one, two, c = absorb_high_bias(first.effective(), second.effective(), pre_min / scales)
    if not np.any(c > 0):
        return "no channel's minimum is above 0"
    if one.bias is None or two.bias is None:
        return "no bias"  # unreachable: absorb_high_bias returns both biases
    new_first = first.with_effective_bias(one.bias)
    new_second = second.with_effective_bias(two.bias)
    detail = (
        f"{int(np.sum(c > 0))} of {c.size} channels shifted down by up to "
        f"{float(c.max()):.3g}, absorbed into {link.second.name}'s bias"
    )
    return new_first, new_second, Change(ChangeKind.BIAS_ABSORBED, link.first.name, detail)


def _padded(node: onnx.NodeProto) -> str | None:
    """Why a layer 2 cannot take an absorbed shift exactly: a Conv that zero-pads sees
    the shift's ``W2 ∗ c`` only partly at its borders."""
    if node.op_type != "Conv":
        return None
    auto_pad = attribute(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if any(int(p) for p in attribute(node, "pads", [])) or auto_pad not in ("NOTSET", "VALID"):
        return f"Conv {node.name} pads its input (the shift would be inexact at the borders)"
    return None


# --- writing back -----------------------------------------------------------------------


def _rewrite(
    model: onnx.ModelProto,
    links: Sequence[_Link],
    sites: Mapping[str, _Site],
    idx: GraphIndex,
    fixed: set[str],
) -> None:
    """Write the equalised layers into ``model`` (the pass's copy), turn the ReLU6s of
    ``links`` into Relu and drop the initializers nothing reads any more."""
    names = NameFactory(model)
    detached: set[str] = set()
    for site in sites.values():  # only the layers of accepted links are cached
        _write_site(model, site, idx, fixed, names, detached)
    for link in links:
        if link.replace and link.act is not None:
            detached.update(n for n in link.act.input[1:] if n)
            _to_relu(link.act)
    _drop_unused(model, detached, fixed)


def _write_site(
    model: onnx.ModelProto,
    site: _Site,
    idx: GraphIndex,
    fixed: set[str],
    names: NameFactory,
    detached: set[str],
) -> None:
    """Store ``site``'s weight in place (it is read by no other node) and its bias in
    place, or as a new initializer when the old one is read elsewhere."""
    node = site.node
    w_name = node.input[1]
    spill = uses_external_data(model)  # external data: new tensors go to the spill file
    idx.initializers[w_name].CopyFrom(_tensor(site.weight, w_name, spill))
    if site.bias is None:
        return
    shape = site.bias_shape or site.bias.shape
    b_name = node.input[2] if len(node.input) > 2 else ""
    if b_name and b_name not in fixed and len(idx.consumers.get(b_name, [])) == 1:
        idx.initializers[b_name].CopyFrom(_tensor(site.bias.reshape(shape), b_name, spill))
        return
    new = names.new(f"{b_name}_equalized" if b_name else f"{node.name}_bias")
    model.graph.initializer.append(_tensor(site.bias.reshape(shape), new, spill))
    if b_name:
        detached.add(b_name)
    if len(node.input) > 2:
        node.input[2] = new
    else:
        node.input.append(new)


def _tensor(values: np.ndarray, name: str, spill: bool) -> onnx.TensorProto:
    return stored_tensor(values.astype(np.float32), name, spill=spill)


def _to_relu(node: onnx.NodeProto) -> None:
    """Turn a Clip into a Relu of its data input, keeping its name and output."""
    data = node.input[0]
    node.op_type = "Relu"
    del node.input[:]
    node.input.append(data)
    del node.attribute[:]


def _drop_unused(model: onnx.ModelProto, candidates: set[str], fixed: set[str]) -> None:
    """Remove the initializers in ``candidates`` that no node reads any more."""
    read = {name for node in model.graph.node for name in node_reads(node)}
    unused = [
        t for t in model.graph.initializer if t.name in candidates - fixed and t.name not in read
    ]
    for t in unused:
        model.graph.initializer.remove(t)

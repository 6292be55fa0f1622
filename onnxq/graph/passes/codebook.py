"""Float weights stored as packed codebook indices, decoded in the graph.

Each chosen weight becomes two initializers, its ``b``-bit indices packed into uint32
words (:func:`onnxq.quant.codebook.pack_indices`) and its float32 levels, and a decode
subgraph that rebuilds the float weight from them with operators onnxruntime's CPU
provider runs::

    words [W] ─ Unsqueeze(axes=[1]) ─ BitShift(RIGHT, [0, b, 2b, …]) ─ BitwiseAnd(2^b − 1)
      ─ Reshape([-1]) ─ Slice(0, count) ─ Reshape(weight shape) ─ Cast(INT64)
      ─ Add(c·2^b along the channel axis; per channel only) ─ Gather(flat levels) ─ weight

Gather of the flat levels by indices already shaped like the weight gives the weight's
shape, so the reshape happens on the indices, where the per-channel offsets need it; the
flat Reshape and the Slice are left out when the words hold exactly ``count`` indices.
Every input of the subgraph is an initializer, so onnxruntime folds it into the float
weight when it loads the model: the file is small, the kernels see a constant weight.

BitwiseAnd needs opset 18; models with a lower default-domain opset are refused
(:class:`~onnxq.errors.ModelError`), the caller upgrades them first.

:func:`find_codebook` reads such a subgraph back (bias correction, the output check's
simulation and ``inspect`` see the decoded weight through it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxq.errors import ConfigError, ModelError
from onnxq.graph.external import stored_tensor, tensor_values, uses_external_data
from onnxq.graph.model_io import opset_version
from onnxq.graph.names import NameFactory
from onnxq.graph.passes.result import Change, ChangeKind, PassResult
from onnxq.graph.rules import GraphIndex, attribute, node_reads
from onnxq.quant.codebook import (
    MAX_BITS,
    MIN_BITS,
    Codebook,
    LevelKind,
    channel_offsets,
    decode,
    fit_codebook,
    pack_indices,
    stored_bytes,
    unpack_indices,
    word_shifts,
)

__all__ = [
    "MIN_OPSET",
    "CodebookUse",
    "StoredCodebook",
    "find_codebook",
    "find_codebooks",
    "store_codebook_weights",
]

MIN_OPSET = 18  # BitwiseAnd


@dataclass(frozen=True)
class CodebookUse:
    """Input slot ``index`` of node ``node`` reads float initializer ``tensor``, to be
    stored as a ``bits``-bit codebook of ``kind`` levels, one table per tensor
    (``axis`` None) or per index of ``axis``."""

    node: str
    index: int
    tensor: str
    bits: int
    kind: LevelKind
    axis: int | None = None

    def __post_init__(self) -> None:
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ConfigError(
                f"codebook bits for {self.tensor!r} must be in {MIN_BITS}..{MAX_BITS}, "
                f"got {self.bits}"
            )
        if self.index < 0:
            raise ConfigError(f"input slot of node {self.node!r} must be ≥ 0, got {self.index}")


def store_codebook_weights(model: onnx.ModelProto, uses: Sequence[CodebookUse]) -> PassResult:
    """``model`` with every weight of ``uses`` read through a decode subgraph (see the
    module docstring). A tensor used twice with the same settings is encoded once; its
    float initializer is dropped once nothing else reads it. ``model`` is not modified.

    Raises ModelError when the opset is below 18 or a use does not match the model (no
    such node, slot or float32 initializer, or an axis outside the weight's rank), and
    ConfigError when one input slot is given two different settings."""
    if not uses:
        return PassResult.unchanged(model)
    opset = opset_version(model)
    if opset < MIN_OPSET:
        raise ModelError(
            f"codebook weights decode with BitwiseAnd, which needs opset {MIN_OPSET}; "
            f"the model has opset {opset}: upgrade its opset first"
        )
    slots: dict[tuple[str, int], CodebookUse] = {}
    for use in uses:
        if slots.setdefault((use.node, use.index), use) != use:
            raise ConfigError(
                f"input {use.index} of node {use.node!r} is given two codebook settings"
            )
    named: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        named.setdefault(n.name, []).append(n)
    inits = {t.name: t for t in model.graph.initializer}
    arrays = {use.tensor: _weight(use, named.get(use.node, []), inits) for use in uses}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = NameFactory(out)
    consts = _Constants(names, spill=uses_external_data(model))
    by_name = {n.name: n for n in out.graph.node}
    decoded: dict[tuple[str, int, LevelKind, int | None], str] = {}
    nodes: list[onnx.NodeProto] = []
    changes: list[Change] = []
    for use in uses:
        key = (use.tensor, use.bits, use.kind, _axis(use, arrays[use.tensor]))
        if key not in decoded:
            book, words, count = _encode(arrays[use.tensor], use)
            name, decode_nodes = _decode_graph(use, book, words, arrays[use.tensor].shape, consts)
            nodes.extend(decode_nodes)
            decoded[key] = name
            changes.append(
                Change(ChangeKind.WEIGHT_CODEBOOK, use.tensor, _detail(use, book, count))
            )
        by_name[use.node].input[use.index] = decoded[key]
    rest = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend([*nodes, *rest])  # the decoders read initializers only
    out.graph.initializer.extend(consts.initializers)
    _drop_unread(out, set(arrays))
    detail = f"{len(changes)} weight(s) stored as codebook indices"
    return PassResult(out, True, tuple(changes), detail)


def _weight(
    use: CodebookUse, matches: list[onnx.NodeProto], inits: dict[str, TensorProto]
) -> np.ndarray:
    """The float32 values ``use`` encodes, after checking that ``use`` fits the model
    (``matches``: its nodes named ``use.node``; ``inits``: its initializers by name)."""
    if len(matches) != 1:
        found = "no" if not matches else f"{len(matches)}"
        raise ModelError(f"the graph has {found} node(s) named {use.node!r}; name nodes uniquely")
    node = matches[0]
    if use.index >= len(node.input) or node.input[use.index] != use.tensor:
        raise ModelError(f"input {use.index} of node {use.node!r} is not {use.tensor!r}")
    init = inits.get(use.tensor)
    if init is None or init.data_type != TensorProto.FLOAT:
        raise ModelError(f"{use.tensor!r} read by {use.node!r} is not a float32 initializer")
    arr = tensor_values(init)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ModelError(f"{use.tensor!r} is empty or not finite; it cannot be a codebook")
    if use.axis is not None and not -arr.ndim <= use.axis < arr.ndim:
        raise ModelError(f"axis {use.axis} is outside {use.tensor!r} of shape {arr.shape}")
    return arr


def _axis(use: CodebookUse, arr: np.ndarray) -> int | None:
    return None if use.axis is None else use.axis % arr.ndim


def _encode(arr: np.ndarray, use: CodebookUse) -> tuple[Codebook, np.ndarray, int]:
    book, indices = fit_codebook(arr, use.bits, use.kind, axis=use.axis)
    return book, pack_indices(indices, use.bits), int(arr.size)


def _detail(use: CodebookUse, book: Codebook, count: int) -> str:
    where = "per tensor" if book.axis is None else f"per channel (axis {book.axis})"
    return (
        f"{use.kind.value} {use.bits}-bit {where}, {stored_bytes(book, count)} bytes "
        f"(float32: {4 * count})"
    )


class _Constants:
    """Initializers of the decode subgraphs, one per distinct value (shifts, masks and
    shapes are shared between weights)."""

    def __init__(self, names: NameFactory, *, spill: bool = False) -> None:
        self.names = names
        self.spill = spill  # a model with external data: new tensors go to the spill file
        self._seen: dict[tuple[str, tuple[int, ...], bytes], str] = {}  # by value digest
        self.initializers: list[TensorProto] = []

    def add(self, base: str, value: np.ndarray, *, share: bool = True) -> str:
        digest = hashlib.sha256(np.ascontiguousarray(value).view(np.uint8).data).digest()
        key = (value.dtype.str, value.shape, digest)
        if share and key in self._seen:
            return self._seen[key]
        name = self.names.new(base)
        self.initializers.append(stored_tensor(value, name, spill=self.spill))
        if share:
            self._seen[key] = name
        return name


def _decode_graph(
    use: CodebookUse,
    book: Codebook,
    words: np.ndarray,
    shape: tuple[int, ...],
    consts: _Constants,
) -> tuple[str, list[onnx.NodeProto]]:
    """The nodes that rebuild ``use.tensor`` from its words and levels, and their output."""
    names, base, bits = consts.names, f"{use.tensor}_codebook", use.bits
    nodes: list[onnx.NodeProto] = []

    def node(op: str, inputs: list[str], label: str, **attrs: Any) -> str:
        output = names.new(f"{base}_{label}")
        nodes.append(helper.make_node(op, inputs, [output], names.new(f"{base}_{op}"), **attrs))
        return output

    count = int(np.prod(shape, dtype=np.int64))
    words_name = consts.add(f"{base}_words", words, share=False)
    levels_name = consts.add(f"{base}_levels", book.levels.reshape(-1), share=False)
    column = node(
        "Unsqueeze", [words_name, consts.add("codebook_axes", np.array([1], np.int64))], "column"
    )
    shifts = consts.add(f"codebook_shifts_{bits}bit", word_shifts(bits))
    shifted = node("BitShift", [column, shifts], "shifted", direction="RIGHT")
    mask = consts.add(f"codebook_mask_{bits}bit", np.array((1 << bits) - 1, np.uint32))
    codes = node("BitwiseAnd", [shifted, mask], "codes")
    if words.size * (32 // bits) != count:
        flat = node(
            "Reshape", [codes, consts.add("codebook_flat", np.array([-1], np.int64))], "flat"
        )
        ends = consts.add(f"{base}_count", np.array([count], np.int64), share=False)
        codes = node(
            "Slice", [flat, consts.add("codebook_zero", np.array([0], np.int64)), ends], "used"
        )
    target = consts.add(f"{base}_shape", np.array(shape, np.int64))
    shaped = node("Reshape", [codes, target], "shaped")
    index = node("Cast", [shaped], "index", to=TensorProto.INT64)
    if book.axis is not None:
        offsets = consts.add(f"{base}_offsets", channel_offsets(book, shape))
        index = node("Add", [index, offsets], "row_index")
    return node("Gather", [levels_name, index], "decoded", axis=0), nodes


def _drop_unread(model: onnx.ModelProto, tensors: set[str]) -> None:
    """Remove the initializers in ``tensors`` that no node (or subgraph) reads any more,
    unless they are graph inputs or outputs too."""
    read = {name for n in model.graph.node for name in node_reads(n)}
    read |= {v.name for v in (*model.graph.input, *model.graph.output)}
    keep = [t for t in model.graph.initializer if t.name not in tensors or t.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


# the decode subgraph from its output back to the words, with the optional nodes marked
_CHAIN = ("Gather", "Add?", "Cast", "Reshape", "Slice?", "Reshape?", "BitwiseAnd", "BitShift")


@dataclass(frozen=True)
class StoredCodebook:
    """A decode subgraph found in a model (see :func:`find_codebook`): the tensor it
    makes, its nodes in graph order, and the codebook and indices it stores."""

    output: str
    nodes: tuple[onnx.NodeProto, ...]
    codebook: Codebook
    indices: np.ndarray  # uint8, shaped like the weight
    stored_bytes: int  # of the words and levels

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.indices.shape)

    def decoded(self) -> np.ndarray:
        """The float32 weight onnxruntime computes from the subgraph."""
        return decode(self.codebook, self.indices)


def find_codebook(idx: GraphIndex, tensor: str) -> StoredCodebook | None:
    """The decode subgraph :func:`store_codebook_weights` writes, read back from the
    graph of ``idx`` when ``tensor`` is its output, else None."""
    chain = _chain(idx, tensor)
    if chain is None:
        return None
    by_op = {n.op_type: n for n in chain}
    shaped = chain[chain.index(by_op["Cast"]) - 1]  # the Reshape to the weight's shape
    names = {
        "words": chain[0].input[0],
        "levels": chain[-1].input[0],
        "shifts": by_op["BitShift"].input[1],
        "mask": by_op["BitwiseAnd"].input[1],
        "shape": shaped.input[1],
    }
    found = {key: _constant(idx, name) for key, name in names.items()}
    values = {key: v for key, v in found.items() if v is not None}
    if len(values) < len(found) or values["mask"].size != 1:
        return None
    words, levels, mask = values["words"], values["levels"], int(values["mask"].reshape(-1)[0])
    bits = mask.bit_length()
    if (
        not MIN_BITS <= bits <= MAX_BITS
        or mask != (1 << bits) - 1
        or words.dtype != np.uint32
        or levels.dtype != np.float32
        or not np.array_equal(values["shifts"], word_shifts(bits))
    ):
        return None
    shape = tuple(int(d) for d in values["shape"].reshape(-1))
    try:
        indices = unpack_indices(words, bits, int(np.prod(shape, dtype=np.int64)))
        book = _codebook(levels, bits, shape, by_op.get("Add"), idx)
    except ValueError:
        return None
    if book is None:
        return None
    nbytes = 4 * (words.size + levels.size)
    return StoredCodebook(tensor, tuple(chain), book, indices.reshape(shape), nbytes)


def find_codebooks(model: onnx.ModelProto) -> list[StoredCodebook]:
    """Every decode subgraph of ``model``'s main graph, in graph order."""
    idx = GraphIndex(model)
    found = (find_codebook(idx, n.output[0]) for n in model.graph.node if n.op_type == "Gather")
    return [f for f in found if f is not None]


def _chain(idx: GraphIndex, tensor: str) -> list[onnx.NodeProto] | None:
    """The nodes from the Unsqueeze of the words to the Gather making ``tensor`` (graph
    order), when their op types follow the decode subgraph, else None."""
    node = idx.producer.get(tensor)
    found: list[onnx.NodeProto] = []
    for step in _CHAIN:
        op, optional = step.rstrip("?"), step.endswith("?")
        if node is not None and node.op_type == op:
            found.append(node)
            node = idx.producer.get(node.input[1 if op == "Gather" else 0])
        elif not optional:
            return None
    if node is None or node.op_type != "Unsqueeze":
        return None
    found.append(node)
    gather, shift = found[0], next(n for n in found if n.op_type == "BitShift")
    if attribute(gather, "axis", 0) != 0 or attribute(shift, "direction", "") not in (
        "RIGHT",
        b"RIGHT",
    ):
        return None
    return found[::-1]


def _constant(idx: GraphIndex, name: str) -> np.ndarray | None:
    init = idx.initializers.get(name)
    if init is None or init.data_location == TensorProto.EXTERNAL:
        return None
    return np.asarray(tensor_values(init))


def _codebook(
    levels: np.ndarray,
    bits: int,
    shape: tuple[int, ...],
    add: onnx.NodeProto | None,
    idx: GraphIndex,
) -> Codebook | None:
    """The codebook of flat ``levels``: one table, or one per channel of the axis the
    Add's offsets run along (None when they are not ``c·K`` along one axis)."""
    k = 1 << bits
    if add is None:
        return Codebook(levels, bits, None) if levels.size == k else None
    offsets = _constant(idx, add.input[1])
    channels = levels.size // k
    if offsets is None or offsets.ndim != len(shape) or levels.size != channels * k:
        return None
    for axis, n in enumerate(shape):
        if n == channels and offsets.shape[axis] == channels:
            book = Codebook(levels.reshape(channels, k), bits, axis)
            if np.array_equal(offsets, channel_offsets(book, shape)):
                return book
    return None

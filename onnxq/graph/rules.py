"""Per-op-type rules: which inputs of a node are activations, weights, biases or
constants, and why a node is not quantized. Pattern / check in the onnx-ir sense:
``check`` returns ``None`` when the node can be quantized, else the reason in words."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxq.graph.external import tensor_values

__all__ = [
    "ACTIVATION_FUSIONS",
    "COMPUTE",
    "LOOKUP",
    "NEEDS_QUANTIZED_INPUT",
    "CONV_LIKE",
    "GraphIndex",
    "InputRole",
    "OutputPolicy",
    "Role",
    "RULES",
    "TRANSPARENT",
    "attribute",
    "clip_from_zero",
    "node_reads",
    "embedding_check",
    "transparent_check",
]

FLOAT = onnx.TensorProto.FLOAT


class Role(str, Enum):
    ACTIVATION = "activation"
    WEIGHT = "weight"
    BIAS = "bias"
    CONSTANT = "constant"


@dataclass(frozen=True)
class InputRole:
    index: int
    role: Role
    axis: int | None = None  # output-channel axis of a weight
    reduce_axis: int | None = None  # its reduction (input) axis, along which blocks run


class OutputPolicy(str, Enum):
    ALWAYS = "always"  # integer kernels need the output quantized (QLinearConv, QLinearAdd)
    IF_CONSUMED = "if_consumed"  # float output is fine (QGemm, MatMulIntegerToFloat)


def node_reads(node: onnx.NodeProto) -> list[str]:
    """The tensors ``node`` reads: its inputs and, recursively, the outer-scope names its
    subgraphs (If / Loop / Scan bodies) read."""
    names = list(node.input)
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in graphs:
            for inner in sub.node:
                names.extend(node_reads(inner))
    return names


class GraphIndex:
    """Producers, consumers, initializers and element types of one graph, looked up
    by tensor name (relations between tensors are data, never parsed from names)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.opset = next(
            (int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 1
        )
        self.initializers = {t.name: t for t in g.initializer}
        self.graph_inputs = {v.name for v in g.input if v.name not in self.initializers}
        # initializers listed as graph inputs too: a feed may replace them (not constants)
        self.overridable = {v.name for v in g.input if v.name in self.initializers}
        self.graph_outputs = {v.name for v in g.output}
        self.elem_types: dict[str, int] = {}
        self.ranks: dict[str, int] = {}
        for vi in (*g.input, *g.output, *g.value_info):
            if vi.type.HasField("tensor_type"):
                tt = vi.type.tensor_type
                self.elem_types[vi.name] = tt.elem_type
                if tt.HasField("shape"):
                    self.ranks[vi.name] = len(tt.shape.dim)
        for t in g.initializer:
            self.elem_types[t.name] = t.data_type
            self.ranks[t.name] = len(t.dims)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in g.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for inp in dict.fromkeys(node_reads(node)):  # a subgraph's reads are its node's
                if inp:
                    self.consumers.setdefault(inp, []).append(node)

    def is_float(self, name: str) -> bool:
        return self.elem_types.get(name) == FLOAT

    def is_float_activation(self, name: str) -> bool:
        return bool(name) and name not in self.initializers and self.is_float(name)

    def is_float_initializer(self, name: str) -> bool:
        return name in self.initializers and self.initializers[name].data_type == FLOAT

    def is_float_constant(self, name: str) -> bool:
        """A float32 initializer no feed can replace: safe to fold into another value."""
        return self.is_float_initializer(name) and name not in self.overridable


def attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    """The value of attribute ``name`` of ``node``, or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


@dataclass(frozen=True)
class OpRule:
    """How one op type is quantized."""

    output_policy: OutputPolicy

    def roles(self, node: onnx.NodeProto, idx: GraphIndex) -> list[InputRole] | str:
        """Roles of the node's inputs, or the reason it cannot be quantized."""
        raise NotImplementedError


def _activation_or_constant(name: str, i: int, idx: GraphIndex) -> InputRole | str:
    if idx.is_float_initializer(name):
        return InputRole(i, Role.CONSTANT)
    if idx.is_float_activation(name):
        return InputRole(i, Role.ACTIVATION)
    return f"input '{name}' is not a float32 tensor"


@dataclass(frozen=True)
class ElementwiseRule(OpRule):
    """Add, Mul, Concat, pooling: every float input is an activation or a constant."""

    max_inputs: int | None = None

    def roles(self, node: onnx.NodeProto, idx: GraphIndex) -> list[InputRole] | str:
        inputs = list(node.input)[: self.max_inputs] if self.max_inputs else list(node.input)
        roles = []
        for i, name in enumerate(inputs):
            role = _activation_or_constant(name, i, idx)
            if isinstance(role, str):
                return role
            roles.append(role)
        if not any(r.role is Role.ACTIVATION for r in roles):
            return "all inputs are constants (constant folding should remove this node)"
        return roles


@dataclass(frozen=True)
class ConvRule(OpRule):
    """Conv / ConvTranspose: activation, constant weight per output channel, int32 bias."""

    transpose: bool = False

    def roles(self, node: onnx.NodeProto, idx: GraphIndex) -> list[InputRole] | str:
        x, w = node.input[0], node.input[1]
        if not idx.is_float_activation(x):
            return f"input '{x}' is not a float32 activation"
        if not idx.is_float_initializer(w):
            return f"weight '{w}' is not a float32 constant"
        axis, reduce = (0, 1) if not self.transpose else (1, 0)
        if self.transpose and int(attribute(node, "group", 1)) != 1:
            axis = -1  # grouped ConvTranspose: output channels span two axes
        roles = [
            InputRole(0, Role.ACTIVATION),
            InputRole(1, Role.WEIGHT, axis if axis >= 0 else None, reduce),
        ]
        if len(node.input) > 2 and node.input[2]:
            if not idx.is_float_initializer(node.input[2]):
                return f"bias '{node.input[2]}' is not a float32 constant"
            roles.append(InputRole(2, Role.BIAS))
        return roles


@dataclass(frozen=True)
class GemmRule(OpRule):
    """Gemm: A activation, B constant weight (axis by transB) or activation, C int32 bias
    when alpha = beta = 1."""

    def roles(self, node: onnx.NodeProto, idx: GraphIndex) -> list[InputRole] | str:
        a, b = node.input[0], node.input[1]
        if not idx.is_float_activation(a) or int(attribute(node, "transA", 0)):
            return f"input A '{a}' is not a float32 activation in normal layout"
        roles = [InputRole(0, Role.ACTIVATION)]
        if idx.is_float_initializer(b):
            trans = int(attribute(node, "transB", 0))
            roles.append(InputRole(1, Role.WEIGHT, 0 if trans else 1, 1 if trans else 0))
        elif idx.is_float_activation(b):
            roles.append(InputRole(1, Role.ACTIVATION))
        else:
            return f"input B '{b}' is not a float32 tensor"
        if len(node.input) > 2 and node.input[2]:
            c = node.input[2]
            plain = (
                float(attribute(node, "alpha", 1.0)) == 1.0
                and float(attribute(node, "beta", 1.0)) == 1.0
            )
            if plain and roles[1].role is Role.WEIGHT and idx.is_float_initializer(c):
                roles.append(InputRole(2, Role.BIAS))
        return roles


@dataclass(frozen=True)
class MatMulRule(OpRule):
    """MatMul: activation × constant weight (per last-axis column) or × activation."""

    def roles(self, node: onnx.NodeProto, idx: GraphIndex) -> list[InputRole] | str:
        a, b = node.input[0], node.input[1]
        if not idx.is_float_activation(a):
            return f"input A '{a}' is not a float32 activation"
        if idx.is_float_initializer(b):
            rank = idx.ranks.get(b, 0)
            return [
                InputRole(0, Role.ACTIVATION),
                InputRole(
                    1, Role.WEIGHT, rank - 1 if rank >= 2 else None, rank - 2 if rank >= 2 else None
                ),
            ]
        if idx.is_float_activation(b):
            return [InputRole(0, Role.ACTIVATION), InputRole(1, Role.ACTIVATION)]
        return f"input B '{b}' is not a float32 tensor"


RULES: dict[str, OpRule] = {
    "Conv": ConvRule(OutputPolicy.ALWAYS),
    "ConvTranspose": ConvRule(OutputPolicy.ALWAYS, transpose=True),
    "Gemm": GemmRule(OutputPolicy.IF_CONSUMED),
    "MatMul": MatMulRule(OutputPolicy.IF_CONSUMED),
    "Add": ElementwiseRule(OutputPolicy.ALWAYS),
    "Mul": ElementwiseRule(OutputPolicy.ALWAYS),
    "Concat": ElementwiseRule(OutputPolicy.ALWAYS),
    "AveragePool": ElementwiseRule(OutputPolicy.ALWAYS, max_inputs=1),
    "GlobalAveragePool": ElementwiseRule(OutputPolicy.ALWAYS, max_inputs=1),
}

# Ops that only move, select or take the max of values: they run on the integer tensor
# itself, the output sharing the input's scale and zero point (no Q/DQ pair of their own).
TRANSPARENT = frozenset(
    {
        "Reshape",
        "Transpose",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Slice",
        "MaxPool",
        "Resize",
        "DepthToSpace",
        "SpaceToDepth",
    }
)

# Activation functions removed when they follow a quantized node: the Q of the node's
# output then clamps exactly as they do (their output range starts at 0 = zero point).
ACTIVATION_FUSIONS = frozenset({"Relu", "Clip"})

# Element-wise ops are quantized only right after quantized compute (a bias or residual
# Add after a Conv or MatMul, a gate Mul after a Conv), and only when their other inputs
# are integer already (_check_neighbour). In chains of element-wise maths (a decomposed
# LayerNorm or GELU: Mul, Add, Sub, Sqrt, Tanh; hard-swish's x · HardSigmoid(x)) each
# requantization costs accuracy and no integer kernel worth having is gained.
NEEDS_QUANTIZED_INPUT = frozenset({"Add", "Mul"})
# onnxruntime runs DQ -> op -> Q of these as one integer lookup kernel (QLinearSigmoid,
# QLinearLeakyRelu): YOLOv8's SiLU, x · Sigmoid(x), is integer throughout
LOOKUP = frozenset({"Sigmoid", "LeakyRelu"})
COMPUTE = frozenset(
    {"Conv", "ConvTranspose", "Gemm", "MatMul", "Concat", "AveragePool", "GlobalAveragePool"}
)

# Ops whose tensors are NCHW: per-channel activation statistics use axis 1.
CONV_LIKE = frozenset(
    {"Conv", "ConvTranspose", "AveragePool", "GlobalAveragePool", "MaxPool", "BatchNormalization"}
)


# Passthrough ops with integer kernels only for 8-bit types (MaxPool, Resize, …).
EIGHT_BIT_ONLY = frozenset({"MaxPool", "Resize", "DepthToSpace", "SpaceToDepth"})


def transparent_check(node: onnx.NodeProto, idx: GraphIndex, bits: int = 8) -> str | None:
    """None when ``node`` may run on integer tensors of ``bits`` bits, else why not."""
    if len([o for o in node.output if o]) != 1:
        return "has more than one output"
    if bits != 8 and node.op_type in EIGHT_BIT_ONLY:
        return f"{node.op_type} takes 8-bit integers only"
    if node.op_type == "MaxPool" and idx.opset < 12:
        return "MaxPool takes integer tensors from opset 12"
    if node.op_type == "Resize":
        mode = attribute(node, "mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode not in ("nearest", "linear"):
            return f"Resize mode '{mode}' can leave the input's range"
    if not idx.is_float_activation(node.input[0]) or not idx.is_float(node.output[0]):
        return f"input '{node.input[0]}' is not a float32 activation"
    return None


def clip_from_zero(node: onnx.NodeProto, idx: GraphIndex) -> bool:
    """True for Relu, and for a Clip whose lower bound is the constant 0."""
    if node.op_type == "Relu":
        return True
    if node.op_type != "Clip":
        return False
    if idx.opset < 11:
        return float(attribute(node, "min", -3.4e38)) == 0.0
    if len(node.input) < 2 or node.input[1] not in idx.initializers:
        return False
    low = tensor_values(idx.initializers[node.input[1]])
    if len(node.input) > 2 and node.input[2] and node.input[2] not in idx.initializers:
        return False
    return low.size == 1 and float(low.reshape(-1)[0]) == 0.0


MIN_EMBEDDING_SIZE = 4096  # smaller tables are not worth the extra nodes


def embedding_check(node: onnx.NodeProto, idx: GraphIndex) -> str | None:
    """None when ``node`` gathers rows of a 2-D float32 embedding table, else why not."""
    data = node.input[0]
    axis = int(attribute(node, "axis", 0))
    if not idx.is_float_initializer(data) or idx.ranks.get(data) != 2 or axis != 0:
        return "not a Gather of rows from a 2-D float32 table"
    if int(np.prod(idx.initializers[data].dims)) < MIN_EMBEDDING_SIZE:
        return "table too small to be worth quantizing"
    return None

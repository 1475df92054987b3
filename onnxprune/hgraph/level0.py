"""Level 0 of the hierarchical computational graph: feature maps joined by operations.

GNN-RL (paper 002, section 3.1) models a network as a graph whose *nodes are feature maps*
(hidden states) and whose *edges are operations*. This module reads that graph out of an ONNX
model. Contract:

- Nodes are activation tensors: graph inputs that are not initializers, and outputs of nodes
  that consume at least one activation. Weights, ``Constant`` outputs, constant-only subgraphs
  and shape computations (anything downstream of ``Shape``/``Size`` only) are dropped.
- An ONNX node with ``k`` distinct activation inputs and ``m`` activation outputs becomes
  ``k * m`` edges that share one op id.
- Coarsening (paper 3.1: "replace primitive operations with high-level operations"), applied
  only where it is unambiguous:

  * ``Identity`` and ``Dropout`` are pass-through: their output is the same feature map.
  * An *affine step* is ``BatchNormalization`` or ``Mul``/``Add``/``Sub``/``Div`` with exactly
    one activation input and a constant other operand. An affine step whose input is the only
    use of a weighted layer's output (Conv, ConvTranspose, Gemm, MatMul with a constant
    operand) is fused into that layer (Conv+BN, MatMul+bias). Consecutive affine steps are
    fused into one edge; a fused chain of two or more steps, or a lone BatchNormalization, is
    labelled ``BN``.
  * Activations (Relu, Clip, ...) stay separate edges: they are cheap to keep, make motifs
    easier to read, and fusing them would hide Relu-vs-Relu6 differences from the encoder.

- The result is deterministic: tensor names are only used as node keys, never to order or
  decide anything. :mod:`onnxprune.hgraph.order` puts the graph in a canonical order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import ModelProto

from onnxprune.errors import OnnxPruneError
from onnxprune.model import tensor_shapes
from onnxprune.ops import ARITHMETIC, CONV, MATMUL, PASS_THROUGH, RESHAPE, RESIZE, SHAPE

# Fixed op vocabulary of the edge one-hot (task spec); the last entry catches the rest.
OP_VOCAB: tuple[str, ...] = (
    "Conv",
    "DepthwiseConv",
    "GroupConv",
    "ConvTranspose",
    "Gemm/MatMul",
    "BN",
    "Relu",
    "Clip",
    "Sigmoid",
    "HardSwish",
    "Add",
    "Mul",
    "Concat",
    "Split",
    "Slice",
    "Pad",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Resize",
    "Transpose",
    "Reshape/Flatten",
    "ReduceMean",
    "Softmax",
    "other",
)

# ONNX op -> edge category. Families of onnxprune.ops where a whole family is one category;
# the rest is this encoder's own choice (which activations look alike, ...).
_CATEGORY: dict[str, str] = {
    **{op: "Gemm/MatMul" for op in MATMUL},
    **{op: "Reshape/Flatten" for op in RESHAPE},
    **{op: "Resize" for op in RESIZE},
    "BatchNormalization": "BN",
    "Relu": "Relu",
    "LeakyRelu": "Relu",
    "PRelu": "Relu",
    "Elu": "Relu",
    "Selu": "Relu",
    "Clip": "Clip",
    "Sigmoid": "Sigmoid",
    "HardSigmoid": "Sigmoid",
    "HardSwish": "HardSwish",
    "Add": "Add",
    "Sum": "Add",
    "Sub": "Add",
    "Mul": "Mul",
    "Div": "Mul",
    "Concat": "Concat",
    "Split": "Split",
    "Slice": "Slice",
    "Gather": "Slice",
    "Pad": "Pad",
    "MaxPool": "MaxPool",
    "AveragePool": "AveragePool",
    "GlobalAveragePool": "GlobalAveragePool",
    "GlobalMaxPool": "GlobalAveragePool",
    "Transpose": "Transpose",
    "ReduceMean": "ReduceMean",
    "Softmax": "Softmax",
    "ConvTranspose": "ConvTranspose",
}


@dataclass
class TensorInfo:
    """A feature map (level-0 node).

    ``channels``/``height``/``width`` are 0 when shape inference could not tell;
    ``channel_axis`` is 1 (NCHW) unless the dependency analysis says otherwise.
    """

    name: str
    shape: tuple[int | None, ...]
    channel_axis: int
    channels: int
    height: int
    width: int
    is_input: bool = False
    is_output: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
        }

    def __str__(self) -> str:
        return f"{self.name} [C={self.channels} H={self.height} W={self.width}]"


@dataclass
class OpRecord:
    """A (possibly coarsened) operation: one or more ONNX nodes shown as one edge type.

    ``macs`` are multiply-accumulates per sample; ``params`` counts constant elements the op
    consumes (weights, BN statistics, biases of fused steps).
    """

    op_id: int
    category: str
    onnx_ops: tuple[str, ...]
    onnx_nodes: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    kernel: float = 0.0
    stride: float = 0.0
    groups: int = 1
    macs: int = 0
    params: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "op_id": self.op_id,
            "category": self.category,
            "onnx_ops": list(self.onnx_ops),
            "onnx_nodes": list(self.onnx_nodes),
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "kernel": self.kernel,
            "stride": self.stride,
            "groups": self.groups,
            "macs": self.macs,
            "params": self.params,
        }

    def __str__(self) -> str:
        fused = "+".join(self.onnx_ops)
        return (
            f"op{self.op_id} {self.category} ({fused}) {list(self.inputs)} -> {list(self.outputs)}"
        )


@dataclass
class Level0:
    """Level-0 graph description before canonical ordering (plain lists, no networkx)."""

    tensors: dict[str, TensorInfo]
    ops: list[OpRecord]
    inputs: list[str]
    outputs: list[str]
    notes: list[str] = field(default_factory=list)


@dataclass
class _Node:
    """Working copy of an ONNX node during coarsening."""

    index: int
    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, object]
    fused: list[onnx.NodeProto]


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _shape_map(model: ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Shapes of known rank (``None`` dims unknown); tensors of unknown rank are absent."""
    return {name: dims for name, dims in tensor_shapes(model).items() if dims is not None}  # type: ignore[misc]


def _topological_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes in a dependency order that does not depend on their order in the file.

    Kahn's algorithm; among ready nodes the file order is kept, which only affects the
    order ops are *visited* here, not the canonical order used later.
    """
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            if out:
                producer[out] = i
    deps: list[set[int]] = []
    for node in graph.node:
        deps.append({producer[t] for t in node.input if t and t in producer})
    users: dict[int, list[int]] = {i: [] for i in range(len(graph.node))}
    for i, dset in enumerate(deps):
        for d in dset:
            users[d].append(i)
    remaining = [len(d) for d in deps]
    ready = [i for i, r in enumerate(remaining) if r == 0]
    order: list[int] = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for u in users[i]:
            remaining[u] -= 1
            if remaining[u] == 0:
                ready.append(u)
    if len(order) != len(graph.node):
        stuck = [graph.node[i].name or graph.node[i].op_type for i, r in enumerate(remaining) if r]
        raise OnnxPruneError(
            f"the ONNX graph has a cycle through node(s) {stuck[:3]}; run onnx.checker on the model"
        )
    return [graph.node[i] for i in order]


@dataclass
class _Classified:
    """Which tensors are feature maps and which are constants (weights, folded constants)."""

    feature: set[str]
    constant: set[str]
    initializers: dict[str, onnx.TensorProto]
    constant_values: dict[str, onnx.TensorProto]

    def const_numel(self, name: str) -> int:
        """Elements of a constant tensor (0 for anything computed at run time)."""
        if name in self.initializers:
            dims = self.initializers[name].dims
        elif name in self.constant_values:
            dims = self.constant_values[name].dims
        else:
            return 0
        return int(np.prod(dims)) if dims else 1

    def is_affine(self, wn: _Node) -> bool:
        """BN with constant statistics, or Mul/Add/Sub/Div of one feature map and a constant."""
        if wn.op_type == "BatchNormalization":
            return wn.inputs[0] in self.feature and all(
                t in self.constant for t in wn.inputs[1:5] if t
            )
        if wn.op_type in ARITHMETIC and len(wn.inputs) == 2:
            a, b = wn.inputs
            return (a in self.feature) != (b in self.feature) and (
                a in self.constant or b in self.constant
            )
        return False

    def is_weighted(self, wn: _Node) -> bool:
        """A Conv/ConvTranspose/Gemm with a constant weight, or a MatMul with a constant side."""
        if wn.op_type in CONV or wn.op_type == "Gemm":
            return len(wn.inputs) > 1 and wn.inputs[1] in self.constant
        if wn.op_type == "MatMul":
            return any(t in self.constant for t in wn.inputs)
        return False


def _classify(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> _Classified:
    """Feature maps flow from the non-initializer inputs; shape reads (Shape/Size) stop them."""
    initializers = {init.name: init for init in graph.initializer}
    constant_values: dict[str, onnx.TensorProto] = {}
    constant: set[str] = set(initializers)
    feature: set[str] = {vi.name for vi in graph.input if vi.name not in initializers}
    for node in nodes:
        ins = [t for t in node.input if t]
        if node.op_type == "Constant":
            constant.update(o for o in node.output if o)
            for a in node.attribute:
                if a.name == "value":
                    constant_values[node.output[0]] = a.t
            continue
        if node.op_type in SHAPE:
            continue
        if any(t in feature for t in ins):
            feature.update(o for o in node.output if o)
        elif all(t in constant for t in ins):
            constant.update(o for o in node.output if o)
    return _Classified(feature, constant, initializers, constant_values)


def _drop_pass_through(
    work: list[_Node], feature: set[str], graph_outputs: list[str]
) -> tuple[list[_Node], list[str]]:
    """Remove pass-through ops (Identity, Dropout): their output *is* their input's feature
    map. Returns the remaining nodes (inputs renamed) and the renamed graph outputs."""
    alias: dict[str, str] = {}

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    kept: list[_Node] = []
    for wn in work:
        if wn.op_type in PASS_THROUGH:
            alias[wn.outputs[0]] = resolve(next(t for t in wn.inputs if t in feature))
            continue
        wn.inputs = [resolve(t) if t in feature else t for t in wn.inputs]
        kept.append(wn)
    return kept, [resolve(o) for o in graph_outputs]


def _fuse_affine(kept: list[_Node], info: _Classified, graph_outputs: list[str]) -> set[int]:
    """Fuse each affine step into its producer when it is that producer's only use (Conv+BN,
    MatMul+bias, chains of affine steps). Returns the indices of the nodes fused away."""
    consumers: dict[str, int] = {}
    for wn in kept:
        for t in set(wn.inputs):
            if t in info.feature:
                consumers[t] = consumers.get(t, 0) + 1
    producer_of: dict[str, _Node] = {}
    merged_away: set[int] = set()
    for wn in kept:
        if info.is_affine(wn):
            src = next(t for t in wn.inputs if t in info.feature)
            prod = producer_of.get(src)
            if (
                prod is not None
                and consumers.get(src, 0) == 1
                and src not in graph_outputs
                and len(prod.outputs) == 1
                and (info.is_weighted(prod) or info.is_affine(prod))
            ):
                prod.fused.append(wn.fused[0])
                prod.outputs = list(wn.outputs)
                merged_away.add(wn.index)
                for o in wn.outputs:
                    producer_of[o] = prod
                continue
        for o in wn.outputs:
            producer_of[o] = wn
    return merged_away


def build_level0(model: ModelProto, channel_axes: dict[str, int] | None = None) -> Level0:
    """Read the level-0 feature-map graph out of ``model`` (see module docstring).

    ``channel_axes`` maps tensor names to their channel axis (from the dependency analysis);
    tensors not in it are treated as channel-first (axis 1).
    """
    graph = model.graph
    if graph.node is None or len(graph.node) == 0:
        raise OnnxPruneError("the ONNX graph has no nodes; nothing to build a graph from")
    channel_axes = channel_axes or {}
    shapes = _shape_map(model)
    nodes = _topological_nodes(graph)
    info = _classify(graph, nodes)
    feature = info.feature

    # Working nodes: the ONNX nodes that consume and produce feature maps.
    work: list[_Node] = []
    for node in nodes:
        f_in = [t for t in node.input if t in feature]
        f_out = [o for o in node.output if o in feature]
        if not f_in or not f_out:
            continue
        work.append(
            _Node(len(work), node.op_type, node.name, list(node.input), f_out, _attrs(node), [node])
        )
    graph_outputs = [o.name for o in graph.output if o.name in feature]
    kept, graph_outputs = _drop_pass_through(work, feature, graph_outputs)
    merged_away = _fuse_affine(kept, info, graph_outputs)
    ops = [
        _make_record(wn, feature, shapes, info.const_numel, info.is_weighted(wn))
        for wn in kept
        if wn.index not in merged_away
    ]
    if not ops:
        raise OnnxPruneError(
            "the ONNX graph has no operation on feature maps (all nodes are constant); "
            "check that the model has a non-initializer input"
        )
    used = {t for op in ops for t in op.inputs} | {t for op in ops for t in op.outputs}
    inputs = [vi.name for vi in graph.input if vi.name in feature]
    used.update(inputs)
    used.update(graph_outputs)
    tensors: dict[str, TensorInfo] = {}
    for name in used:
        shape = shapes.get(name, ())
        axis = channel_axes.get(name, 1)
        tensors[name] = _tensor_info(name, shape, axis, name in inputs, name in graph_outputs)
    return Level0(tensors, ops, inputs, graph_outputs, [])


def _tensor_info(
    name: str, shape: tuple[int | None, ...], axis: int, is_input: bool, is_output: bool
) -> TensorInfo:
    dims = [d or 0 for d in shape]
    rank = len(dims)
    channels = height = width = 0
    if rank >= 2:
        axis = axis if 0 < axis < rank else 1
        channels = dims[axis]
        spatial = [d for i, d in enumerate(dims) if i not in (0, axis)]
        height = spatial[0] if len(spatial) >= 1 else 1
        width = spatial[1] if len(spatial) >= 2 else 1
    elif rank == 1:
        channels = dims[0]
    return TensorInfo(name, tuple(shape), axis, channels, height, width, is_input, is_output)


def _make_record(
    wn: _Node,
    feature: set[str],
    shapes: dict[str, tuple[int | None, ...]],
    const_numel: Callable[[str], int],
    weighted: bool,
) -> OpRecord:
    op_type = wn.op_type
    attrs = wn.attrs
    category = _CATEGORY.get(op_type, "other")
    kernel = stride = 0.0
    groups = 1
    macs = 0
    f_in = list(dict.fromkeys(t for t in wn.inputs if t in feature))
    if op_type in CONV and weighted:
        w_shape = shapes.get(wn.inputs[1], ())
        groups = int(attrs.get("group", 1))  # type: ignore[call-overload]
        if op_type == "Conv":
            if groups > 1 and len(w_shape) > 1 and w_shape[1] == 1:
                category = "DepthwiseConv"
            elif groups > 1:
                category = "GroupConv"
            else:
                category = "Conv"
        k_dims = [d or 0 for d in w_shape[2:]]
        kernel = float(np.mean(k_dims)) if k_dims else 1.0
        strides = attrs.get("strides") or [1]
        stride = float(max(strides))  # type: ignore[arg-type, call-overload]
        out_shape = shapes.get(wn.outputs[0], ())
        in_shape = shapes.get(f_in[0], ()) if f_in else ()
        w_elems = int(np.prod([d or 0 for d in w_shape])) if w_shape else 0
        if op_type == "Conv" and len(out_shape) >= 3:
            macs = int(np.prod([d or 0 for d in out_shape[2:]])) * w_elems
        elif len(in_shape) >= 3:
            macs = int(np.prod([d or 0 for d in in_shape[2:]])) * w_elems
    elif op_type in MATMUL:
        const_in = [t for t in wn.inputs[:2] if t not in feature]
        out_shape = shapes.get(wn.outputs[0], ())
        if const_in:
            w_shape = shapes.get(const_in[0], ())
            k: int | None = 0
            if op_type == "Gemm" and len(w_shape) == 2:
                k = w_shape[1] if attrs.get("transB", 0) else w_shape[0]
            elif len(w_shape) >= 2:
                k = w_shape[-2] if const_in[0] == wn.inputs[1] else w_shape[-1]
            out_elems = int(np.prod([d or 0 for d in out_shape[1:]])) if out_shape else 0
            macs = out_elems * int(k or 0)
        kernel = 1.0
    elif op_type in ("MaxPool", "AveragePool"):
        pool_dims: list[int] = list(attrs.get("kernel_shape") or [1])  # type: ignore[call-overload]
        kernel = float(np.mean(pool_dims))  # type: ignore[arg-type]
        stride = float(max(attrs.get("strides") or [1]))  # type: ignore[arg-type, call-overload]
    if len(wn.fused) > 1 and not weighted:
        category = "BN"
    params = 0
    for fused in wn.fused:
        for t in fused.input:
            if t and t not in feature:
                params += const_numel(t)
    return OpRecord(
        op_id=-1,
        category=category,
        onnx_ops=tuple(n.op_type for n in wn.fused),
        onnx_nodes=tuple(n.name for n in wn.fused),
        inputs=tuple(f_in),
        outputs=tuple(wn.outputs),
        kernel=kernel,
        stride=stride,
        groups=groups,
        macs=macs,
        params=params,
    )


def log_feature(value: float) -> float:
    """``log2(1 + value)``: the scale used for channel counts, sizes, kernels and groups."""
    return math.log2(1.0 + max(float(value), 0.0))

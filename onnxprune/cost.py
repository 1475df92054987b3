"""Analytic cost of an ONNX model and of a pruning plan: MACs, FLOPs, parameters.

Definitions (all counts are for the whole graph at the given batch, batch 1 by default, so
the defaults are *per sample*):

``macs``
    Multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul only.

    - Conv: ``N * C_out * (C_in / group) * prod(kernel) * prod(out_spatial)`` (strides,
      dilations, pads and ``auto_pad`` enter through the output shape from shape inference).
    - ConvTranspose: ``N * C_in * (C_out / group) * prod(kernel) * prod(in_spatial)``
      (every input pixel scatters one kernel; ``output_padding`` adds no MACs).
    - Gemm: ``M * K * N``; MatMul: ``prod(output shape) * K`` (batched/broadcast MatMul
      counts every output element).

``flops``
    The full arithmetic count, with these per-op weights:

    - Conv/ConvTranspose/Gemm/MatMul: ``2 * macs``, plus one add per output element for a
      bias (Conv/ConvTranspose ``B``, Gemm ``C``).
    - BatchNormalization: 2 per element (the folded scale-and-shift).
    - InstanceNormalization, LayerNormalization, GroupNormalization: 5 per element.
    - Softmax, LogSoftmax: 3 per element.
    - MaxPool, AveragePool, LpPool: ``prod(kernel_shape)`` per output element.
    - GlobalAveragePool, GlobalMaxPool, GlobalLpPool, Reduce* and ArgMax/ArgMin
      (:data:`onnxprune.ops.INPUT_REDUCE`): 1 per *input* element.
    - Elementwise arithmetic, comparisons and activations
      (:data:`onnxprune.ops.ELEMENTWISE_ARITHMETIC`): 1 per output element; variadic
      Sum/Max/Min/Mean with k inputs: ``k - 1`` per output element.
    - Data movement, casts, shape reads and constants (:data:`onnxprune.ops.ZERO_COST`:
      Reshape, Transpose, Concat, Slice, Pad, Resize, Cast, Identity, ...): 0.
    - Any other op (e.g. Hardmax, QOperator ops) counts 0 and is listed in
      :attr:`CostReport.uncounted_ops`. :func:`pricing_of` says which rule an op gets.

``params``
    Number of elements of the floating-point initializers (and float ``Constant`` node
    tensors) that nodes consume as *values*, each counted once (at its first consumer). This
    is the ONNX file's view: BatchNormalization's running mean and variance count, integer
    shape constants do not. Operands that only configure an op are not parameters even when
    stored as floats (``_CONFIG_SLOTS``): the shape/index/axes/scale operands of Reshape,
    Resize/Upsample (``roi``, ``scales``, ``sizes``), Slice, Pad (incl. the constant pad
    value), Split, Tile, Expand, ConstantOfShape, (Un)Squeeze and Reduce*, and Clip's
    ``min``/``max`` bounds (attributes before opset 11).

    Which parameters shrink with a plan: weights and biases of Conv/ConvTranspose/Gemm/MatMul
    and BN/InstanceNorm's per-channel inputs (their op handlers), the per-axis scales of
    (De)QuantizeLinear (incl. those of QDQ weights), and the broadcast constants
    of the channel-wise elementwise ops (:data:`onnxprune.ops.CHANNELWISE_BINARY`: Add,
    Mul, PRelu, ...):
    a constant dimension > 1 that equals the output's dimension follows that dimension.
    These are exactly the constants the channel analysis records a ``ParamSlice`` for, so
    surgery slices the same elements the cost model removes. Any other op's float
    constant keeps its full size (e.g. a Concat's constant channels).

Shapes come from ONNX shape inference re-run on a copy of the model whose inputs are fixed
(run-time Reshape targets computed from ``Shape`` nodes are first evaluated to constants on
that copy, :func:`onnxprune.normalize.resolve_reshape_targets`):
a dynamic first dimension becomes ``batch``; any other dynamic input dimension must be given
with ``input_shapes`` (CLI ``--input-shape NAME:1x3x224x224``) or :class:`OnnxPruneError`
names the input.

Pricing a plan: :class:`PlanCost` compiles every node's cost into terms
``coef * d1 * d2 * d3`` whose factors are either constants or :class:`ChannelExpr` values
(affine in the kept channel count of each group), so ``PlanCost.macs(kept)`` is a
matrix-vector product and one dot product. :func:`model_cost` evaluates the very same terms
with no plan, which keeps "cost of the plan == cost of the pruned model" (DESIGN invariant 2)
true by construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import ModelProto

from onnxprune import ops
from onnxprune.deps.graph import attr
from onnxprune.deps.groups import ChannelExpr
from onnxprune.errors import OnnxPruneError
from onnxprune.model import (
    FLOAT_TYPES,
    graph_inputs,
    named_input_shapes,
    parse_input_shapes,
    static_shape,
    tensor_shapes,
)
from onnxprune.normalize import resolve_reshape_targets

__all__ = [
    "ChannelExpr",
    "CostReport",
    "CostTotals",
    "DynamicInputError",
    "MacsTracker",
    "NodeCost",
    "PlanCost",
    "model_cost",
    "parse_input_shapes",
    "pricing_of",
]

# Op families come from onnxprune.ops, so cost prices exactly what the other stages know.
_ELEMENTWISE = ops.ELEMENTWISE_ARITHMETIC
_VARIADIC = ops.VARIADIC
_NORM5 = ops.NORMALIZATION - {"BatchNormalization"}
_SOFTMAX = ops.SOFTMAX
_INPUT_REDUCE = ops.INPUT_REDUCE
_ZERO_COST = ops.ZERO_COST
# Ops whose broadcast float constants are sliced per channel with their output (the channel
# analysis' elementwise handler records a ParamSlice for exactly these).
_CHANNELWISE_PARAMS = ops.CHANNELWISE_BINARY
# Operand slots that configure an op (shapes, indices, axes, scales, bounds, pad values):
# never parameters, whatever their dtype.
_CONFIG_SLOTS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}),
    "Resize": frozenset({1, 2, 3}),
    "Upsample": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Pad": frozenset({1, 2, 3}),
    "Split": frozenset({1}),
    "Tile": frozenset({1}),
    "Expand": frozenset({1}),
    "ConstantOfShape": frozenset({0}),
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "Clip": frozenset({1, 2}),
    "CastLike": frozenset({1}),
    "Range": frozenset({0, 1, 2}),
    **{op: frozenset({1}) for op in ops.REDUCE},
}

_MACS, _FLOPS, _PARAMS = 0, 1, 2
_Shape = tuple[int, ...]
_MAX_FACTORS = 3


@dataclass
class NodeCost:
    """Cost of one node (``name`` falls back to ``<op_type>#<index>`` for unnamed nodes)."""

    name: str
    op_type: str
    macs: int
    flops: int
    params: int

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "op_type": self.op_type,
            "macs": self.macs,
            "flops": self.flops,
            "params": self.params,
        }

    def __str__(self) -> str:
        return (
            f"{self.name} ({self.op_type}): {self.macs:,} MACs, {self.flops:,} FLOPs, "
            f"{self.params:,} params"
        )


@dataclass
class CostTotals:
    """Totals of a cost evaluation (``PlanCost.cost`` returns this)."""

    macs: int
    flops: int
    params: int

    def to_dict(self) -> dict:
        return {"macs": self.macs, "flops": self.flops, "params": self.params}

    def __str__(self) -> str:
        return f"{self.macs:,} MACs, {self.flops:,} FLOPs, {self.params:,} params"


@dataclass
class CostReport:
    """Cost of a whole model: totals, per-node rows, and what could not be counted."""

    macs: int
    flops: int
    params: int
    per_node: list[NodeCost]
    batch: int = 1
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    uncounted_ops: list[str] = field(default_factory=list)

    def to_dict(self, per_node: bool = True) -> dict:
        out: dict = {
            "macs": self.macs,
            "flops": self.flops,
            "params": self.params,
            "batch": self.batch,
            "input_shapes": self.input_shapes,
            "uncounted_ops": self.uncounted_ops,
        }
        if per_node:
            out["per_node"] = [n.to_dict() for n in self.per_node]
        return out

    def __str__(self) -> str:
        shapes = ", ".join(f"{k}[{'x'.join(map(str, v))}]" for k, v in self.input_shapes.items())
        lines = [
            f"MACs    {self.macs:>16,}  ({self.macs / 1e6:,.2f} M)",
            f"FLOPs   {self.flops:>16,}  ({self.flops / 1e6:,.2f} M)",
            f"params  {self.params:>16,}  ({self.params / 1e6:,.3f} M)",
            f"input   {shapes}",
        ]
        if self.uncounted_ops:
            lines.append("not counted (0 FLOPs): " + ", ".join(self.uncounted_ops))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# shapes


class DynamicInputError(OnnxPruneError):
    """A cost needs a static input size the model does not declare and nobody gave."""


def _fixed_shape_model(
    model: ModelProto, batch: int, input_shapes: Mapping[str, Sequence[int]] | None
) -> tuple[ModelProto, dict[str, list[int]]]:
    """Copy of ``model`` with static input shapes and freshly inferred shapes everywhere."""
    fixed = ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    for out in fixed.graph.output:
        if out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")
    input_shapes = named_input_shapes(fixed, input_shapes or {}, "--input-shape")
    used: dict[str, list[int]] = {}
    for inp in graph_inputs(fixed):
        tensor_type = inp.type.tensor_type
        dims = tensor_type.shape.dim
        if inp.name in input_shapes:
            wanted = list(input_shapes[inp.name])
            if len(wanted) != len(dims):
                raise OnnxPruneError(
                    f"--input-shape for '{inp.name}' has rank {len(wanted)} but the input has "
                    f"rank {len(dims)}"
                )
            for dim, value in zip(dims, wanted, strict=True):
                dim.Clear()
                dim.dim_value = int(value)
        else:
            for axis, dim in enumerate(dims):
                if dim.HasField("dim_value") and dim.dim_value > 0:
                    continue
                if axis == 0:
                    dim.Clear()
                    dim.dim_value = batch
                    continue
                label = dim.dim_param or "?"
                example = "x".join(
                    str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else "N"
                    for d in dims
                )
                raise DynamicInputError(
                    f"input '{inp.name}' has dynamic dimension {axis} ('{label}'), so its cost "
                    f"depends on the input size; fix it with --input-shape {inp.name}:{example} "
                    "(or input_shapes=...)"
                )
        used[inp.name] = [int(d.dim_value) for d in dims]
    try:
        fixed = onnx.shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True)
        # ONNX data propagation does not follow the Shape -> Cast -> Slice -> Concat -> Cast
        # chains paddle2onnx/tf2onnx/old torch use for Reshape targets; at fixed input shapes
        # those targets are constants, so write them as such and infer again.
        fixed, _ = resolve_reshape_targets(fixed)
    except Exception as exc:
        raise OnnxPruneError(
            f"ONNX shape inference failed on the model ({exc}); the cost needs tensor shapes"
        ) from exc
    return fixed, used


def _shape_table(model: ModelProto) -> dict[str, _Shape | None]:
    """Fully static shapes only: a cost factor needs every dim of its tensor."""
    return {name: static_shape(dims) for name, dims in tensor_shapes(model).items()}


# --------------------------------------------------------------------------------------------
# cost terms

# A factor is a static int or a (tensor name, axis) reference that a ChannelExpr may replace.
_Factor = int | tuple[str, int]


@dataclass
class _Term:
    node_index: int
    kind: int  # _MACS / _FLOPS / _PARAMS
    coef: float
    factors: tuple[tuple[str, int], ...]  # (tensor, axis) dims; static ones folded into coef


class _TermBuilder:
    """Turns each node into cost terms; one handler per op family (no name-based decisions)."""

    def __init__(self, model: ModelProto, shapes: dict[str, _Shape | None]) -> None:
        self.model = model
        self.shapes = shapes
        self.terms: list[_Term] = []
        self.uncounted: set[str] = set()
        self.float_inits = {
            t.name: list(t.dims) for t in model.graph.initializer if t.data_type in FLOAT_TYPES
        }
        # exporters that store weights in Constant nodes (paddle2onnx, some torch versions):
        # those tensors are parameters just like initializers
        for node in model.graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None and value.data_type in FLOAT_TYPES:
                    self.float_inits.setdefault(node.output[0], list(value.dims))
        self.counted_inits: set[str] = set()
        self.conv_depthwise: dict[int, bool] = {}

    # helpers --------------------------------------------------------------------------------
    def shape(self, node: onnx.NodeProto, tensor: str, required: bool) -> _Shape | None:
        shape = self.shapes.get(tensor)
        if shape is None and required:
            raise OnnxPruneError(
                f"node '{node.name or node.op_type}' ({node.op_type}): shape of tensor '{tensor}' "
                "is unknown after shape inference, so its MACs cannot be counted; give fixed "
                "input shapes with --input-shape NAME:1x3x224x224"
            )
        return shape

    def add(self, index: int, kind: int, coef: float, *factors: _Factor) -> None:
        static = 1.0
        dynamic: list[tuple[str, int]] = []
        for factor in factors:
            if isinstance(factor, tuple):
                dynamic.append(factor)
            else:
                static *= factor
        if coef * static != 0:
            self.terms.append(_Term(index, kind, coef * static, tuple(dynamic)))

    def elements(self, tensor: str, shape: Sequence[int]) -> list[_Factor]:
        return [(tensor, axis) for axis in range(len(shape))]

    def build(self) -> None:
        for index, node in enumerate(self.model.graph.node):
            pricing = pricing_of(node.op_type)
            if pricing == "handler":
                _HANDLERS[node.op_type](self, index, node)
            elif pricing == "variadic":
                self.elementwise(index, node, max(len([i for i in node.input if i]) - 1, 1))
            elif pricing == "input_elements":
                self.input_elements(index, node)
            elif pricing in _PER_ELEMENT_FLOPS:
                self.elementwise(index, node, _PER_ELEMENT_FLOPS[pricing])
            elif pricing is None:
                self.uncounted.add(node.op_type)
            self.generic_params(index, node)

    # flops families -------------------------------------------------------------------------
    def elementwise(self, index: int, node: onnx.NodeProto, per_element: float) -> None:
        out = node.output[0]
        shape = self.shape(node, out, required=False)
        if shape is None:
            self.uncounted.add(f"{node.op_type} (unknown shape)")
            return
        self.add(index, _FLOPS, per_element, *self.elements(out, shape))

    def input_elements(self, index: int, node: onnx.NodeProto) -> None:
        shape = self.shape(node, node.input[0], required=False)
        if shape is None:
            self.uncounted.add(f"{node.op_type} (unknown shape)")
            return
        self.add(index, _FLOPS, 1, *self.elements(node.input[0], shape))

    # params ---------------------------------------------------------------------------------
    def take_param(self, name: str) -> list[int] | None:
        """Shape of a float initializer the first time a node consumes it, else None."""
        if not name or name not in self.float_inits or name in self.counted_inits:
            return None
        self.counted_inits.add(name)
        return self.float_inits[name]

    def generic_params(self, index: int, node: onnx.NodeProto) -> None:
        """Float constants not taken by an op handler.

        Configuration operands (``_CONFIG_SLOTS``) are not parameters. Constants of the
        channel-wise ops in ``_CHANNELWISE_PARAMS`` broadcast against output 0 (right-aligned):
        a dimension > 1 that matches the output's dimension follows that output's channel
        expression, e.g. a per-channel ``[C, 1, 1]`` scale of a ``Mul`` (the channel analysis
        slices exactly these). Any other op's constant keeps its full size.
        """
        config = _CONFIG_SLOTS.get(node.op_type, frozenset())
        channelwise = node.op_type in _CHANNELWISE_PARAMS
        out_shape = self.shapes.get(node.output[0]) if node.output and channelwise else None
        for slot, name in enumerate(node.input):
            if slot in config:
                continue
            init_shape = self.take_param(name)
            if init_shape is None:
                continue
            factors: list[_Factor] = []
            offset = len(out_shape) - len(init_shape) if out_shape is not None else -1
            for axis, size in enumerate(init_shape):
                if out_shape is not None and offset >= 0 and size > 1:
                    if out_shape[axis + offset] == size:
                        factors.append((node.output[0], axis + offset))
                        continue
                factors.append(size)
            self.add(index, _PARAMS, 1, *factors)


def _operands(
    b: _TermBuilder, node: onnx.NodeProto
) -> tuple[str, str, str, _Shape, _Shape, _Shape]:
    """``(x, w, y, x_shape, w_shape, y_shape)`` of a weighted op; the shapes are required."""
    x, w, y = node.input[0], node.input[1], node.output[0]
    x_shape = b.shape(node, x, required=True)
    w_shape = b.shape(node, w, required=True)
    y_shape = b.shape(node, y, required=True)
    assert x_shape is not None and w_shape is not None and y_shape is not None
    return x, w, y, x_shape, w_shape, y_shape


def _conv_terms(b: _TermBuilder, index: int, node: onnx.NodeProto, transposed: bool) -> None:
    """Conv: ``N * C_out * (C_in / group) * k * out_spatial`` MACs. ConvTranspose (W is
    ``[C_in, C_out / group, k...]``, every input pixel scatters one kernel):
    ``N * C_in * (C_out / group) * k * in_spatial = N * C_out * (C_in / group) * k *
    in_spatial``, so both read the batch and spatial sizes from one tensor: the output for
    Conv, the input for ConvTranspose."""
    x, w, y, x_shape, w_shape, y_shape = _operands(b, node)
    group = int(attr(node, "group", 1))
    kernel = int(np.prod(w_shape[2:], dtype=np.int64))
    # ARCHITECTURE.md depthwise rule: group == C_in means one input channel per group, and the
    # group count follows the kept input channels; any other group count stays fixed.
    depthwise = group == x_shape[1]
    # Per-group input channels as a function of the kept input channels.
    in_per_group: tuple[float, tuple[_Factor, ...]] = (
        (1.0, ()) if depthwise else (1.0 / group, ((x, 1),))
    )
    coef, in_factor = in_per_group
    sized, sized_shape = (x, x_shape) if transposed else (y, y_shape)
    spatial = [(sized, axis) for axis in range(2, len(sized_shape))]
    b.add(index, _MACS, coef * kernel, (sized, 0), (y, 1), *in_factor, *spatial)
    b.add(index, _FLOPS, 2 * coef * kernel, (sized, 0), (y, 1), *in_factor, *spatial)
    if b.take_param(w) is not None:
        b.add(index, _PARAMS, coef * kernel, (y, 1), *in_factor)
    if len(node.input) > 2 and node.input[2]:
        b.add(index, _FLOPS, 1, *b.elements(y, y_shape))
        if b.take_param(node.input[2]) is not None:
            b.add(index, _PARAMS, 1, (y, 1))


def _conv(b: _TermBuilder, index: int, node: onnx.NodeProto) -> None:
    _conv_terms(b, index, node, transposed=False)


def _conv_transpose(b: _TermBuilder, index: int, node: onnx.NodeProto) -> None:
    _conv_terms(b, index, node, transposed=True)


def _gemm(b: _TermBuilder, index: int, node: onnx.NodeProto) -> None:
    a, w, y, a_shape, w_shape, y_shape = _operands(b, node)
    trans_a = int(attr(node, "transA", 0))
    trans_b = int(attr(node, "transB", 0))
    k_factor: _Factor = (a, 0 if trans_a else 1)
    b.add(index, _MACS, 1, (y, 0), (y, 1), k_factor)
    b.add(index, _FLOPS, 2, (y, 0), (y, 1), k_factor)
    if b.take_param(w) is not None:
        b.add(index, _PARAMS, 1, (y, 1), k_factor)
    del trans_b  # B's layout does not change its element count
    if len(node.input) > 2 and node.input[2]:
        b.add(index, _FLOPS, 1, (y, 0), (y, 1))
        c_shape = b.take_param(node.input[2])
        if c_shape is not None:
            factors: list[_Factor] = list(c_shape)
            if c_shape and c_shape[-1] == y_shape[1] and y_shape[1] > 1:
                factors[-1] = (y, 1)
            b.add(index, _PARAMS, 1, *factors)


def _matmul(b: _TermBuilder, index: int, node: onnx.NodeProto) -> None:
    a, w, y, a_shape, w_shape, y_shape = _operands(b, node)
    k_factor: _Factor = (a, len(a_shape) - 1)
    out = b.elements(y, y_shape)
    b.add(index, _MACS, 1, k_factor, *out)
    b.add(index, _FLOPS, 2, k_factor, *out)
    for name, shape, is_a in ((a, a_shape, True), (w, w_shape, False)):
        if b.take_param(name) is None:
            continue
        factors: list[_Factor] = list(shape)
        if is_a:
            factors[-1] = k_factor
        elif len(shape) >= 2:
            factors[-2] = k_factor
            factors[-1] = (y, len(y_shape) - 1)
        else:
            factors[-1] = k_factor
        b.add(index, _PARAMS, 1, *factors)


def _batchnorm(b: _TermBuilder, index: int, node: onnx.NodeProto) -> None:
    x = node.input[0]
    shape = b.shape(node, x, required=False)
    if shape is None:
        b.uncounted.add("BatchNormalization (unknown shape)")
    else:
        b.add(index, _FLOPS, 2, *b.elements(x, shape))
    for name in node.input[1:5]:
        if b.take_param(name) is not None:
            b.add(index, _PARAMS, 1, (x, 1))


def _instance_norm(b: _TermBuilder, index: int, node: onnx.NodeProto) -> None:
    """5 FLOPs per element; ``scale`` and ``B`` are per-channel (axis 1), like BN's."""
    b.elementwise(index, node, 5)
    for name in node.input[1:3]:
        if b.take_param(name) is not None:
            b.add(index, _PARAMS, 1, (node.input[0], 1))


def _quantize_linear(b: _TermBuilder, index: int, node: onnx.NodeProto) -> None:
    """(De)QuantizeLinear: a 1-D per-axis float scale follows output dimension ``axis`` (the
    channel analysis slices it with the channels, or with a QDQ weight's rows/columns);
    per-tensor and blocked scales keep their size. Zero points are integers (not params)."""
    out = node.output[0]
    out_shape = b.shapes.get(out)
    for name in node.input[1:3]:
        shape = b.take_param(name)
        if shape is None:
            continue
        if out_shape is not None and len(shape) == 1 and shape[0] > 1:
            axis = int(attr(node, "axis", 1)) % len(out_shape)
            if out_shape[axis] == shape[0]:
                b.add(index, _PARAMS, 1, (out, axis))
                continue
        b.add(index, _PARAMS, 1, *shape)


def _pool(b: _TermBuilder, index: int, node: onnx.NodeProto) -> None:
    kernel = int(np.prod(attr(node, "kernel_shape", [1]), dtype=np.int64))
    b.elementwise(index, node, kernel)


_HANDLERS = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _batchnorm,
    "InstanceNormalization": _instance_norm,
    **{op: _quantize_linear for op in ops.QUANTIZE},
    **{op: _pool for op in ops.POOL},
}
# FLOPs per output element of the families priced elementwise (module docstring).
_PER_ELEMENT_FLOPS = {"elementwise": 1, "normalization": 5, "softmax": 3}


def pricing_of(op_type: str) -> str | None:
    """How :func:`model_cost` counts the FLOPs of ``op_type``: ``"handler"`` (its own rule),
    ``"elementwise"``, ``"variadic"``, ``"normalization"``, ``"softmax"``,
    ``"input_elements"``, ``"zero"`` (data movement), or ``None`` (not counted, listed in
    :attr:`CostReport.uncounted_ops`)."""
    if op_type in _HANDLERS:
        return "handler"
    for pricing, family in (
        ("elementwise", _ELEMENTWISE),
        ("variadic", _VARIADIC),
        ("normalization", _NORM5),
        ("softmax", _SOFTMAX),
        ("input_elements", _INPUT_REDUCE),
        ("zero", _ZERO_COST),
    ):
        if op_type in family:
            return pricing
    return None


def _node_label(index: int, node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}#{index}"


# --------------------------------------------------------------------------------------------
# compiled evaluation


class _Compiled:
    """Terms as arrays: ``value = sum(coef * v[f1] * v[f2] * v[f3])`` per kind.

    ``v = E @ [kept..., 1]`` holds the value of every referenced dimension; row 0 is the
    constant 1 (padding for unused factor slots).
    """

    def __init__(
        self,
        terms: list[_Term],
        shapes: dict[str, _Shape | None],
        channel_exprs: Mapping[str, ChannelExpr],
        group_ids: list[int],
    ) -> None:
        column = {group_id: i for i, group_id in enumerate(group_ids)}
        n_cols = len(group_ids) + 1
        rows: list[np.ndarray] = [np.eye(1, n_cols, n_cols - 1)[0]]
        row_of: dict[str, int] = {}
        for tensor, expr in channel_exprs.items():
            row = np.zeros(n_cols)
            row[-1] = expr.const
            for group_id, mult in expr.terms:
                if group_id not in column:
                    raise OnnxPruneError(
                        f"channel expression of tensor '{tensor}' uses group {group_id}, which is "
                        "not in group_sizes"
                    )
                row[column[group_id]] += mult
            row_of[tensor] = len(rows)
            rows.append(row)
        self.matrix = np.array(rows)
        self.kinds = np.array([t.kind for t in terms], dtype=np.int64)
        self.nodes = np.array([t.node_index for t in terms], dtype=np.int64)
        coefs = np.zeros(len(terms))
        index = np.zeros((len(terms), _MAX_FACTORS), dtype=np.int64)
        for i, term in enumerate(terms):
            coef = term.coef
            slots: list[int] = []
            for tensor, axis in term.factors:
                factor_expr = channel_exprs.get(tensor)
                shape = shapes.get(tensor)
                rank = len(shape) if shape is not None else axis + 1
                if factor_expr is not None and factor_expr.axis % rank == axis % rank:
                    slots.append(row_of[tensor])
                else:
                    if shape is None:
                        raise OnnxPruneError(f"shape of tensor '{tensor}' is unknown")
                    coef *= shape[axis]
            if len(slots) > _MAX_FACTORS:
                raise OnnxPruneError(
                    f"a cost term depends on {len(slots)} pruned dimensions (at most "
                    f"{_MAX_FACTORS} supported): {term.factors}"
                )
            index[i, : len(slots)] = slots
            coefs[i] = coef
        self.coefs = coefs
        self.index = index
        # Per-kind arrays for the hot path.
        self.by_kind = []
        for kind in (_MACS, _FLOPS, _PARAMS):
            mask = self.kinds == kind
            used = index[mask]
            self.by_kind.append((coefs[mask], used[:, 0], used[:, 1], used[:, 2]))

    def dim_values(self, kept_ext: np.ndarray) -> np.ndarray:
        return self.matrix @ kept_ext

    def total(self, kind: int, values: np.ndarray) -> int:
        coefs, i1, i2, i3 = self.by_kind[kind]
        return int(round(float(coefs @ (values[i1] * values[i2] * values[i3]))))

    def per_term(self, values: np.ndarray) -> np.ndarray:
        v = values[self.index]
        return self.coefs * v[:, 0] * v[:, 1] * v[:, 2]


def _build(
    model: ModelProto, batch: int, input_shapes: Mapping[str, Sequence[int]] | None
) -> tuple[ModelProto, dict[str, _Shape | None], _TermBuilder, dict[str, list[int]]]:
    if batch < 1:
        raise OnnxPruneError(f"batch must be >= 1, got {batch}")
    fixed, used = _fixed_shape_model(model, batch, input_shapes)
    shapes = _shape_table(fixed)
    builder = _TermBuilder(fixed, shapes)
    builder.build()
    return fixed, shapes, builder, used


def model_cost(
    model: ModelProto, batch: int = 1, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> CostReport:
    """MACs, FLOPs and params of ``model`` (definitions in the module docstring).

    ``batch`` fills a dynamic first input dimension (default 1: per-sample cost);
    ``input_shapes`` (``{input name: full shape}``) fixes any other dynamic input dimension.
    Raises :class:`OnnxPruneError` naming the input when a dynamic non-batch dimension is not
    given, or naming the node and tensor when a MAC op's shape stays unknown.
    """
    fixed, shapes, builder, used = _build(model, batch, input_shapes)
    compiled = _Compiled(builder.terms, shapes, {}, [])
    values = compiled.dim_values(np.ones(1))
    per_term = compiled.per_term(values)
    n_nodes = len(fixed.graph.node)
    sums = np.zeros((n_nodes, 3))
    np.add.at(sums, (compiled.nodes, compiled.kinds), per_term)
    per_node = [
        NodeCost(
            _node_label(i, node),
            node.op_type,
            int(round(sums[i, _MACS])),
            int(round(sums[i, _FLOPS])),
            int(round(sums[i, _PARAMS])),
        )
        for i, node in enumerate(fixed.graph.node)
    ]
    return CostReport(
        macs=sum(n.macs for n in per_node),
        flops=sum(n.flops for n in per_node),
        params=sum(n.params for n in per_node),
        per_node=per_node,
        batch=batch,
        input_shapes=used,
        uncounted_ops=sorted(builder.uncounted),
    )


class MacsTracker:
    """The MACs of a plan kept up to date while single groups change (:meth:`set`).

    A MAC term is a product of dimension values, each affine in the kept counts (a layer's
    ``C_out * C_in / group * k * spatial``). Per group, the rows of the dimension matrix it
    enters and the MAC terms reading those rows are found once; changing the group's count
    updates only those dimensions and re-prices only those terms, so growing one group costs
    the layers it touches instead of the whole plan (:meth:`onnxprune.budget.Budget.fill`).
    :attr:`macs` equals :meth:`PlanCost.macs` of the same counts (each term is an integer
    MAC count, summed exactly in float64).
    """

    def __init__(self, compiled: _Compiled, kept_ext: np.ndarray) -> None:
        self._matrix = compiled.matrix
        self._kept = np.array(kept_ext, dtype=np.float64)
        self._values = compiled.dim_values(self._kept)
        coefs, i1, i2, i3 = compiled.by_kind[_MACS]
        self._coefs, self._slots = coefs, np.stack([i1, i2, i3], axis=1)  # [terms], [terms, 3]
        self._products = self._price(np.arange(len(coefs)))
        self._total = float(self._products.sum())
        self._touched: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _price(self, terms: np.ndarray) -> np.ndarray:
        v = self._values[self._slots[terms]]
        return self._coefs[terms] * v[:, 0] * v[:, 1] * v[:, 2]

    def _rows_terms(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        if position not in self._touched:
            rows = np.flatnonzero(self._matrix[:, position])
            reads = np.isin(self._slots, rows).any(axis=1)
            self._touched[position] = (rows, np.flatnonzero(reads))
        return self._touched[position]

    def set(self, position: int, count: float) -> None:
        """Group at ``position`` (in :attr:`PlanCost.group_ids` order) now keeps ``count``."""
        delta = count - self._kept[position]
        if delta == 0:
            return
        rows, terms = self._rows_terms(position)
        self._kept[position] = count
        self._values[rows] += delta * self._matrix[rows, position]
        priced = self._price(terms)
        self._total += float(priced.sum() - self._products[terms].sum())
        self._products[terms] = priced

    @property
    def macs(self) -> int:
        return int(round(self._total))


class PlanCost:
    """Prices a plan (kept channels per group) without building the pruned model.

    ``channel_exprs`` maps tensor names to the :class:`ChannelExpr` of their pruned axis
    (tensors absent keep their size); ``group_sizes`` maps every group id to its full channel
    count. Construction runs shape inference once and caches one coefficient per cost term;
    :meth:`macs` is then one small matrix-vector product and one dot product.

    ``kept`` is a ``dict[group_id, int]`` (missing groups keep every channel) or a numpy
    vector ordered like :attr:`group_ids`. The smallest reachable fraction under a rounding
    rule is :attr:`onnxprune.budget.Budget.smallest_fraction`.
    """

    def __init__(
        self,
        model: ModelProto,
        channel_exprs: Mapping[str, ChannelExpr],
        group_sizes: Mapping[int, int],
        *,
        batch: int = 1,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        _, shapes, builder, used = _build(model, batch, input_shapes)
        #: The input shapes the costs are for (``{input: dims}``, batch included).
        self.input_shapes: dict[str, list[int]] = used
        self.group_ids: list[int] = sorted(group_sizes)
        self.group_sizes = dict(group_sizes)
        self._full = np.array([group_sizes[g] for g in self.group_ids] + [1], dtype=np.float64)
        self._position = {group_id: i for i, group_id in enumerate(self.group_ids)}
        self._compiled = _Compiled(builder.terms, shapes, channel_exprs, self.group_ids)
        self._full_values = self._compiled.dim_values(self._full)
        self.full_macs = self._compiled.total(_MACS, self._full_values)

    def _extended(self, kept) -> np.ndarray:
        if isinstance(kept, Mapping):
            vector = self._full.copy()
            for group_id, count in kept.items():
                if group_id not in self._position:
                    raise OnnxPruneError(f"plan keeps channels of unknown group {group_id}")
                vector[self._position[group_id]] = count
            return vector
        vector = np.empty(len(self.group_ids) + 1)
        vector[:-1] = kept
        vector[-1] = 1.0
        return vector

    def macs(self, kept) -> int:
        """MACs of the model with ``kept`` channels per group."""
        return self._compiled.total(_MACS, self._compiled.dim_values(self._extended(kept)))

    def cost(self, kept) -> CostTotals:
        """MACs, FLOPs and params of the model with ``kept`` channels per group."""
        values = self._compiled.dim_values(self._extended(kept))
        return CostTotals(
            self._compiled.total(_MACS, values),
            self._compiled.total(_FLOPS, values),
            self._compiled.total(_PARAMS, values),
        )

    def macs_fraction(self, kept) -> float:
        """``macs(kept) / macs(full)``."""
        return self.macs(kept) / self.full_macs if self.full_macs else 1.0

    def tracker(self, kept) -> MacsTracker:
        """A :class:`MacsTracker` starting at ``kept`` (for plans changed one group at a time)."""
        return MacsTracker(self._compiled, self._extended(kept))

    def __str__(self) -> str:
        return (
            f"PlanCost({len(self.group_ids)} groups, {len(self._compiled.coefs)} terms, "
            f"full {self.full_macs:,} MACs)"
        )

"""Per-op channel handlers: how a channel index propagates through each operator.

A handler ``fn(state, node_index) -> set[int]`` reads the channel layout of the node's
inputs (``state.chan``), writes the layout of its outputs, ties atoms that must be removed
together, freezes what it cannot rewrite (always with a reason naming the node and op) and
records the surgery actions. It returns the input slots it understood: channel-carrying
inputs in any other slot are frozen by the engine. Register with ``@handler("Op", ...)``.
Ops without a handler freeze every channel they receive. Decisions never use node names.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxprune import ops
from onnxprune.deps.graph import attr
from onnxprune.deps.state import (
    ChanInfo,
    DepthwiseGroup,
    GroupedConv,
    MaskSlot,
    PadAmounts,
    ParamSlice,
    ShapeEntry,
    SliceBounds,
    SplitSizes,
    State,
)
from onnxprune.errors import InternalError

Handler = Callable[[State, int], set[int]]
HANDLERS: dict[str, Handler] = {}


def handler(*op_types: str) -> Callable[[Handler], Handler]:
    """Register ``fn`` as the channel handler of ``op_types`` (default ONNX domain; the
    families of :mod:`onnxprune.ops`)."""

    def register(fn: Handler) -> Handler:
        for op_type in op_types:
            HANDLERS[op_type] = fn
        return fn

    return register


def _label(state: State, i: int) -> str:
    return state.index.node_label(i)


def _freeze_inputs(state: State, i: int, reason: str) -> set[int]:
    """Freeze every channel input of node ``i``; the outputs carry no channel info."""
    node = state.index.nodes[i]
    for name in node.input:
        if name:
            state.freeze_tensor(name, f"node {_label(state, i)}: {reason}")
    return set(range(len(node.input)))


def _ints(value) -> list[int] | None:
    if value is None:
        return None
    return [int(v) for v in np.asarray(value).reshape(-1).tolist()]


def _slot_const(state: State, i: int, slot: int):
    node = state.index.nodes[i]
    if slot >= len(node.input) or not node.input[slot]:
        return None
    return state.index.const(node.input[slot])


def _has_slot(state: State, i: int, slot: int) -> bool:
    node = state.index.nodes[i]
    return slot < len(node.input) and bool(node.input[slot])


# -- channel-wise ops -------------------------------------------------------------------
@handler(*ops.CHANNELWISE_UNARY)
def unary(state: State, i: int) -> set[int]:
    """Channel-wise unary op: output channel c is input channel c (extra inputs are scalars
    or, for CastLike, a type reference)."""
    node = state.index.nodes[i]
    info = state.chan.get(node.input[0])
    if info is not None:
        state.chan[node.output[0]] = ChanInfo(info.axis, info.atoms)
    if node.op_type == "Clip":
        for slot in (1, 2):
            value = _slot_const(state, i, slot)
            if _has_slot(state, i, slot) and (value is None or value.size != 1):
                shape = state.index.shape(node.input[slot])
                if shape is None or int(np.prod([d or 0 for d in shape])) != 1:
                    _freeze_inputs(state, i, "Clip bound is not a scalar")
                    state.chan.pop(node.output[0], None)
    if node.op_type == "CastLike":
        return {0, 1}
    return {0}


@handler(*ops.CHANNELWISE_BINARY)
def elementwise(state: State, i: int) -> set[int]:
    """Broadcasting elementwise op: channel inputs are tied position by position (residual
    Add/Sum/Max, squeeze-excitation Mul of x with its gate); constants that span the channel
    axis are sliced with it; anything else spanning the channel axis freezes."""
    index = state.index
    node = state.index.nodes[i]
    out = node.output[0]
    inputs = [(slot, name) for slot, name in enumerate(node.input) if name]
    chan_inputs = [(slot, name, state.chan[name]) for slot, name in inputs if name in state.chan]
    claimed = {slot for slot, _ in inputs}
    if not chan_inputs:
        return claimed
    ranks: dict[str, int] = {}
    for _, name in inputs:
        rank = index.rank(name)
        if rank is None:
            info = state.chan.get(name)
            if info is None or len(inputs) > 1:
                _freeze_inputs(state, i, f"the rank of input '{name}' is unknown (no shape info)")
                return claimed
            rank = info.axis + 1
        ranks[name] = rank
    out_rank = max(ranks.values())
    first = chan_inputs[0][2]
    out_axis = first.axis + out_rank - ranks[chan_inputs[0][1]]
    for _, name, info in chan_inputs[1:]:
        axis = info.axis + out_rank - ranks[name]
        if axis != out_axis or len(info.atoms) != len(first.atoms):
            _freeze_inputs(
                state,
                i,
                f"inputs '{chan_inputs[0][1]}' and '{name}' carry channels on different axes "
                "or with different lengths (broadcast across channels)",
            )
            return claimed
        state.union(first.atoms, info.atoms)
    length = len(first.atoms)
    for slot, name in inputs:
        if name in state.chan:
            continue
        shape = index.shape(name)
        assert shape is not None  # rank known above
        axis = out_axis - (out_rank - len(shape))
        if axis < 0 or shape[axis] == 1:
            continue
        if index.const(name) is not None and shape[axis] == length:
            state.actions.append(ParamSlice(i, slot, axis, out, "param"))
        else:
            _freeze_inputs(
                state,
                i,
                f"input '{name}' spans the channel axis but is not a constant that can be sliced",
            )
            return claimed
    state.chan[out] = ChanInfo(out_axis, first.atoms)
    return claimed


@handler(*ops.QUANTIZE)
def quantize(state: State, i: int) -> set[int]:
    """QDQ activations: (de)quantization is elementwise, so channels pass. Per-tensor scale and
    zero point are untouched; per-axis ones on the channel axis are sliced with it; per-axis
    on another axis, or block quantization, freezes. (Weight-path DequantizeLinear nodes
    carry no channels in; their consumers slice them, see :func:`_slice_param`.)"""
    index = state.index
    node = index.nodes[i]
    info = state.chan.get(node.input[0])
    if info is None:
        return {0, 1, 2}
    if int(attr(node, "block_size", 0)):
        return _freeze_inputs(state, i, "block quantization is not supported")
    rank = index.rank(node.input[0]) or info.axis + 1
    quant_axis = int(attr(node, "axis", 1)) % rank
    for slot in (1, 2):
        if not _has_slot(state, i, slot):
            continue
        value = _slot_const(state, i, slot)
        if value is None:
            return _freeze_inputs(state, i, f"scale/zero point '{node.input[slot]}' is computed")
        if value.size > 1:
            if quant_axis != info.axis or value.shape[0] != len(info.atoms):
                return _freeze_inputs(
                    state, i, f"quantized per axis {quant_axis}, channels are on {info.axis}"
                )
            state.actions.append(ParamSlice(i, slot, 0, node.output[0], "param"))
    state.chan[node.output[0]] = ChanInfo(info.axis, info.atoms)
    return {0, 1, 2}


_QOPERATOR_WEIGHT_SLOT = {
    "QLinearConv": 3,
    "ConvInteger": 1,
    "QLinearMatMul": 3,
    "MatMulInteger": 1,
}


@handler(*ops.QOPERATOR)
def qoperator(state: State, i: int) -> set[int]:
    """QOperator-format quantized ops are not rewritten: their input channels freeze, and a
    weighted one (QLinearConv, QLinearMatMul, ...) makes a frozen group of its output
    channels, so the user sees why nothing in the model is prunable."""
    node = state.index.nodes[i]
    reason = (
        "quantized operator (QOperator format) is not supported; quantize in QDQ format "
        "(onnxruntime.quantization QuantFormat.QDQ) to prune, or prune the float model first"
    )
    claimed = _freeze_inputs(state, i, reason)
    slot = _QOPERATOR_WEIGHT_SLOT.get(node.op_type)
    weight = _slot_const(state, i, slot) if slot is not None else None
    rank = state.index.rank(node.output[0])
    if weight is None or weight.ndim < 2 or rank is None:
        return claimed
    conv = node.op_type in ("QLinearConv", "ConvInteger")
    atoms = state.new_atoms(int(weight.shape[0] if conv else weight.shape[-1]), i, node.output[0])
    state.chan[node.output[0]] = ChanInfo(1 if conv else rank - 1, atoms)
    state.freeze(atoms, f"node {_label(state, i)}: {reason}")
    return claimed


@handler("Expand")
def expand(state: State, i: int) -> set[int]:
    """Expand of a channel tensor to a constant shape: the channel entry of the shape must be
    1 (broadcast) or the channel count (rewritten to the kept count)."""
    index = state.index
    node = index.nodes[i]
    info = state.chan.get(node.input[0])
    if info is None:
        return {0, 1}
    target = _ints(_slot_const(state, i, 1))
    rank = index.rank(node.input[0])
    if target is None or rank is None:
        return _freeze_inputs(state, i, "target shape computed at runtime or input rank unknown")
    out_rank = max(rank, len(target))
    out_axis = info.axis + out_rank - rank
    entry = out_axis - (out_rank - len(target))
    if entry >= 0 and target[entry] not in (1, len(info.atoms)):
        return _freeze_inputs(state, i, f"expands the channel axis to {target[entry]}")
    if entry >= 0 and target[entry] == len(info.atoms) and len(info.atoms) != 1:
        state.actions.append(ShapeEntry(i, 1, entry, node.output[0]))
    state.chan[node.output[0]] = ChanInfo(out_axis, info.atoms)
    return {0, 1}


@handler(*ops.CHANNEL_NORM)
def normalization(state: State, i: int) -> set[int]:
    """Per-channel normalisation on axis 1: scale/bias (and BN mean/var) sliced with it."""
    node = state.index.nodes[i]
    info = state.chan.get(node.input[0])
    if info is None:
        return {0}
    if info.axis != 1:
        return _freeze_inputs(state, i, f"channels on axis {info.axis}, the op normalises axis 1")
    params = range(1, len(node.input))
    for slot in params:
        if state.index.const(node.input[slot]) is None:
            return _freeze_inputs(state, i, f"parameter '{node.input[slot]}' is not a constant")
    for slot in params:
        state.actions.append(ParamSlice(i, slot, 0, node.output[0], "param"))
    state.chan[node.output[0]] = ChanInfo(1, info.atoms)
    return {0}


@handler(*ops.POOL, *ops.GLOBAL_POOL)
def pooling(state: State, i: int) -> set[int]:
    """Spatial pooling: channels on axis 1 pass through."""
    node = state.index.nodes[i]
    info = state.chan.get(node.input[0])
    if info is None:
        return {0}
    if info.axis != 1:
        return _freeze_inputs(state, i, f"channels on axis {info.axis}, pooling expects axis 1")
    state.chan[node.output[0]] = ChanInfo(1, info.atoms)
    return {0}


@handler(*ops.AXIS_NORMALIZE)
def softmax(state: State, i: int) -> set[int]:
    """Softmax over a non-channel axis passes channels; over the channel axis it freezes."""
    node = state.index.nodes[i]
    info = state.chan.get(node.input[0])
    if info is None:
        return {0}
    rank = state.index.rank(node.input[0])
    default_axis = 1 if state.index.opset < 13 else -1
    if rank is None and int(attr(node, "axis", default_axis)) >= 0:
        rank = max(info.axis, int(attr(node, "axis", default_axis))) + 1  # enough to compare
    if rank is None:
        return _freeze_inputs(state, i, "input rank unknown")
    if state.index.opset < 13:
        axis = attr(node, "axis", 1) % rank
        if info.axis >= axis:
            return _freeze_inputs(state, i, f"normalises over the channel axis {info.axis}")
    else:
        axis = attr(node, "axis", -1) % rank
        if info.axis == axis:
            return _freeze_inputs(state, i, f"normalises over the channel axis {info.axis}")
    state.chan[node.output[0]] = ChanInfo(info.axis, info.atoms)
    return {0}


# -- weighted producers / consumers -------------------------------------------------------
def _dq_weight(state: State, name: str) -> int | None:
    """Index of the ``DequantizeLinear`` node computing ``name`` from initializers only (a
    QDQ-quantized weight, per-tensor or per-axis, no block quantization) when ``name`` has
    exactly one consumer; else ``None``."""
    index = state.index
    producer = index.producer.get(name)
    if producer is None:
        return None
    node = index.nodes[producer]
    if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    if int(attr(node, "block_size", 0)):
        return None
    if not all(index.const(n) is not None for n in node.input if n):
        return None
    if len(index.consumers.get(name, [])) != 1:
        return None
    return producer


def _weight(state: State, i: int, slot: int) -> np.ndarray | None:
    """Constant input ``slot`` of node ``i``: an initializer, or for a QDQ weight the quantized
    values behind its ``DequantizeLinear`` (same shape as the float weight); else ``None``."""
    value = _slot_const(state, i, slot)
    if value is not None or not _has_slot(state, i, slot):
        return value
    dq = _dq_weight(state, state.index.nodes[i].input[slot])
    return None if dq is None else state.index.const(state.index.nodes[dq].input[0])


def _slice_param(state: State, i: int, slot: int, axis: int, tensor: str, role: str) -> None:
    """Record that input ``slot`` of node ``i`` is sliced along ``axis`` with ``tensor``'s
    channels. For a QDQ weight (ONNX ``DequantizeLinear``: ``y = (q - zero_point) * scale``
    with per-axis scale/zero point along ``axis`` attribute) the quantized tensor is sliced
    along ``axis``; per-axis scale and zero point only when their axis is ``axis``
    (per-tensor ones, and per-axis ones on another axis, apply unchanged to every kept
    element), so the dequantized kept weights are bit-identical."""
    index = state.index
    name = index.nodes[i].input[slot]
    if index.const(name) is not None:
        state.actions.append(ParamSlice(i, slot, axis, tensor, role))
        return
    dq = _dq_weight(state, name)
    if dq is None:
        raise InternalError(f"input '{name}' is neither a constant nor a quantized weight")
    dq_node = index.nodes[dq]
    quantized = index.const(dq_node.input[0])
    assert quantized is not None
    rank = max(quantized.ndim, 1)
    state.actions.append(ParamSlice(dq, 0, axis, tensor, role))
    quant_axis = int(attr(dq_node, "axis", 1)) % rank
    for param_slot in (1, 2):
        value = _slot_const(state, dq, param_slot)
        if value is not None and value.size > 1 and quant_axis == axis % rank:
            state.actions.append(ParamSlice(dq, param_slot, 0, tensor, role))


@handler("Conv")
def conv(state: State, i: int) -> set[int]:
    """Conv: output channels are new (rows of W); input channels are columns of W.
    Depthwise (group == C_in == C_out) ties output channel c to input channel c; other grouped
    Convs keep equal counts per group block (``block_count``)."""
    index = state.index
    node = index.nodes[i]
    x, out = node.input[0], node.output[0]
    weight = _weight(state, i, 1)
    if weight is None:
        return _freeze_inputs(state, i, f"weight '{node.input[1]}' is not a constant")
    if _has_slot(state, i, 2) and _weight(state, i, 2) is None:
        return _freeze_inputs(state, i, f"bias '{node.input[2]}' is not a constant")
    groups = int(attr(node, "group", 1))
    c_out, c_in_per_group = int(weight.shape[0]), int(weight.shape[1])
    info = state.chan.get(x)
    if info is not None and info.axis != 1:
        return _freeze_inputs(state, i, f"channels on axis {info.axis}, Conv expects axis 1")
    bias_slots = [2] if _has_slot(state, i, 2) else []
    if groups == 1:
        if info is not None:
            _slice_param(state, i, 1, 1, x, "consumer")
            state.actions.append(MaskSlot(i, 0, x))
        atoms = state.new_atoms(c_out, i, out)
        state.chan[out] = ChanInfo(1, atoms)
        for slot in [1, *bias_slots]:
            _slice_param(state, i, slot, 0, out, "producer")
        return {0, 1, 2}
    if c_in_per_group == 1 and c_out == groups:
        # depthwise, multiplier 1: channel c in -> channel c out
        if info is None:
            return {0, 1, 2}
        state.chan[out] = ChanInfo(1, info.atoms)
        for slot in [1, *bias_slots]:
            _slice_param(state, i, slot, 0, out, "param")
        state.actions.append(DepthwiseGroup(i, out))
        return {0, 1, 2}
    if c_out % groups:
        return _freeze_inputs(
            state, i, f"{c_out} output channels do not split into {groups} groups"
        )
    if _slot_const(state, i, 1) is None:
        return _freeze_inputs(state, i, "grouped Conv with a quantized weight is not supported")
    atoms = state.new_atoms(c_out, i, out)
    state.chan[out] = ChanInfo(1, atoms)
    state.block_ties.append((out, groups, f"grouped Conv {_label(state, i)} output"))
    for slot in bias_slots:
        _slice_param(state, i, slot, 0, out, "producer")
    if info is not None:
        state.block_ties.append((x, groups, f"grouped Conv {_label(state, i)} input"))
        state.actions.append(MaskSlot(i, 0, x))
    state.actions.append(GroupedConv(i, x if info is not None else "", out, groups))
    return {0, 1, 2}


@handler("ConvTranspose")
def conv_transpose(state: State, i: int) -> set[int]:
    """ConvTranspose: W is [C_in, C_out/group, k...]; rows are inputs, columns outputs."""
    node = state.index.nodes[i]
    x, out = node.input[0], node.output[0]
    weight = _weight(state, i, 1)
    if weight is None:
        return _freeze_inputs(state, i, f"weight '{node.input[1]}' is not a constant")
    if _has_slot(state, i, 2) and _weight(state, i, 2) is None:
        return _freeze_inputs(state, i, f"bias '{node.input[2]}' is not a constant")
    if int(attr(node, "group", 1)) != 1:
        return _freeze_inputs(state, i, "grouped ConvTranspose is not supported")
    info = state.chan.get(x)
    if info is not None:
        if info.axis != 1:
            return _freeze_inputs(state, i, f"channels on axis {info.axis}, expects axis 1")
        _slice_param(state, i, 1, 0, x, "consumer")
        state.actions.append(MaskSlot(i, 0, x))
    atoms = state.new_atoms(int(weight.shape[1]), i, out)
    state.chan[out] = ChanInfo(1, atoms)
    _slice_param(state, i, 1, 1, out, "producer")
    if _has_slot(state, i, 2):
        _slice_param(state, i, 2, 0, out, "producer")
    return {0, 1, 2}


@handler("Gemm")
def gemm(state: State, i: int) -> set[int]:
    """Gemm Y = A B (+ C): A's features are B's input rows (columns if transB); Y's features
    are new. A flattened ``C*H*W`` feature vector slices every column of a removed channel."""
    node = state.index.nodes[i]
    a, out = node.input[0], node.output[0]
    weight = _weight(state, i, 1)
    if weight is None or weight.ndim != 2:
        return _freeze_inputs(state, i, f"weight '{node.input[1]}' is not a constant matrix")
    trans_b = int(attr(node, "transB", 0))
    feature_axis = 0 if int(attr(node, "transA", 0)) else 1
    info = state.chan.get(a)
    if info is not None:
        if info.axis != feature_axis:
            state.freeze_tensor(
                a, f"node {_label(state, i)}: features are not on axis {feature_axis} of A"
            )
        else:
            _slice_param(state, i, 1, 1 if trans_b else 0, a, "consumer")
            state.actions.append(MaskSlot(i, 0, a))
    n_out = int(weight.shape[0] if trans_b else weight.shape[1])
    atoms = state.new_atoms(n_out, i, out)
    _slice_param(state, i, 1, 0 if trans_b else 1, out, "producer")
    if _has_slot(state, i, 2):
        bias = _weight(state, i, 2)
        if bias is None:
            state.freeze(atoms, f"node {_label(state, i)}: bias '{node.input[2]}' is computed")
        elif bias.ndim >= 1 and bias.shape[-1] == n_out and n_out > 1:
            _slice_param(state, i, 2, bias.ndim - 1, out, "producer")
    state.chan[out] = ChanInfo(1, atoms)
    return {0, 1, 2}


@handler("MatMul")
def matmul(state: State, i: int) -> set[int]:
    """MatMul with a constant 2-D right operand: A's last axis is consumed (rows of B),
    the output's last axis is new (columns of B). Anything else freezes."""
    index = state.index
    node = index.nodes[i]
    a, out = node.input[0], node.output[0]
    weight = _weight(state, i, 1)
    if weight is None or weight.ndim != 2:
        return _freeze_inputs(state, i, "right operand is not a constant matrix")
    rank = index.rank(a)
    info = state.chan.get(a)
    if rank is None:
        if info is None:
            return {0, 1}
        return _freeze_inputs(state, i, f"rank of '{a}' unknown")
    if info is not None:
        if info.axis != rank - 1:
            state.freeze_tensor(a, f"node {_label(state, i)}: contracts a non-channel axis")
        else:
            _slice_param(state, i, 1, 0, a, "consumer")
            state.actions.append(MaskSlot(i, 0, a))
    atoms = state.new_atoms(int(weight.shape[1]), i, out)
    state.chan[out] = ChanInfo(max(rank, 2) - 1 if rank > 1 else 0, atoms)
    if rank == 1:
        state.chan.pop(out)
        state.freeze(atoms, f"node {_label(state, i)}: 1-D MatMul")
        return {0, 1}
    _slice_param(state, i, 1, 1, out, "producer")
    return {0, 1}


# -- layout ops --------------------------------------------------------------------------
@handler("Concat")
def concat(state: State, i: int) -> set[int]:
    """Concat on the channel axis: channels are laid end to end (offsets); non-channel
    inputs contribute constant channels. Concat on another axis ties the inputs."""
    index = state.index
    node = index.nodes[i]
    inputs = [name for name in node.input if name]
    claimed = set(range(len(node.input)))
    infos = [state.chan.get(name) for name in inputs]
    rank = next((index.rank(n) for n in inputs if index.rank(n) is not None), None)
    if rank is None:
        rank = next(info.axis + 1 for info in infos if info is not None) if any(infos) else None
    if rank is None or all(info is None for info in infos):
        return claimed
    axis = int(attr(node, "axis", 0)) % rank
    chan_axes = {info.axis for info in infos if info is not None}
    if chan_axes == {axis}:
        parts = []
        for name, info in zip(inputs, infos, strict=True):
            if info is not None:
                parts.append(info.atoms)
                continue
            shape = index.shape(name)
            dim = None if shape is None else shape[axis]
            if dim is None:
                return _freeze_inputs(state, i, f"channel count of input '{name}' unknown")
            parts.append(state.const_atoms(int(dim)))
        state.chan[node.output[0]] = ChanInfo(axis, np.concatenate(parts))
        return claimed
    if len(chan_axes) == 1 and all(info is not None for info in infos):
        first = infos[0]
        assert first is not None
        for info in infos[1:]:
            assert info is not None
            if len(info.atoms) != len(first.atoms):
                return _freeze_inputs(state, i, "inputs carry different channel counts")
            state.union(first.atoms, info.atoms)
        state.chan[node.output[0]] = ChanInfo(first.axis, first.atoms)
        return claimed
    return _freeze_inputs(state, i, "concatenates channel and non-channel tensors off-axis")


@handler("Split")
def split(state: State, i: int) -> set[int]:
    """Split on the channel axis: each output takes its range of channels."""
    index = state.index
    node = index.nodes[i]
    info = state.chan.get(node.input[0])
    if info is None:
        return {0, 1}
    rank = index.rank(node.input[0]) or info.axis + 1
    axis = int(attr(node, "axis", 0)) % rank
    outputs = list(node.output)
    if axis != info.axis:
        for out in outputs:
            state.chan[out] = ChanInfo(info.axis, info.atoms)
        return {0, 1}
    sizes = (
        _ints(_slot_const(state, i, 1)) if _has_slot(state, i, 1) else _ints(attr(node, "split"))
    )
    if _has_slot(state, i, 1) and sizes is None:
        return _freeze_inputs(state, i, "split sizes are computed at runtime")
    length = len(info.atoms)
    if sizes is None:
        count = len(outputs)
        chunk = -(-length // count)
        sizes = [min(chunk, length - k * chunk) for k in range(count)]
    if sum(sizes) != length or len(sizes) != len(outputs):
        return _freeze_inputs(state, i, f"split sizes {sizes} do not add up to {length} channels")
    offset = 0
    for out, size in zip(outputs, sizes, strict=True):
        state.chan[out] = ChanInfo(axis, info.atoms[offset : offset + size])
        offset += size
    state.actions.append(SplitSizes(i, axis))
    return {0, 1}


@handler("Slice")
def slice_(state: State, i: int) -> set[int]:
    """Slice: other axes pass channels; on the channel axis (step 1) a channel range."""
    index = state.index
    node = index.nodes[i]
    info = state.chan.get(node.input[0])
    if info is None:
        return {0, 1, 2, 3, 4}
    rank = index.rank(node.input[0])
    if rank is None:
        return _freeze_inputs(state, i, "input rank unknown")
    if index.opset < 10:
        return _freeze_inputs(
            state, i, "Slice-1 (attribute form) is not supported; use opset >= 10"
        )
    starts, ends = _ints(_slot_const(state, i, 1)), _ints(_slot_const(state, i, 2))
    axes = _ints(_slot_const(state, i, 3)) if _has_slot(state, i, 3) else None
    steps = _ints(_slot_const(state, i, 4)) if _has_slot(state, i, 4) else None
    if _has_slot(state, i, 3) and axes is None:
        return _freeze_inputs(state, i, "axes are computed at runtime")
    if axes is None and starts is not None:
        axes = list(range(len(starts)))
    if axes is not None and info.axis not in [a % rank for a in axes]:
        state.chan[node.output[0]] = ChanInfo(info.axis, info.atoms)
        return {0, 1, 2, 3, 4}
    if starts is None or ends is None or axes is None or (_has_slot(state, i, 4) and steps is None):
        return _freeze_inputs(state, i, "starts/ends/steps are computed at runtime")
    entry = [a % rank for a in axes].index(info.axis)
    if steps is not None and steps[entry] != 1:
        return _freeze_inputs(state, i, f"slices the channel axis with step {steps[entry]}")
    length = len(info.atoms)
    start, end = starts[entry], ends[entry]
    start = min(max(start + length if start < 0 else start, 0), length)
    end = min(max(end + length if end < 0 else end, 0), length)
    end = max(end, start)
    if end == start:
        return _freeze_inputs(state, i, "slices an empty channel range")
    state.chan[node.output[0]] = ChanInfo(info.axis, info.atoms[start:end])
    state.actions.append(SliceBounds(i, entry, node.input[0], start, end))
    return {0, 1, 2, 3, 4}


@handler("Pad")
def pad(state: State, i: int) -> set[int]:
    """Pad: spatial pads pass channels; constant pads on the channel axis add constant
    channels (the option-A ResNet shortcut), whose count surgery adjusts."""
    index = state.index
    node = index.nodes[i]
    info = state.chan.get(node.input[0])
    if info is None:
        return {0, 1, 2, 3}
    rank = index.rank(node.input[0]) or None
    if rank is None:
        return _freeze_inputs(state, i, "input rank unknown")
    if index.opset < 11:
        pads = _ints(attr(node, "pads"))
    else:
        pads = _ints(_slot_const(state, i, 1))
    if pads is None:
        return _freeze_inputs(state, i, "pads are computed at runtime")
    axes = _ints(_slot_const(state, i, 3)) if _has_slot(state, i, 3) else list(range(rank))
    if axes is None:
        return _freeze_inputs(state, i, "axes are computed at runtime")
    axes = [a % rank for a in axes]
    n = len(axes)
    out = node.output[0]
    if info.axis not in axes or (
        pads[axes.index(info.axis)] == 0 and pads[axes.index(info.axis) + n] == 0
    ):
        state.chan[out] = ChanInfo(info.axis, info.atoms)
        return {0, 1, 2, 3}
    entry = axes.index(info.axis)
    begin, end = pads[entry], pads[entry + n]
    if begin < 0 or end < 0 or attr(node, "mode", "constant") != "constant" or index.opset < 11:
        return _freeze_inputs(state, i, "pads the channel axis in a way surgery cannot rewrite")
    atoms = np.concatenate([state.const_atoms(begin), info.atoms, state.const_atoms(end)])
    state.chan[out] = ChanInfo(info.axis, atoms)
    state.actions.append(PadAmounts(i, entry, n, out, begin, end))
    return {0, 1, 2, 3}


@handler("Transpose")
def transpose(state: State, i: int) -> set[int]:
    """Transpose moves the channel axis to ``perm.index(axis)`` (NHWC <-> NCHW)."""
    index = state.index
    node = index.nodes[i]
    info = state.chan.get(node.input[0])
    if info is None:
        return {0}
    perm = attr(node, "perm")
    if perm is None:
        rank = index.rank(node.input[0])
        if rank is None:
            return _freeze_inputs(state, i, "input rank unknown")
        perm = list(reversed(range(rank)))
    state.chan[node.output[0]] = ChanInfo(list(perm).index(info.axis), info.atoms)
    return {0}


def _merge_range(in_shape: list, out_shape: list, axis: int) -> tuple[int, int, int] | None:
    """Find input axes ``[first, last]`` (containing ``axis``) that a reshape merges into
    exactly one output axis ``out_axis``; ``None`` if the channel axis is split or the dims
    are not static. A common leading symbolic (batch) dim is matched to itself."""
    offset = 0
    if in_shape and out_shape and in_shape[0] is None and out_shape[0] is None:
        offset = 1
    ins, outs = in_shape[offset:], out_shape[offset:]
    if axis < offset or any(d is None for d in ins) or any(d is None for d in outs):
        return None
    k = axis - offset
    prefix_in = np.concatenate([[1], np.cumprod(ins, dtype=np.int64)]).tolist()
    prefix_out = np.concatenate([[1], np.cumprod(outs, dtype=np.int64)]).tolist()
    for first in range(k, -1, -1):
        for out_axis in range(len(outs)):
            if prefix_out[out_axis] != prefix_in[first]:
                continue
            for end in range(k + 1, len(ins) + 1):
                if prefix_in[end] == prefix_out[out_axis + 1]:
                    return first + offset, end - 1 + offset, out_axis + offset
    return None


def _merged_atoms(info: ChanInfo, dims: list, first: int) -> np.ndarray:
    """Atoms of the merged axis: channel atoms broadcast over ``dims`` and raveled (C order)."""
    shape = [1] * len(dims)
    shape[info.axis - first] = len(info.atoms)
    return np.broadcast_to(info.atoms.reshape(shape), [int(d) for d in dims]).reshape(-1).copy()


@handler("Reshape")
def reshape(state: State, i: int) -> set[int]:
    """Reshape that keeps the channel axis whole: either unchanged or merged with its
    neighbours into one axis (Flatten to ``C*H*W`` in NCHW, interleaved ``H*W*C`` in NHWC).
    A Reshape that splits the channel axis (channel shuffle) freezes."""
    index = state.index
    node = index.nodes[i]
    data, out = node.input[0], node.output[0]
    info = state.chan.get(data)
    if info is None:
        return {0, 1}
    in_shape, out_shape = index.shape(data), index.shape(out)
    target = _ints(_slot_const(state, i, 1))
    if target is None:
        return _freeze_inputs(state, i, "the target shape is computed at runtime")
    if in_shape is None or out_shape is None:
        return _freeze_inputs(state, i, "input/output shapes unknown (run shape inference)")
    merged = _merge_range(in_shape, out_shape, info.axis)
    if merged is None:
        return _freeze_inputs(
            state, i, f"splits or mixes the channel axis {info.axis} ({in_shape} -> {out_shape})"
        )
    first, last, out_axis = merged
    atoms = _merged_atoms(info, in_shape[first : last + 1], first)
    state.chan[out] = ChanInfo(out_axis, atoms)
    if target[out_axis] not in (-1, 0):
        state.actions.append(ShapeEntry(i, 1, out_axis, out))
    elif target[out_axis] == 0 and int(attr(node, "allowzero", 0)):
        return _freeze_inputs(state, i, "a zero dim with allowzero=1 on the channel axis")
    return {0, 1}


@handler("Flatten")
def flatten(state: State, i: int) -> set[int]:
    """Flatten(axis): channels at or after ``axis`` merge into feature blocks of axis 1."""
    index = state.index
    node = index.nodes[i]
    info = state.chan.get(node.input[0])
    if info is None:
        return {0}
    shape = index.shape(node.input[0])
    if shape is None:
        return _freeze_inputs(state, i, "input shape unknown")
    axis = int(attr(node, "axis", 1)) % max(len(shape), 1)
    dims = shape[axis:]
    if info.axis < axis or axis == 0 or any(d is None for d in dims):
        return _freeze_inputs(state, i, "flattens the channel axis into the batch axis")
    state.chan[node.output[0]] = ChanInfo(1, _merged_atoms(info, dims, axis))
    return {0}


def _axes_of(state: State, i: int, slot: int) -> tuple[list[int] | None, bool]:
    """Axes from input ``slot`` (newer opsets) or the ``axes`` attribute; (axes, known)."""
    node = state.index.nodes[i]
    if _has_slot(state, i, slot):
        axes = _ints(_slot_const(state, i, slot))
        return axes, axes is not None
    return _ints(attr(node, "axes")), True


@handler("Squeeze", "Unsqueeze")
def squeeze(state: State, i: int) -> set[int]:
    """(Un)squeeze of other axes: the channel axis moves by the number of axes before it."""
    index = state.index
    node = index.nodes[i]
    info = state.chan.get(node.input[0])
    if info is None:
        return {0, 1}
    axes, known = _axes_of(state, i, 1)
    rank = index.rank(node.input[0])
    if not known or rank is None:
        return _freeze_inputs(state, i, "axes or rank unknown")
    if node.op_type == "Squeeze":
        if axes is None:
            shape = index.shape(node.input[0]) or []
            axes = [k for k, d in enumerate(shape) if d == 1]
        axes = [a % rank for a in axes]
        if info.axis in axes:
            return _freeze_inputs(state, i, "squeezes the channel axis")
        new_axis = info.axis - sum(1 for a in axes if a < info.axis)
    else:
        if axes is None:
            return _freeze_inputs(state, i, "axes unknown")
        out_rank = rank + len(axes)
        inserted = sorted(a % out_rank for a in axes)
        kept_positions = [p for p in range(out_rank) if p not in inserted]
        new_axis = kept_positions[info.axis]
    state.chan[node.output[0]] = ChanInfo(new_axis, info.atoms)
    return {0, 1}


@handler(*ops.REDUCE)
def reduce(state: State, i: int) -> set[int]:
    """Reduction over spatial axes passes channels (keepdims both ways); over the channel
    axis it consumes them: freeze."""
    index = state.index
    node = index.nodes[i]
    info = state.chan.get(node.input[0])
    if info is None:
        return {0, 1}
    rank = index.rank(node.input[0])
    axes, known = _axes_of(state, i, 1)
    if rank is None or not known:
        return _freeze_inputs(state, i, "axes or rank unknown")
    if not axes:
        if int(attr(node, "noop_with_empty_axes", 0)):
            state.chan[node.output[0]] = ChanInfo(info.axis, info.atoms)
            return {0, 1}
        return _freeze_inputs(state, i, "reduces over all axes, including the channels")
    axes = [a % rank for a in axes]
    if info.axis in axes:
        return _freeze_inputs(state, i, f"reduces over the channel axis {info.axis}")
    keepdims = int(attr(node, "keepdims", 1))
    new_axis = info.axis if keepdims else info.axis - sum(1 for a in axes if a < info.axis)
    state.chan[node.output[0]] = ChanInfo(new_axis, info.atoms)
    return {0, 1}


@handler(*ops.RESIZE)
def resize(state: State, i: int) -> set[int]:
    """Resize/Upsample: the channel scale must be 1; a ``sizes`` entry is rewritten."""
    index = state.index
    node = index.nodes[i]
    info = state.chan.get(node.input[0])
    slots = set(range(len(node.input)))
    if info is None:
        return slots
    if node.op_type == "Upsample":
        raw = _slot_const(state, i, 1) if len(node.input) > 1 else attr(node, "scales")
        factors = None if raw is None else np.asarray(raw, dtype=np.float64).reshape(-1)
        if factors is None or factors[info.axis] != 1:
            return _freeze_inputs(state, i, "scale on the channel axis is not 1 or unknown")
        state.chan[node.output[0]] = ChanInfo(info.axis, info.atoms)
        return slots
    axes = attr(node, "axes")
    rank = index.rank(node.input[0])
    if axes is not None:
        axes = [a % (rank or len(axes)) for a in axes]
        if info.axis not in axes:
            state.chan[node.output[0]] = ChanInfo(info.axis, info.atoms)
            return slots
        entry = axes.index(info.axis)
    else:
        entry = info.axis
    sizes = _slot_const(state, i, 3) if _has_slot(state, i, 3) else None
    scales = _slot_const(state, i, 2) if _has_slot(state, i, 2) else None
    if sizes is not None and sizes.size:
        if int(sizes.reshape(-1)[entry]) != len(info.atoms):
            return _freeze_inputs(state, i, "changes the channel count")
        state.actions.append(ShapeEntry(i, 3, entry, node.output[0]))
    elif scales is not None and scales.size:
        if float(scales.reshape(-1)[entry]) != 1.0:
            return _freeze_inputs(state, i, "scale on the channel axis is not 1")
    else:
        return _freeze_inputs(state, i, "scales/sizes are computed at runtime")
    state.chan[node.output[0]] = ChanInfo(info.axis, info.atoms)
    return slots


def _shape_reader(state: State, tensor: str, positions: set[int], depth: int = 0) -> str | None:
    """Follow element ``positions`` of the 1-D int shape vector ``tensor`` downstream; return
    the label of the first node that uses one of them as a value (``None`` if every path drops
    them). Understood: Cast/Identity (same positions), Gather on axis 0 and Slice with
    constant indices (positions that survive), Concat on axis 0 (offsets), Unsqueeze/Squeeze."""
    index = state.index
    if not positions:
        return None
    if depth > 32 or tensor in index.graph_outputs:
        return f"graph output '{tensor}'"
    for node_index, slot in index.consumers.get(tensor, []):
        node = index.nodes[node_index]
        label = _label(state, node_index)
        op = node.op_type if node.domain in ("", "ai.onnx") else ""
        out = node.output[0] if node.output else ""
        if op in ("Cast", "Identity", "Unsqueeze", "Squeeze") and slot == 0:
            found = _shape_reader(state, out, positions, depth + 1)
        elif op == "Gather" and slot == 0 and int(attr(node, "axis", 0)) == 0:
            picked = _slot_const(state, node_index, 1)
            if picked is None:
                return label
            length = index.shape(tensor)
            size = length[0] if length and length[0] is not None else None
            taken = [int(k) for k in picked.reshape(-1).tolist()]
            if size is not None:
                taken = [k + size if k < 0 else k for k in taken]
            elif any(k < 0 for k in taken):
                return label
            found = _shape_reader(
                state, out, {j for j, k in enumerate(taken) if k in positions}, depth + 1
            )
        elif op == "Slice" and slot == 0:
            bounds = [_ints(_slot_const(state, node_index, k)) for k in (1, 2, 3, 4)]
            length = index.shape(tensor)
            size = length[0] if length and length[0] is not None else None
            axes_ok = not _has_slot(state, node_index, 3) or bounds[2] in ([0], [-1])
            steps = bounds[3] if _has_slot(state, node_index, 4) else [1]
            if bounds[0] is None or bounds[1] is None or steps is None or not axes_ok:
                return label
            if size is None or len(bounds[0]) != 1 or len(steps) != 1:
                return label
            kept = list(range(size))[slice(bounds[0][0], bounds[1][0], steps[0])]
            found = _shape_reader(
                state, out, {j for j, k in enumerate(kept) if k in positions}, depth + 1
            )
        elif op == "Concat" and int(attr(node, "axis", 0)) in (0, -1):
            offset = 0
            for name in node.input[:slot]:
                length = index.shape(name) if name else [0]
                if not length or length[0] is None:
                    return label
                offset += int(length[0])
            found = _shape_reader(state, out, {p + offset for p in positions}, depth + 1)
        else:
            return label
        if found is not None:
            return found
    return None


@handler("Shape")
def shape_op(state: State, i: int) -> set[int]:
    """Shape is harmless when the channel count it reads is dropped downstream (e.g. only
    the batch dim survives a ``Slice [0:1]``); if the count is used as a value, freeze."""
    index = state.index
    node = index.nodes[i]
    info = state.chan.get(node.input[0])
    if info is None:
        return {0}
    rank = index.rank(node.input[0])
    if rank is None:
        return _freeze_inputs(state, i, "input rank unknown")
    start = int(attr(node, "start", 0))
    end = int(attr(node, "end", rank))
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    if start <= info.axis < end:
        reader = _shape_reader(state, node.output[0], {info.axis - start})
        if reader is not None:
            return _freeze_inputs(
                state, i, f"reads the channel count at runtime and {reader} uses it"
            )
    return {0}

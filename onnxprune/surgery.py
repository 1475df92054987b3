"""Physically remove channels (:func:`apply_plan`) and build the exactness reference
(:func:`masked_reference`).

Both work on ``analysis.model`` (the normalised model) and the surgery actions the channel
handlers recorded. Node and tensor names are kept; the one exception is a constant shared
by several nodes that must be sliced differently: each variant becomes a copy named
``<name>__<node name>`` (the original keeps its name where it is still used unchanged).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import ModelProto, helper, numpy_helper

from onnxprune.deps.groups import DependencyAnalysis
from onnxprune.deps.state import (
    DepthwiseGroup,
    GroupedConv,
    MaskSlot,
    PadAmounts,
    ParamSlice,
    ShapeEntry,
    SliceBounds,
    SplitSizes,
)
from onnxprune.errors import OnnxPruneError
from onnxprune.model import check_model, infer_model_shapes


def _plan_keep(plan) -> dict[int, list[int]]:
    keep = getattr(plan, "keep", plan)
    if not isinstance(keep, dict):
        raise OnnxPruneError("a pruning plan must provide keep: dict[group id, keep indices]")
    return {int(k): list(v) for k, v in keep.items()}


class _ConstEdits:
    """Pending new values of constant node inputs, committed with copy-on-write."""

    def __init__(self, model: ModelProto, analysis: DependencyAnalysis) -> None:
        self.model = model
        self.index = analysis.index
        self.pending: dict[tuple[int, int], np.ndarray] = {}

    def get(self, node: int, slot: int) -> np.ndarray:
        if (node, slot) in self.pending:
            return self.pending[(node, slot)]
        name = self.model.graph.node[node].input[slot]
        value = self.index.const(name)
        if value is None:
            raise OnnxPruneError(
                f"input '{name}' of node '{self.model.graph.node[node].name}' is not a constant"
            )
        return value

    def set(self, node: int, slot: int, value: np.ndarray) -> None:
        self.pending[(node, slot)] = value

    def commit(self) -> None:
        graph = self.model.graph
        by_name: dict[str, dict[tuple[int, int], np.ndarray]] = defaultdict(dict)
        for (node, slot), value in self.pending.items():
            by_name[graph.node[node].input[slot]][(node, slot)] = value
        initializers = {t.name: t for t in graph.initializer}
        taken = set(initializers) | {o for n in graph.node for o in n.output}
        for name, slots in by_name.items():
            users = [tuple(u) for u in self.index.consumers.get(name, [])]
            untouched = [u for u in users if u not in slots]
            variants: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
            values: dict[tuple, np.ndarray] = {}
            for key, value in slots.items():
                value = np.ascontiguousarray(value)
                vkey = (value.dtype.str, value.shape, value.tobytes())
                variants[vkey].append(key)
                values[vkey] = value
            if not untouched and len(variants) == 1:
                vkey = next(iter(variants))
                initializers[name].CopyFrom(numpy_helper.from_array(values[vkey], name))
                continue
            for vkey, keys in variants.items():
                base = f"{name}__{graph.node[keys[0][0]].name}"
                new_name, suffix = base, 1
                while new_name in taken:
                    new_name = f"{base}_{suffix}"
                    suffix += 1
                taken.add(new_name)
                graph.initializer.append(numpy_helper.from_array(values[vkey], new_name))
                for node, slot in keys:
                    graph.node[node].input[slot] = new_name
            if not untouched:
                graph.initializer.remove(initializers[name])


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for k, attribute in enumerate(node.attribute):
        if attribute.name == name:
            del node.attribute[k]
            break
    node.attribute.append(helper.make_attribute(name, value))


def _drop_attr(node: onnx.NodeProto, name: str) -> None:
    for k, attribute in enumerate(node.attribute):
        if attribute.name == name:
            del node.attribute[k]
            return


def apply_plan(analysis: DependencyAnalysis, plan) -> ModelProto:
    """Remove the channels ``plan`` drops from ``analysis.model`` and return the new model.

    ``plan.keep`` maps group ids to sorted keep indices (groups absent keep all). Slices
    producer rows, consumer columns (incl. flattened ``C*H*W`` features, NCHW and NHWC),
    channel-wise constants, and rewrites Split/Slice/Pad/Reshape/Resize constants and the
    group count of depthwise Convs. The result passes ``onnx.checker`` (full check).
    Raises :class:`PlanError` for a plan that does not fit the groups.
    """
    removed = analysis.removed_classes(_plan_keep(plan))
    model = ModelProto()
    model.CopyFrom(analysis.model)
    nodes = model.graph.node
    edits = _ConstEdits(model, analysis)
    masks: dict[str, np.ndarray] = {}

    def mask(tensor: str) -> np.ndarray:
        if tensor not in masks:
            masks[tensor] = analysis.tensor_keep_mask(tensor, removed)
        return masks[tensor]

    for action in analysis.state.actions:
        if isinstance(action, ParamSlice):
            keep = mask(action.tensor)
            if keep.all():
                continue
            value = edits.get(action.node, action.slot)
            edits.set(action.node, action.slot, np.compress(keep, value, axis=action.axis))
        elif isinstance(action, GroupedConv):
            _grouped_conv(edits, action, mask)
        elif isinstance(action, DepthwiseGroup):
            _set_attr(nodes[action.node], "group", int(mask(action.tensor).sum()))
        elif isinstance(action, SplitSizes):
            _split_sizes(model, analysis, edits, action, mask)
        elif isinstance(action, SliceBounds):
            keep = mask(action.input)
            if keep.all():
                continue
            start = int(keep[: action.start].sum())
            end = start + int(keep[action.start : action.end].sum())
            for slot, bound in ((1, start), (2, end)):
                value = edits.get(action.node, slot).copy()
                value[action.entry] = bound
                edits.set(action.node, slot, value)
        elif isinstance(action, PadAmounts):
            keep = mask(action.output)
            if keep.all():
                continue
            value = edits.get(action.node, 1).copy()
            value[action.entry] = int(keep[: action.begin].sum())
            tail = keep[len(keep) - action.end :] if action.end else keep[:0]
            value[action.entry + action.n] = int(tail.sum())
            edits.set(action.node, 1, value)
        elif isinstance(action, ShapeEntry):
            keep = mask(action.tensor)
            if keep.all():
                continue
            value = edits.get(action.node, action.slot).copy()
            value[action.entry] = int(keep.sum())
            edits.set(action.node, action.slot, value)
    edits.commit()
    del model.graph.value_info[:]
    model = infer_model_shapes(model)
    check_model(model, full=True)
    return model


def _grouped_conv(edits: _ConstEdits, action: GroupedConv, mask) -> None:
    rows = mask(action.output)
    columns = mask(action.input) if action.input else None
    if rows.all() and (columns is None or columns.all()):
        return
    weight = edits.get(action.node, 1)
    groups = action.groups
    row_blocks = rows.reshape(groups, -1)
    weight_blocks = weight.reshape(groups, weight.shape[0] // groups, *weight.shape[1:])
    parts = []
    for block in range(groups):
        part = weight_blocks[block][row_blocks[block]]
        if columns is not None:
            part = part[:, columns.reshape(groups, -1)[block]]
        parts.append(part)
    edits.set(action.node, 1, np.concatenate(parts, axis=0))


def _split_sizes(model: ModelProto, analysis: DependencyAnalysis, edits, action, mask) -> None:
    node = model.graph.node[action.node]
    sizes = [int(mask(out).sum()) for out in node.output]
    full = [len(mask(out)) for out in node.output]
    if sizes == full:
        return
    if analysis.index.opset < 13:
        _set_attr(node, "split", sizes)
        return
    value = np.array(sizes, dtype=np.int64)
    if len(node.input) > 1 and node.input[1]:
        edits.set(action.node, 1, value)
        return
    name = f"{node.name}__split"
    model.graph.initializer.append(numpy_helper.from_array(value, name))
    if len(node.input) > 1:
        node.input[1] = name
    else:
        node.input.append(name)
    _drop_attr(node, "num_outputs")


def masked_reference(analysis: DependencyAnalysis, plan) -> ModelProto:
    """The normalised model with the channels ``plan`` removes multiplied by zero where
    they are consumed (inputs of Conv/ConvTranspose/Gemm/MatMul that mix channels), as a
    ``Mul`` by a 0/1 constant shaped ``[1, ..., C, ..., 1]`` on the channel axis (flattened
    features: one entry per feature). Invariant 1 compares :func:`apply_plan` against it."""
    removed = analysis.removed_classes(_plan_keep(plan))
    model = ModelProto()
    model.CopyFrom(analysis.model)
    graph = model.graph
    elem_types = {
        v.name: v.type.tensor_type.elem_type
        for v in list(graph.value_info) + list(graph.input) + list(graph.output)
    }
    inserts: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    for k, action in enumerate(analysis.state.actions):
        if not isinstance(action, MaskSlot):
            continue
        keep = analysis.tensor_keep_mask(action.tensor, removed)
        if keep.all():
            continue
        info = analysis.state.chan[action.tensor]
        rank = analysis.index.rank(action.tensor) or info.axis + 1
        shape = [1] * rank
        shape[info.axis] = len(keep)
        dtype = helper.tensor_dtype_to_np_dtype(elem_types.get(action.tensor) or 1)
        node = graph.node[action.node]
        mask_name = f"{action.tensor}__keep_mask_{k}"
        out_name = f"{action.tensor}__masked_{k}"
        assert mask_name not in taken and out_name not in taken
        graph.initializer.append(
            numpy_helper.from_array(keep.astype(dtype).reshape(shape), mask_name)
        )
        mul = helper.make_node(
            "Mul", [action.tensor, mask_name], [out_name], name=f"{node.name}__keep_mask_{k}"
        )
        inserts[action.node].append(mul)
        node.input[action.slot] = out_name
    if inserts:
        new_nodes = []
        for k, node in enumerate(graph.node):
            new_nodes.extend(inserts.get(k, []))
            new_nodes.append(node)
        del graph.node[:]
        graph.node.extend(new_nodes)
    return model

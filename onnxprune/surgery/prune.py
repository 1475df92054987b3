"""Physically remove the channels a plan drops: :func:`apply_plan`.

The normalised model is imported into onnx-graphsurgeon once; every surgery action the
channel handlers recorded is applied by the rewrite registered for its type (constant
values through :class:`~onnxprune.surgery.constants.ConstantEdits`, attributes on the
``gs.Node``); the graph is exported, shapes are re-inferred and ``onnx.checker`` runs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs
from onnx import ModelProto

from onnxprune.deps.groups import DependencyAnalysis
from onnxprune.deps.state import (
    Action,
    DepthwiseGroup,
    GroupedConv,
    MaskSlot,
    PadAmounts,
    ParamSlice,
    ShapeEntry,
    SliceBounds,
    SplitSizes,
)
from onnxprune.errors import InternalError, OnnxPruneError
from onnxprune.model import check_model, infer_model_shapes
from onnxprune.surgery.constants import ConstantEdits, TensorNames
from onnxprune.surgery.graph_io import GsModel, export_model, import_model


def plan_keep(plan) -> dict[int, list[int]]:
    """``plan.keep`` (or ``plan`` itself) as ``{group id: keep indices}``."""
    keep = getattr(plan, "keep", plan)
    if not isinstance(keep, dict):
        raise OnnxPruneError("a pruning plan must provide keep: dict[group id, keep indices]")
    return {int(k): list(v) for k, v in keep.items()}


class _Rewrite:
    """State of one :func:`apply_plan` call: the imported graph, pending constant edits and
    the keep mask of every channel tensor (bool over its channel axis, cached)."""

    def __init__(self, analysis: DependencyAnalysis, removed: np.ndarray) -> None:
        self.analysis = analysis
        self.index = analysis.index
        self.removed = removed
        self.gs_model: GsModel = import_model(analysis.model)
        self.nodes = self.gs_model.nodes
        self.names = TensorNames(analysis.index)
        self.edits = ConstantEdits(self.gs_model, analysis.index, self.names)
        self._masks: dict[str, np.ndarray] = {}

    def mask(self, tensor: str) -> np.ndarray:
        if tensor not in self._masks:
            self._masks[tensor] = self.analysis.tensor_keep_mask(tensor, self.removed)
        return self._masks[tensor]


_REWRITES: dict[type, Callable[[_Rewrite, Action], None]] = {}


def _rewrites(action_type: type):
    def register(fn):
        _REWRITES[action_type] = fn
        return fn

    return register


@_rewrites(ParamSlice)
def _param_slice(rewrite: _Rewrite, action: ParamSlice) -> None:
    keep = rewrite.mask(action.tensor)
    if keep.all():
        return
    value = rewrite.edits.get(action.node, action.slot)
    rewrite.edits.set(action.node, action.slot, np.compress(keep, value, axis=action.axis))


@_rewrites(GroupedConv)
def _grouped_conv(rewrite: _Rewrite, action: GroupedConv) -> None:
    rows = rewrite.mask(action.output)
    columns = rewrite.mask(action.input) if action.input else None
    if rows.all() and (columns is None or columns.all()):
        return
    weight = rewrite.edits.get(action.node, 1)
    groups = action.groups
    row_blocks = rows.reshape(groups, -1)
    weight_blocks = weight.reshape(groups, weight.shape[0] // groups, *weight.shape[1:])
    parts = []
    for block in range(groups):
        part = weight_blocks[block][row_blocks[block]]
        if columns is not None:
            part = part[:, columns.reshape(groups, -1)[block]]
        parts.append(part)
    rewrite.edits.set(action.node, 1, np.concatenate(parts, axis=0))


@_rewrites(DepthwiseGroup)
def _depthwise_group(rewrite: _Rewrite, action: DepthwiseGroup) -> None:
    rewrite.nodes[action.node].attrs["group"] = int(rewrite.mask(action.tensor).sum())


@_rewrites(SplitSizes)
def _split_sizes(rewrite: _Rewrite, action: SplitSizes) -> None:
    node = rewrite.nodes[action.node]
    sizes = [int(rewrite.mask(out.name).sum()) for out in node.outputs]
    full = [len(rewrite.mask(out.name)) for out in node.outputs]
    if sizes == full:
        return
    if rewrite.index.opset < 13:
        node.attrs["split"] = sizes
        return
    value = np.array(sizes, dtype=np.int64)
    if len(node.inputs) > 1 and node.inputs[1].name:
        rewrite.edits.set(action.node, 1, value)
        return
    # Sizes given by num_outputs (opset 18) or an even split: write them out.
    split = gs.Constant(rewrite.names.new(f"{node.name}__split"), value)
    if len(node.inputs) > 1:
        node.inputs[1] = split
    else:
        node.inputs.append(split)
    node.attrs.pop("num_outputs", None)


@_rewrites(SliceBounds)
def _slice_bounds(rewrite: _Rewrite, action: SliceBounds) -> None:
    keep = rewrite.mask(action.input)
    if keep.all():
        return
    start = int(keep[: action.start].sum())
    end = start + int(keep[action.start : action.end].sum())
    for slot, bound in ((1, start), (2, end)):
        value = rewrite.edits.get(action.node, slot).copy()
        value[action.entry] = bound
        rewrite.edits.set(action.node, slot, value)


@_rewrites(PadAmounts)
def _pad_amounts(rewrite: _Rewrite, action: PadAmounts) -> None:
    keep = rewrite.mask(action.output)
    if keep.all():
        return
    value = rewrite.edits.get(action.node, 1).copy()
    value[action.entry] = int(keep[: action.begin].sum())
    tail = keep[len(keep) - action.end :] if action.end else keep[:0]
    value[action.entry + action.n] = int(tail.sum())
    rewrite.edits.set(action.node, 1, value)


@_rewrites(ShapeEntry)
def _shape_entry(rewrite: _Rewrite, action: ShapeEntry) -> None:
    keep = rewrite.mask(action.tensor)
    if keep.all():
        return
    value = rewrite.edits.get(action.node, action.slot).copy()
    value[action.entry] = int(keep.sum())
    rewrite.edits.set(action.node, action.slot, value)


@_rewrites(MaskSlot)
def _mask_slot(rewrite: _Rewrite, action: MaskSlot) -> None:
    """Only the masked reference acts on these."""


def apply_plan(analysis: DependencyAnalysis, plan) -> ModelProto:
    """Remove the channels ``plan`` drops from ``analysis.model`` and return the new model.

    ``plan.keep`` maps group ids to sorted keep indices (groups absent keep all). Slices
    producer rows, consumer columns (incl. flattened ``C*H*W`` features, NCHW and NHWC),
    channel-wise constants, and rewrites Split/Slice/Pad/Reshape/Resize constants and the
    group count of depthwise Convs. Node and tensor names are kept, and so are the node
    order, graph inputs/outputs and model-level fields; a constant shared by nodes that
    need different slices is copied (see :meth:`ConstantEdits.commit`). The result passes
    ``onnx.checker`` (full check); ``analysis.model`` is not modified.
    Raises :class:`PlanError` for a plan that does not fit the groups.
    """
    rewrite = _Rewrite(analysis, analysis.removed_classes(plan_keep(plan)))
    for action in analysis.state.actions:
        fn = _REWRITES.get(type(action))
        if fn is None:
            raise InternalError(f"surgery has no rewrite for action {action!r}")
        fn(rewrite, action)
    rewrite.edits.commit()
    model = export_model(rewrite.gs_model, analysis.model, keep_value_info=False)
    model = infer_model_shapes(model)
    check_model(model, full=True)
    return model

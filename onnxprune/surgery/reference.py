"""The exactness reference: :func:`masked_reference` (DESIGN invariant 1)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_graphsurgeon as gs
from onnx import ModelProto, helper

from onnxprune.deps.groups import DependencyAnalysis
from onnxprune.deps.state import MaskSlot
from onnxprune.errors import InternalError
from onnxprune.surgery.constants import TensorNames
from onnxprune.surgery.graph_io import export_model, import_model
from onnxprune.surgery.prune import plan_keep


def _np_dtype(tensor: gs.Tensor) -> np.dtype:
    """Element type of ``tensor``; float32 when shape inference left it unknown."""
    if tensor.dtype is None:
        return np.dtype(np.float32)
    if isinstance(tensor.dtype, int):  # an ONNX enum graphsurgeon has no numpy type for
        return helper.tensor_dtype_to_np_dtype(tensor.dtype)
    return np.dtype(tensor.dtype)


def masked_reference(analysis: DependencyAnalysis, plan) -> ModelProto:
    """The normalised model with the channels ``plan`` removes multiplied by zero where
    they are consumed (inputs of Conv/ConvTranspose/Gemm/MatMul that mix channels), as a
    ``Mul`` by a 0/1 constant shaped ``[1, ..., C, ..., 1]`` on the channel axis (flattened
    features: one entry per feature), inserted right before its reader. Invariant 1
    compares :func:`apply_plan` against it. ``analysis.model`` is not modified."""
    removed = analysis.removed_classes(plan_keep(plan))
    gs_model = import_model(analysis.model)
    names = TensorNames(analysis.index)
    inserts: dict[int, list[gs.Node]] = defaultdict(list)
    for k, action in enumerate(analysis.state.actions):
        if not isinstance(action, MaskSlot):
            continue
        keep = analysis.tensor_keep_mask(action.tensor, removed)
        if keep.all():
            continue
        node = gs_model.nodes[action.node]
        tensor = node.inputs[action.slot]
        if tensor.name != action.tensor:
            raise InternalError(
                f"input {action.slot} of node '{node.name}' is '{tensor.name}', the analysis "
                f"recorded a mask for '{action.tensor}'"
            )
        info = analysis.state.chan[action.tensor]
        rank = analysis.index.rank(action.tensor) or info.axis + 1
        shape = [1] * rank
        shape[info.axis] = len(keep)
        mask_name, out_name = f"{action.tensor}__keep_mask_{k}", f"{action.tensor}__masked_{k}"
        if mask_name in names.taken or out_name in names.taken:
            raise InternalError(f"masked reference: tensor name '{mask_name}' is taken")
        names.taken.update((mask_name, out_name))
        mask = gs.Constant(mask_name, keep.astype(_np_dtype(tensor)).reshape(shape))
        masked = gs.Variable(out_name)
        inserts[action.node].append(
            gs.Node("Mul", f"{node.name}__keep_mask_{k}", inputs=[tensor, mask], outputs=[masked])
        )
        node.inputs[action.slot] = masked
    if inserts:
        # Each Mul goes right before its reader: the order stays topological.
        ordered: list[gs.Node] = []
        for k, node in enumerate(gs_model.nodes):
            ordered.extend(inserts.get(k, []))
            ordered.append(node)
        gs_model.graph.nodes = ordered
    return export_model(gs_model, analysis.model, keep_value_info=True)

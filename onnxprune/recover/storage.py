"""Where recovery reads weights from, and how it writes refit weights back.

Exporters store weights in different places: initializers (torch), ``Constant`` nodes
(paddle2onnx, some tf2onnx graphs), or constant sub-graphs (``Constant -> Transpose``). The
analysis reads every model through :func:`onnxprune.normalize.normalize`, which turns all of
these into initializers under stable tensor names; recovery reads the pruned and the
reference model through the same normalisation (:func:`for_recovery`), so both sides see the
same kind of graph whatever wrote them.

The recovered values then go back into the model the caller passed (:func:`store_values`):
a tensor that is an initializer or a ``Constant`` node's ``value`` there is overwritten in
place (same nodes, names, dtypes and dims; the model stays valid). Only when a changed tensor
exists solely in the normalised graph (a weight folded from a ``Transpose`` of a constant,
say) is the normalised model returned instead: it computes the same function and passes
``onnx.checker`` too.
"""

from __future__ import annotations

import numpy as np
from onnx import AttributeProto, ModelProto, TensorProto, helper, numpy_helper

from onnxprune.normalize import normalize


def for_recovery(model: ModelProto) -> ModelProto:
    """The normalised copy of ``model`` recovery runs on (``model`` is not modified)."""
    return normalize(model)


def _changed_tensors(before: ModelProto, after: ModelProto) -> dict[str, TensorProto]:
    old = {t.name: t for t in before.graph.initializer}
    return {
        t.name: t
        for t in after.graph.initializer
        if t.name not in old or old[t.name].SerializeToString() != t.SerializeToString()
    }


def _cast_like(value: np.ndarray, target: TensorProto) -> TensorProto | None:
    if value.size != int(np.prod(target.dims, dtype=np.int64)):
        return None
    dtype = helper.tensor_dtype_to_np_dtype(target.data_type)
    return numpy_helper.from_array(value.reshape(tuple(target.dims)).astype(dtype), target.name)


def store_values(original: ModelProto, before: ModelProto, after: ModelProto) -> ModelProto:
    """``original`` holding the tensors that differ between ``before`` and ``after``.

    ``before`` is :func:`for_recovery` of ``original`` and ``after`` the same graph with
    recovered values. Returns a new model (``original`` is not modified): ``original``'s
    structure when every changed tensor is an initializer or a ``Constant`` output there,
    else ``after`` (see the module docstring).
    """
    changed = _changed_tensors(before, after)
    out = ModelProto()
    out.CopyFrom(original)
    if not changed:
        return out
    initializers = {t.name: t for t in out.graph.initializer}
    constants = {
        node.output[0]: attribute
        for node in out.graph.node
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output
        for attribute in node.attribute
        if attribute.name == "value" and attribute.type == AttributeProto.TENSOR
    }
    for name, tensor in changed.items():
        value = numpy_helper.to_array(tensor)
        target = initializers.get(name)
        if target is not None:
            new = _cast_like(value, target)
            if new is None:
                return after
            target.CopyFrom(new)
            continue
        attribute = constants.get(name)
        new = None if attribute is None else _cast_like(value, attribute.t)
        if attribute is None or new is None:
            return after
        new.name = attribute.t.name
        attribute.t.CopyFrom(new)
    return out

"""Validate a model before any stage analyses it: one clear line, never a traceback later.

:func:`validate_model` runs on every loaded model (:func:`onnxprune.model.load_model`):

1. the default-domain opset is one onnxruntime and this onnx understand
   (:data:`MIN_OPSET` .. ``onnx.defs.onnx_opset_version()``);
2. ``onnx.checker`` (node arity for the op and opset, attribute names and types, tensor data
   sizes against declared shapes, SSA form, topological order), its message reduced to one
   line that names the node;
3. onnxprune's own checks of what the checker leaves alone but analysis and surgery rely
   on: every initializer's stored bytes equal what its type and dims declare; weights consistent with the attributes of Conv / ConvTranspose (``group``,
   ``kernel_shape``, ``pads``, ``strides``, ``dilations``), Gemm (``transA``/``transB``, bias
   length) and BatchNormalization (per-channel parameter lengths).

:func:`check_declared_sizes` runs before external data is read: the tensors' declared sizes
must fit their data files and the machine's memory (a tiny model can declare gigabytes).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto

from onnxprune.errors import OnnxPruneError

MIN_OPSET = 7  # the oldest default-domain opset onnxruntime runs
_CHECKER_LIMIT = 2_000_000_000  # protobuf cannot serialise more for the in-memory checker


def _opset(model: ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def one_line(message: str) -> str:
    """The checker's first line, plus the node it names in its context block."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    first = lines[0] if lines else "unknown checker error"
    context = re.search(r"Name: (\S*) OpType: (\S+)", message)
    if context and context.group(1) not in first:
        first += f" (node '{context.group(1)}', {context.group(2)})"
    return first[:300]


def _check_opset(model: ModelProto, source: str) -> None:
    opset = _opset(model)
    newest = onnx.defs.onnx_opset_version()
    uses_default = any(node.domain in ("", "ai.onnx") for node in model.graph.node)
    if opset is None and uses_default:
        raise OnnxPruneError(
            f"{source} uses standard ONNX ops but declares no default-domain opset; re-export it"
        )
    if opset is not None and not MIN_OPSET <= opset <= newest:
        raise OnnxPruneError(
            f"{source} declares opset {opset}; onnxprune supports opsets {MIN_OPSET} to "
            f"{newest}: re-export the model with a supported opset"
        )


def _ints(node: NodeProto, name: str) -> list[int] | None:
    attr = next((a for a in node.attribute if a.name == name), None)
    return None if attr is None else list(attr.ints)


def _int(node: NodeProto, name: str, default: int) -> int:
    attr = next((a for a in node.attribute if a.name == name), None)
    return default if attr is None else int(attr.i)


def _conv_problem(node: NodeProto, weight: tuple[int, ...]) -> str | None:
    """What is inconsistent between a Conv/ConvTranspose's weight shape and its attributes."""
    if len(weight) < 3:
        return f"weight has rank {len(weight)}, a convolution needs rank >= 3"
    spatial, group = len(weight) - 2, _int(node, "group", 1)
    if group < 1:
        return f"group = {group}, must be >= 1"
    channels_out = weight[0] if node.op_type == "Conv" else weight[1] * group
    if node.op_type == "Conv" and channels_out % group:
        return f"{channels_out} output channels do not split into group = {group}"
    if node.op_type == "ConvTranspose" and weight[0] % group:
        return f"{weight[0]} input channels do not split into group = {group}"
    kernel = _ints(node, "kernel_shape")
    if kernel is not None and tuple(kernel) != weight[2:]:
        return f"kernel_shape {kernel} disagrees with the weight's {list(weight[2:])}"
    for name, length, low in (("pads", 2 * spatial, 0), ("strides", spatial, 1), ("dilations", spatial, 1)):  # fmt: skip
        values = _ints(node, name)
        if values is not None and (len(values) != length or min(values, default=low) < low):
            return f"{name} {values} must be {length} values >= {low}"
    return None


def _gemm_problem(node: NodeProto, shapes: dict[str, tuple[int, ...]]) -> str | None:
    trans_a, trans_b = _int(node, "transA", 0), _int(node, "transB", 0)
    if trans_a not in (0, 1) or trans_b not in (0, 1):
        return f"transA = {trans_a}, transB = {trans_b}; each must be 0 or 1"
    weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
    if weight is None:
        return None
    if len(weight) != 2:
        return f"B has rank {len(weight)}, Gemm needs a matrix"
    bias = shapes.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    n = weight[0] if trans_b else weight[1]
    if bias is not None and bias and bias[-1] not in (1, n):
        return (
            f"bias length {bias[-1]} fits neither 1 nor the {n} outputs of B (transB = {trans_b})"
        )
    return None


def _batchnorm_problem(node: NodeProto, shapes: dict[str, tuple[int, ...]]) -> str | None:
    lengths = {shapes[name] for name in node.input[1:5] if name in shapes}
    if len(lengths) > 1 or any(len(shape) != 1 for shape in lengths):
        return (
            f"scale, bias, mean and variance must be vectors of one length, got {sorted(lengths)}"
        )
    return None


def _check_weights(model: ModelProto, source: str) -> None:
    shapes = {t.name: tuple(int(d) for d in t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        problem = None
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
            weight = shapes.get(node.input[1])
            problem = None if weight is None else _conv_problem(node, weight)
        elif node.op_type == "Gemm":
            problem = _gemm_problem(node, shapes)
        elif node.op_type == "BatchNormalization":
            problem = _batchnorm_problem(node, shapes)
        if problem is not None:
            raise OnnxPruneError(
                f"{source}: node '{node.name or node.output[0]}' ({node.op_type}): {problem}; "
                "the model is inconsistent, re-export it"
            )


def _check_initializers(model: ModelProto, source: str) -> None:
    """Stored data must match the declared type and dims exactly (the checker only refuses
    too little ``raw_data``; a float tensor relabelled BOOL passes it and breaks numpy)."""
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL or not tensor.HasField("raw_data"):
            continue
        if tensor.data_type == TensorProto.STRING:
            raise OnnxPruneError(f"{source}: string tensor '{tensor.name}' cannot hold raw_data")
        try:
            expected = _declared_bytes(tensor)
        except (KeyError, TypeError, ValueError):
            raise OnnxPruneError(
                f"{source}: tensor '{tensor.name}' has unknown data type {tensor.data_type}"
            ) from None
        if len(tensor.raw_data) != expected:
            raise OnnxPruneError(
                f"{source}: tensor '{tensor.name}' holds {len(tensor.raw_data):,} bytes but its "
                f"type and dims {list(tensor.dims)} declare {expected:,}; re-export the model"
            )


def _check_text(model: ModelProto, source: str) -> None:
    """Names and symbolic dims must be text: protobuf hands invalid UTF-8 back as ``bytes``
    (onnx uses proto2), which breaks every stage that formats or compares names."""
    graph = model.graph
    values = (*graph.input, *graph.output, *graph.value_info)
    for value in values:
        dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else ()
        for text in (value.name, *(d.dim_param for d in dims)):
            if isinstance(text, bytes):
                raise OnnxPruneError(
                    f"{source}: value {value.name!r} has a name or dim that is not valid UTF-8 "
                    f"({text!r}); the file is corrupted"
                )
    for node in graph.node:
        for text in (node.name, node.op_type, node.domain, *node.input, *node.output):
            if isinstance(text, bytes):
                raise OnnxPruneError(
                    f"{source}: node {node.name!r} has a name, op or tensor that is not valid "
                    f"UTF-8 ({text!r}); the file is corrupted"
                )


def validate_model(model: ModelProto, source: str) -> None:
    """Refuse a model that onnxprune cannot analyse safely (see the module docstring).

    ``source`` names the model in messages (e.g. ``"model 'x.onnx'"``).
    """
    _check_opset(model, source)
    _check_text(model, source)
    if model.ByteSize() < _CHECKER_LIMIT:
        # The checker wants a shape on every graph input and output, but an unknown rank
        # (no shape) is what onnx.helper and some exporters write and onnxruntime accepts:
        # give those an empty shape for the check only, then take it away again.
        shapeless = [
            value
            for value in (*model.graph.input, *model.graph.output)
            if value.type.HasField("tensor_type") and not value.type.tensor_type.HasField("shape")
        ]
        for value in shapeless:
            value.type.tensor_type.shape.SetInParent()
        try:
            onnx.checker.check_model(model)
        except Exception as exc:  # ValidationError, but also protobuf errors on odd fields
            raise OnnxPruneError(
                f"{source} does not pass onnx.checker: {one_line(str(exc))}"
            ) from exc
        finally:
            for value in shapeless:
                value.type.tensor_type.ClearField("shape")
    _check_initializers(model, source)
    _check_weights(model, source)


def _known_dim(dims: tuple[int | None, ...] | None, axis: int) -> int | None:
    if dims is None or len(dims) <= abs(axis) - (axis < 0):
        return None
    return dims[axis]


def validate_shapes(model: ModelProto, shapes: dict, source: str) -> None:
    """After shape inference: input channels and matrix inner sizes agree with the weights.

    ``shapes`` is :func:`onnxprune.model.tensor_shapes` of the inferred model. Only known
    dims are compared; an unknown one is left to analysis (which freezes what it cannot see).
    """
    weights = {t.name: tuple(int(d) for d in t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        problem = None
        weight = weights.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None or not node.input[0]:
            continue
        if node.op_type == "Conv" and len(weight) >= 3:
            channels = _known_dim(shapes.get(node.input[0]), 1)
            group = _int(node, "group", 1)
            if channels is not None and channels != weight[1] * group:
                problem = (
                    f"input has {channels} channels but the weight expects "
                    f"{weight[1]} x group {group} = {weight[1] * group}"
                )
        elif node.op_type == "Gemm" and len(weight) == 2:
            inner = _known_dim(shapes.get(node.input[0]), 0 if _int(node, "transA", 0) else -1)
            expected = weight[1] if _int(node, "transB", 0) else weight[0]
            if inner is not None and inner != expected:
                problem = f"A's inner size {inner} does not match B's {expected}"
        if problem is not None:
            raise OnnxPruneError(
                f"{source}: node '{node.name or node.output[0]}' ({node.op_type}): {problem}; "
                "the model is inconsistent, re-export it"
            )


def available_memory() -> int | None:
    """Bytes of memory free now (``None`` where the platform cannot tell)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# 4-bit types store two elements per byte in raw_data (ONNX IR spec, "sub-byte types")
_PACKED_4BIT = {
    getattr(TensorProto, name)
    for name in ("INT4", "UINT4", "FLOAT4E2M1")
    if hasattr(TensorProto, name)
}


def _declared_bytes(tensor: TensorProto) -> int:
    count = math.prod(int(d) for d in tensor.dims)
    if tensor.data_type in _PACKED_4BIT:
        return (count + 1) // 2
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return count * itemsize


def check_declared_sizes(model: ModelProto, folder: Path, source: str) -> None:
    """Before reading external data: each external tensor's declared size must fit its data
    file, and all declared weights together the available memory."""
    total = 0
    for tensor in model.graph.initializer:
        if any(d < 0 for d in tensor.dims):
            raise OnnxPruneError(
                f"{source}: tensor '{tensor.name}' declares negative dims {list(tensor.dims)}"
            )
        try:
            size = _declared_bytes(tensor)
        except (KeyError, TypeError, ValueError):
            continue  # an unknown data type: the checker names it
        total += size
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        file = folder / info.get("location", "")
        offset, length = int(info.get("offset", 0) or 0), int(info.get("length", size) or size)
        if file.is_file() and offset + max(length, size) > file.stat().st_size:
            raise OnnxPruneError(
                f"{source}: tensor '{tensor.name}' declares {size:,} bytes at offset {offset:,} "
                f"but '{file.name}' holds {file.stat().st_size:,}; the external data is "
                "truncated or belongs to another model"
            )
    memory = available_memory()
    if memory is not None and total > memory:
        raise OnnxPruneError(
            f"{source} declares {total / 2**30:.1f} GiB of weights but only "
            f"{memory / 2**30:.1f} GiB of memory is available; free memory or use a larger machine"
        )

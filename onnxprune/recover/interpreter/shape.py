"""Data movement and shape computation: concat/split/slice/pad, reshapes, transpose,
gather, expand/tile, shape reads and constants."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import Tensor

from onnxprune.errors import UnsupportedOpError
from onnxprune.recover.interpreter.core import (
    NodeContext,
    axes_input,
    handler,
    int_list,
)
from onnxprune.recover.interpreter.padding import torch_pad_list


@handler("Concat")
def _concat(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    values = [v for v in inputs if v is not None]
    return [torch.cat(values, int(ctx.attr("axis")))]


@handler("Split")
def _split(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    axis = int(ctx.attr("axis", 0))
    if len(inputs) > 1 and inputs[1] is not None:
        sizes = int_list(inputs[1])
    elif ctx.attr("split") is not None:
        sizes = list(ctx.attr("split"))
    else:
        count = int(ctx.attr("num_outputs", ctx.num_outputs))
        chunk = math.ceil(x.shape[axis] / count)
        sizes = [min(chunk, x.shape[axis] - k * chunk) for k in range(count)]
    return list(torch.split(x, sizes, axis))


@handler("Slice")
def _slice(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    if ctx.opset < 10:
        starts, ends = list(ctx.attr("starts")), list(ctx.attr("ends"))
        axes = list(ctx.attr("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = int_list(inputs[1]), int_list(inputs[2])
        axes = (
            int_list(inputs[3])
            if len(inputs) > 3 and inputs[3] is not None
            else list(range(len(starts)))
        )
        steps = (
            int_list(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
        )
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= x.dim()
        size = x.shape[axis]
        if step > 0:
            start = max(0, min(size, start + size if start < 0 else start))
            end = max(0, min(size, end + size if end < 0 else end))
            x = x.narrow(axis, start, max(0, end - start))[
                (slice(None),) * axis + (slice(None, None, step),)
            ]
        else:
            start = max(-1, min(size - 1, start + size if start < 0 else start))
            end = max(-1, min(size - 1, end + size if end < 0 else end))
            index = torch.arange(start, end, step, device=x.device)
            x = x.index_select(axis, index)
    return [x]


@handler("Pad")
def _pad(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    mode = ctx.attr("mode", "constant")
    if ctx.opset < 11:
        pads, value = list(ctx.attr("pads")), float(ctx.attr("value", 0.0))
        axes = list(range(x.dim()))
    else:
        pads = int_list(inputs[1])
        value_t = inputs[2] if len(inputs) > 2 else None
        value = float(value_t.reshape(-1)[0]) if value_t is not None and value_t.numel() else 0.0
        axes_t = inputs[3] if len(inputs) > 3 else None
        axes = (
            [a % x.dim() for a in int_list(axes_t)] if axes_t is not None else list(range(x.dim()))
        )
    full = [0] * (2 * x.dim())
    for k, axis in enumerate(axes):
        full[axis], full[axis + x.dim()] = pads[k], pads[k + len(axes)]
    if mode == "constant":
        return [F.pad(x, torch_pad_list(full), value=value)]
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    if torch_mode is None:
        raise UnsupportedOpError(f"node '{ctx.name}': Pad mode '{mode}' is not supported")
    lead = next((a for a in range(x.dim()) if full[a] or full[a + x.dim()]), x.dim())
    if lead < 2 and x.dim() > 2:
        raise UnsupportedOpError(
            f"node '{ctx.name}': Pad mode '{mode}' on batch/channel axes is not supported"
        )
    spatial = full[2 : x.dim()] + full[x.dim() + 2 :]
    return [F.pad(x, torch_pad_list(spatial), mode=torch_mode)]


@handler("Reshape")
def _reshape(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    shape = int_list(inputs[1])
    if not ctx.attr("allowzero", 0):
        shape = [x.shape[k] if d == 0 else d for k, d in enumerate(shape)]
    return [x.reshape(shape)]


@handler("Flatten")
def _flatten(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    axis = int(ctx.attr("axis", 1)) % (x.dim() + 1) if x.dim() else 0
    return [x.reshape(int(np.prod(x.shape[:axis])), -1)]


@handler("Transpose")
def _transpose(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    perm = list(ctx.attr("perm", list(reversed(range(x.dim())))))
    return [x.permute(perm)]


@handler("Squeeze")
def _squeeze(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    axes = axes_input(ctx, inputs, 13)
    if axes is None:
        return [x.squeeze()]
    keep = [d for k, d in enumerate(x.shape) if k not in {a % x.dim() for a in axes}]
    return [x.reshape(keep)]


@handler("Unsqueeze")
def _unsqueeze(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    axes = axes_input(ctx, inputs, 13) or []
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return [x]


@handler("Constant")
def _constant(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    if "value" in ctx.attrs:
        array = numpy_helper.to_array(ctx.attrs["value"])
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        return [torch.from_numpy(np.array(array))]
    for key, dtype in (
        ("value_float", torch.float32),
        ("value_floats", torch.float32),
        ("value_int", torch.int64),
        ("value_ints", torch.int64),
    ):
        if key in ctx.attrs:
            return [torch.tensor(ctx.attrs[key], dtype=dtype)]
    raise UnsupportedOpError(f"node '{ctx.name}': Constant without a numeric value")


@handler("Shape")
def _shape(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    dims = list(x.shape)
    start = int(ctx.attr("start", 0))
    end = ctx.attr("end")
    dims = dims[start:] if end is None else dims[start : int(end)]
    return [torch.tensor(dims, dtype=torch.int64)]


@handler("Size")
def _size(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    return [torch.tensor(inputs[0].numel(), dtype=torch.int64)]  # type: ignore[union-attr]


@handler("Gather")
def _gather(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x, indices = inputs[0], inputs[1]
    assert x is not None and indices is not None
    axis = int(ctx.attr("axis", 0)) % x.dim()
    index = indices.long()
    index = torch.where(index < 0, index + x.shape[axis], index)
    out = x.index_select(axis, index.reshape(-1))
    shape = list(x.shape[:axis]) + list(indices.shape) + list(x.shape[axis + 1 :])
    return [out.reshape(shape)]


@handler("ConstantOfShape")
def _constant_of_shape(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    shape = int_list(inputs[0])
    if "value" in ctx.attrs:
        value = torch.from_numpy(np.array(numpy_helper.to_array(ctx.attrs["value"]))).reshape(-1)
    else:
        value = torch.zeros(1, dtype=torch.float32)
    if value.dtype.is_floating_point:
        value = value.float()
    return [value.expand(shape).clone() if shape else value.reshape(()).clone()]


@handler("Expand")
def _expand(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    shape = int_list(inputs[1])
    return [x * torch.ones(shape, dtype=x.dtype, device=x.device)]


@handler("Range")
def _range(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    start, limit, delta = (v.reshape(()) for v in inputs)  # type: ignore[union-attr]
    return [torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)]


@handler("Tile")
def _tile(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    return [inputs[0].repeat(int_list(inputs[1]))]  # type: ignore[union-attr]

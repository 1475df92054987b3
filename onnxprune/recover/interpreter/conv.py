"""Weighted layers (:data:`onnxprune.ops.WEIGHTED`): Conv, ConvTranspose, Gemm, MatMul."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from onnxprune.recover.interpreter.core import (
    NodeContext,
    handler,
)
from onnxprune.recover.interpreter.padding import torch_pad_list, window_geometry


def conv_input_padded(ctx: NodeContext, x: Tensor, weight_shape: Sequence[int]):
    """(x padded when pads are asymmetric, symmetric padding, strides, dilations) for a Conv."""
    kernel, strides, dilations, pads = window_geometry(ctx, x, list(weight_shape[2:]))
    rank = len(kernel)
    if pads[:rank] == pads[rank:]:
        return x, pads[:rank], strides, dilations
    return F.pad(x, torch_pad_list(pads)), [0] * rank, strides, dilations


@handler("Conv")
def _conv(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x, weight = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    assert x is not None and weight is not None
    x, padding, strides, dilations = conv_input_padded(ctx, x, weight.shape)
    group = int(ctx.attr("group", 1))
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[weight.dim() - 2]
    return [fn(x, weight, bias, strides, padding, dilations, group)]


@handler("ConvTranspose")
def _conv_transpose(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x, weight = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    assert x is not None and weight is not None
    kernel = list(ctx.attr("kernel_shape", list(weight.shape[2:])))
    rank = len(kernel)
    strides = list(ctx.attr("strides", [1] * rank))
    dilations = list(ctx.attr("dilations", [1] * rank))
    output_padding = list(ctx.attr("output_padding", [0] * rank))
    group = int(ctx.attr("group", 1))
    full = [
        strides[a] * (x.shape[2 + a] - 1) + output_padding[a] + (kernel[a] - 1) * dilations[a] + 1
        for a in range(rank)
    ]
    output_shape = ctx.attr("output_shape")
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = (
            list(output_shape)[-rank:]
            if output_shape is not None
            else [x.shape[2 + a] * strides[a] for a in range(rank)]
        )
        pads_begin, pads_end = [], []
        for a in range(rank):
            total = full[a] - target[a]
            low, high = total // 2, total - total // 2
            begin, end = (high, low) if auto_pad == "SAME_LOWER" else (low, high)
            pads_begin.append(begin)
            pads_end.append(end)
        pads = pads_begin + pads_end
    else:
        pads = list(ctx.attr("pads", [0] * (2 * rank)))
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[rank]
    # output_padding must be < stride for torch; ONNX just appends it, so pad, then add bias.
    y = fn(x, weight, None, strides, 0, 0, group, dilations)
    if any(output_padding):
        pad_list: list[int] = []
        for a in reversed(range(rank)):
            pad_list += [0, output_padding[a]]
        y = F.pad(y, pad_list)
    if bias is not None:
        y = y + bias.reshape([1, -1] + [1] * rank)
    slices = [slice(None), slice(None)] + [
        slice(pads[a], y.shape[2 + a] - pads[a + rank]) for a in range(rank)
    ]
    return [y[tuple(slices)]]


@handler("Gemm")
def _gemm(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    assert a is not None and b is not None
    if ctx.attr("transA", 0):
        a = a.t()
    if ctx.attr("transB", 0):
        b = b.t()
    y = float(ctx.attr("alpha", 1.0)) * (a @ b)
    if c is not None:
        y = y + float(ctx.attr("beta", 1.0)) * c
    return [y]


@handler("MatMul")
def _matmul(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    return [torch.matmul(inputs[0], inputs[1])]  # type: ignore[arg-type]

"""Reductions over axes and pooling (windowed and global)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from onnxprune.recover.interpreter.core import (
    NodeContext,
    OpHandler,
    axes_input,
    handler,
    register,
)
from onnxprune.recover.interpreter.padding import torch_pad_list, window_geometry


def _reduce(fn_name: str, axes_input_opset: int) -> OpHandler:
    def run(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
        x = inputs[0]
        assert x is not None
        axes = axes_input(ctx, inputs, axes_input_opset)
        keepdims = bool(ctx.attr("keepdims", 1))
        if not axes:
            if ctx.attr("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.dim()))
        dims = tuple(a % x.dim() for a in axes)
        if fn_name == "mean":
            return [x.mean(dim=dims, keepdim=keepdims)]
        if fn_name == "sum":
            return [x.sum(dim=dims, keepdim=keepdims)]
        y = x
        for dim in sorted(dims, reverse=True):
            y = (y.amax if fn_name == "max" else y.amin)(dim=dim, keepdim=True)
        return [y if keepdims else y.reshape([d for k, d in enumerate(x.shape) if k not in dims])]

    return run


register(
    {
        "ReduceMean": _reduce("mean", 18),
        "ReduceSum": _reduce("sum", 13),
        "ReduceMax": _reduce("max", 18),
        "ReduceMin": _reduce("min", 18),
    }
)


@handler("GlobalAveragePool")
def _global_avg(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    return [x.mean(dim=tuple(range(2, x.dim())), keepdim=True)]


@handler("GlobalMaxPool")
def _global_max(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    return [x.flatten(2).amax(dim=2).reshape(*x.shape[:2], *([1] * (x.dim() - 2)))]


def _pool_geometry(ctx: NodeContext, x: Tensor):
    return (*window_geometry(ctx, x), bool(ctx.attr("ceil_mode", 0)))


@handler("MaxPool")
def _maxpool(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    kernel, strides, dilations, pads, ceil_mode = _pool_geometry(ctx, x)
    rank = len(kernel)
    padding = pads[:rank]
    if pads[:rank] != pads[rank:] or any(2 * p > k for p, k in zip(padding, kernel, strict=True)):
        x = F.pad(x, torch_pad_list(pads), value=-math.inf)
        padding = [0] * rank
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[rank]
    return [fn(x, kernel, strides, padding, dilations, ceil_mode)]


@handler("AveragePool")
def _avgpool(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    kernel, strides, _, pads, ceil_mode = _pool_geometry(ctx, x)
    rank = len(kernel)
    include_pad = bool(ctx.attr("count_include_pad", 0))
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[rank]
    symmetric = pads[:rank] == pads[rank:] and all(
        2 * p <= k for p, k in zip(pads[:rank], kernel, strict=True)
    )
    if symmetric and not ceil_mode:
        return [fn(x, kernel, strides, pads[:rank], ceil_mode, include_pad)]
    # General case: pool the zero-padded sum and divide by the count of (real) elements.
    padded = F.pad(x, torch_pad_list(pads))
    sums = fn(padded, kernel, strides, 0, ceil_mode, True) * float(np.prod(kernel))
    ones = torch.ones_like(x[:1, :1]) if not include_pad else torch.ones_like(padded[:1, :1])
    counts_src = F.pad(ones, torch_pad_list(pads)) if not include_pad else ones
    counts = fn(counts_src, kernel, strides, 0, ceil_mode, True) * float(np.prod(kernel))
    return [sums / counts]

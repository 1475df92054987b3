"""Window geometry and padding shared by convolution, pooling and Pad: kernel, strides,
dilations, ``auto_pad``, and ONNX pads in torch order."""

from __future__ import annotations

import math

from torch import Tensor

from onnxprune.recover.interpreter.core import NodeContext


def spatial_pads(ctx: NodeContext, x: Tensor, kernel: list[int], strides: list[int],
                  dilations: list[int]) -> list[int]:  # fmt: skip
    """ONNX pads [b1, b2, ..., e1, e2, ...] for the spatial axes, resolving ``auto_pad``."""
    rank = len(kernel)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads_begin, pads_end = [], []
        for axis in range(rank):
            size = x.shape[2 + axis]
            out = math.ceil(size / strides[axis])
            total = max(
                0, (out - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis] + 1 - size
            )
            small, large = total // 2, total - total // 2
            begin, end = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
            pads_begin.append(begin)
            pads_end.append(end)
        return pads_begin + pads_end
    if auto_pad == "VALID":
        return [0] * (2 * rank)
    return list(ctx.attr("pads", [0] * (2 * rank)))


def torch_pad_list(pads: list[int]) -> list[int]:
    """ONNX [b1..bn, e1..en] -> torch F.pad order (last axis first: bn, en, ..., b1, e1)."""
    rank = len(pads) // 2
    out: list[int] = []
    for axis in reversed(range(rank)):
        out += [pads[axis], pads[axis + rank]]
    return out


def window_geometry(
    ctx: NodeContext, x: Tensor, default_kernel: list[int] | None = None
) -> tuple[list[int], list[int], list[int], list[int]]:
    """``(kernel, strides, dilations, pads)`` of a Conv/pool node on input ``x``;
    ``default_kernel`` (Conv: the weight's spatial dims) when ``kernel_shape`` is absent."""
    kernel = list(ctx.attr("kernel_shape", default_kernel))
    rank = len(kernel)
    strides = list(ctx.attr("strides", [1] * rank))
    dilations = list(ctx.attr("dilations", [1] * rank))
    pads = spatial_pads(ctx, x, kernel, strides, dilations)
    return kernel, strides, dilations, pads

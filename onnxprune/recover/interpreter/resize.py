"""Resize / Upsample: nearest and (bi/tri)linear resampling on any axes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from onnxprune import ops
from onnxprune.errors import UnsupportedOpError
from onnxprune.recover.interpreter.core import (
    NodeContext,
    handler,
    int_list,
)


def _target(
    ctx: NodeContext, inputs: list[Tensor | None], x: Tensor
) -> tuple[list[float], list[int], bool, str]:
    """``(scales, out_sizes, sizes_given, coordinate mode)`` of a Resize/Upsample node: one
    scale and one output size per axis of ``x``."""
    if ctx.op_type == "Upsample" or ctx.opset < 11:
        scales_t = inputs[1] if len(inputs) > 1 else None
        scales: list[float] | None = [
            float(s) for s in (scales_t.tolist() if scales_t is not None else ctx.attr("scales"))
        ]
        sizes = None
        coord = "asymmetric"
    else:
        scales_t = inputs[2] if len(inputs) > 2 else None
        sizes_t = inputs[3] if len(inputs) > 3 else None
        scales = (
            [float(s) for s in scales_t.tolist()]
            if scales_t is not None and scales_t.numel()
            else None
        )
        sizes = int_list(sizes_t) if sizes_t is not None and sizes_t.numel() else None
        coord = ctx.attr("coordinate_transformation_mode", "half_pixel")
    if sizes is not None:
        out_sizes = sizes
        scales = [o / i for o, i in zip(out_sizes, x.shape, strict=True)]
    else:
        assert scales is not None
        out_sizes = [int(math.floor(i * s)) for i, s in zip(x.shape, scales, strict=True)]
    return scales, out_sizes, sizes is not None, coord


def _nearest(
    ctx: NodeContext, x: Tensor, resized: list[int], scales: list[float], out_sizes: list[int],
    coord: str,
) -> Tensor:  # fmt: skip
    """Nearest-neighbour resampling of the ``resized`` axes (ONNX source-index rules)."""
    nearest = ctx.attr("nearest_mode", "round_prefer_floor")
    y = x
    for axis in resized:
        n_in, n_out, scale = x.shape[axis], out_sizes[axis], scales[axis]
        out_idx = torch.arange(n_out, dtype=torch.float64)
        if coord == "asymmetric":
            src = out_idx / scale
        elif coord == "align_corners":
            src = out_idx * ((n_in - 1) / (n_out - 1)) if n_out > 1 else out_idx * 0
        elif coord == "pytorch_half_pixel" and n_out == 1:
            src = out_idx * 0
        elif coord in ("half_pixel", "pytorch_half_pixel"):
            src = (out_idx + 0.5) / scale - 0.5
        else:
            raise UnsupportedOpError(
                f"node '{ctx.name}': Resize coordinate mode '{coord}' is not supported"
            )
        if nearest == "floor":
            idx = torch.floor(src)
        elif nearest == "ceil":
            idx = torch.ceil(src)
        elif nearest == "round_prefer_ceil":
            idx = torch.floor(src + 0.5)
        else:
            idx = torch.ceil(src - 0.5)
        idx = idx.clamp(0, n_in - 1).long()
        y = y.index_select(axis, idx.to(x.device))
    return y


def _linear(
    x: Tensor, resized: list[int], scales: list[float], out_sizes: list[int], sizes_given: bool,
    coord: str,
) -> Tensor | None:  # fmt: skip
    """Linear resampling of 1-3 ``resized`` axes with ``F.interpolate``; ``None`` when the
    coordinate mode has no torch equivalent."""
    rank = x.dim()
    # Move the resized axes last and fold the others into (batch, channel) for interpolate.
    kept_axes = [a for a in range(rank) if a not in resized]
    moved = x.permute(*kept_axes, *resized)
    kept_shape = [x.shape[a] for a in kept_axes]
    folded = moved.reshape(1, -1, *[x.shape[a] for a in resized])
    torch_mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(resized)]
    size = [out_sizes[a] for a in resized]
    if coord == "align_corners":
        resized_y = F.interpolate(folded, size=size, mode=torch_mode, align_corners=True)
    elif coord in ("half_pixel", "pytorch_half_pixel") and sizes_given:
        resized_y = F.interpolate(folded, size=size, mode=torch_mode, align_corners=False)
    elif coord in ("half_pixel", "pytorch_half_pixel"):
        resized_y = F.interpolate(
            folded, scale_factor=[scales[a] for a in resized], mode=torch_mode,
            align_corners=False, recompute_scale_factor=False,
        )  # fmt: skip
    else:
        return None
    y = resized_y.reshape(*kept_shape, *size)
    inverse = [0] * rank
    for position, axis in enumerate([*kept_axes, *resized]):
        inverse[axis] = position
    return y.permute(*inverse)


@handler(*ops.RESIZE)
def _resize(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    mode = ctx.attr("mode", "nearest")
    scales, out_sizes, sizes_given, coord = _target(ctx, inputs, x)
    rank = x.dim()
    # Resized axes may be anywhere (tf2onnx resizes NHWC on axes 1, 2).
    resized = [a for a in range(rank) if out_sizes[a] != x.shape[a] or abs(scales[a] - 1.0) > 1e-12]
    if mode == "nearest":
        return [_nearest(ctx, x, resized, scales, out_sizes, coord)]
    if mode == "linear" and 1 <= len(resized) <= 3 and rank - len(resized) >= 1:
        y = _linear(x, resized, scales, out_sizes, sizes_given, coord)
        if y is not None:
            return [y]
    raise UnsupportedOpError(
        f"node '{ctx.name}': Resize mode '{mode}' with coordinate mode '{coord}' is not supported"
    )

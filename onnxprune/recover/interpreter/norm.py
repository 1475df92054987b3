"""Normalisation (:data:`onnxprune.ops.NORMALIZATION`): BatchNormalization (training or
frozen statistics), InstanceNormalization, LayerNormalization."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from onnxprune.recover.interpreter.core import (
    NodeContext,
    handler,
)


@handler("BatchNormalization")
def _batchnorm(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x, scale, bias, mean, var = inputs[:5]
    assert x is not None and mean is not None and var is not None
    eps = float(ctx.attr("epsilon", 1e-5))
    # ONNX: running = running * momentum + batch * (1 - momentum); torch uses 1 - that.
    momentum = 1.0 - float(ctx.attr("momentum", 0.9))
    training = ctx.training_bn and mean.dtype.is_floating_point
    y = F.batch_norm(x, mean, var, scale, bias, training, momentum, eps)
    outputs = [y]
    if ctx.num_outputs > 1:
        outputs += [mean, var]
    return outputs


@handler("InstanceNormalization")
def _instancenorm(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x, scale, bias = inputs[:3]
    return [F.instance_norm(x, weight=scale, bias=bias, eps=float(ctx.attr("epsilon", 1e-5)))]  # type: ignore[arg-type]


@handler("LayerNormalization")
def _layernorm(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    assert x is not None
    axis = int(ctx.attr("axis", -1)) % x.dim()
    shape = list(x.shape[axis:])
    return [F.layer_norm(x, shape, scale, bias, float(ctx.attr("epsilon", 1e-5)))]

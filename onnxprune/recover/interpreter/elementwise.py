"""Elementwise ops: unary math and activations, broadcasting binary and variadic ops,
softmax along an axis, casts and pass-through ops."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from onnxprune import ops
from onnxprune.errors import UnsupportedOpError
from onnxprune.model import FLOAT_TYPES
from onnxprune.recover.interpreter.core import (
    ONNX_TO_TORCH_DTYPE,
    NodeContext,
    OpHandler,
    handler,
    register,
)


def _unary(fn: Callable[[Tensor], Tensor]) -> OpHandler:
    return lambda ctx, inputs: [fn(inputs[0])]  # type: ignore[arg-type]


register(
    {
        "Relu": _unary(torch.relu),
        "Sigmoid": _unary(torch.sigmoid),
        "Tanh": _unary(torch.tanh),
        "Sqrt": _unary(torch.sqrt),
        "Exp": _unary(torch.exp),
        "Log": _unary(torch.log),
        "Abs": _unary(torch.abs),
        "Neg": _unary(torch.neg),
        "Erf": _unary(torch.erf),
        "Reciprocal": _unary(torch.reciprocal),
        "Softplus": _unary(F.softplus),
        "Floor": _unary(torch.floor),
        "Ceil": _unary(torch.ceil),
        "Not": _unary(torch.logical_not),
        "HardSwish": _unary(F.hardswish),
        "Identity": _unary(lambda x: x),
    }
)


@handler("LeakyRelu")
def _leaky_relu(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    return [F.leaky_relu(inputs[0], float(ctx.attr("alpha", 0.01)))]  # type: ignore[arg-type]


@handler("Elu")
def _elu(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    return [F.elu(inputs[0], float(ctx.attr("alpha", 1.0)))]  # type: ignore[arg-type]


@handler("Gelu")
def _gelu(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    return [F.gelu(inputs[0], approximate=ctx.attr("approximate", "none"))]  # type: ignore[arg-type]


@handler("PRelu")
def _prelu(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x, slope = inputs[0], inputs[1]
    assert x is not None and slope is not None
    return [torch.where(x >= 0, x, x * slope)]


@handler("HardSigmoid")
def _hard_sigmoid(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    alpha, beta = float(ctx.attr("alpha", 0.2)), float(ctx.attr("beta", 0.5))
    x = inputs[0]
    assert x is not None
    return [torch.clamp(alpha * x + beta, 0.0, 1.0)]


@handler("Clip")
def _clip(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    if ctx.opset < 11:
        low, high = ctx.attr("min"), ctx.attr("max")
    else:
        low = inputs[1] if len(inputs) > 1 else None
        high = inputs[2] if len(inputs) > 2 else None
    return [torch.clamp(x, low, high)]


@handler(*ops.SOFTMAX)
def _softmax(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    fn = torch.softmax if ctx.op_type == "Softmax" else torch.log_softmax
    if ctx.opset >= 13:
        return [fn(x, int(ctx.attr("axis", -1)))]
    axis = int(ctx.attr("axis", 1)) % x.dim()  # old semantics: flatten to 2D at axis
    flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
    return [fn(flat, 1).reshape(x.shape)]


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> OpHandler:
    return lambda ctx, inputs: [fn(inputs[0], inputs[1])]  # type: ignore[arg-type]


def _div(a: Tensor, b: Tensor) -> Tensor:
    if a.dtype.is_floating_point or b.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _pow(a: Tensor, b: Tensor) -> Tensor:
    return torch.pow(a, b).to(a.dtype)


register(
    {
        "Add": _binary(torch.add),
        "Sub": _binary(torch.sub),
        "Mul": _binary(torch.mul),
        "Div": _binary(_div),
        "Pow": _binary(_pow),
        "Equal": _binary(torch.eq),
        "Less": _binary(torch.lt),
        "Greater": _binary(torch.gt),
        "And": _binary(torch.logical_and),
        "Or": _binary(torch.logical_or),
    }
)


@handler(*ops.VARIADIC)
def _variadic(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    values = [v for v in inputs if v is not None]
    result = values[0]
    for value in values[1:]:
        if ctx.op_type in ("Sum", "Mean"):
            result = result + value
        elif ctx.op_type == "Max":
            result = torch.maximum(result, value)
        else:
            result = torch.minimum(result, value)
    if ctx.op_type == "Mean":
        result = result / len(values)
    return [result]


@handler("Where")
def _where(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    return [torch.where(inputs[0].bool(), inputs[1], inputs[2])]  # type: ignore[union-attr,arg-type]


@handler("Dropout")
def _dropout(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    outputs = [x]
    if ctx.num_outputs > 1:
        outputs.append(torch.ones_like(x, dtype=torch.bool))
    return outputs


@handler("Cast")
def _cast(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    to = int(ctx.attr("to"))
    if to not in ONNX_TO_TORCH_DTYPE:
        raise UnsupportedOpError(f"node '{ctx.name}': Cast to ONNX type {to} is not supported")
    dtype = ONNX_TO_TORCH_DTYPE[to]
    if to in FLOAT_TYPES:
        dtype = torch.float32  # the interpreter computes every float tensor in float32
    return [inputs[0].to(dtype)]  # type: ignore[union-attr]

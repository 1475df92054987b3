"""Run an ONNX graph as a ``torch.nn.Module`` whose parameters are the graph's initializers.

Contract:
- :class:`OnnxModule` executes the nodes of ``model.graph`` in their (topological) file order
  with torch operators. Float initializers that feed a trainable slot (Conv/Gemm/MatMul
  weights and biases, BatchNormalization/InstanceNormalization scale and bias, PRelu slope,
  float constants of Add/Sub/Mul/Div) are ``nn.Parameter``s; every other initializer
  (BatchNormalization running statistics, shape constants, indices, Clip bounds, Resize
  scales ...) is a buffer. Nodes whose inputs are all non-trainable constants are evaluated
  once at construction time (shape arithmetic on constants).
- The module reproduces onnxruntime's outputs (float32, 1e-4) for the supported ops;
  construction raises :class:`~onnxprune.errors.UnsupportedOpError` naming the node and the op
  type for anything else (least-squares recovery does not need the interpreter and still works).
- :func:`write_back` returns a copy of the model whose initializers hold the module's current
  parameter and buffer values, in the initializer's original dtype: same nodes, same names,
  same shapes.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import ModelProto, TensorProto, helper, numpy_helper
from torch import Tensor, nn

from onnxprune.errors import OnnxPruneError, UnsupportedOpError

# Input slots whose float initializers are trained. Everything else stays a buffer.
_TRAINABLE_SLOTS: dict[str, tuple[int, ...] | None] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1),
    "BatchNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "PRelu": (1,),
    "Add": None,  # None: every input slot
    "Sub": None,
    "Mul": None,
    "Div": None,
}

_ONNX_TO_TORCH_DTYPE: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.INT8: torch.int8,
    TensorProto.UINT8: torch.uint8,
    TensorProto.INT16: torch.int16,
    TensorProto.INT32: torch.int32,
    TensorProto.INT64: torch.int64,
    TensorProto.BOOL: torch.bool,
}
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


@dataclass
class NodeContext:
    """What an op handler sees of its node: name, op type, attributes, opset, BN mode."""

    name: str
    op_type: str
    attrs: dict[str, Any]
    opset: int
    training_bn: bool
    num_outputs: int

    def attr(self, key: str, default: Any = None) -> Any:
        value = self.attrs.get(key, default)
        if isinstance(value, bytes):
            return value.decode()
        return value


OpHandler = Callable[[NodeContext, list[Tensor | None]], list[Tensor]]
_HANDLERS: dict[str, OpHandler] = {}


def handler(*op_types: str) -> Callable[[OpHandler], OpHandler]:
    """Register a torch implementation for one or more ONNX op types (default domain)."""

    def wrap(fn: OpHandler) -> OpHandler:
        for op_type in op_types:
            _HANDLERS[op_type] = fn
        return fn

    return wrap


def supported_ops() -> list[str]:
    """Sorted list of ONNX op types the interpreter can run."""
    return sorted(_HANDLERS)


def _safe_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^0-9a-zA-Z_]", "_", name) or "t"
    if base[0].isdigit():
        base = "t_" + base
    candidate, k = base, 1
    while candidate in taken:
        candidate, k = f"{base}_{k}", k + 1
    taken.add(candidate)
    return candidate


class OnnxModule(nn.Module):
    """An ONNX graph as a torch module (see module docstring for the contract).

    Args:
        model: the ONNX model (not modified).
        train_bn: if true, BatchNormalization uses batch statistics in ``train()`` mode and
            updates its running statistics (buffers, written back by :func:`write_back`); if
            false, BN always uses the frozen running statistics (its scale/bias still train).
        fallback: ``'error'`` raises :class:`UnsupportedOpError` for an op without a torch
            handler; ``'onnxruntime'`` runs such nodes one by one in onnxruntime instead (no
            gradient through them: for inference, e.g. least squares).

    ``forward(*inputs)`` takes one tensor per graph input (in graph order, initializer inputs
    excluded) and returns one tensor per graph output (a bare tensor when there is one output).
    """

    def __init__(
        self, model: ModelProto, *, train_bn: bool = True, fallback: str = "error"
    ) -> None:
        super().__init__()
        self.train_bn = train_bn
        graph = model.graph
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13
        )
        init_by_name = {t.name: t for t in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in init_by_name]
        self.output_names = [o.name for o in graph.output]

        trainable = self._trainable_initializers(graph, init_by_name)
        self.params = nn.ParameterDict()
        # ONNX tensor name -> (kind, key); kind is "param" or "buffer".
        self._slots: dict[str, tuple[str, str]] = {}
        self._init_dtypes: dict[str, int] = {}
        taken: set[str] = set()
        for name, tensor in init_by_name.items():
            array = numpy_helper.to_array(tensor)
            key = _safe_name(name, taken)
            self._init_dtypes[name] = tensor.data_type
            if tensor.data_type in _FLOAT_TYPES:
                value = torch.from_numpy(np.array(array, dtype=np.float32))
            else:
                value = torch.from_numpy(np.array(array))
            if name in trainable:
                self.params[key] = nn.Parameter(value)
                self._slots[name] = ("param", key)
            else:
                self.register_buffer("buf_" + key, value)
                self._slots[name] = ("buffer", "buf_" + key)

        self._nodes: list[tuple[NodeContext, list[str], list[str]]] = []
        self._opset_imports = list(model.opset_import)
        self._fallback_nodes: dict[str, _OrtNode] = {}
        unsupported = []
        for index, node in enumerate(graph.node):
            name = node.name or f"{node.op_type}_{index}"
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            ctx = NodeContext(
                name, node.op_type, attrs, self.opset, train_bn, num_outputs=len(node.output)
            )
            if node.domain not in ("", "ai.onnx") or node.op_type not in _HANDLERS:
                unsupported.append(f"node '{name}' (op {node.domain or ''}{node.op_type})")
                self._fallback_nodes[name] = _OrtNode(node, self._opset_imports)
            self._nodes.append((ctx, list(node.input), list(node.output)))
        if unsupported and fallback != "onnxruntime":
            raise UnsupportedOpError(
                f"the training interpreter cannot run {', '.join(unsupported[:5])}"
                + (f" and {len(unsupported) - 5} more" if len(unsupported) > 5 else "")
                + f"; supported ops: {', '.join(supported_ops())}. "
                "Use least-squares recovery (--method ls) instead, which still works."
            )
        self._last_use = self._compute_last_use()
        self._folded: dict[str, Tensor] = {}
        self._fold_constants()

    # -- construction helpers -------------------------------------------------------------

    @staticmethod
    def _trainable_initializers(graph: onnx.GraphProto, inits: dict[str, TensorProto]) -> set[str]:
        names: set[str] = set()
        for node in graph.node:
            slots = _TRAINABLE_SLOTS.get(node.op_type, ())
            for slot, name in enumerate(node.input):
                if name not in inits or inits[name].data_type not in _FLOAT_TYPES:
                    continue
                if slots is None or slot in slots:
                    names.add(name)
        return names

    def _compute_last_use(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for index, (_, inputs, _) in enumerate(self._nodes):
            for name in inputs:
                if name:
                    last[name] = index
        for name in self.output_names:
            last[name] = len(self._nodes)
        return last

    def _fold_constants(self) -> None:
        """Evaluate nodes whose inputs are all non-trainable constants, once."""
        constant: dict[str, Tensor] = {
            name: getattr(self, key)
            for name, (kind, key) in self._slots.items()
            if kind == "buffer"
        }
        self._fold_skip: set[int] = set()
        with torch.no_grad():
            for index, (ctx, inputs, outputs) in enumerate(self._nodes):
                if ctx.op_type == "BatchNormalization":
                    continue  # its running stats are buffers that may update in training
                if not all((not n) or n in constant for n in inputs):
                    continue
                values = [constant[n] if n else None for n in inputs]
                try:
                    results = self.handler_for(ctx)(ctx, values)
                except Exception:  # noqa: BLE001 - left to run at forward time
                    continue
                for name, value in zip(outputs, results, strict=False):
                    if name:
                        constant[name] = value
                        self._folded[name] = value
                self._fold_skip.add(index)

    # -- public API -----------------------------------------------------------------------

    def handler_for(self, ctx: NodeContext) -> OpHandler:
        """The function that runs a node: its torch handler or the onnxruntime fallback."""
        fallback = self._fallback_nodes.get(ctx.name)
        return fallback if fallback is not None else _HANDLERS[ctx.op_type]

    def tensor(self, name: str) -> Tensor:
        """The current value of an initializer (parameter or buffer) by ONNX tensor name."""
        if name not in self._slots:
            raise OnnxPruneError(f"'{name}' is not an initializer of this model")
        kind, key = self._slots[name]
        return self.params[key] if kind == "param" else getattr(self, key)

    def initializer_names(self, kind: str | None = None) -> list[str]:
        """ONNX names of the initializers held as ``'param'``, ``'buffer'`` or both (None)."""
        return [n for n, (k, _) in self._slots.items() if kind is None or k == kind]

    def set_initializer(self, name: str, value: Tensor | np.ndarray) -> None:
        """Overwrite an initializer's value in place (same shape)."""
        target = self.tensor(name)
        source = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
        if tuple(source.shape) != tuple(target.shape):
            raise OnnxPruneError(
                f"new value for '{name}' has shape {tuple(source.shape)}, "
                f"expected {tuple(target.shape)}"
            )
        with torch.no_grad():
            target.copy_(source.to(target.dtype))

    def forward(self, *inputs: Tensor, return_tensors: Sequence[str] = ()) -> Any:
        """Run the graph. With ``return_tensors`` also return a dict of those tensors by name."""
        if len(inputs) != len(self.input_names):
            raise OnnxPruneError(
                f"the model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                f"got {len(inputs)}"
            )
        env: dict[str, Tensor | None] = dict(self._folded)
        for name, (kind, key) in self._slots.items():
            env[name] = self.params[key] if kind == "param" else getattr(self, key)
        env.update(zip(self.input_names, inputs, strict=True))
        keep = set(return_tensors)
        for index, (ctx, names_in, names_out) in enumerate(self._nodes):
            if index in self._fold_skip:
                continue
            values = [env[n] if n else None for n in names_in]
            if ctx.op_type == "BatchNormalization":
                ctx.training_bn = self.train_bn and self.training
            try:
                results = self.handler_for(ctx)(ctx, values)
            except OnnxPruneError:
                raise
            except Exception as exc:
                raise OnnxPruneError(
                    f"node '{ctx.name}' ({ctx.op_type}) failed in the training interpreter: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            for name, value in zip(names_out, results, strict=False):
                if name:
                    env[name] = value
            if not torch.is_grad_enabled():  # free dead activations during inference
                for name in names_in:
                    if name and self._last_use.get(name) == index and name not in keep:
                        if name not in self._slots and name not in self._folded:
                            env.pop(name, None)
        outputs = tuple(env[n] for n in self.output_names)
        result: Any = outputs[0] if len(outputs) == 1 else outputs
        if return_tensors:
            return result, {n: env[n] for n in return_tensors}
        return result

    def run_node(self, node_name: str, inputs: list[Tensor | None]) -> list[Tensor]:
        """Run one node by name on given inputs (initializer inputs filled from the module)."""
        for ctx, names_in, _ in self._nodes:
            if ctx.name == node_name:
                values = [
                    v if v is not None else (self.tensor(n) if n in self._slots else None)
                    for v, n in zip(inputs, names_in, strict=False)
                ]
                return self.handler_for(ctx)(ctx, values)
        raise OnnxPruneError(f"no node named '{node_name}' in the model")


class _OrtNode:
    """Runs one ONNX node in onnxruntime (inference only), one session per input signature."""

    def __init__(self, node: onnx.NodeProto, opset_imports: list[onnx.OperatorSetIdProto]):
        self.node = node
        self.opset_imports = opset_imports
        self.sessions: dict[tuple, Any] = {}

    def __call__(self, ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
        import onnxruntime as ort

        present = [(n, v) for n, v in zip(self.node.input, inputs, strict=False) if n]
        key = tuple((str(v.dtype), v.dim()) for _, v in present if v is not None)
        session = self.sessions.get(key)
        if session is None:
            graph_inputs = [
                helper.make_tensor_value_info(
                    n, helper.np_dtype_to_tensor_dtype(np.dtype(_numpy_dtype(v))),
                    [None] * v.dim(),
                )
                for n, v in present
                if v is not None
            ]  # fmt: skip
            graph_outputs = [helper.make_empty_tensor_value_info(n) for n in self.node.output if n]
            graph = helper.make_graph([self.node], "single_node", graph_inputs, graph_outputs)
            model = helper.make_model(graph, opset_imports=self.opset_imports, ir_version=8)
            try:
                session = ort.InferenceSession(
                    model.SerializeToString(), providers=["CPUExecutionProvider"]
                )
            except Exception as exc:
                raise UnsupportedOpError(
                    f"node '{ctx.name}' ({ctx.op_type}) runs neither in the interpreter nor in "
                    f"onnxruntime: {exc}"
                ) from exc
            self.sessions[key] = session
        feeds = {n: v.detach().cpu().numpy() for n, v in present if v is not None}
        results = session.run(None, feeds)
        return [torch.from_numpy(np.asarray(r)) for r in results]


def _numpy_dtype(value: Tensor) -> Any:
    return torch.empty(0, dtype=value.dtype).numpy().dtype


def write_back(module: OnnxModule, model: ModelProto) -> ModelProto:
    """Copy of ``model`` whose initializers hold ``module``'s parameters and buffers.

    Nodes, names, shapes and initializer dtypes are unchanged; only values differ.
    """
    out = copy.deepcopy(model)
    for index, tensor in enumerate(out.graph.initializer):
        if tensor.name not in module._slots:
            continue
        value = module.tensor(tensor.name).detach().cpu().numpy()
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        new = numpy_helper.from_array(value.astype(dtype, copy=False), tensor.name)
        if tuple(new.dims) != tuple(tensor.dims):
            raise OnnxPruneError(
                f"write_back: '{tensor.name}' changed shape from {list(tensor.dims)} to "
                f"{list(new.dims)}"
            )
        out.graph.initializer[index].CopyFrom(new)
    return out


# ---------------------------------------------------------------------------------------
# Op handlers. Each takes (ctx, inputs) and returns the list of outputs.
# ---------------------------------------------------------------------------------------


def _ints(value: Tensor | None) -> list[int]:
    return [] if value is None else [int(v) for v in value.reshape(-1).tolist()]


def _spatial_pads(ctx: NodeContext, x: Tensor, kernel: list[int], strides: list[int],
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


def _torch_pad_list(pads: list[int]) -> list[int]:
    """ONNX [b1..bn, e1..en] -> torch F.pad order (last axis first: bn, en, ..., b1, e1)."""
    rank = len(pads) // 2
    out: list[int] = []
    for axis in reversed(range(rank)):
        out += [pads[axis], pads[axis + rank]]
    return out


def _conv_geometry(ctx: NodeContext, x: Tensor, weight_shape: Sequence[int]):
    kernel = list(ctx.attr("kernel_shape", list(weight_shape[2:])))
    rank = len(kernel)
    strides = list(ctx.attr("strides", [1] * rank))
    dilations = list(ctx.attr("dilations", [1] * rank))
    pads = _spatial_pads(ctx, x, kernel, strides, dilations)
    return kernel, strides, dilations, pads


def conv_input_padded(ctx: NodeContext, x: Tensor, weight_shape: Sequence[int]):
    """(x padded when pads are asymmetric, symmetric padding, strides, dilations) for a Conv."""
    kernel, strides, dilations, pads = _conv_geometry(ctx, x, weight_shape)
    rank = len(kernel)
    if pads[:rank] == pads[rank:]:
        return x, pads[:rank], strides, dilations
    return F.pad(x, _torch_pad_list(pads)), [0] * rank, strides, dilations


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


def _unary(fn: Callable[[Tensor], Tensor]) -> OpHandler:
    return lambda ctx, inputs: [fn(inputs[0])]  # type: ignore[arg-type]


_HANDLERS.update(
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


@handler("Softmax", "LogSoftmax")
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


_HANDLERS.update(
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


@handler("Sum", "Max", "Min", "Mean")
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
        sizes = _ints(inputs[1])
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
        starts, ends = _ints(inputs[1]), _ints(inputs[2])
        axes = (
            _ints(inputs[3])
            if len(inputs) > 3 and inputs[3] is not None
            else list(range(len(starts)))
        )
        steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
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
        pads = _ints(inputs[1])
        value_t = inputs[2] if len(inputs) > 2 else None
        value = float(value_t.reshape(-1)[0]) if value_t is not None and value_t.numel() else 0.0
        axes_t = inputs[3] if len(inputs) > 3 else None
        axes = [a % x.dim() for a in _ints(axes_t)] if axes_t is not None else list(range(x.dim()))
    full = [0] * (2 * x.dim())
    for k, axis in enumerate(axes):
        full[axis], full[axis + x.dim()] = pads[k], pads[k + len(axes)]
    if mode == "constant":
        return [F.pad(x, _torch_pad_list(full), value=value)]
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    if torch_mode is None:
        raise UnsupportedOpError(f"node '{ctx.name}': Pad mode '{mode}' is not supported")
    lead = next((a for a in range(x.dim()) if full[a] or full[a + x.dim()]), x.dim())
    if lead < 2 and x.dim() > 2:
        raise UnsupportedOpError(
            f"node '{ctx.name}': Pad mode '{mode}' on batch/channel axes is not supported"
        )
    spatial = full[2 : x.dim()] + full[x.dim() + 2 :]
    return [F.pad(x, _torch_pad_list(spatial), mode=torch_mode)]


@handler("Reshape")
def _reshape(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    shape = _ints(inputs[1])
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


def _axes(ctx: NodeContext, inputs: list[Tensor | None], attr_before: int) -> list[int] | None:
    if ctx.opset < attr_before:
        axes = ctx.attr("axes")
        return None if axes is None else list(axes)
    if len(inputs) > 1 and inputs[1] is not None:
        return _ints(inputs[1])
    return None


@handler("Squeeze")
def _squeeze(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    axes = _axes(ctx, inputs, 13)
    if axes is None:
        return [x.squeeze()]
    keep = [d for k, d in enumerate(x.shape) if k not in {a % x.dim() for a in axes}]
    return [x.reshape(keep)]


@handler("Unsqueeze")
def _unsqueeze(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    axes = _axes(ctx, inputs, 13) or []
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return [x]


def _reduce(fn_name: str, axes_input_opset: int) -> OpHandler:
    def run(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
        x = inputs[0]
        assert x is not None
        axes = _axes(ctx, inputs, axes_input_opset)
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


_HANDLERS.update(
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
    kernel = list(ctx.attr("kernel_shape"))
    rank = len(kernel)
    strides = list(ctx.attr("strides", [1] * rank))
    dilations = list(ctx.attr("dilations", [1] * rank))
    pads = _spatial_pads(ctx, x, kernel, strides, dilations)
    return kernel, strides, dilations, pads, bool(ctx.attr("ceil_mode", 0))


@handler("MaxPool")
def _maxpool(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    kernel, strides, dilations, pads, ceil_mode = _pool_geometry(ctx, x)
    rank = len(kernel)
    padding = pads[:rank]
    if pads[:rank] != pads[rank:] or any(2 * p > k for p, k in zip(padding, kernel, strict=True)):
        x = F.pad(x, _torch_pad_list(pads), value=-math.inf)
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
    padded = F.pad(x, _torch_pad_list(pads))
    sums = fn(padded, kernel, strides, 0, ceil_mode, True) * float(np.prod(kernel))
    ones = torch.ones_like(x[:1, :1]) if not include_pad else torch.ones_like(padded[:1, :1])
    counts_src = F.pad(ones, _torch_pad_list(pads)) if not include_pad else ones
    counts = fn(counts_src, kernel, strides, 0, ceil_mode, True) * float(np.prod(kernel))
    return [sums / counts]


@handler("Resize", "Upsample")
def _resize(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    mode = ctx.attr("mode", "nearest")
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
        sizes = _ints(sizes_t) if sizes_t is not None and sizes_t.numel() else None
        coord = ctx.attr("coordinate_transformation_mode", "half_pixel")
    rank = x.dim()
    if sizes is not None:
        out_sizes = sizes
        scales = [o / i for o, i in zip(out_sizes, x.shape, strict=True)]
    else:
        assert scales is not None
        out_sizes = [int(math.floor(i * s)) for i, s in zip(x.shape, scales, strict=True)]
    # Resized axes may be anywhere (tf2onnx resizes NHWC on axes 1, 2).
    resized = [a for a in range(rank) if out_sizes[a] != x.shape[a] or abs(scales[a] - 1.0) > 1e-12]
    if mode == "nearest":
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
        return [y]
    if mode == "linear" and 1 <= len(resized) <= 3 and rank - len(resized) >= 1:
        # Move the resized axes last and fold the others into (batch, channel) for interpolate.
        kept_axes = [a for a in range(rank) if a not in resized]
        moved = x.permute(*kept_axes, *resized)
        kept_shape = [x.shape[a] for a in kept_axes]
        folded = moved.reshape(1, -1, *[x.shape[a] for a in resized])
        torch_mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(resized)]
        size = [out_sizes[a] for a in resized]
        if coord == "align_corners":
            resized_y: Tensor | None = F.interpolate(
                folded, size=size, mode=torch_mode, align_corners=True
            )
        elif coord in ("half_pixel", "pytorch_half_pixel") and sizes is not None:
            resized_y = F.interpolate(folded, size=size, mode=torch_mode, align_corners=False)
        elif coord in ("half_pixel", "pytorch_half_pixel"):
            resized_y = F.interpolate(
                folded, scale_factor=[scales[a] for a in resized], mode=torch_mode,
                align_corners=False, recompute_scale_factor=False,
            )  # fmt: skip
        else:
            resized_y = None
        if resized_y is not None:
            y = resized_y.reshape(*kept_shape, *size)
            inverse = [0] * rank
            for position, axis in enumerate([*kept_axes, *resized]):
                inverse[axis] = position
            return [y.permute(*inverse)]
    raise UnsupportedOpError(
        f"node '{ctx.name}': Resize mode '{mode}' with coordinate mode '{coord}' is not supported"
    )


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
    if to not in _ONNX_TO_TORCH_DTYPE:
        raise UnsupportedOpError(f"node '{ctx.name}': Cast to ONNX type {to} is not supported")
    dtype = _ONNX_TO_TORCH_DTYPE[to]
    if to in _FLOAT_TYPES:
        dtype = torch.float32  # the interpreter computes every float tensor in float32
    return [inputs[0].to(dtype)]  # type: ignore[union-attr]


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
    shape = _ints(inputs[0])
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
    shape = _ints(inputs[1])
    return [x * torch.ones(shape, dtype=x.dtype, device=x.device)]


@handler("Range")
def _range(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    start, limit, delta = (v.reshape(()) for v in inputs)  # type: ignore[union-attr]
    return [torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)]


@handler("Tile")
def _tile(ctx: NodeContext, inputs: list[Tensor | None]) -> list[Tensor]:
    return [inputs[0].repeat(_ints(inputs[1]))]  # type: ignore[union-attr]

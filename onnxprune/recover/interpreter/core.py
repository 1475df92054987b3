"""The graph runner: :class:`OnnxModule`, the op registry, :func:`write_back`.

Op handlers live in the sibling modules, one per op family (:mod:`onnxprune.ops`); each
takes ``(ctx, inputs)`` and returns the list of outputs.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import ModelProto, TensorProto, helper, numpy_helper
from torch import Tensor, nn

from onnxprune import ops
from onnxprune.errors import OnnxPruneError, UnsupportedOpError
from onnxprune.model import FLOAT_TYPES

_TRAINABLE_SLOTS: dict[str, tuple[int, ...] | None] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1),
    "BatchNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "PRelu": (1,),
    # None: every input slot (a constant operand of an affine step trains like a bias/scale)
    **{op: None for op in ops.ARITHMETIC},
}


ONNX_TO_TORCH_DTYPE: dict[int, torch.dtype] = {
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


def register(table: Mapping[str, OpHandler]) -> None:
    """Register one torch implementation per op type of ``table`` (default domain)."""
    for op_type, fn in table.items():
        _HANDLERS[op_type] = fn


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
            if tensor.data_type in FLOAT_TYPES:
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
                if name not in inits or inits[name].data_type not in FLOAT_TYPES:
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
            results = run_node_checked(self, ctx, values)
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


def run_node_checked(
    module: OnnxModule, ctx: NodeContext, values: list[Tensor | None]
) -> list[Tensor]:
    """Run one node; a failure becomes an :class:`OnnxPruneError` naming the node and the
    shapes it was given (a shape error is what a model with baked-in sizes produces)."""
    try:
        return module.handler_for(ctx)(ctx, values)
    except OnnxPruneError:
        raise
    except Exception as exc:
        shapes = ", ".join(str(list(v.shape)) if v is not None else "-" for v in values)
        raise OnnxPruneError(
            f"node '{ctx.name}' ({ctx.op_type}) failed in the recovery interpreter on inputs of "
            f"shape {shapes}: {type(exc).__name__}: {str(exc).splitlines()[0]}; the model may "
            "only accept the input sizes it was exported with (check the calibration data's "
            "sample shape against the model input)"
        ) from exc


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


def int_list(value: Tensor | None) -> list[int]:
    """A 1-D integer operand (shape, axes, pads ...) as a Python list; ``[]`` when absent."""
    return [] if value is None else [int(v) for v in value.reshape(-1).tolist()]


def axes_input(ctx: NodeContext, inputs: list[Tensor | None], attr_before: int) -> list[int] | None:
    """``axes`` of (Un)Squeeze/Reduce*: an attribute before opset ``attr_before``, then input 1."""
    if ctx.opset < attr_before:
        axes = ctx.attr("axes")
        return None if axes is None else list(axes)
    if len(inputs) > 1 and inputs[1] is not None:
        return int_list(inputs[1])
    return None

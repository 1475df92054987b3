"""Value-preserving rewrites that make every exporter's graph look alike before analysis.

Contract of :func:`normalize` (input not mutated, a new model returned):

- ``Constant`` nodes become initializers (same tensor name).
- Constant weight paths are folded: ``Transpose``/``Identity``/``Cast``/``Reshape``/
  ``Unsqueeze``/``Squeeze``/``Flatten`` nodes whose inputs are all initializers become one
  initializer holding their output (same tensor name). Quantized weights
  (``DequantizeLinear``) are left alone: the analysis then freezes what they feed.
- Run-time shape targets: a ``Reshape`` whose shape input is computed from ``Shape`` nodes
  and constants (``Shape -> Gather/Slice -> Cast -> Unsqueeze -> Concat -> Cast``, the way
  tf2onnx, paddle2onnx and older torch exporters write a dynamic-batch Flatten) gets a
  constant shape when its value is determined up to dims copied from the data input
  (written ``0``, only with ``allowzero=0``) and at most one other dim (written ``-1``).
  The ``Shape`` chain then becomes dead and is dropped, so the analysis sees an ordinary
  static Reshape (see :func:`static_reshape_targets`).
- Shape arithmetic is constant-folded (:func:`fold_shape_arithmetic`): a Gather/Slice/
  Concat/Cast/arithmetic/ConstantOfShape/... node whose inputs are all constants, or a
  ``Shape`` read of dims that are static, becomes an initializer (same tensor name), so the
  pads, sizes and targets of Pad/Reshape/Resize/Expand computed that way are constants.
  Dims that stay symbolic keep their computations; with inputs fixed by
  :func:`onnxprune.model.fix_input_shapes` the model is then fixed to that input size.
- ``Expand(c, shape)`` of a constant ``c`` feeding a broadcasting binary op whose other
  operand already has the expanded shape is replaced by ``c`` itself (broadcasting gives the
  same values), so per-channel constants stay sliceable.
- ``MatMul(A, W) + Add(b)`` with 2-D ``A``, constant 2-D ``W`` and constant bias of shape
  ``[N]``/``[1, N]`` becomes ``Gemm(A, W, b)`` (the MatMul node's name, the Add's output).
- Nodes get a unique name where they have none (or a duplicate); existing unique names and
  every remaining tensor name are kept.
- Declared graph-output shapes that contradict shape inference (negative dims as some
  exporters write for "dynamic", a wrong rank) are replaced by the inferred shape, so the
  rewritten model passes ``onnx.checker``'s strict shape check.
- Nodes are in topological order; dead nodes (default domain, no output used) and unused
  initializers are dropped; shapes are re-inferred.

Outputs are unchanged up to float rounding of the fused Gemm.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx
from onnx import ModelProto, helper, numpy_helper

from onnxprune import ops
from onnxprune.model import infer_model_shapes, tensor_shapes

FOLDABLE = ("Transpose", "Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten")


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attribute in node.attribute:
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t)
        if attribute.name == "value_float":
            return np.array(attribute.f, dtype=np.float32)
        if attribute.name == "value_floats":
            return np.array(list(attribute.floats), dtype=np.float32)
        if attribute.name == "value_int":
            return np.array(attribute.i, dtype=np.int64)
        if attribute.name == "value_ints":
            return np.array(list(attribute.ints), dtype=np.int64)
    return None


def _fold_node(node: onnx.NodeProto, values: list[np.ndarray], opset: int) -> np.ndarray | None:
    """Evaluate one foldable node on constant inputs with the ONNX reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    inputs = [
        helper.make_tensor_value_info(
            f"in{k}", helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape)
        )
        for k, v in enumerate(values)
    ]
    clone = helper.make_node(
        node.op_type, [f"in{k}" for k in range(len(values))], ["out"], domain=node.domain
    )
    clone.attribute.extend(node.attribute)
    graph = helper.make_graph(
        [clone], "fold", inputs, [helper.make_value_info("out", onnx.TypeProto())]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        feeds: dict[str, np.ndarray] = {f"in{k}": v for k, v in enumerate(values)}
        result = list(ReferenceEvaluator(model).run(None, feeds))
    except Exception:
        return None
    return np.asarray(result[0])


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    produced_by = {out: k for k, n in enumerate(nodes) for out in n.output if out}
    order: list[int] = []
    state = [0] * len(nodes)  # 0 new, 1 visiting, 2 done

    def visit(start: int) -> None:
        stack = [(start, False)]
        while stack:
            k, expanded = stack.pop()
            if expanded:
                state[k] = 2
                order.append(k)
                continue
            if state[k]:
                if state[k] == 1:
                    continue
                continue
            state[k] = 1
            stack.append((k, True))
            for name in nodes[k].input:
                dep = produced_by.get(name)
                if name and name not in available and dep is not None and state[dep] == 0:
                    stack.append((dep, False))

    for k in range(len(nodes)):
        if state[k] == 0:
            visit(k)
    return [nodes[k] for k in order]


def normalize(model: ModelProto) -> ModelProto:
    """Return a normalised copy of ``model`` (see the module docstring for the rewrites)."""
    out = ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 13)
    input_names = {i.name for i in graph.input}
    output_names = {o.name for o in graph.output}
    consts: dict[str, np.ndarray] = {
        t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name not in input_names
    }
    new_initializers: dict[str, np.ndarray] = {}
    kept_nodes: list[onnx.NodeProto] = []
    nodes = _toposort(list(graph.node), {i.name for i in graph.input} | set(consts))
    for node in nodes:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = _constant_node_value(node)
            if value is not None and node.output[0] not in output_names:
                consts[node.output[0]] = value
                new_initializers[node.output[0]] = value
                continue
        if (
            node.op_type in FOLDABLE
            and node.domain in ("", "ai.onnx")
            and len(node.output) == 1
            and node.output[0] not in output_names
            and all(name in consts for name in node.input if name)
            and any(name for name in node.input)
        ):
            value = _fold_node(node, [consts[name] for name in node.input if name], opset)
            if value is not None:
                consts[node.output[0]] = value
                new_initializers[node.output[0]] = value
                continue
        kept_nodes.append(node)
    for name, value in new_initializers.items():
        graph.initializer.append(numpy_helper.from_array(value, name))
    del graph.node[:]
    graph.node.extend(kept_nodes)
    _name_nodes(graph)
    out = infer_model_shapes(out)
    out, folded = fold_shape_arithmetic(out)
    if folded:
        consts.update(
            (t.name, numpy_helper.to_array(t))
            for t in out.graph.initializer
            if t.name not in consts
        )
    out, rewritten = resolve_reshape_targets(out, consts)
    rewritten += folded
    rewritten += _drop_redundant_expands(out, consts)
    if rewritten:
        _drop_dead_nodes(out)
        del out.graph.value_info[:]
        out = infer_model_shapes(out)
    _fuse_matmul_add(out, consts)
    _drop_unused_initializers(out)
    del out.graph.value_info[:]
    out = infer_model_shapes(out)
    negative = any(
        d.HasField("dim_value") and d.dim_value < 0
        for o in out.graph.output
        for d in o.type.tensor_type.shape.dim
    )
    if rewritten or negative:  # only then can declared output shapes contradict inference
        _reconcile_output_shapes(out)
    return out


def _name_nodes(graph: onnx.GraphProto) -> None:
    counts = Counter(n.name for n in graph.node if n.name)
    taken = set(counts)
    seen: set[str] = set()
    for k, node in enumerate(graph.node):
        if node.name and counts[node.name] == 1:
            continue
        if node.name and node.name not in seen:
            seen.add(node.name)  # first holder of a duplicated name keeps it
            continue
        base = node.name or f"{node.op_type}_{k}"
        candidate, suffix = base, 1
        while candidate in taken:
            candidate = f"{base}_{suffix}"
            suffix += 1
        node.name = candidate
        taken.add(candidate)


def _fuse_matmul_add(model: ModelProto, consts: dict[str, np.ndarray]) -> None:
    graph = model.graph
    shapes = tensor_shapes(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    remove: list[onnx.NodeProto] = []
    for node in list(graph.node):
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        weight = consts.get(node.input[1])
        a_shape = shapes.get(node.input[0])
        users = consumers.get(node.output[0], [])
        if weight is None or weight.ndim != 2 or a_shape is None or len(a_shape) != 2:
            continue
        if len(users) != 1 or users[0].op_type != "Add" or node.output[0] in outputs:
            continue
        add = users[0]
        other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        bias = consts.get(other)
        n_out = weight.shape[1]
        if bias is None or bias.shape not in ((n_out,), (1, n_out)) or bias.dtype != weight.dtype:
            continue
        gemm = helper.make_node("Gemm", [node.input[0], node.input[1], other], [add.output[0]])
        gemm.name = node.name
        node.CopyFrom(gemm)
        remove.append(add)
    for add in remove:
        graph.node.remove(add)


def _drop_unused_initializers(model: ModelProto) -> None:
    graph = model.graph
    used = {name for node in graph.node for name in node.input}
    used |= {o.name for o in graph.output}
    used |= _subgraph_inputs(graph)
    keep = [t for t in graph.initializer if t.name in used]
    real_inputs = _real_inputs(model)
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)
        names = {t.name for t in keep}
        inputs = [i for i in graph.input if i.name in names or i.name in real_inputs]
        del graph.input[:]
        graph.input.extend(inputs)


def _real_inputs(model: ModelProto) -> set[str]:
    init = {t.name for t in model.graph.initializer}
    return {i.name for i in model.graph.input if i.name not in init}


def _subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            subgraphs = list(attribute.graphs)
            if attribute.HasField("g"):
                subgraphs.append(attribute.g)
            for sub in subgraphs:
                names |= {name for n in sub.node for name in n.input}
                names |= _subgraph_inputs(sub)
    return names


# -- run-time shape targets --------------------------------------------------------------
# A shape-vector element is a known int, a ``_Dim`` (dimension ``axis`` of ``tensor``, read
# by a Shape node) or ``None`` (computed from dims in a way not tracked: Mul of two dims...).
class _Dim(tuple):
    """Dimension ``axis`` of tensor ``tensor`` as read by a ``Shape`` node at run time."""

    __slots__ = ()

    def __new__(cls, tensor: str, axis: int) -> _Dim:
        return super().__new__(cls, (tensor, axis))


_Element = int | _Dim | None
_INT_TYPES = {
    onnx.TensorProto.INT64,
    onnx.TensorProto.INT32,
    onnx.TensorProto.INT16,
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT64,
    onnx.TensorProto.UINT32,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.UINT8,
}


def _symbolic_dims(model: ModelProto) -> dict[str, list[int | str | None]]:
    """Tensor name -> dims (int, dim_param string, or None) of every tensor of known rank."""
    shapes = tensor_shapes(model, symbolic=True)
    return {name: list(dims) for name, dims in shapes.items() if dims is not None}


class _ShapeValues:
    """Element-wise values of the small integer tensors of a shape computation.

    ``value(name)`` is ``(elements, is_scalar)`` or ``None`` when ``name`` is not a shape
    computation this evaluator follows (Shape, Gather/Slice/Concat/Unsqueeze/Squeeze/Cast/
    Identity on 1-D int vectors, Add/Sub/Mul/Div of them, integer constants).
    """

    MAX_LENGTH = 16

    def __init__(self, model: ModelProto, consts: dict[str, np.ndarray]) -> None:
        self.consts = consts
        self.dims = _symbolic_dims(model)
        self.producer = {out: node for node in model.graph.node for out in node.output if out}
        self.cache: dict[str, tuple[list[_Element], bool] | None] = {}

    def const_array(self, name: str) -> np.ndarray | None:
        """Value of initializer or ``Constant`` node output ``name``, else ``None``."""
        value = self.consts.get(name)
        if value is None and name in self.producer and self.producer[name].op_type == "Constant":
            value = _constant_node_value(self.producer[name])
        return value

    def const_ints(self, name: str) -> list[int] | None:
        value = self.const_array(name)
        if value is None or value.dtype.kind not in "iu" or value.size > self.MAX_LENGTH:
            return None
        return [int(v) for v in value.reshape(-1).tolist()]

    def value(self, name: str) -> tuple[list[_Element], bool] | None:
        if not name:
            return None
        if name not in self.cache:
            self.cache[name] = None  # guards against cycles in broken graphs
            self.cache[name] = self._evaluate(name)
        return self.cache[name]

    def _evaluate(self, name: str) -> tuple[list[_Element], bool] | None:
        value = self.consts.get(name)
        if value is not None:
            ints = self.const_ints(name)
            return None if ints is None or value.ndim > 1 else (list(ints), value.ndim == 0)
        node = self.producer.get(name)
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        op = node.op_type
        if op == "Constant":
            constant = _constant_node_value(node)
            if constant is None or constant.dtype.kind not in "iu" or constant.ndim > 1:
                return None
            if constant.size > self.MAX_LENGTH:
                return None
            return [int(v) for v in constant.reshape(-1).tolist()], constant.ndim == 0
        if op == "Shape":
            return self._shape(node)
        if op in ("Cast", "Identity"):
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if op == "Cast" and to not in _INT_TYPES:
                return None
            return self.value(node.input[0])
        if op == "Gather":
            return self._gather(node)
        if op == "Slice":
            return self._slice(node)
        if op == "Concat":
            parts = [self.value(n) for n in node.input if n]
            if any(p is None or p[1] for p in parts):
                return None
            return [e for p in parts if p is not None for e in p[0]], False
        if op in ("Unsqueeze", "Squeeze"):
            source = self.value(node.input[0])
            if source is None:
                return None
            elements, scalar = source
            if op == "Unsqueeze":
                return (elements, False) if scalar else None
            return (elements, True) if not scalar and len(elements) == 1 else None
        if op in ("Add", "Sub", "Mul", "Div"):
            return self._arithmetic(node)
        return None

    def _shape(self, node: onnx.NodeProto) -> tuple[list[_Element], bool] | None:
        dims = self.dims.get(node.input[0])
        if dims is None:
            return None
        rank = len(dims)
        start = next((int(a.i) for a in node.attribute if a.name == "start"), 0)
        end = next((int(a.i) for a in node.attribute if a.name == "end"), rank)
        start = min(max(start + rank if start < 0 else start, 0), rank)
        end = min(max(end + rank if end < 0 else end, 0), rank)
        elements: list[_Element] = []
        for axis in range(start, end):
            dim = dims[axis]
            elements.append(dim if isinstance(dim, int) else _Dim(node.input[0], axis))
        return elements, False

    def _gather(self, node: onnx.NodeProto) -> tuple[list[_Element], bool] | None:
        source = self.value(node.input[0])
        indices = self.const_array(node.input[1])
        axis = next((int(a.i) for a in node.attribute if a.name == "axis"), 0)
        if source is None or source[1] or indices is None or axis != 0 or indices.ndim > 1:
            return None
        elements = source[0]
        picked: list[_Element] = []
        for k in indices.reshape(-1).tolist():
            k = int(k) + len(elements) if int(k) < 0 else int(k)
            if not 0 <= k < len(elements):
                return None
            picked.append(elements[k])
        return picked, indices.ndim == 0

    def _slice(self, node: onnx.NodeProto) -> tuple[list[_Element], bool] | None:
        source = self.value(node.input[0])
        if source is None or source[1] or len(node.input) < 3:
            return None
        bounds = [self.const_ints(n) if n else None for n in list(node.input[1:5])]
        starts, ends = bounds[0], bounds[1]
        axes = bounds[2] if len(bounds) > 2 and node.input[3] else [0]
        steps = bounds[3] if len(bounds) > 3 and node.input[4] else [1]
        if starts is None or ends is None or axes is None or steps is None:
            return None
        if len(starts) != 1 or len(ends) != 1 or axes not in ([0], [-1]) or len(steps) != 1:
            return None
        elements = source[0]
        return elements[slice(starts[0], ends[0], steps[0])], False

    def _arithmetic(self, node: onnx.NodeProto) -> tuple[list[_Element], bool] | None:
        left, right = self.value(node.input[0]), self.value(node.input[1])
        if left is None or right is None:
            return None
        (a, a_scalar), (b, b_scalar) = left, right
        if len(a) != len(b):
            if len(a) == 1:
                a = a * len(b)
            elif len(b) == 1:
                b = b * len(a)
            else:
                return None
        result: list[_Element] = []
        for x, y in zip(a, b, strict=True):
            if isinstance(x, int) and isinstance(y, int) and not isinstance(x, _Dim):
                if node.op_type == "Add":
                    result.append(x + y)
                elif node.op_type == "Sub":
                    result.append(x - y)
                elif node.op_type == "Mul":
                    result.append(x * y)
                else:
                    result.append(None if y == 0 else int(np.trunc(x / y)))
            elif node.op_type in ("Mul", "Div") and y == 1 and not isinstance(y, _Dim):
                result.append(x)
            elif node.op_type in ("Add", "Sub") and y == 0 and not isinstance(y, _Dim):
                result.append(x)
            else:
                result.append(None)
        return result, a_scalar and b_scalar


def _same_dim(dims: dict[str, list[int | str | None]], element: _Dim, data: str, axis: int) -> bool:
    """True if ``element`` is provably dimension ``axis`` of tensor ``data``."""
    if element == (data, axis):
        return True
    source, data_dims = dims.get(element[0]), dims.get(data)
    if source is None or data_dims is None or axis >= len(data_dims):
        return False
    mine, theirs = source[element[1]], data_dims[axis]
    return isinstance(mine, str) and mine == theirs


def static_reshape_targets(model: ModelProto, consts: dict[str, np.ndarray] | None = None) -> int:
    """Give every ``Reshape`` whose shape is computed at run time from ``Shape`` nodes a
    constant shape with the same value; returns how many were rewritten (in place).

    Each element of the run-time shape vector is evaluated symbolically (:class:`_ShapeValues`):
    a known int stays; dimension ``k`` of the data input at position ``k`` becomes ``0`` (copy,
    requires ``allowzero=0``); at most one remaining element (a symbolic dim elsewhere, or a
    product of dims) becomes ``-1``, which Reshape infers from the element count, so the
    value is the same for every input the original graph accepts. Anything else is left as
    is (the analysis then freezes the channels the Shape reads, with a reason).
    ``consts`` (initializer values by name; default: the model's integer initializers) gains
    the new shape constants. Needs shape information in the model (run shape inference first).
    """
    if consts is None:
        consts = {
            t.name: numpy_helper.to_array(t)
            for t in model.graph.initializer
            if t.data_type in _INT_TYPES and int(np.prod(t.dims)) <= _ShapeValues.MAX_LENGTH
        }
    values = _ShapeValues(model, consts)
    rewritten = 0
    taken = {t.name for t in model.graph.initializer} | {
        out for node in model.graph.node for out in node.output
    }
    for node in model.graph.node:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        if node.input[1] in consts:
            continue
        value = values.value(node.input[1])
        if value is None or value[1]:
            continue
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
        target: list[int | None] = []
        for position, element in enumerate(value[0]):
            if isinstance(element, _Dim):
                if not allowzero and _same_dim(values.dims, element, node.input[0], position):
                    target.append(0)
                else:
                    target.append(None)
            elif element is None:
                target.append(None)
            else:
                target.append(int(element))
        if allowzero and 0 in target:
            continue
        open_positions = [k for k, v in enumerate(target) if v is None]
        if len(open_positions) > 1 or (open_positions and -1 in target):
            continue
        shape = np.array([-1 if v is None else v for v in target], dtype=np.int64)
        base = f"{node.input[1]}__static"
        name, suffix = base, 1
        while name in taken:
            name, suffix = f"{base}_{suffix}", suffix + 1
        taken.add(name)
        model.graph.initializer.append(numpy_helper.from_array(shape, name))
        consts[name] = shape
        node.input[1] = name
        rewritten += 1
    return rewritten


def resolve_reshape_targets(
    model: ModelProto, consts: dict[str, np.ndarray] | None = None, rounds: int = 8
) -> tuple[ModelProto, int]:
    """Apply :func:`static_reshape_targets` and re-infer shapes until nothing changes (a
    rewritten Reshape gives later Shape nodes a known input shape). ``model`` must already
    carry inferred shapes; returns the (re-inferred) model and the number of rewrites."""
    return _until_unchanged(model, lambda m: static_reshape_targets(m, consts), rounds)


def _until_unchanged(
    model: ModelProto, rewrite: Callable[[ModelProto], int], rounds: int, drop_dead: bool = False
) -> tuple[ModelProto, int]:
    """Run ``rewrite`` (in place, returns how many changes) and re-infer shapes, until it
    changes nothing or ``rounds`` ran: each rewrite can give later nodes static shapes."""
    total = 0
    for _ in range(rounds):
        count = rewrite(model)
        if not count:
            break
        total += count
        if drop_dead:
            _drop_dead_nodes(model)
        del model.graph.value_info[:]
        model = infer_model_shapes(model)
    return model, total


def _drop_dead_nodes(model: ModelProto) -> None:
    """Remove default-domain nodes none of whose outputs is used (repeat to a fixed point)."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        used |= _subgraph_inputs(graph)
        dead = [
            node
            for node in graph.node
            if node.domain in ("", "ai.onnx")
            and node.op_type not in ("If", "Loop", "Scan")
            and not any(out in used for out in node.output if out)
        ]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


def _shape_conflicts(declared: onnx.TypeProto, inferred: onnx.TypeProto) -> bool:
    if not declared.tensor_type.HasField("shape"):
        return False
    mine = declared.tensor_type.shape.dim
    if any(d.HasField("dim_value") and d.dim_value < 0 for d in mine):
        return True
    if not inferred.tensor_type.HasField("shape"):
        return False
    theirs = inferred.tensor_type.shape.dim
    if len(mine) != len(theirs):
        return True
    return any(
        a.HasField("dim_value") and b.HasField("dim_value") and a.dim_value != b.dim_value
        for a, b in zip(mine, theirs, strict=True)
    )


def _reconcile_output_shapes(model: ModelProto) -> None:
    """Replace declared graph-output shapes that shape inference contradicts (in place)."""
    probe = ModelProto()
    probe.CopyFrom(model)
    for output in probe.graph.output:
        if output.type.HasField("tensor_type"):
            output.type.tensor_type.ClearField("shape")
    probe = infer_model_shapes(probe)
    inferred = {o.name: o.type for o in probe.graph.output}
    inferred.update({v.name: v.type for v in probe.graph.value_info})
    for output in model.graph.output:
        found = inferred.get(output.name)
        if found is None or not output.type.HasField("tensor_type"):
            continue
        if _shape_conflicts(output.type, found):
            output.type.tensor_type.ClearField("shape")
            if found.tensor_type.HasField("shape"):
                output.type.tensor_type.shape.CopyFrom(found.tensor_type.shape)


# Multidirectional-broadcasting arithmetic: an operand Expand-ed to the other operand's shape
# gives the same result unexpanded.
_BROADCASTING = ops.ARITHMETIC | ops.VARIADIC | {"Pow"}


def _drop_redundant_expands(model: ModelProto, consts: dict[str, np.ndarray]) -> int:
    """Feed a constant straight into binary broadcasting ops where it was ``Expand``-ed to the
    other operand's exact shape; returns the number of inputs rewired (in place)."""
    dims = _symbolic_dims(model)
    producer = {out: node for node in model.graph.node for out in node.output if out}
    rewired = 0
    for node in model.graph.node:
        if node.op_type not in _BROADCASTING or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.input) != 2:
            continue
        for slot in (0, 1):
            expand = producer.get(node.input[slot])
            if expand is None or expand.op_type != "Expand" or expand.input[0] not in consts:
                continue
            mine, other = dims.get(node.input[slot]), dims.get(node.input[1 - slot])
            if mine is None or other is None or len(mine) != len(other):
                continue
            if any(d is None or d != e for d, e in zip(mine, other, strict=True)):
                continue
            if consts[expand.input[0]].ndim > len(mine):
                continue
            node.input[slot] = expand.input[0]
            rewired += 1
    return rewired


# -- shape arithmetic ----------------------------------------------------------------------
# Ops of the small integer computations exporters write between a ``Shape`` node and the
# shape/pads/sizes operand of Pad, Reshape, Resize, Expand, ConstantOfShape (TorchScript's
# F.pad, paddle2onnx and tf2onnx reshapes). Evaluated on constant inputs only.
SHAPE_ARITHMETIC = frozenset(
    {
        "Gather", "Slice", "Squeeze", "Unsqueeze", "Cast", "Concat", "Identity", "Reshape",
        "Transpose", "Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Floor", "Ceil", "Min",
        "Max", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or",
        "Where", "ConstantOfShape", "Range", "Expand", "Tile", "ReduceProd", "ReduceSum",
        "ReduceMax", "ReduceMin",
    }
)  # fmt: skip
# Larger results are data, not shape arithmetic: folding them would only grow the file.
_FOLD_MAX_ELEMENTS = 256


def _elem_types(model: ModelProto) -> dict[str, int]:
    values = (*model.graph.input, *model.graph.value_info, *model.graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in values if v.type.HasField("tensor_type")}


def _symbolic_constant(
    node: onnx.NodeProto, values: _ShapeValues, elem_types: dict[str, int]
) -> np.ndarray | None:
    """The value of a shape computation whose every element is a known int (a ``Shape`` of
    a tensor with static dims, or arithmetic on such), typed like the output; else ``None``."""
    if node.op_type != "Shape" and node.op_type not in SHAPE_ARITHMETIC:
        return None
    value = values.value(node.output[0])
    if value is None or any(isinstance(e, _Dim) or e is None for e in value[0]):
        return None
    elem = elem_types.get(node.output[0]) or (
        onnx.TensorProto.INT64 if node.op_type == "Shape" else 0
    )
    if elem not in _INT_TYPES:
        return None
    array = np.array(value[0], dtype=helper.tensor_dtype_to_np_dtype(elem))
    return array.reshape(()) if value[1] else array


def _fold_shape_round(model: ModelProto, opset: int) -> int:
    """Replace every foldable shape computation by an initializer (in place); returns how
    many node outputs became constants."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    consts = {
        t.name: numpy_helper.to_array(t)
        for t in graph.initializer
        if int(np.prod(t.dims)) <= _FOLD_MAX_ELEMENTS
    }
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            value = _constant_node_value(node)
            if value is not None and value.size <= _FOLD_MAX_ELEMENTS:
                consts[node.output[0]] = value
    values = _ShapeValues(model, consts)
    elem_types = _elem_types(model)
    folded: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            continue
        if node.output[0] in outputs or node.op_type == "Constant":
            continue
        value = None
        named = [name for name in node.input if name]
        if node.op_type in SHAPE_ARITHMETIC and named and all(n in consts for n in named):
            if len(named) == len(node.input):  # an omitted optional input keeps its slot
                value = _fold_node(node, [consts[n] for n in node.input], opset)
        if value is None:
            value = _symbolic_constant(node, values, elem_types)
        if value is None or value.size > _FOLD_MAX_ELEMENTS:
            continue
        consts[node.output[0]] = value
        graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    return len(folded)


def fold_shape_arithmetic(model: ModelProto, rounds: int = 8) -> tuple[ModelProto, int]:
    """Constant-fold shape computations whose value is fixed for the model's declared input
    shapes (as onnx-simplifier does); returns the re-inferred model and how many node outputs
    became initializers (same tensor names).

    Only nodes whose every input is a constant, or ``Shape`` reads of dims that are static,
    are folded; a dim that stays symbolic (a dynamic batch, a dynamic H) keeps every
    computation depending on it at run time. Folding after :func:`onnxprune.model.
    fix_input_shapes` therefore fixes the model to that input size: the result is exact
    at that size, not at others. Each folded value re-infers shapes, so a Pad whose pads
    became constant gives later ``Shape`` reads a static input in the next round.
    ``model`` is modified in place and must carry inferred shapes.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    return _until_unchanged(model, lambda m: _fold_shape_round(m, opset), rounds, drop_dead=True)

"""Value-preserving rewrites that make every exporter's graph look alike before analysis.

Contract of :func:`normalize` (input not mutated, a new model returned):

- ``Constant`` nodes become initializers (same tensor name).
- Constant weight paths are folded: ``Transpose``/``Identity``/``Cast``/``Reshape``/
  ``Unsqueeze``/``Squeeze``/``Flatten`` nodes whose inputs are all initializers become one
  initializer holding their output (same tensor name). Quantized weights
  (``DequantizeLinear``) are left alone: the analysis then freezes what they feed.
- ``MatMul(A, W) + Add(b)`` with 2-D ``A``, constant 2-D ``W`` and constant bias of shape
  ``[N]``/``[1, N]`` becomes ``Gemm(A, W, b)`` (the MatMul node's name, the Add's output).
- Nodes get a unique name where they have none (or a duplicate); existing unique names and
  every remaining tensor name are kept.
- Nodes are in topological order; unused initializers are dropped; shapes are re-inferred.

Outputs are unchanged up to float rounding of the fused Gemm.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import ModelProto, helper, numpy_helper

from onnxprune.model import infer_model_shapes

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
    _fuse_matmul_add(out, consts)
    _drop_unused_initializers(out)
    del out.graph.value_info[:]
    return infer_model_shapes(out)


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


def _shape_of(model: ModelProto, name: str) -> list[int | None] | None:
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if value.name == name and value.type.tensor_type.HasField("shape"):
            return [
                d.dim_value if d.HasField("dim_value") else None
                for d in value.type.tensor_type.shape.dim
            ]
    return None


def _fuse_matmul_add(model: ModelProto, consts: dict[str, np.ndarray]) -> None:
    graph = model.graph
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
        a_shape = _shape_of(model, node.input[0])
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

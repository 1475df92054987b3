"""Read-only index over a normalised ONNX graph: producers, consumers, constants, shapes.

The index never changes the model; handlers query it while channel information flows
through the graph in topological order.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, numpy_helper

from onnxprune.model import tensor_shapes

Shape = list[int | None]


class GraphIndex:
    """Tensor -> producer node, tensor -> consumer slots, initializer values and shapes.

    - ``nodes``: the graph's nodes in file order (normalisation sorts them topologically).
    - ``producer[t]``: index of the node writing tensor ``t`` (absent for inputs/initializers).
    - ``consumers[t]``: list of ``(node_index, input_slot)`` reading ``t``.
    - ``shape(t)``: static dims (``None`` for symbolic dims) or ``None`` if the rank is unknown.
    - ``const(t)``: numpy value of an initializer, else ``None``.
    """

    def __init__(self, model: ModelProto) -> None:
        graph = model.graph
        self.model = model
        self.nodes: list[NodeProto] = list(graph.node)
        self.initializers = {t.name: t for t in graph.initializer}
        self._const_cache: dict[str, np.ndarray] = {}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for index, node in enumerate(self.nodes):
            for slot, name in enumerate(node.input):
                if name:
                    self.consumers[name].append((index, slot))
            for name in node.output:
                if name:
                    self.producer[name] = index
        self.graph_outputs = [o.name for o in graph.output]
        init_names = set(self.initializers)
        self.graph_inputs = [i.name for i in graph.input if i.name not in init_names]
        self._shapes: dict[str, Shape | None] = {
            name: None if dims is None else list(dims)
            for name, dims in tensor_shapes(model).items()
        }
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13
        )

    def const(self, name: str) -> np.ndarray | None:
        """Value of initializer ``name`` (cached), ``None`` for anything computed."""
        if name not in self.initializers:
            return None
        if name not in self._const_cache:
            self._const_cache[name] = numpy_helper.to_array(self.initializers[name])
        return self._const_cache[name]

    def shape(self, name: str) -> Shape | None:
        """Static dims of ``name`` (symbolic dims are ``None``); ``None`` if the rank is unknown."""
        return self._shapes.get(name)

    def rank(self, name: str) -> int | None:
        dims = self.shape(name)
        return None if dims is None else len(dims)

    def node_label(self, index: int) -> str:
        node = self.nodes[index]
        return f"'{node.name}' ({node.op_type})"


def attr(node: NodeProto, name: str, default=None):
    """Value of attribute ``name`` of ``node`` (ints/floats/strings decoded), else ``default``."""
    for attribute in node.attribute:
        if attribute.name == name:
            value = onnx.helper.get_attribute_value(attribute)
            if isinstance(value, bytes):
                return value.decode()
            return value
    return default

"""New values for constant node inputs, collected per (node, slot) and committed onto the
graphsurgeon graph with copy-on-write."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.deps.graph import GraphIndex
from onnxprune.errors import InternalError, OnnxPruneError
from onnxprune.surgery.graph_io import GsModel


class TensorNames:
    """Every tensor name of the source graph plus the ones handed out since, so a new
    constant never takes an existing name."""

    def __init__(self, index: GraphIndex) -> None:
        self.taken = (
            set(index.initializers)
            | set(index.producer)
            | set(index.consumers)
            | set(index.graph_inputs)
            | set(index.graph_outputs)
        )

    def new(self, base: str) -> str:
        """``base``, or ``base_1``, ``base_2``, ... if taken; the name is then taken."""
        name, suffix = base, 1
        while name in self.taken:
            name = f"{base}_{suffix}"
            suffix += 1
        self.taken.add(name)
        return name


class ConstantEdits:
    """Pending new values of constant inputs ``(node index, input slot)``.

    Values are read through the analysis index (initializers only: normalisation turned
    ``Constant`` nodes into initializers, and one that is left is not sliceable). The index
    caches its arrays and graphsurgeon shares the source model's tensors, so nothing here
    writes into an array it did not create: callers pass new arrays to :meth:`set`.
    """

    def __init__(self, gs_model: GsModel, index: GraphIndex, names: TensorNames) -> None:
        self.gs_model = gs_model
        self.index = index
        self.names = names
        self.pending: dict[tuple[int, int], np.ndarray] = {}

    def get(self, node: int, slot: int) -> np.ndarray:
        """Current value of input ``slot`` of node ``node`` (pending edit or original);
        read-only. Raises :class:`OnnxPruneError` if that input is not a constant."""
        if (node, slot) in self.pending:
            return self.pending[(node, slot)]
        name = self.index.nodes[node].input[slot]
        value = self.index.const(name)
        if value is None:
            raise OnnxPruneError(
                f"input '{name}' of node '{self.index.nodes[node].name}' is not a constant"
            )
        return value

    def set(self, node: int, slot: int, value: np.ndarray) -> None:
        self.pending[(node, slot)] = value

    def _constant(self, node: int, slot: int, name: str) -> gs.Constant:
        tensor = self.gs_model.nodes[node].inputs[slot]
        if not isinstance(tensor, gs.Constant) or tensor.name != name:
            raise InternalError(
                f"input {slot} of node '{self.index.nodes[node].name}' should be the constant "
                f"'{name}', graphsurgeon holds {tensor!r}"
            )
        return tensor

    def commit(self) -> None:
        """Write the pending values into the graph. A constant whose readers all get one
        new value is updated in place (same name); otherwise each distinct new value becomes
        a constant ``<name>__<first reader's node name>`` and the original keeps its
        name for the readers left unchanged."""
        by_name: dict[str, dict[tuple[int, int], np.ndarray]] = defaultdict(dict)
        for (node, slot), value in self.pending.items():
            by_name[self.index.nodes[node].input[slot]][(node, slot)] = value
        for name, slots in by_name.items():
            readers = [tuple(reader) for reader in self.index.consumers.get(name, [])]
            untouched = [reader for reader in readers if reader not in slots]
            variants: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
            values: dict[tuple, np.ndarray] = {}
            for key, value in slots.items():
                value = np.ascontiguousarray(value)
                variant = (value.dtype.str, value.shape, value.tobytes())
                variants[variant].append(key)
                values[variant] = value
            if not untouched and len(variants) == 1:
                node, slot = next(iter(slots))
                constant = self._constant(node, slot, name)
                constant.values = values[next(iter(variants))]
                # The new values live in memory, wherever the old ones were stored.
                constant.data_location = None
                continue
            if not untouched:
                self.gs_model.replaced.add(name)
            for variant, keys in variants.items():
                first = self.index.nodes[keys[0][0]].name
                copy = gs.Constant(self.names.new(f"{name}__{first}"), values[variant])
                for node, slot in keys:
                    self._constant(node, slot, name)
                    self.gs_model.nodes[node].inputs[slot] = copy

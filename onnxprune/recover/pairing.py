"""Pair each weighted layer of a pruned model with the reference layer it was cut from.

Names cannot do this: a reference exported by another path (TorchScript vs dynamo, another
converter, a renaming pass) holds the same weights under other node and tensor names. What
pruning keeps is structure and values: surgery never adds or removes a Conv/Gemm/MatMul,
never changes a kernel size, stride, dilation or padding, and copies the kept weight rows
and columns unchanged. So:

1. Both graphs' *weighted layers* (Conv with a constant 3-D/4-D weight, Gemm without
   ``transA`` and MatMul with a constant 2-D right operand) are listed in topological order;
   their counts must be equal.
2. A layer's *signature* is what pruning leaves alone: for a convolution the kernel size,
   strides, dilations, padding and the grouping kind (dense, depthwise, or ``g`` groups);
   for Gemm/MatMul just "dense" (both are ``y = x W`` over the last axis; the layout of ``W``
   is read per node, so a Gemm with ``transB`` pairs with a MatMul).
3. Each pruned layer is paired with the unpaired reference layer of equal signature whose
   weights contain its weights as a sorted row/column slice (exact float equality), trying
   the nearest topological position first. The slice gives the kept output rows.
4. Layers no reference layer verifies against are paired with the nearest unpaired
   reference layer of equal signature, marked unverified with the reason; only a caller
   that needs their weights (a layer to refit) refuses them.

No node, tensor or model name enters a decision; names appear only in messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxprune.errors import OnnxPruneError
from onnxprune.recover.interpreter import OnnxModule

DENSE_OPS = ("Gemm", "MatMul")


@dataclass
class WeightedLayer:
    """One Conv/Gemm/MatMul with a constant weight, as pairing and least squares see it.

    ``matrix`` is the weight as ``[out, in / groups, taps]`` (taps 1 for Gemm/MatMul).
    """

    index: int
    name: str
    op_type: str
    inputs: list[str]
    output: str
    weight: str
    groups: int
    matrix: np.ndarray
    signature: tuple[Any, ...]
    _values: np.ndarray | None = None

    def holds_values(self, values: np.ndarray) -> bool:
        """Whether every one of ``values`` occurs in this layer's weight (exact floats)."""
        if self._values is None:
            self._values = np.unique(self.matrix)
        found = np.searchsorted(self._values, values).clip(0, len(self._values) - 1)
        return bool(np.all(self._values[found] == values))

    @property
    def inputs_total(self) -> int:
        """Input channels (all groups)."""
        return int(self.matrix.shape[1]) * self.groups

    def describe(self) -> str:
        """'node' (op, kernel ...) for messages."""
        if self.op_type == "Conv":
            kernel = "x".join(str(k) for k in self.signature[1])
            return f"'{self.name}' (Conv {kernel}, stride {list(self.signature[2])})"
        return f"'{self.name}' ({self.op_type})"


@dataclass
class LayerPair:
    """A pruned layer, its reference layer, and the kept reference output rows (None when
    the weights did not verify; ``reason`` says why)."""

    pruned: WeightedLayer
    reference: WeightedLayer
    out_keep: list[int] | None
    reason: str = ""


def _weight_matrix(op_type: str, attrs: dict[str, Any], weight: np.ndarray) -> np.ndarray:
    if op_type == "Conv":
        return weight.reshape(weight.shape[0], weight.shape[1], -1)
    if op_type == "Gemm":
        matrix = weight if attrs.get("transB", 0) else weight.T
        return matrix[:, :, None]
    return weight.T[:, :, None]  # MatMul: [in, out]


def weighted_layers(module: OnnxModule) -> list[WeightedLayer]:
    """The module's weighted layers in node (topological) order (see the module docstring)."""
    layers = []
    for index, (ctx, inputs, outputs) in enumerate(module._nodes):
        if ctx.op_type not in ("Conv", *DENSE_OPS) or len(inputs) < 2:
            continue
        if ctx.op_type == "Gemm" and ctx.attr("transA", 0):
            continue  # rows are not samples: not a layer we refit
        if inputs[1] not in module._slots:
            continue
        weight = module.tensor(inputs[1]).detach().numpy()
        if ctx.op_type == "Conv" and weight.ndim not in (3, 4):
            continue
        if ctx.op_type in DENSE_OPS and weight.ndim != 2:
            continue
        matrix = _weight_matrix(ctx.op_type, ctx.attrs, weight)
        groups = int(ctx.attr("group", 1)) if ctx.op_type == "Conv" else 1
        layers.append(
            WeightedLayer(
                index,
                ctx.name,
                ctx.op_type,
                list(inputs),
                outputs[0],
                inputs[1],
                groups,
                matrix,
                _signature(ctx, weight, groups),
            )  # fmt: skip
        )
    return layers


def _signature(ctx: Any, weight: np.ndarray, groups: int) -> tuple[Any, ...]:
    if ctx.op_type in DENSE_OPS:
        return ("dense",)
    spatial = weight.ndim - 2
    grouping: Any = "depthwise" if groups > 1 and weight.shape[1] == 1 else groups
    return (
        "conv",
        tuple(weight.shape[2:]),
        tuple(ctx.attr("strides", [1] * spatial)),
        tuple(ctx.attr("dilations", [1] * spatial)),
        tuple(ctx.attr("pads", [0] * 2 * spatial)),
        ctx.attr("auto_pad", "NOTSET"),
        grouping,
    )


# -- weight slices --------------------------------------------------------------------------


def _subsequence(row: np.ndarray, candidate: np.ndarray) -> list[int] | None:
    """Indices j_0 < j_1 < ... with candidate[j_k] == row[k] (greedy), or None.

    row: [i, k], candidate: [I, k].
    """
    found: list[int] = []
    position = 0
    for column in row:
        while position < len(candidate) and not np.array_equal(candidate[position], column):
            position += 1
        if position == len(candidate):
            return None
        found.append(position)
        position += 1
    return found


def match_dense_rows(w_ref: np.ndarray, w_pruned: np.ndarray) -> tuple[list[int], list[int]]:
    """Kept (rows, columns) with ``w_pruned == w_ref[rows][:, columns]`` (both sorted).

    w_ref: [O, I, k], w_pruned: [o, i, k]. Raises :class:`OnnxPruneError` when no exact
    match exists (the reference is not the model the pruned one was cut from).
    """
    out_ref, out_kept = w_ref.shape[0], w_pruned.shape[0]
    for first in range(out_ref - out_kept + 1):
        columns = _subsequence(w_pruned[0], w_ref[first])
        if columns is None:
            continue
        restricted = w_ref[:, columns]
        rows, position = [first], first + 1
        for r in range(1, out_kept):
            while position < out_ref and not np.array_equal(restricted[position], w_pruned[r]):
                position += 1
            if position == out_ref:
                break
            rows.append(position)
            position += 1
        if len(rows) == out_kept:
            return rows, columns
    raise OnnxPruneError("no exact match")


def kept_rows(reference: WeightedLayer, pruned: WeightedLayer) -> tuple[list[int] | None, str]:
    """Reference output rows the pruned layer keeps, or ``(None, why not)``."""
    m_ref, m_pruned = reference.matrix, pruned.matrix
    if m_pruned.shape[0] > m_ref.shape[0] or m_pruned.shape[1] > m_ref.shape[1]:
        return None, (
            f"its weight {list(m_pruned.shape[:2])} is larger than the reference's "
            f"{list(m_ref.shape[:2])}"
        )
    if m_pruned.shape == m_ref.shape and np.array_equal(m_pruned, m_ref):
        return list(range(m_ref.shape[0])), ""
    if not reference.holds_values(
        m_pruned.reshape(-1)[:64]
    ):  # cheap rejection before the exact slice search
        return None, "its weights hold values the reference's weights do not"
    try:
        if pruned.signature[-1] == "depthwise":
            rows = _subsequence(m_pruned.reshape(len(m_pruned), -1), m_ref.reshape(len(m_ref), -1))
            if rows is None:
                raise OnnxPruneError("no exact match")
        elif pruned.groups > 1:
            rows = _grouped_rows(m_ref, m_pruned, pruned.groups)
        else:
            rows, _ = match_dense_rows(m_ref, m_pruned)
    except OnnxPruneError:
        return None, "its weights are not a slice of the reference's"
    return rows, ""


def _grouped_rows(m_ref: np.ndarray, m_pruned: np.ndarray, groups: int) -> list[int]:
    out_ref, out_kept = m_ref.shape[0] // groups, m_pruned.shape[0] // groups
    rows: list[int] = []
    for g in range(groups):
        kept, _ = match_dense_rows(
            m_ref[g * out_ref : (g + 1) * out_ref], m_pruned[g * out_kept : (g + 1) * out_kept]
        )
        rows += [g * out_ref + r for r in kept]
    return rows


# -- pairing ----------------------------------------------------------------------------------


def _count_mismatch(pruned: list[WeightedLayer], reference: list[WeightedLayer]) -> OnnxPruneError:
    position = next(
        (
            k
            for k, (p, r) in enumerate(zip(pruned, reference, strict=False))
            if p.signature != r.signature
        ),
        min(len(pruned), len(reference)),
    )
    where = (
        f"; the first difference is at the pruned model's layer {pruned[position].describe()}"
        if position < len(pruned)
        else ""
    )
    return OnnxPruneError(
        f"cannot pair the layers: the pruned model has {len(pruned)} Conv/Gemm/MatMul layers "
        f"with constant weights and the reference {len(reference)}{where}; pass as --reference "
        "the unpruned model the pruned one was cut from"
    )


def pair_layers(pruned: list[WeightedLayer], reference: list[WeightedLayer]) -> list[LayerPair]:
    """One :class:`LayerPair` per pruned layer, in pruned order (see the module docstring).

    Raises :class:`OnnxPruneError` naming the first layer that has no counterpart (unequal
    layer counts, or no reference layer with the same operator and attributes).
    """
    if len(pruned) != len(reference):
        raise _count_mismatch(pruned, reference)
    free = set(range(len(reference)))
    chosen: dict[int, tuple[int, list[int] | None, str]] = {}

    def candidates(position: int) -> list[int]:
        same = [j for j in free if reference[j].signature == pruned[position].signature]
        return sorted(same, key=lambda j: (abs(j - position), j))

    for position, layer in enumerate(pruned):  # pass 1: pairs the weights verify
        for j in candidates(position):
            rows, _ = kept_rows(reference[j], layer)
            if rows is not None:
                chosen[position] = (j, rows, "")
                free.discard(j)
                break
    for position, layer in enumerate(pruned):  # pass 2: the nearest same-kind layer left
        if position in chosen:
            continue
        options = candidates(position)
        if not options:
            raise OnnxPruneError(
                f"cannot pair the pruned model's layer {layer.describe()} with a layer of the "
                "reference: no reference layer left has the same operator, kernel, strides, "
                "dilations, padding and grouping; pass as --reference the unpruned model the "
                "pruned one was cut from"
            )
        _, reason = kept_rows(reference[options[0]], layer)
        chosen[position] = (options[0], None, reason)
        free.discard(options[0])
    return [
        LayerPair(layer, reference[chosen[k][0]], chosen[k][1], chosen[k][2])
        for k, layer in enumerate(pruned)
    ]

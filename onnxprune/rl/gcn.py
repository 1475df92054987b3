"""AGMC encoder (papers 000/001): a plain GCN over the layer graph of the network.

AGMC models the DNN as a graph of its hidden layers and learns layer embeddings with a GCN
(Kipf & Welling); the RL agent reads one embedding per layer. Here:

- *Layer graph*: nodes are the weighted layers of level 0 of the hierarchy (Conv,
  DepthwiseConv, GroupConv, ConvTranspose, Gemm/MatMul with weights); an edge ``A -> B`` when
  data flows from ``A``'s output to ``B``'s input through non-weighted ops only (activations,
  Add, Concat, pooling, ...). Used undirected with self-loops, as in a GCN.
- *Node features* (AMC-style layer descriptors, real values, not random): position in the
  network, op type one-hot, log2 of in/out channels, kernel, stride and input H*W, MACs and
  params shares, and the current keep-ratio of the output and input channel groups.
- Output API equals :class:`~onnxprune.rl.mgnn.MultiStageGNN`:
  ``forward(keep_ratios=None) -> (g: [D], group_emb: [G, D])``; a group's embedding is the mean
  embedding of the layers that produce or consume its channels (zeros if none).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.nn import GCNConv

from onnxprune.hgraph import Hierarchy
from onnxprune.hgraph.level0 import log_feature

_LAYER_TYPES = ("Conv", "DepthwiseConv", "GroupConv", "ConvTranspose", "Gemm/MatMul")
LAYER_FEATURES = (
    "position",
    *(f"op={t}" for t in _LAYER_TYPES),
    "log2_in_channels",
    "log2_out_channels",
    "log2_kernel",
    "log2_stride",
    "log2_in_hw",
    "macs_share",
    "params_share",
    "keep_out",
    "keep_in",
)
LAYER_DIM = len(LAYER_FEATURES)


class GCNEncoder(nn.Module):
    """GCN over the layer graph (see module docstring). Seeded; ``reset_parameters()``.

    Shapes inside: layer features ``[L, LAYER_DIM]`` -> ``num_layers`` GCNConv -> ``[L, D]``;
    ``g`` is the mean over layers ``[D]``; ``group_emb`` is ``[G, D]``.
    """

    # Buffers, declared for type checkers (nn.Module's __getattr__ is untyped).
    _edge_index: torch.Tensor
    _features: torch.Tensor
    _group_rows: torch.Tensor
    _group_cols: torch.Tensor
    _group_counts: torch.Tensor
    convs: nn.ModuleList

    def __init__(
        self, hierarchy: Hierarchy, hidden: int = 64, num_layers: int = 2, seed: int = 0
    ) -> None:
        super().__init__()
        self.hierarchy = hierarchy
        self.hidden = hidden
        self.num_layers = num_layers
        self.seed = seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            dims = [LAYER_DIM] + [hidden] * num_layers
            self.convs = nn.ModuleList(
                GCNConv(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
            )
        self._build_layer_graph()

    @property
    def out_dim(self) -> int:
        return self.hidden

    @property
    def num_groups(self) -> int:
        return len(self.hierarchy.prunable_group_ids)

    def _build_layer_graph(self) -> None:
        hierarchy = self.hierarchy
        layers = [
            op for op in hierarchy.ops if op.category in _LAYER_TYPES and op.params > 0
        ]  # ops are in canonical order, so layer order is too
        self.layer_ops = [op.op_id for op in layers]
        layer_of_input: dict[str, list[int]] = {}
        for i, op in enumerate(layers):
            for t in op.inputs:
                layer_of_input.setdefault(t, []).append(i)
        consumers: dict[str, list[Any]] = {}
        for op in hierarchy.ops:
            for t in op.inputs:
                consumers.setdefault(t, []).append(op)
        weighted_ids = {op.op_id for op in layers}
        edges: set[tuple[int, int]] = set()
        for i, op in enumerate(layers):
            stack = list(op.outputs)
            seen: set[str] = set(stack)
            while stack:
                tensor = stack.pop()
                for consumer in consumers.get(tensor, []):
                    if consumer.op_id in weighted_ids:
                        j = self.layer_ops.index(consumer.op_id)
                        if j != i:
                            edges.add((i, j))
                        continue
                    for out in consumer.outputs:
                        if out not in seen:
                            seen.add(out)
                            stack.append(out)
        pairs = sorted(edges)
        both = pairs + [(b, a) for a, b in pairs]
        edge_index = torch.tensor(both, dtype=torch.long).t().reshape(2, -1).contiguous()
        self.register_buffer("_edge_index", edge_index, persistent=False)
        self.layer_edges = pairs

        total_macs = sum(op.macs for op in hierarchy.ops) or 1
        total_params = sum(op.params for op in hierarchy.ops) or 1
        count = len(layers)
        features = torch.zeros(count, LAYER_DIM)
        group_index = {g: k for k, g in enumerate(hierarchy.group_ids)}
        self._keep_out: list[list[int]] = []
        self._keep_in: list[list[int]] = []
        for i, op in enumerate(layers):
            t_in = hierarchy.tensors[op.inputs[0]] if op.inputs else None
            t_out = hierarchy.tensors[op.outputs[0]]
            features[i, 0] = i / max(count - 1, 1)
            features[i, 1 + _LAYER_TYPES.index(op.category)] = 1.0
            base = 1 + len(_LAYER_TYPES)
            features[i, base] = log_feature(t_in.channels if t_in else 0)
            features[i, base + 1] = log_feature(t_out.channels)
            features[i, base + 2] = log_feature(op.kernel)
            features[i, base + 3] = log_feature(op.stride)
            features[i, base + 4] = log_feature((t_in.height * t_in.width) if t_in else 0)
            features[i, base + 5] = op.macs / total_macs
            features[i, base + 6] = op.params / total_params
            out_groups = [group_index[g] for g in self._groups(op.outputs) if g in group_index]
            in_groups = [group_index[g] for g in self._groups(op.inputs) if g in group_index]
            self._keep_out.append(out_groups)
            self._keep_in.append(in_groups)
        self.register_buffer("_features", features, persistent=False)

        slot = {g: k for k, g in enumerate(hierarchy.prunable_group_ids)}
        rows: list[int] = []
        cols: list[int] = []
        for i, op in enumerate(layers):
            touched = {g for g in self._groups(op.outputs) + self._groups(op.inputs) if g in slot}
            for g in sorted(touched):
                rows.append(slot[g])
                cols.append(i)
        self.register_buffer("_group_rows", torch.tensor(rows, dtype=torch.long), persistent=False)
        self.register_buffer("_group_cols", torch.tensor(cols, dtype=torch.long), persistent=False)
        counts = torch.zeros(len(slot))
        if rows:
            counts.index_add_(0, self._group_rows, torch.ones(len(rows)))
        self.register_buffer("_group_counts", counts.clamp(min=1.0), persistent=False)

    def _groups(self, tensors: tuple[str, ...]) -> list[int]:
        groups: list[int] = []
        for t in tensors:
            groups.extend(self.hierarchy.tensor_groups.get(t, []))
        return groups

    def layer_features(self, keep_ratios: Any = None) -> Tensor:
        """``[L, LAYER_DIM]`` layer descriptors; ``keep_ratios`` as in ``Hierarchy.keep_vector``."""
        keep = self.hierarchy.keep_vector(keep_ratios)
        features = self._features.clone()
        for i, (out_groups, in_groups) in enumerate(
            zip(self._keep_out, self._keep_in, strict=True)
        ):
            features[i, -2] = keep[out_groups].mean() if out_groups else 1.0
            features[i, -1] = keep[in_groups].mean() if in_groups else 1.0
        return features

    def reset_parameters(self) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for conv in self.convs:
                conv.reset_parameters()  # type: ignore[operator]

    def forward(self, keep_ratios: Any = None) -> tuple[Tensor, Tensor]:
        h = self.layer_features(keep_ratios).to(self._edge_index.device)
        for index, conv in enumerate(self.convs):
            h = conv(h, self._edge_index)
            if index < len(self.convs) - 1:
                h = torch.relu(h)
        g = h.mean(dim=0) if h.size(0) else torch.zeros(self.hidden, device=h.device)
        group_emb = torch.zeros(self.num_groups, self.hidden, device=h.device)
        if self._group_rows.numel():
            group_emb = group_emb.index_add(0, self._group_rows, h[self._group_cols])
        return g, group_emb / self._group_counts.unsqueeze(-1)

    def extra_repr(self) -> str:
        return (
            f"layers={len(self.layer_ops)}, layer_edges={len(self.layer_edges)}, "
            f"hidden={self.hidden}, groups={self.num_groups}, seed={self.seed}"
        )

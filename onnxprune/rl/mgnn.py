"""Multi-stage GNN (m-GNN) over the hierarchical computational graph (paper 002, section 3.2.1).

- :class:`MGNNConv` is eq. (4): ``h_i = sum_j (1/c_i) W (h_j o e_ij)`` with ``c_i`` the
  in-degree of node ``i`` and ``o`` the element-wise product (edge features already have the
  node dimension).
- :class:`AttentionPooling` is eq. (5): ``e = sum_i alpha_i h_i`` with
  ``alpha = softmax_i(a^T h_i + b)`` over the nodes of each graph.
- :class:`MultiStageGNN` embeds the hierarchy bottom-up (eq. (1)-(2)): stage ``t`` embeds every
  motif instance of level ``t`` (a subgraph of level ``t-1``; parameters shared within the
  stage, all instances batched into one message-passing call) and the pooled embedding becomes
  the feature of that instance's edge at level ``t``; the last stage embeds the top-level graph
  and its pooled embedding is the network embedding ``g``. Every instance is embedded, not one
  per motif type, because instances differ in their keep-ratio features.

Messages run along and against the data flow (each edge is used in both directions with the
same feature), so that a feature map sees both its producer and its consumers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import degree, softmax

from onnxprune.hgraph import EDGE_DIM, NODE_DIM, Hierarchy, LevelTensors


@dataclass
class MGNNOutput:
    """One m-GNN pass: ``g: [D]`` network embedding (eq. 2), ``group_emb: [G, D]``,
    ``node_emb: [N0, D]`` final embedding of every level-0 feature map, ``instance_emb:
    [num_instances, D]`` pooled embedding of every motif instance (eq. 1, 5)."""

    g: Tensor
    group_emb: Tensor
    node_emb: Tensor
    instance_emb: Tensor

    def __str__(self) -> str:
        return (
            f"MGNNOutput(g={tuple(self.g.shape)}, group_emb={tuple(self.group_emb.shape)}, "
            f"node_emb={tuple(self.node_emb.shape)}, instance_emb={tuple(self.instance_emb.shape)})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k).detach().tolist() for k in ("g", "group_emb")}


class MGNNConv(MessagePassing):
    """Eq. (4) of GNN-RL: ``h_i' = sum_{j in N(i)} (1/c_i) W (h_j o e_ij) + b``.

    Args: ``channels`` (D, node and edge feature size), ``out_channels`` (D', default D).
    Shapes: ``x: [N, D]``, ``edge_index: [2, E]`` (messages flow source -> target),
    ``edge_attr: [E, D]`` -> ``[N, D']``. ``c_i`` is the number of edges into ``i``; nodes
    with no incoming edge get ``b``.
    """

    def __init__(self, channels: int, out_channels: int | None = None, bias: bool = True) -> None:
        super().__init__(aggr="add")
        self.channels = channels
        self.out_channels = out_channels or channels
        self.lin = nn.Linear(channels, self.out_channels, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        # x may carry leading batch dims ([B, N, D]: B graphs of one structure); nodes are
        # always dim -2 (MessagePassing's node_dim).
        in_degree = degree(edge_index[1], num_nodes=x.size(-2), dtype=x.dtype)
        norm = in_degree.clamp(min=1.0).reciprocal()[edge_index[1]]
        aggregated = self.propagate(edge_index, x=x, edge_attr=edge_attr, norm=norm)
        # W is linear, so applying it after the normalised sum equals eq. (4) term by term.
        return self.lin(aggregated)

    def message(self, x_j: Tensor, edge_attr: Tensor, norm: Tensor) -> Tensor:
        return norm.unsqueeze(-1) * (x_j * edge_attr)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, {self.out_channels})"


class AttentionPooling(nn.Module):
    """Eq. (5): ``e_b = sum_{i in graph b} alpha_i h_i``, ``alpha = softmax(a^T h + c)`` per graph.

    Shapes: ``h: [N, D]``, ``batch: [N]`` (graph index 0..B-1) -> ``[B, D]``; leading
    dims of ``h`` (``[S, N, D]``: ``S`` graphs of one structure) are kept: ``[S, B, D]``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.score = nn.Linear(channels, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.score.reset_parameters()

    def forward(self, h: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        nodes = h.dim() - 2
        alpha = softmax(self.score(h).squeeze(-1), batch, num_nodes=num_graphs, dim=nodes)
        out = torch.zeros(*h.shape[:-2], num_graphs, h.size(-1), dtype=h.dtype, device=h.device)
        return out.index_add(nodes, batch, alpha.unsqueeze(-1) * h)


class _Stage(nn.Module):
    """``num_layers`` MGNNConv layers (ReLU between) and one pooling: one hierarchy level."""

    convs: nn.ModuleList

    def __init__(self, channels: int, num_layers: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(MGNNConv(channels) for _ in range(num_layers))
        self.pool = AttentionPooling(channels)

    def reset_parameters(self) -> None:
        for conv in self.convs:
            conv.reset_parameters()  # type: ignore[operator]
        self.pool.reset_parameters()

    def forward(
        self, h: Tensor, edge_index: Tensor, edge_attr: Tensor, batch: Tensor, num_graphs: int
    ) -> tuple[Tensor, Tensor]:
        both = torch.cat([edge_index, edge_index.flip(0)], dim=1)
        both_attr = torch.cat([edge_attr, edge_attr], dim=-2)
        for conv in self.convs:
            h = torch.relu(conv(h, both, both_attr))
        return h, self.pool(h, batch, num_graphs)


class MultiStageGNN(nn.Module):
    """m-GNN encoder of a :class:`~onnxprune.hgraph.Hierarchy` (see module docstring).

    ``forward(keep_ratios=None, levels=None) -> (g: [D], group_emb: [G, D])`` where ``G`` is
    ``len(hierarchy.prunable_group_ids)`` (the order of ``analysis.prunable_groups()``); each
    group embedding is the mean final embedding of the level-0 feature maps of that group (a
    group with no feature map in the graph gets zeros). ``keep_ratios`` maps group id -> kept
    fraction, or is a vector ``[G]`` in prunable-group order; ``levels`` may be passed instead
    (from ``hierarchy.to_pyg``).

    Construction is seeded (``seed``) without touching the global torch RNG.
    """

    # Buffers and sub-modules, declared for type checkers (nn.Module's __getattr__ is untyped).
    _group_rows: torch.Tensor
    _group_cols: torch.Tensor
    _group_counts: torch.Tensor
    node_proj: nn.Linear
    edge_proj: nn.Linear
    stages: nn.ModuleList

    def __init__(
        self,
        hierarchy: Hierarchy,
        hidden: int = 64,
        num_layers: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.hierarchy = hierarchy
        self.hidden = hidden
        self.num_layers = num_layers
        self.seed = seed
        self.num_stages = len(hierarchy.levels)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.node_proj = nn.Linear(NODE_DIM, hidden)
            self.edge_proj = nn.Linear(EDGE_DIM, hidden)
            self.stages = nn.ModuleList(_Stage(hidden, num_layers) for _ in range(self.num_stages))
        levels = hierarchy.to_pyg()
        self._num_instances = len(hierarchy.instances)
        self._num_level0 = levels[0].num_nodes
        rows: list[int] = []
        cols: list[int] = []
        for group_slot, nodes in enumerate(hierarchy.group_level0_nodes()):
            rows.extend([group_slot] * len(nodes))
            cols.extend(nodes)
        self.register_buffer("_group_rows", torch.tensor(rows, dtype=torch.long), persistent=False)
        self.register_buffer("_group_cols", torch.tensor(cols, dtype=torch.long), persistent=False)
        counts = torch.zeros(len(hierarchy.prunable_group_ids))
        if rows:
            counts.index_add_(0, self._group_rows, torch.ones(len(rows)))
        self.register_buffer("_group_counts", counts.clamp(min=1.0), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.hidden

    @property
    def num_groups(self) -> int:
        return len(self.hierarchy.prunable_group_ids)

    def reset_parameters(self) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.node_proj.reset_parameters()
            self.edge_proj.reset_parameters()
            for stage in self.stages:
                stage.reset_parameters()  # type: ignore[operator]

    def forward(
        self,
        keep_ratios: Any = None,
        levels: list[LevelTensors] | None = None,
    ) -> tuple[Tensor, Tensor]:
        out = self.embed(keep_ratios, levels)
        return out.g, out.group_emb

    def forward_many(self, keep_ratios: list[Any]) -> tuple[Tensor, Tensor]:
        """:meth:`forward` of several states: ``(g [B, D], group_emb [B, G, D])``."""
        out = self.embed_many(keep_ratios)
        return out.g, out.group_emb

    def embed(
        self,
        keep_ratios: Any = None,
        levels: list[LevelTensors] | None = None,
    ) -> MGNNOutput:
        """All embeddings of one forward pass (see :class:`MGNNOutput`)."""
        if levels is None:
            levels = self.hierarchy.to_pyg(keep_ratios)
        return self._embed(levels, [level.x for level in levels],
                           [level.edge_attr for level in levels])  # fmt: skip

    def embed_many(self, keep_ratios: list[Any]) -> MGNNOutput:
        """:meth:`embed` of several states at once: every field gets a leading batch dim
        (``g: [B, D]``, ``group_emb: [B, G, D]``, ...). The hierarchy's structure is the same
        for every state (only the keep-ratio features differ), so the ``B`` graphs run as one
        message-passing call per layer instead of ``B`` calls: the same values (up to float
        summation order), a fraction of the time (a DDPG update embeds its whole batch)."""
        per_state = [self.hierarchy.to_pyg(ratios) for ratios in keep_ratios]
        levels = per_state[0]
        xs = [torch.stack([state[t].x for state in per_state]) for t in range(len(levels))]
        edges = [torch.stack([state[t].edge_attr for state in per_state])
                 for t in range(len(levels))]  # fmt: skip
        return self._embed(levels, xs, edges)

    def _embed(
        self, levels: list[LevelTensors], xs: list[Tensor], edge_attrs: list[Tensor]
    ) -> MGNNOutput:
        """The m-GNN pass over the structure of ``levels`` with node features ``xs[t]`` and
        edge features ``edge_attrs[t]`` (``[..., N_t, F]`` / ``[..., E_t, F]``; leading dims
        are a batch of states)."""
        device = self.node_proj.weight.device
        base_nodes = self.node_proj(xs[0].to(device))  # [..., N0, D]
        lead, nodes = base_nodes.shape[:-2], base_nodes.dim() - 2
        node_final = torch.zeros_like(base_nodes)
        instance_emb = torch.zeros(*lead, self._num_instances, self.hidden, device=device)
        edge_feat = self.edge_proj(edge_attrs[0].to(device))  # [..., E0, D]
        for t in range(1, len(levels)):
            low, up = levels[t - 1], levels[t]
            slots = int(up.inst_ids.numel())
            low_l0 = low.node_level0.to(device)
            h = base_nodes[..., low_l0[up.inst_node_index.to(device)], :]
            h, pooled = self.stages[t - 1](
                h,
                up.inst_edge_index.to(device),
                edge_feat[..., up.inst_edge_src.to(device), :],
                up.inst_node_batch.to(device),
                slots,
            )
            inner = up.inst_node_inner.to(device)
            inner_l0 = low_l0[up.inst_node_index.to(device)][inner]
            node_final = node_final.index_copy(nodes, inner_l0, h[..., inner, :])
            instance_emb = instance_emb.index_copy(nodes, up.inst_ids.to(device), pooled)
            edge_feat = self._edge_features(up, edge_attrs[t], instance_emb)
        top = levels[-1]
        top_l0 = top.node_level0.to(device)
        batch = torch.zeros(top.num_nodes, dtype=torch.long, device=device)
        h, pooled = self.stages[len(levels) - 1](
            base_nodes[..., top_l0, :], top.edge_index.to(device), edge_feat, batch, 1
        )
        node_final = node_final.index_copy(nodes, top_l0, h)
        group_emb = torch.zeros(*lead, self.num_groups, self.hidden, device=device)
        if self._group_rows.numel():
            group_emb = group_emb.index_add(
                nodes, self._group_rows, node_final[..., self._group_cols, :]
            )
        group_emb = group_emb / self._group_counts.unsqueeze(-1)
        return MGNNOutput(pooled[..., 0, :], group_emb, node_final, instance_emb)

    def _edge_features(
        self, level: LevelTensors, edge_attr: Tensor, instance_emb: Tensor
    ) -> Tensor:
        """``[..., E, D]``: projected op features for primitive edges, instance embeddings
        else."""
        device = instance_emb.device
        primitive = self.edge_proj(edge_attr.to(device))
        is_motif = (level.edge_instance >= 0).to(device)
        motif = instance_emb[..., level.edge_instance.clamp(min=0).to(device), :]
        return torch.where(is_motif.unsqueeze(-1), motif, primitive)

    def extra_repr(self) -> str:
        return (
            f"hidden={self.hidden}, stages={self.num_stages}, layers={self.num_layers}, "
            f"groups={self.num_groups}, seed={self.seed}"
        )

    def describe(self) -> dict[str, Any]:
        """Sizes for logs: stages, parameters, groups."""
        return {
            "encoder": "m-gnn",
            "hidden": self.hidden,
            "stages": self.num_stages,
            "layers": self.num_layers,
            "parameters": sum(p.numel() for p in self.parameters()),
            "groups": self.num_groups,
        }

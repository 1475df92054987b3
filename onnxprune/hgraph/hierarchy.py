"""The hierarchical computational graph (paper 002, section 3.1) and its PyG export.

``build_hierarchy(model)`` returns a :class:`Hierarchy`:

- ``levels[0]`` is the flat graph of :mod:`onnxprune.hgraph.level0` (feature maps as nodes,
  coarsened operations as edges) in a canonical order that does not depend on tensor names or
  on the order of nodes in the file;
- ``levels[k]`` (k >= 1) is ``levels[k-1]`` with every instance of the motifs found there
  replaced by one edge of type ``M<id>`` (see :mod:`onnxprune.hgraph.motifs`);
- extraction stops when nothing repeats, or after ``max_levels`` levels (noted in ``notes``).

Node keys of every level are level-0 tensor names (display only). Edge attributes:
``type`` (op category from :data:`OP_VOCAB` or ``M<id>``), ``op`` (level-0 op id or -1),
``instance`` (global motif-instance index or -1), ``ident`` (what the edge stands for: a
multi-input op has one edge per input, all with the same ``ident``).
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch
from onnx import ModelProto

from onnxprune.deps import DependencyAnalysis
from onnxprune.errors import InternalError, OnnxPruneError
from onnxprune.hgraph.level0 import (
    OP_VOCAB,
    Level0,
    OpRecord,
    TensorInfo,
    build_level0,
    log_feature,
)
from onnxprune.hgraph.motifs import Segment, best_sequence_run, region_classes, segments
from onnxprune.normalize import normalize

NODE_FEATURES = ("log2_channels", "log2_height", "log2_width", "keep_ratio", "prunable", "grouped")
EDGE_FEATURES = (
    *(f"op={name}" for name in OP_VOCAB),
    "log2_kernel",
    "log2_stride",
    "log2_groups",
    "macs_share",
    "params_share",
    "keep_ratio",
    "is_motif",
)
NODE_DIM = len(NODE_FEATURES)
EDGE_DIM = len(EDGE_FEATURES)
_KEEP_NODE = NODE_FEATURES.index("keep_ratio")
_KEEP_EDGE = EDGE_FEATURES.index("keep_ratio")


@dataclass
class MotifInstance:
    """One occurrence of a motif: a region of level ``level - 1`` between two tensors.

    ``edges`` are edge keys ``(u, v, uid)`` of level ``level - 1``; ``inner`` are the tensors
    that disappear when the instance becomes one edge of level ``level``.
    """

    index: int
    motif_id: int
    level: int
    entry: str
    exit: str
    edges: tuple[tuple[str, str, int], ...]
    inner: tuple[str, ...]
    edge_uid: int  # uid of the edge that stands for this instance at ``level``

    def to_dict(self) -> dict[str, Any]:
        return {
            "motif": self.motif_id,
            "level": self.level,
            "entry": self.entry,
            "exit": self.exit,
            "ops": len({e[2] for e in self.edges}),
        }

    def __str__(self) -> str:
        return f"M{self.motif_id}[{self.entry} -> {self.exit}]"


@dataclass
class Motif:
    """A repeated subgraph; its instances are edges of type ``M<id>`` at ``level``.

    ``ops`` lists the op types of one instance in canonical data-flow order; ``kind`` is
    ``region`` (a single-entry/single-exit region) or ``sequence`` (a run of consecutive
    regions).
    """

    id: int
    level: int
    kind: str
    ops: tuple[str, ...]
    instances: list[MotifInstance]

    @property
    def name(self) -> str:
        return f"M{self.id}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "ops": list(self.ops), "instances": len(self.instances)}

    def __str__(self) -> str:
        where = ", ".join(f"{i.entry}->{i.exit}" for i in self.instances[:3])
        more = f", ... (+{len(self.instances) - 3})" if len(self.instances) > 3 else ""
        return (
            f"{self.name} x{len(self.instances)} ({self.kind}, {len(self.ops)} ops): "
            f"{' > '.join(self.ops)}  at {where}{more}"
        )


@dataclass
class LevelTensors:
    """PyG-style tensors of one level (float32 / int64).

    - ``x``: ``[N, NODE_DIM]`` node features (:data:`NODE_FEATURES`), ``node_names``: N names,
      ``node_level0``: ``[N]`` index of each node in level 0.
    - ``edge_index``: ``[2, E]`` (source row 0, target row 1, data-flow direction),
      ``edge_attr``: ``[E, EDGE_DIM]`` (:data:`EDGE_FEATURES`; a motif edge has no op one-hot,
      summed MACs/params shares, mean keep-ratio and ``is_motif`` = 1),
      ``edge_motif``: ``[E]`` motif id or -1, ``edge_instance``: ``[E]`` global instance index
      or -1, ``edge_op``: ``[E]`` level-0 op id or -1.
    - For level k >= 1, the instances contracted into this level, flattened for batching
      (I instances, M instance-node slots, P instance edges):
      ``inst_ids``: ``[I]`` global instance indices (in the order of this level's motif
      edges), ``inst_motif``: ``[I]``, ``inst_node_index``: ``[M]`` index into level k-1
      nodes, ``inst_node_batch``: ``[M]`` instance slot 0..I-1, ``inst_node_inner``: ``[M]``
      bool (the tensor disappears at level k), ``inst_edge_index``: ``[2, P]`` into the M
      slots, ``inst_edge_src``: ``[P]`` index into level k-1 edges, ``inst_edge_batch``: ``[P]``,
      ``edge_inst_slot``: ``[E]`` slot 0..I-1 of each motif edge of this level or -1.
      Level 0 has all of these empty.
    """

    level: int
    node_names: list[str]
    x: torch.Tensor
    edge_index: torch.Tensor
    edge_attr: torch.Tensor
    edge_motif: torch.Tensor
    edge_instance: torch.Tensor
    edge_op: torch.Tensor
    node_level0: torch.Tensor
    inst_ids: torch.Tensor
    inst_motif: torch.Tensor
    inst_node_index: torch.Tensor
    inst_node_batch: torch.Tensor
    inst_node_inner: torch.Tensor
    inst_edge_index: torch.Tensor
    inst_edge_src: torch.Tensor
    inst_edge_batch: torch.Tensor
    edge_inst_slot: torch.Tensor

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def to_data(self) -> Any:
        """This level as a ``torch_geometric.data.Data`` (x, edge_index, edge_attr, motif ids)."""
        from torch_geometric.data import Data

        return Data(
            x=self.x,
            edge_index=self.edge_index,
            edge_attr=self.edge_attr,
            edge_motif=self.edge_motif,
            num_nodes=self.num_nodes,
        )

    def __str__(self) -> str:
        return (
            f"LevelTensors(level={self.level}, x={tuple(self.x.shape)}, "
            f"edge_index={tuple(self.edge_index.shape)}, instances={int(self.inst_ids.numel())})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "nodes": self.num_nodes,
            "edges": self.num_edges,
            "instances": int(self.inst_ids.numel()),
        }


@dataclass
class Hierarchy:
    """The hierarchical computational graph of one model (see module docstring).

    ``group_ids``: every channel group id known from the analysis (empty without one);
    ``prunable_group_ids``: the prunable ones in ``analysis.prunable_groups()`` order;
    ``tensor_groups``: level-0 tensor -> group ids on its channel axis.
    """

    levels: list[nx.MultiDiGraph]
    motifs: list[Motif]
    instances: list[MotifInstance]
    ops: list[OpRecord]
    tensors: dict[str, TensorInfo]
    group_ids: list[int] = field(default_factory=list)
    prunable_group_ids: list[int] = field(default_factory=list)
    tensor_groups: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def motifs_at(self, level: int) -> list[Motif]:
        """Motifs whose instances are edges of ``levels[level]``."""
        return [m for m in self.motifs if m.level == level]

    def __str__(self) -> str:
        lines = [f"hierarchical graph: {len(self.levels)} level(s), {len(self.motifs)} motif(s)"]
        for k, level in enumerate(self.levels):
            kind = "feature maps / ops" if k == 0 else "motif edges replace repeated regions"
            chain = " (chain)" if k > 0 and _is_chain(level) else ""
            lines.append(
                f"level {k}: {level.number_of_nodes()} nodes, "
                f"{level.number_of_edges()} edges{chain} - {kind}"
            )
            for motif in self.motifs_at(k):
                lines.append(f"  {motif}")
        for note in self.notes:
            lines.append(f"note: {note}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "levels": [
                {
                    "level": k,
                    "nodes": level.number_of_nodes(),
                    "edges": level.number_of_edges(),
                    "motifs": [m.to_dict() for m in self.motifs_at(k)],
                }
                for k, level in enumerate(self.levels)
            ]
        }

    # ---- PyG export -------------------------------------------------------------------
    def to_pyg(self, keep_ratios: Any = None) -> list[LevelTensors]:
        """Fresh tensors for every level with the given keep-ratios in the features.

        ``keep_ratios`` maps group id -> kept fraction (missing groups: 1.0), or is a vector in
        ``prunable_group_ids`` order (see :meth:`keep_vector`). The graph is not
        rebuilt: the structure is computed once and cached, only the keep-ratio columns are
        refilled (a few index_add calls).
        """
        if "static" not in self._cache:
            self._cache["static"] = self._static_tensors()
        static: list[LevelTensors] = self._cache["static"]
        group_vec = self.keep_vector(keep_ratios)
        result = []
        for k, lt in enumerate(static):
            node_map, edge_map = self._cache["keep_maps"][k]
            x = lt.x.clone()
            x[:, _KEEP_NODE] = _average(node_map, group_vec, lt.num_nodes)
            edge_attr = lt.edge_attr.clone()
            edge_attr[:, _KEEP_EDGE] = _average(edge_map, group_vec, lt.num_edges)
            result.append(_replace(lt, x=x, edge_attr=edge_attr))
        return result

    def keep_vector(self, keep_ratios: Any) -> torch.Tensor:
        """``[len(group_ids)]`` keep-ratios in ``group_ids`` order (missing -> 1.0).

        ``keep_ratios``: None, a dict group id -> ratio, or a 1-D array/tensor with one ratio
        per prunable group in ``prunable_group_ids`` order.
        """
        values = torch.ones(len(self.group_ids), dtype=torch.float32)
        if keep_ratios is not None and not isinstance(keep_ratios, dict):
            vector = torch.as_tensor(keep_ratios, dtype=torch.float32).reshape(-1)
            if vector.numel() != len(self.prunable_group_ids):
                raise OnnxPruneError(
                    f"keep-ratio vector has {vector.numel()} entries but the model has "
                    f"{len(self.prunable_group_ids)} prunable groups; pass one ratio per "
                    "prunable group (analysis.prunable_groups() order) or a dict by group id"
                )
            keep_ratios = dict(zip(self.prunable_group_ids, vector.tolist(), strict=True))
        if keep_ratios:
            index = {g: i for i, g in enumerate(self.group_ids)}
            for group_id, ratio in keep_ratios.items():
                if group_id not in index:
                    raise OnnxPruneError(
                        f"keep ratio given for channel group {group_id}, which the hierarchy "
                        f"does not know; known groups: {self.group_ids[:10]}"
                    )
                values[index[group_id]] = float(ratio)
        return values

    def group_level0_nodes(self) -> list[list[int]]:
        """For each prunable group (``prunable_group_ids`` order), its level-0 node indices."""
        index = {name: i for i, name in enumerate(self.levels[0].nodes)}
        members: dict[int, list[int]] = {g: [] for g in self.prunable_group_ids}
        for name, groups in self.tensor_groups.items():
            if name not in index:
                continue
            for g in groups:
                if g in members:
                    members[g].append(index[name])
        return [sorted(members[g]) for g in self.prunable_group_ids]

    def _op_groups(self, op: OpRecord) -> list[int]:
        groups: list[int] = []
        for t in op.outputs:
            groups.extend(self.tensor_groups.get(t, []))
        return groups

    def _static_tensors(self) -> list[LevelTensors]:
        group_index = {g: i for i, g in enumerate(self.group_ids)}
        level0_index = {name: i for i, name in enumerate(self.levels[0].nodes)}
        covered = self._covered_ops()
        keep_maps = []
        result: list[LevelTensors] = []
        for k, graph in enumerate(self.levels):
            names = list(graph.nodes)
            x, node_entries = self._node_features(names, group_index)
            edges = list(graph.edges(keys=True, data=True))
            edge_tensors, edge_entries = self._edge_features(names, edges, covered, group_index)
            keep_maps.append((_entries(node_entries), _entries(edge_entries)))
            lt = LevelTensors(
                level=k,
                node_names=[str(n) for n in names],
                x=x,
                **edge_tensors,
                node_level0=torch.tensor([level0_index[n] for n in names], dtype=torch.long),
                **self._instance_tensors(k, edges),
            )
            result.append(lt)
        self._cache["keep_maps"] = keep_maps
        return result

    def _covered_ops(self) -> dict[int, list[int]]:
        """Level-0 op ids covered by each motif instance (recursively through lower motifs)."""
        covered: dict[int, list[int]] = {}
        for inst in self.instances:
            graph = self.levels[inst.level - 1]
            ops: list[int] = []
            for e in inst.edges:
                data = graph.edges[e]
                if data["op"] >= 0:
                    ops.append(data["op"])
                else:
                    ops.extend(covered[data["instance"]])
            covered[inst.index] = sorted(set(ops))
        return covered

    def _node_features(
        self, names: list[str], group_index: dict[int, int]
    ) -> tuple[torch.Tensor, list[tuple[int, int, float]]]:
        """``x: [N, NODE_DIM]`` without keep-ratios, and (node, group slot, weight) entries
        that average the groups' keep-ratios into the keep-ratio column."""
        prunable = set(self.prunable_group_ids)
        x = torch.zeros(len(names), NODE_DIM)
        node_entries: list[tuple[int, int, float]] = []
        for i, name in enumerate(names):
            info = self.tensors[name]
            groups = [g for g in self.tensor_groups.get(name, []) if g in group_index]
            x[i, 0] = log_feature(info.channels)
            x[i, 1] = log_feature(info.height)
            x[i, 2] = log_feature(info.width)
            x[i, 4] = 1.0 if any(g in prunable for g in groups) else 0.0
            x[i, 5] = 1.0 if groups else 0.0
            for g in groups:
                node_entries.append((i, group_index[g], 1.0 / len(groups)))
        return x, node_entries

    def _edge_features(
        self,
        names: list[str],
        edges: list[Any],
        covered: dict[int, list[int]],
        group_index: dict[int, int],
    ) -> tuple[dict[str, torch.Tensor], list[tuple[int, int, float]]]:
        """``edge_index``, ``edge_attr`` (without keep-ratios), ``edge_motif``,
        ``edge_instance``, ``edge_op`` of one level, and the keep-ratio entries of its edges."""
        total_macs = sum(op.macs for op in self.ops) or 1
        total_params = sum(op.params for op in self.ops) or 1
        ops_by_id = {op.op_id: op for op in self.ops}
        pos = {n: i for i, n in enumerate(names)}
        base = len(OP_VOCAB)
        edge_index = torch.zeros(2, len(edges), dtype=torch.long)
        edge_attr = torch.zeros(len(edges), EDGE_DIM)
        edge_motif = torch.full((len(edges),), -1, dtype=torch.long)
        edge_instance = torch.full((len(edges),), -1, dtype=torch.long)
        edge_op = torch.full((len(edges),), -1, dtype=torch.long)
        edge_entries: list[tuple[int, int, float]] = []
        for j, (u, v, _key, data) in enumerate(edges):
            edge_index[0, j] = pos[u]
            edge_index[1, j] = pos[v]
            if data["op"] >= 0:
                op = ops_by_id[data["op"]]
                edge_op[j] = op.op_id
                edge_attr[j, OP_VOCAB.index(op.category)] = 1.0
                edge_attr[j, base] = log_feature(op.kernel)
                edge_attr[j, base + 1] = log_feature(op.stride)
                edge_attr[j, base + 2] = log_feature(op.groups - 1)
                edge_attr[j, base + 3] = op.macs / total_macs
                edge_attr[j, base + 4] = op.params / total_params
                op_list = [op.op_id]
            else:
                inst = self.instances[data["instance"]]
                edge_motif[j] = inst.motif_id
                edge_instance[j] = inst.index
                op_list = covered[inst.index]
                edge_attr[j, base + 3] = sum(ops_by_id[o].macs for o in op_list) / total_macs
                edge_attr[j, base + 4] = sum(ops_by_id[o].params for o in op_list) / total_params
                edge_attr[j, base + 6] = 1.0
            groups = [
                group_index[g]
                for o in op_list
                for g in self._op_groups(ops_by_id[o])
                if g in group_index
            ]
            for gi in groups:
                edge_entries.append((j, gi, 1.0 / len(groups)))
        tensors = {
            "edge_index": edge_index,
            "edge_attr": edge_attr,
            "edge_motif": edge_motif,
            "edge_instance": edge_instance,
            "edge_op": edge_op,
        }
        return tensors, edge_entries

    def _instance_tensors(self, k: int, edges: list[Any]) -> dict[str, torch.Tensor]:
        empty = torch.zeros(0, dtype=torch.long)
        slots = {
            data["instance"]: j
            for j, (_, _, _, data) in enumerate(edges)
            if data["instance"] >= 0 and self.instances[data["instance"]].level == k
        }
        edge_inst_slot = torch.full((len(edges),), -1, dtype=torch.long)
        if k == 0 or not slots:
            return {
                "inst_ids": empty,
                "inst_motif": empty,
                "inst_node_index": empty,
                "inst_node_batch": empty,
                "inst_node_inner": torch.zeros(0, dtype=torch.bool),
                "inst_edge_index": torch.zeros(2, 0, dtype=torch.long),
                "inst_edge_src": empty,
                "inst_edge_batch": empty,
                "edge_inst_slot": edge_inst_slot,
            }
        lower = self.levels[k - 1]
        lower_pos = {n: i for i, n in enumerate(lower.nodes)}
        lower_edge_pos = {(u, v, key): j for j, (u, v, key) in enumerate(lower.edges(keys=True))}
        inst_ids = sorted(slots, key=slots.__getitem__)
        node_index: list[int] = []
        node_batch: list[int] = []
        node_inner: list[bool] = []
        edge_pairs: list[tuple[int, int]] = []
        edge_src: list[int] = []
        edge_batch: list[int] = []
        for slot, inst_id in enumerate(inst_ids):
            inst = self.instances[inst_id]
            edge_inst_slot[slots[inst_id]] = slot
            local: dict[str, int] = {}
            for name in [inst.entry, *inst.inner, inst.exit]:
                local[name] = len(node_index)
                node_index.append(lower_pos[name])
                node_batch.append(slot)
                node_inner.append(name not in (inst.entry, inst.exit))
            for e in inst.edges:
                edge_pairs.append((local[e[0]], local[e[1]]))
                edge_src.append(lower_edge_pos[e])
                edge_batch.append(slot)
        return {
            "inst_ids": torch.tensor(inst_ids, dtype=torch.long),
            "inst_motif": torch.tensor(
                [self.instances[i].motif_id for i in inst_ids], dtype=torch.long
            ),
            "inst_node_index": torch.tensor(node_index, dtype=torch.long),
            "inst_node_batch": torch.tensor(node_batch, dtype=torch.long),
            "inst_node_inner": torch.tensor(node_inner, dtype=torch.bool),
            "inst_edge_index": torch.tensor(edge_pairs, dtype=torch.long).t().contiguous(),
            "inst_edge_src": torch.tensor(edge_src, dtype=torch.long),
            "inst_edge_batch": torch.tensor(edge_batch, dtype=torch.long),
            "edge_inst_slot": edge_inst_slot,
        }


def _entries(entries: list[tuple[int, int, float]]) -> tuple[torch.Tensor, ...]:
    rows = torch.tensor([e[0] for e in entries], dtype=torch.long)
    cols = torch.tensor([e[1] for e in entries], dtype=torch.long)
    weights = torch.tensor([e[2] for e in entries], dtype=torch.float32)
    return rows, cols, weights


def _average(entries: tuple[torch.Tensor, ...], group_vec: torch.Tensor, size: int) -> torch.Tensor:
    """Mean keep-ratio per row over its groups; -1 for rows that touch no group."""
    rows, cols, weights = entries
    out = torch.zeros(size)
    if rows.numel():
        out.index_add_(0, rows, weights * group_vec[cols])
    has = torch.zeros(size, dtype=torch.bool)
    has[rows] = True
    out[~has] = -1.0
    return out


def _replace(lt: LevelTensors, **changes: Any) -> LevelTensors:
    values = dict(lt.__dict__)
    values.update(changes)
    return LevelTensors(**values)


def _is_chain(graph: nx.MultiDiGraph) -> bool:
    simple = nx.DiGraph(graph)
    return all(d <= 1 for _, d in simple.in_degree()) and all(
        d <= 1 for _, d in simple.out_degree()
    )


# ---- construction ---------------------------------------------------------------------------


def _analysis_info(
    analysis: DependencyAnalysis | None,
) -> tuple[dict[str, int], list[int], list[int], dict[str, list[int]]]:
    """Channel axes, group ids, prunable group ids and tensor->groups from the analysis."""
    if analysis is None:
        return {}, [], [], {}
    axes: dict[str, int] = {}
    for group in analysis.groups:
        for member in group.members:
            axes.setdefault(member.tensor, member.axis)
    group_ids = [group.id for group in analysis.groups]
    prunable = [group.id for group in analysis.prunable_groups()]
    return axes, group_ids, prunable, analysis.tensor_groups()


def _canonical_level0(level0: Level0) -> tuple[nx.MultiDiGraph, list[OpRecord]]:
    """Level-0 MultiDiGraph with nodes, ops and edges in a name-independent canonical order.

    Order = topological sort; among ready tensors the one with the smaller structural key
    (Weisfeiler-Lehman hash of shape and op labels in both directions) goes first.
    """
    simple = nx.DiGraph()
    for name, info in level0.tensors.items():
        simple.add_node(name, label=f"{info.channels}x{info.height}x{info.width}")
    for op in level0.ops:
        label = f"{op.category}/{op.kernel}/{op.stride}/{op.groups}"
        for u in op.inputs:
            for v in op.outputs:
                if simple.has_edge(u, v):
                    label = "|".join(sorted([simple.edges[u, v]["label"], label]))
                simple.add_edge(u, v, label=label)
    with warnings.catch_warnings():
        # networkx warns that directed hashes changed in 3.5; we only compare within a run
        warnings.simplefilter("ignore", UserWarning)
        hashes = nx.weisfeiler_lehman_subgraph_hashes(
            simple, edge_attr="label", node_attr="label", iterations=4
        )
    keys = {n: (simple.nodes[n]["label"], *hashes[n]) for n in simple.nodes}
    try:
        order = list(nx.lexicographical_topological_sort(simple, key=keys.__getitem__))
    except nx.NetworkXUnfeasible as exc:
        # level 0 rejects cyclic ONNX graphs and coarsening only merges along single edges
        raise InternalError("the level-0 feature-map graph has a cycle") from exc
    pos = {n: i for i, n in enumerate(order)}
    ops = sorted(
        level0.ops,
        key=lambda op: (
            min(pos[t] for t in op.outputs),
            op.category,
            sorted(pos[t] for t in op.inputs),
        ),
    )
    for i, op in enumerate(ops):
        op.op_id = i
    graph = nx.MultiDiGraph()
    graph.add_nodes_from(order)
    edge_list = []
    for op in ops:
        for u in op.inputs:
            for v in op.outputs:
                edge_list.append((pos[u], pos[v], op.op_id, u, v))
    edge_list.sort()
    for uid, (_, _, op_id, u, v) in enumerate(edge_list):
        graph.add_edge(
            u, v, key=uid, type=ops[op_id].category, op=op_id, instance=-1, ident=("op", op_id)
        )
    return graph, ops


def build_hierarchy(
    model: ModelProto,
    analysis: DependencyAnalysis | None = None,
    max_region_ops: int = 64,
    max_levels: int = 8,
) -> Hierarchy:
    """Build the hierarchical computational graph of ``model`` (paper 002, section 3.1).

    ``analysis`` (an ``onnxprune.deps.DependencyAnalysis``) is optional: with it the graph is
    built from ``analysis.model`` and tensors carry their channel groups (keep-ratio and
    prunable features); without it, the graph is built from ``onnxprune.normalize.normalize``
    of the model and group features are -1/0. ``max_region_ops`` caps the size of a
    candidate region; ``max_levels`` caps the number of levels (both reported in ``notes``).
    """
    if max_region_ops < 2:
        raise OnnxPruneError(f"max_region_ops must be >= 2 (got {max_region_ops})")
    notes: list[str] = []
    model = analysis.model if analysis is not None else normalize(model)
    axes, group_ids, prunable, tensor_groups = _analysis_info(analysis)
    level0 = build_level0(model, axes)
    graph, ops = _canonical_level0(level0)
    levels = [graph]
    motifs: list[Motif] = []
    instances: list[MotifInstance] = []
    next_uid = graph.number_of_edges()
    while True:
        current = levels[-1]
        if len(levels) > max_levels:
            notes.append(f"stopped after {max_levels} levels (max_levels); more may repeat")
            break
        position = {n: i for i, n in enumerate(current.nodes)}
        segs = segments(current, position)
        classes, skipped = region_classes(current, segs, max_region_ops)
        if skipped:
            notes.append(
                f"level {len(levels) - 1}: {skipped} region(s) larger than {max_region_ops} ops "
                "were not considered as motifs (raise --max-region to include them)"
            )
        groups_of_runs: list[tuple[str, list[list[Segment]]]] = [
            ("region", [[seg] for seg in cls]) for cls in classes
        ]
        if not groups_of_runs:
            run = best_sequence_run(current, segs, max_region_ops)
            if run is not None:
                groups_of_runs = [("sequence", run)]
        if not groups_of_runs:
            break
        level = len(levels)
        new_graph, next_uid = _contract(
            current, groups_of_runs, level, motifs, instances, next_uid, position
        )
        levels.append(new_graph)
    if not motifs:
        notes.append("no repeated region found: the hierarchy has a single level")
    return Hierarchy(
        levels=levels,
        motifs=motifs,
        instances=instances,
        ops=ops,
        tensors=level0.tensors,
        group_ids=group_ids,
        prunable_group_ids=prunable,
        tensor_groups={t: g for t, g in tensor_groups.items() if t in level0.tensors},
        notes=notes,
    )


def _contract(
    graph: nx.MultiDiGraph,
    groups_of_runs: list[tuple[str, list[list[Segment]]]],
    level: int,
    motifs: list[Motif],
    instances: list[MotifInstance],
    next_uid: int,
    position: dict[Hashable, int],
) -> tuple[nx.MultiDiGraph, int]:
    removed_edges: set[tuple[str, str, int]] = set()
    removed_nodes: set[str] = set()
    new_edges: list[tuple[str, str, int, dict[str, Any]]] = []
    for kind, runs in groups_of_runs:
        motif_id = len(motifs)
        first = runs[0]
        # ops listed in data-flow order: by the position of the tensor they produce
        first_target: dict[Any, tuple[int, int, str]] = {}
        for seg in first:
            for e in seg.edges:
                data = graph.edges[e]
                rank = (position[e[1]], position[e[0]], data["type"])
                if data["ident"] not in first_target or rank < first_target[data["ident"]]:
                    first_target[data["ident"]] = rank
        op_types = [rank[2] for rank in sorted(first_target.values())]
        motif = Motif(motif_id, level, kind, tuple(op_types), [])
        motifs.append(motif)
        for run in runs:
            entry = run[0].entry
            exit_ = run[-1].exit
            edges = tuple(e for seg in run for e in seg.edges)
            inner = [n for seg in run for n in seg.inner]
            inner.extend(seg.exit for seg in run[:-1])
            inner.sort(key=position.__getitem__)
            inst = MotifInstance(
                index=len(instances),
                motif_id=motif_id,
                level=level,
                entry=str(entry),
                exit=str(exit_),
                edges=edges,  # type: ignore[arg-type]
                inner=tuple(str(n) for n in inner),
                edge_uid=next_uid,
            )
            instances.append(inst)
            motif.instances.append(inst)
            removed_edges.update(edges)  # type: ignore[arg-type]
            removed_nodes.update(inst.inner)
            new_edges.append(
                (
                    str(entry),
                    str(exit_),
                    next_uid,
                    {
                        "type": motif.name,
                        "op": -1,
                        "instance": inst.index,
                        "ident": ("inst", inst.index),
                    },
                )
            )
            next_uid += 1
    result = nx.MultiDiGraph()
    result.add_nodes_from(n for n in graph.nodes if n not in removed_nodes)
    kept = [
        (u, v, k, d)
        for u, v, k, d in graph.edges(keys=True, data=True)
        if (u, v, k) not in removed_edges
    ]
    all_edges = kept + new_edges
    all_edges.sort(key=lambda e: (position[e[0]], position[e[1]], e[2]))
    for u, v, k, d in all_edges:
        result.add_edge(u, v, key=k, **d)
    return result, next_uid

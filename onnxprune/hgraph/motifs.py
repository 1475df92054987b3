"""Motif extraction on one level of the hierarchical graph (paper 002, section 3.1).

A level is a networkx ``MultiDiGraph`` whose nodes are feature maps and whose edges carry
``type`` (op category or motif name ``M<id>``) and ``ident`` (the op or motif instance the
edge belongs to; a multi-input op has one edge per input, all with the same ``ident``).

Algorithm (model-agnostic, bounded):

1. *Cut tensors*: tensors that every input-to-output path passes through. With a virtual
   source joined to every graph input and a virtual sink joined from every graph output, they
   are exactly the dominators of the sink (``networkx.immediate_dominators``), totally ordered.
2. *Candidate regions*: the edges between two consecutive cut tensors. Such a region has one
   entry and one exit tensor. Regions with more than ``max_region_ops`` ops are not
   candidates (reported in the hierarchy's notes).
3. *Region motifs*: candidates with more than one op are bucketed by Weisfeiler-Lehman hash
   (op-type edge labels, entry/exit node roles) and confirmed pairwise with
   ``DiGraphMatcher``; a class with at least two instances is a motif.
4. *Sequence motifs*, used when step 3 finds nothing: the regions between consecutive cut
   tensors form a sequence; a run of consecutive single-op regions that occurs at least twice
   without overlap (e.g. "block, block" in a chain of blocks) becomes a motif. The run with
   the largest gain ``instances * (length - 1)`` (edges saved) is taken, ties to the longer run.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable
from dataclasses import dataclass

import networkx as nx
from networkx.algorithms.isomorphism import DiGraphMatcher

_SOURCE = ("__source__",)
_SINK = ("__sink__",)

EdgeKey = tuple[Hashable, Hashable, int]


@dataclass
class Segment:
    """Edges between two consecutive cut tensors (``entry``/``exit`` None = virtual end)."""

    entry: Hashable | None
    exit: Hashable | None
    edges: list[EdgeKey]
    inner: list[Hashable]

    def op_count(self, graph: nx.MultiDiGraph) -> int:
        return len({graph.edges[e]["ident"] for e in self.edges})


def segments(graph: nx.MultiDiGraph, position: dict[Hashable, int]) -> list[Segment]:
    """Split ``graph`` into the regions between consecutive cut tensors, in data-flow order.

    ``position`` is the canonical node order; edges inside a segment are sorted by it.
    """
    flow = nx.DiGraph()
    flow.add_nodes_from(graph.nodes)
    flow.add_edges_from((u, v) for u, v, _ in graph.edges(keys=True))
    flow.add_node(_SOURCE)
    flow.add_node(_SINK)
    for node in graph.nodes:
        if graph.in_degree(node) == 0:
            flow.add_edge(_SOURCE, node)
        if graph.out_degree(node) == 0:
            flow.add_edge(node, _SINK)
    idom = nx.immediate_dominators(flow, _SOURCE)
    chain: list[Hashable] = []
    node = idom.get(_SINK, _SOURCE)
    while node != _SOURCE:
        chain.append(node)
        node = idom[node]
    chain.reverse()
    cut_index = {node: i + 1 for i, node in enumerate(chain)}
    bounds: list[Hashable] = [_SOURCE, *chain, _SINK]
    owner: dict[Hashable, int] = {}
    # Every non-cut node lies between exactly two consecutive cuts: walk forward from each cut
    # (and from the graph inputs that are not cuts, for the virtual source).
    for index, start in enumerate(bounds[:-1]):
        if start == _SOURCE:
            stack = [n for n in flow.successors(_SOURCE) if n not in cut_index]
            for n in stack:
                owner[n] = index
        else:
            stack = [start]
        while stack:
            current = stack.pop()
            for succ in graph.successors(current):
                if succ in cut_index or succ in owner:
                    continue
                owner[succ] = index
                stack.append(succ)
    result = [
        Segment(
            None if bounds[i] == _SOURCE else bounds[i],
            None if bounds[i + 1] == _SINK else bounds[i + 1],
            [],
            [],
        )
        for i in range(len(bounds) - 1)
    ]
    for n, index in owner.items():
        result[index].inner.append(n)
    for u, v, k in graph.edges(keys=True):
        index = cut_index[u] if u in cut_index else owner[u]
        result[index].edges.append((u, v, k))
    for seg in result:
        seg.inner.sort(key=position.__getitem__)
        seg.edges.sort(key=lambda e: (position[e[0]], position[e[1]], e[2]))
    return result


def region_graph(graph: nx.MultiDiGraph, seg: Segment) -> nx.DiGraph:
    """The region as a labelled ``DiGraph`` for hashing/matching.

    Node label: ``in``/``out``/``""`` (entry, exit, inner); edge label: the sorted op types
    of the parallel edges between the two tensors, joined by ``|``.
    """
    region = nx.DiGraph()
    region.add_node(seg.entry, label="in")
    region.add_node(seg.exit, label="out")
    for n in seg.inner:
        region.add_node(n, label="")
    labels: dict[tuple[Hashable, Hashable], list[str]] = {}
    for u, v, k in seg.edges:
        labels.setdefault((u, v), []).append(graph.edges[u, v, k]["type"])
    for (u, v), types in labels.items():
        region.add_edge(u, v, label="|".join(sorted(types)))
    return region


def region_classes(
    graph: nx.MultiDiGraph, segs: list[Segment], max_region_ops: int
) -> tuple[list[list[Segment]], int]:
    """Group candidate regions into isomorphism classes with at least two members.

    Returns the classes (in order of first occurrence, members in data-flow order) and the
    number of regions skipped because they exceed ``max_region_ops`` ops.
    """
    buckets: dict[tuple[str, int, int], list[tuple[Segment, nx.DiGraph]]] = {}
    skipped = 0
    for seg in segs:
        if seg.entry is None or seg.exit is None:
            continue
        ops = seg.op_count(graph)
        if ops < 2:
            continue
        if ops > max_region_ops:
            skipped += 1
            continue
        region = region_graph(graph, seg)
        with warnings.catch_warnings():
            # networkx warns that directed hashes changed in 3.5; we only compare within a run
            warnings.simplefilter("ignore", UserWarning)
            digest = nx.weisfeiler_lehman_graph_hash(
                region, edge_attr="label", node_attr="label", iterations=3
            )
        buckets.setdefault((digest, region.number_of_nodes(), len(seg.edges)), []).append(
            (seg, region)
        )
    classes: list[list[Segment]] = []
    for members in buckets.values():
        reps: list[tuple[nx.DiGraph, list[Segment]]] = []
        for seg, region in members:
            for rep, cls in reps:
                matcher = DiGraphMatcher(
                    rep,
                    region,
                    node_match=lambda a, b: a["label"] == b["label"],
                    edge_match=lambda a, b: a["label"] == b["label"],
                )
                if matcher.is_isomorphic():
                    cls.append(seg)
                    break
            else:
                reps.append((region, [seg]))
        classes.extend(cls for _, cls in reps if len(cls) >= 2)
    order = {id(seg): i for i, seg in enumerate(segs)}
    classes.sort(key=lambda cls: order[id(cls[0])])
    return classes, skipped


def best_sequence_run(
    graph: nx.MultiDiGraph, segs: list[Segment], max_run: int
) -> list[list[Segment]] | None:
    """Find the best repeated run of consecutive single-op regions (see module docstring).

    Returns the non-overlapping instances (each a list of consecutive segments), or None.
    """
    labels: list[str | None] = []
    for seg in segs:
        if seg.entry is None or seg.exit is None or seg.op_count(graph) != 1:
            labels.append(None)
            continue
        types = sorted({graph.edges[e]["type"] for e in seg.edges})
        labels.append("|".join(types) + f"#{len(seg.edges)}")
    n = len(labels)
    best: tuple[int, int, int] | None = None  # (gain, length, -first_start)
    best_starts: list[int] = []
    best_length = 0
    for length in range(2, min(max_run, n // 2) + 1):
        occurrences: dict[tuple[str, ...], list[int]] = {}
        for start in range(n - length + 1):
            window = labels[start : start + length]
            if any(label is None for label in window):
                continue
            occurrences.setdefault(tuple(window), []).append(start)  # type: ignore[arg-type]
        found_any = False
        for starts in occurrences.values():
            if len(starts) < 2:
                continue
            chosen: list[int] = []
            for s in starts:
                if not chosen or s >= chosen[-1] + length:
                    chosen.append(s)
            if len(chosen) < 2:
                continue
            found_any = True
            score = (len(chosen) * (length - 1), length, -chosen[0])
            if best is None or score > best:
                best = score
                best_starts = chosen
                best_length = length
        if not found_any:
            break  # no run of this length repeats, so no longer run can
    if best is None:
        return None
    return [segs[s : s + best_length] for s in best_starts]

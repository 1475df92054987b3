"""Export the hierarchy's level graphs: GraphML (one file per level) and a PNG picture.

The picture uses a layered top-to-bottom layout computed here: each feature map sits on the
layer of its longest path from a graph input (longest-path layering); nodes of one layer are
spread left to right in canonical order. Edges are coloured by op category / motif; edges that
skip layers (residual connections) are drawn as arcs so they do not hide the main path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import networkx as nx

from onnxprune.errors import OnnxPruneError
from onnxprune.hgraph.hierarchy import Hierarchy


def _level_path(path: Path, level: int) -> Path:
    return path.with_name(f"{path.stem}.level{level}{path.suffix or '.graphml'}")


def _check_parent(path: Path) -> None:
    if not path.parent.exists():
        raise OnnxPruneError(
            f"folder '{path.parent}' for output '{path.name}' does not exist; create it first"
        )


def write_graphml(hierarchy: Hierarchy, path: str | os.PathLike[str]) -> list[Path]:
    """Write ``levels[k]`` to ``<stem>.level<k>.graphml`` next to ``path``; returns the paths.

    Node attributes: channels, height, width; edge attributes: type, op (level-0 op id or
    -1), instance (motif instance index or -1), motif (motif id or -1).
    """
    base = Path(path)
    _check_parent(base)
    written = []
    for k, level in enumerate(hierarchy.levels):
        out = nx.MultiDiGraph()
        for name in level.nodes:
            info = hierarchy.tensors[name]
            out.add_node(str(name), channels=info.channels, height=info.height, width=info.width)
        for u, v, key, data in level.edges(keys=True, data=True):
            instance = data["instance"]
            motif = hierarchy.instances[instance].motif_id if instance >= 0 else -1
            out.add_edge(
                str(u),
                str(v),
                key=int(key),
                type=data["type"],
                op=int(data["op"]),
                instance=int(instance),
                motif=int(motif),
            )
        target = _level_path(base, k)
        nx.write_graphml(out, target)
        written.append(target)
    return written


def layered_layout(graph: nx.MultiDiGraph) -> dict[Any, tuple[float, float]]:
    """Longest-path layering: ``(x, y)`` per node, y = -layer, x centred within the layer."""
    layer: dict[Any, int] = {}
    for node in nx.topological_sort(graph):
        preds = list(graph.predecessors(node))
        layer[node] = max((layer[p] + 1 for p in preds), default=0)
    by_layer: dict[int, list[Any]] = {}
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node, depth in layer.items():
        by_layer.setdefault(depth, []).append(node)
    positions: dict[Any, tuple[float, float]] = {}
    for depth, nodes in by_layer.items():
        nodes.sort(key=order.__getitem__)
        width = len(nodes)
        for i, node in enumerate(nodes):
            positions[node] = (i - (width - 1) / 2.0, -float(depth))
    return positions


def draw_png(hierarchy: Hierarchy, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Draw every level side by side into one PNG (see module docstring); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch

    target = Path(path)
    _check_parent(target)
    levels = hierarchy.levels
    layouts = [layered_layout(level) for level in levels]
    depth = max((max(-y for _, y in lay.values()) for lay in layouts if lay), default=1)
    height = min(max(6.0, depth * 0.11), 60.0)
    widths = [
        max(2.4, 1.2 * (max((abs(x) for x, _ in lay.values()), default=0) + 1.5)) for lay in layouts
    ]
    fig, axes = plt.subplots(
        1,
        len(levels),
        figsize=(sum(widths) + 2.5, height),
        gridspec_kw={"width_ratios": widths},
        squeeze=False,
    )
    types = sorted({d["type"] for level in levels for _, _, d in level.edges(data=True)})
    cmap = plt.get_cmap("tab10")
    motif_cmap = plt.get_cmap("Dark2")
    colours: dict[str, Any] = {}
    ops = [t for t in types if not t.startswith("M")]
    motif_types = [t for t in types if t.startswith("M")]
    for i, t in enumerate(ops):
        colours[t] = cmap(i % 10) if i < 10 else plt.get_cmap("tab20b")(i % 20)
    for i, t in enumerate(sorted(motif_types, key=lambda name: int(name[1:]))):
        colours[t] = motif_cmap(i % 8)
    for k, (level, layout, ax) in enumerate(zip(levels, layouts, axes[0], strict=True)):
        level_depth = max((-y for _, y in layout.values()), default=0) or 1
        scale = depth / level_depth  # stretch short levels to the full height
        pos = {n: (x, y * scale) for n, (x, y) in layout.items()}
        annotate = level.number_of_edges() <= 40
        for u, v, data in level.edges(data=True):
            (x0, y0), (x1, y1) = pos[u], pos[v]
            span = abs(layout[u][1] - layout[v][1])
            motif = data["type"].startswith("M")
            rad = 0.0 if span <= 1 else 0.35 * (1 if x0 <= 0 else -1)
            patch = FancyArrowPatch(
                (x0, y0),
                (x1, y1),
                connectionstyle=f"arc3,rad={rad}",
                arrowstyle="-|>" if annotate else "-",
                mutation_scale=8,
                color=colours[data["type"]],
                linewidth=3.0 if motif else 1.2,
                alpha=0.9,
            )
            ax.add_patch(patch)
            if annotate:
                ax.text(
                    (x0 + x1) / 2 + 0.08,
                    (y0 + y1) / 2,
                    data["type"],
                    fontsize=7,
                    va="center",
                    color="black",
                )
        xs = [p[0] for p in pos.values()]
        ys = [p[1] for p in pos.values()]
        ax.scatter(xs, ys, s=10 if level.number_of_nodes() > 60 else 22, c="black", zorder=3)
        motifs = hierarchy.motifs_at(k)
        title = f"level {k}\n{level.number_of_nodes()} nodes, {level.number_of_edges()} edges"
        if motifs:
            title += "\n" + ", ".join(f"{m.name} x{len(m.instances)}" for m in motifs)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(min(xs, default=0) - 1.2, max(xs, default=0) + 1.2)
        ax.set_ylim(-depth - 1, 1)
        ax.axis("off")
    handles = []
    for t in ops + sorted(motif_types, key=lambda name: int(name[1:])):
        label = t
        if t.startswith("M"):
            motif = hierarchy.motifs[int(t[1:])]
            body = " > ".join(motif.ops)
            label = f"{t} ({len(motif.instances)}x): {body[:48]}{'...' if len(body) > 48 else ''}"
        handles.append(
            Line2D([0], [0], color=colours[t], lw=3 if t.startswith("M") else 1.5, label=label)
        )
    fig.legend(
        handles=handles, loc="upper left", fontsize=8, frameon=False, bbox_to_anchor=(1.0, 0.95)
    )
    fig.suptitle(
        "onnxprune hierarchical computational graph (edges = ops, nodes = feature maps)",
        fontsize=10,
    )
    fig.savefig(target, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return target

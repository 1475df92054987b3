"""A plot of the latency table: time saved by each group at each kept width."""

from __future__ import annotations

from pathlib import Path

from onnxprune.latency.table import LatencyTable


def plot_table(table: LatencyTable, path: Path) -> Path:
    """One line per timed group: the share of the full model's time it saves at each kept
    width (groups with the same layer shapes share a row and are counted in the legend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from onnxprune.atomic import atomic_path

    rows = [row for row in table.groups if row.timed]  # shared rows repeat a timed one
    shared = {row.group_id: [r.group_id for r in table.groups
                             if not r.timed and r.signature == row.signature]
              for row in rows}  # fmt: skip
    fig, ax = plt.subplots(figsize=(7.0, 4.0), dpi=110)
    for row in rows:
        shares = [w / row.size for w in row.widths]
        saved = 100.0 * np.asarray(row.saved_ms) / max(table.base_ms, 1e-9)
        extra = f" +{len(shared[row.group_id])} alike" if shared[row.group_id] else ""
        ax.plot(shares, saved, marker="o", markersize=3, linewidth=1,
                label=f"group {row.group_id} ({row.size} ch){extra}")  # fmt: skip
    ax.set_xlabel("kept channels / group size")
    ax.set_ylabel("model time saved (%)")
    ax.set_title(
        f"latency table: {table.base_ms:.2f} ms at batch {table.key.get('batch')}, "
        f"{table.variants_timed} variants timed",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    if len(rows) <= 20:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


__all__ = ["plot_table"]

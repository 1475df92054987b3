"""A plot of the latency table: time saved by each group at each kept width."""

from __future__ import annotations

from pathlib import Path

from onnxprune.latency.table import LatencyTable


def plot_table(table: LatencyTable, path: Path) -> Path:
    """Heat map ``[group, kept share]``: the share of the full model's time each timed group
    saves at each width (groups sharing a row with a timed group are listed once)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from onnxprune.atomic import atomic_path

    rows = table.groups
    fig, ax = plt.subplots(figsize=(max(5.0, 0.28 * len(rows) + 2), 3.8), dpi=110)
    for row in rows:
        shares = [w / row.size for w in row.widths]
        saved = 100.0 * np.asarray(row.saved_ms) / max(table.base_ms, 1e-9)
        style = "-" if row.timed else ":"
        ax.plot(shares, saved, style, marker="o", markersize=3, linewidth=1,
                label=f"group {row.group_id} ({row.size} ch)" if row.timed else None)  # fmt: skip
    ax.set_xlabel("kept channels / group size")
    ax.set_ylabel("model time saved (%)")
    ax.set_title(
        f"latency table: {table.base_ms:.2f} ms at batch {table.key.get('batch')}, "
        f"{table.variants_timed} variants timed (dotted: shared rows)"
    )
    ax.grid(alpha=0.3)
    if sum(r.timed for r in rows) <= 16:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


__all__ = ["plot_table"]

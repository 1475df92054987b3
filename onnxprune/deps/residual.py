"""Which channel groups are summed across a residual connection (structure only)."""

from __future__ import annotations

from typing import Any

SUMMING_OPS = frozenset({"Add", "Sub", "Sum"})


def summed_groups(model: Any, groups: list[Any]) -> set[int]:
    """Ids of the ``groups`` whose channels meet in a sum: a node of :data:`SUMMING_OPS` with
    at least two inputs that hold the group's channels (a residual connection adds a block's
    output to its input channel by channel). A per-channel constant (a bias, a folded
    BatchNorm shift) is not one of the group's tensors, so it does not count."""
    by_tensor: dict[str, set[int]] = {}
    for group in groups:
        for member in group.members:
            by_tensor.setdefault(member.tensor, set()).add(group.id)
    summed: set[int] = set()
    for node in model.graph.node:
        if node.op_type not in SUMMING_OPS:
            continue
        counts: dict[int, int] = {}
        for name in node.input:
            for gid in by_tensor.get(name, ()):
                counts[gid] = counts.get(gid, 0) + 1
        summed.update(gid for gid, n in counts.items() if n >= 2)
    return summed

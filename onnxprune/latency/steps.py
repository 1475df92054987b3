"""A channel rounding that offers only the widths where latency changes.

onnxruntime's CPU convolutions work in channel blocks (8 floats with AVX2), and a layer
often costs the same at several legal widths: two widths with equal measured latency differ
only in accuracy, and the wider one always wins. :class:`StepRounding` keeps, per group, the
widths :meth:`onnxprune.latency.LatencyTable.step_widths` returns (the widest of each run of
equal-latency widths), so the search spends no episodes on dominated widths. It is a
:class:`~onnxprune.budget.ChannelRounding` (same ``counts`` / ``lows`` / ``grown``
contract), so the FLOPs and latency walls use it unchanged: counts are monotone in the
keep-ratio (a keep-ratio maps to the nearest allowed width, halves up).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from onnxprune.budget import ChannelRounding
from onnxprune.errors import OnnxPruneError


@dataclass
class StepRounding(ChannelRounding):
    """``allowed[i]``: the ascending widths group ``i`` may keep (its full size last)."""

    allowed: Sequence[Sequence[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.allowed) != len(self.groups):
            raise OnnxPruneError(
                f"StepRounding needs one width list per group: {len(self.allowed)} lists for "
                f"{len(self.groups)} groups"
            )
        self._allowed = [np.array(sorted(set(int(w) for w in ws)), np.float64)
                         for ws in self.allowed]  # fmt: skip
        for i, widths in enumerate(self._allowed):
            if len(widths) == 0 or widths[-1] != self.sizes[i]:
                raise OnnxPruneError(
                    f"group {self.group_ids[i]}: the allowed widths {widths.tolist()} must end "
                    f"at the group's size {int(self.sizes[i])}"
                )
        self.lows = np.array([w[0] for w in self._allowed], dtype=np.float64)

    def counts(self, keep_ratios: np.ndarray) -> np.ndarray:
        """Keep-ratios ``[n]`` -> the nearest allowed width per group (halves up) ``[n]``."""
        ratios = np.broadcast_to(np.asarray(keep_ratios, dtype=np.float64), self.sizes.shape)
        raw = np.clip(ratios, 0.0, 1.0) * self.sizes
        out = np.empty(len(self._allowed), dtype=np.int64)
        for i, widths in enumerate(self._allowed):
            above = int(np.searchsorted(widths, raw[i], side="left"))
            if above >= len(widths):
                out[i] = int(widths[-1])
            elif above == 0 or widths[above] - raw[i] <= raw[i] - widths[above - 1]:
                out[i] = int(widths[above])
            else:
                out[i] = int(widths[above - 1])
        return out

    def grown(self, index: int, count: int) -> int:
        """The next allowed width above ``count`` for group ``index`` (its size at most)."""
        widths = self._allowed[index]
        above = widths[widths > count]
        return int(above[0]) if len(above) else int(self.sizes[index])


def step_rounding(rounding: ChannelRounding, table: object) -> StepRounding:
    """``rounding``'s groups restricted to the table's latency steps
    (:meth:`~onnxprune.latency.LatencyTable.step_widths`)."""
    allowed = [table.step_widths(g) for g in rounding.group_ids]  # type: ignore[attr-defined]
    return StepRounding(rounding.groups, rounding.round_to, rounding.min_channels, allowed)


__all__ = ["StepRounding", "step_rounding"]

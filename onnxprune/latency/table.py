"""The latency lookup table (NetAdapt / HALP style) and its predictions.

A :class:`LatencyTable` holds, for every timed channel group, the time the whole model
*saves* when that group alone keeps ``w`` channels (the rest full), at every width ``w`` the
channel rounding allows: ``saved_ms[g][w] = T(full) - T(g at w)``, measured in context (the
same session options, batch and input as the deployment; see :mod:`onnxprune.latency.build`).
The prediction of a plan (NetAdapt, Yang et al. 2018, sec. 3.2: "layer-wise look-up tables ...
the latency of the network is estimated by the sum of the layers' latencies") is::

    T(plan) = T(full) - f(sum_g saved_g(kept_g))

with ``saved_g`` linearly interpolated between timed widths and ``f`` the calibration curve of
the sum across classes of groups (:func:`onnxprune.latency.build.calibrate`: plans that prune
every group at once are timed too; ``f`` is the piecewise-linear, non-decreasing curve through
``(0, 0)`` and their ``(summed, measured)`` savings, the identity when nothing was
calibrated). Groups meeting in one layer save less together than apart, so the sum
overshoots more the more is pruned: a curve, not one factor, follows that. The *fixed part* is what no
plan can remove: ``T(full) - sum_g saved_g(floor_g)``; its ratio to ``T(full)`` is the
smallest reachable latency ratio.

Monotone by construction: the timed savings are fitted non-increasing in the width
(:func:`monotone_savings`, isotonic least squares) and clipped at 0, so the predicted latency
never grows
when a group loses channels. The latency wall's bisection
(:meth:`onnxprune.budget.Budget.fit`) needs exactly this to guarantee every episode ends
inside the predicted budget.

Additivity is the model's assumption: two groups that meet in one layer (a convolution whose
input channels are one searched group and output channels another) save less together than
the sum of their savings alone (``1 - a b`` of the layer instead of ``(1 - a) + (1 - b)``).
The presets skip residual groups, so in a residual network each searched group meets only
unsearched ones; docs/LATENCY.md has the measured prediction error for both cases.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxprune.errors import OnnxPruneError, PlanError

TABLE_VERSION = 3  # 3: calibration curve
# Two neighbouring widths whose savings differ by less than this share of the full model's
# time are one latency "step" (onnxruntime's CPU convolutions work in channel blocks).
STEP_TOLERANCE = 0.002


@dataclass
class GroupTiming:
    """One group's row of the table: ``widths [k]`` ascending (the last is the full size) and
    ``saved_ms [k]`` (the model's time saved at each width, 0 at the full size)."""

    group_id: int
    size: int
    widths: list[int]
    saved_ms: list[float]
    signature: str = ""
    timed: bool = True  # False: copied from a group with the same signature

    def saved(self, count: float) -> float:
        """Time saved (ms) with ``count`` channels kept (interpolated between widths)."""
        return float(np.interp(count, self.widths, self.saved_ms))

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group_id,
            "size": self.size,
            "widths": list(self.widths),
            "saved_ms": [round(s, 7) for s in self.saved_ms],
            "signature": self.signature,
            "timed": self.timed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GroupTiming:
        return cls(
            int(data["group"]),
            int(data["size"]),
            [int(w) for w in data["widths"]],
            [float(s) for s in data["saved_ms"]],
            str(data.get("signature", "")),
            bool(data.get("timed", True)),
        )


def monotone_savings(saved_ms: Sequence[float]) -> list[float]:
    """``saved_ms`` by ascending width -> non-increasing in the width, 0 at the full width,
    never negative: the least-squares monotone fit (pool-adjacent-violators, Barlow et al.
    1972), so timing noise is averaged out rather than taken at its maximum (a running
    maximum would turn every noisy width into a systematic over-estimate)."""
    # from the full width down: savings must not decrease; the full width is pinned to 0
    values = [0.0] + [float(v) for v in list(saved_ms)[-2::-1]]
    weights = [1e12] + [1.0] * (len(values) - 1)
    blocks: list[list[float]] = []  # [mean, weight, count]
    for value, weight in zip(values, weights, strict=True):
        blocks.append([value, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean2, weight2, count2 = blocks.pop()
            mean1, weight1, count1 = blocks.pop()
            total = weight1 + weight2
            blocks.append([(mean1 * weight1 + mean2 * weight2) / total, total, count1 + count2])
    fitted = [max(mean, 0.0) for mean, _, count in blocks for _ in range(int(count))]
    fitted[0] = 0.0
    return fitted[::-1]


@dataclass
class LatencyTable:
    """Per-group savings by width plus the full model's time (see module docstring).

    ``key`` is what the table is valid for (model hash, provider, threads, batch, runtime
    version, device name, input shapes, rounding); ``build_seconds``, ``variants_timed`` and
    ``rounds`` say what building it cost; ``cached`` is set when it came from disk.
    ``calibration`` lists the points of the calibration curve (module docstring;
    ``summed_ms``: the rows' sum for an all-group plan, ``measured_ms``: its timed saving).
    """

    key: dict[str, Any]
    base_ms: float
    groups: list[GroupTiming]
    calibration: list[dict[str, float]] = field(default_factory=list)
    build_seconds: float = 0.0
    variants_timed: int = 0
    rounds: int = 0
    cached: bool = False
    path: str = ""
    _by_id: dict[int, GroupTiming] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {g.group_id: g for g in self.groups}

    def calibrated(self, summed_ms: float) -> float:
        """The calibration curve ``f``: the rows' summed saving -> the predicted saving."""
        points: dict[float, float] = {}
        for point in self.calibration:
            x, y = float(point["summed_ms"]), max(float(point["measured_ms"]), 0.0)
            if x > 0:
                points[x] = max(points.get(x, 0.0), y)
        if not points:
            return summed_ms
        xs = [0.0, *sorted(points)]
        ys = [0.0, *np.maximum.accumulate([points[x] for x in xs[1:]]).tolist()]
        if summed_ms <= xs[-1]:
            return float(np.interp(summed_ms, xs, ys))
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return ys[-1] + slope * (summed_ms - xs[-1])

    @property
    def scale(self) -> float:
        """Measured / summed saving at the largest calibration point (1: uncalibrated)."""
        largest = max((float(p["summed_ms"]) for p in self.calibration), default=0.0)
        return self.calibrated(largest) / largest if largest > 0 else 1.0

    def group(self, group_id: int) -> GroupTiming:
        if group_id not in self._by_id:
            raise OnnxPruneError(
                f"the latency table has no row for group {group_id}; rebuild it for the "
                "groups being pruned (delete the cached table or change --round-to)"
            )
        return self._by_id[group_id]

    @property
    def group_ids(self) -> list[int]:
        return [g.group_id for g in self.groups]

    def predict_ms(self, kept: Mapping[int, int]) -> float:
        """Predicted latency (ms) of the model keeping ``kept[g]`` channels (others full)."""
        saved = sum(self.group(g).saved(c) for g, c in kept.items() if g in self._by_id)
        return self.base_ms - self.calibrated(saved)

    def predict_ratio(self, kept: Mapping[int, int]) -> float:
        return self.predict_ms(kept) / self.base_ms

    def step_widths(self, group_id: int) -> list[int]:
        """The widths where latency changes: the widest of every run of widths whose savings
        differ by less than ``STEP_TOLERANCE`` of the model's time (a narrower width with the
        same latency only loses channels)."""
        row = self.group(group_id)
        tolerance = STEP_TOLERANCE * self.base_ms
        steps = [row.widths[-1]]
        level = row.saved_ms[-1]
        for width, saved in zip(row.widths[-2::-1], row.saved_ms[-2::-1], strict=True):
            if saved > level + tolerance:
                steps.append(width)
                level = saved
        return sorted(steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "table_version": TABLE_VERSION,
            "key": self.key,
            "base_ms": round(self.base_ms, 7),
            "calibration": self.calibration,
            "build_seconds": round(self.build_seconds, 3),
            "variants_timed": self.variants_timed,
            "rounds": self.rounds,
            "cached": self.cached,
            "path": self.path,
            "groups": [g.to_dict() for g in self.groups],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable:
        if data.get("table_version") != TABLE_VERSION:
            raise OnnxPruneError(
                f"latency table version {data.get('table_version')} is not {TABLE_VERSION}"
            )
        return cls(
            key=dict(data["key"]),
            base_ms=float(data["base_ms"]),
            groups=[GroupTiming.from_dict(g) for g in data["groups"]],
            calibration=list(data.get("calibration", [])),
            build_seconds=float(data.get("build_seconds", 0.0)),
            variants_timed=int(data.get("variants_timed", 0)),
            rounds=int(data.get("rounds", 0)),
        )

    def __str__(self) -> str:
        key = self.key
        source = f"cached ({self.path})" if self.cached else f"built in {self.build_seconds:.1f} s"
        lines = [
            f"latency table: full model {self.base_ms:.3f} ms at batch {key.get('batch')}, "
            f"{key.get('provider')}, threads {key.get('threads') or 'default'}; {source}, "
            f"{self.variants_timed} variants timed"
            + (
                f"; calibrated on {len(self.calibration)} all-group plans (saving x "
                f"{self.scale:.3f} with every group at its floor)"
                if self.calibration
                else ""
            ),
            "group  size  time saved (ms) by kept width  [* shared: same layer shapes as a "
            "timed group]",
        ]
        for row in self.groups:
            cells = ", ".join(f"{w}:{s:.3f}" for w, s in zip(row.widths, row.saved_ms, strict=True))
            lines.append(f"{row.group_id:>5}{'' if row.timed else '*'} {row.size:>5}  {cells}")
        return "\n".join(lines)


class LatencyPredictor:
    """The table's prediction for kept-count vectors of ``group_ids`` (in that order), as the
    budget wall needs it: ``fraction(counts [n]) -> predicted latency / full latency``."""

    def __init__(self, table: LatencyTable, group_ids: Sequence[int]) -> None:
        self.table = table
        self.group_ids = [int(g) for g in group_ids]
        self.rows = [table.group(g) for g in self.group_ids]

    def ms(self, counts: Sequence[float] | np.ndarray) -> float:
        saved = sum(row.saved(float(c)) for row, c in zip(self.rows, counts, strict=True))
        return self.table.base_ms - self.table.calibrated(saved)

    def fraction(self, counts: Sequence[float] | np.ndarray) -> float:
        return self.ms(counts) / self.table.base_ms

    def kept_fraction(self, kept: Mapping[int, int]) -> float:
        pairs = zip(self.group_ids, self.rows, strict=True)
        return self.fraction([kept.get(g, row.size) for g, row in pairs])

    def require(self, latency: float, lows: Sequence[float] | np.ndarray) -> None:
        """Raise :class:`PlanError` when even every group at its floor ``lows [n]`` keeps
        more than ``latency`` of the predicted time; the message gives the smallest ratio."""
        smallest = self.fraction(lows)
        if smallest <= latency:
            return
        fixed_ms = self.ms(lows)
        raise PlanError(
            f"--latency {latency:g} is out of reach: with every prunable group at its minimum "
            f"width the latency table predicts {fixed_ms:.3f} ms of {self.table.base_ms:.3f} ms "
            f"(the fixed part: layers no channel group shrinks): the smallest reachable ratio "
            f"is {smallest:.4f}; ask for --latency >= {math.ceil(smallest * 1000) / 1000:.3f}, "
            "or let more groups be pruned (a preset without skip rules, smaller --min-channels)"
        )


__all__ = [
    "STEP_TOLERANCE",
    "GroupTiming",
    "LatencyPredictor",
    "LatencyTable",
    "monotone_savings",
]

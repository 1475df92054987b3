"""The budget rule, in one place: legal kept channel counts, fitting a MACs budget, and the
smallest fraction a budget can reach. ``prune --flops`` (:func:`onnxprune.importance.plan_for_flops`)
and the search environment (:class:`onnxprune.env.PruningEnv`) both use it, so the two reach
the same plans and refuse the same budgets.

Channel rounding (:class:`ChannelRounding`), per group of ``size`` channels:

* ``step = lcm(round_to, block_count)``: kept counts are multiples of ``round_to`` (channel
  counts decide latency more than MACs do: DESIGN.md measured multiples of 8 at a latency
  ratio of 0.80 against 0.96 for odd widths at the same 50 % MACs) and keep equal counts in
  each block of a grouped convolution. Depthwise convolutions tie input and output channels
  into one group with ``block_count`` 1, so they round like any other group.
* ``low = step * ceil(min_channels / step)``: the floor, ``min_channels`` rounded up to a step.
* The legal counts are the full ``size`` and every multiple of ``step`` in ``[low, size)``.
  A group with ``low >= size`` (e.g. a 4- or 6-channel group at round-to 8) has only its full
  size: cutting it to 1 or 2 channels would be the odd width the rounding exists to avoid, and
  ``--round-to 1`` is the way to prune it. So a count is never below ``min(min_channels,
  size)``.
* A keep-ratio ``k`` keeps ``k * size`` channels rounded to the nearest multiple of ``step``
  (halves up), clamped to ``[low, size]``; ``k = 1`` keeps the group whole. A prune ratio
  ``R`` is the keep-ratio ``1 - R`` (with ``round_to`` 1: ``round(R * size)`` channels go).
  One rounding, not two: ``11.84`` kept channels at round-to 8 are 8, not ``12 -> 16``.
  Counts are monotone in the ratio.

Fitting a budget (:meth:`Budget.fit`): the *wall* path ``u in [0, 2]`` from keep-ratios ``keep``
and prune ratios ``action``: prune ``u * action`` for ``u <= 1`` (shrinks an overshooting
action back) and ``action + (u - 1) * (1 - action)`` for ``u > 1`` (prunes further, in
proportion to what each group has left, down to the floors at ``u = 2``). MACs are monotone
in ``u``, so bisection finds the smallest ``u`` whose exact :class:`~onnxprune.cost.PlanCost`
fits. The uniform-ratio plan of ``prune --flops`` is this path from the unpruned model with a
zero action (``u = 1 + R``); :meth:`Budget.fill` then spends what rounding left of the budget.

Smallest reachable fraction (:attr:`Budget.smallest_fraction`): the MACs fraction with every
group of the rounding at its floor; groups outside it (frozen, skipped) stay full.
:meth:`Budget.require` raises :class:`~onnxprune.errors.PlanError` for a budget below it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from onnxprune.cost import PlanCost
from onnxprune.errors import OnnxPruneError, PlanError

# Bisection steps of the wall: 2 / 2**40 resolves u far below one channel of any real group.
WALL_ITERATIONS = 40


class RoundedGroup(Protocol):
    """What the rounding reads of a group (``ActionGroup`` and ``ChannelGroup`` both have it)."""

    @property
    def id(self) -> int: ...

    @property
    def size(self) -> int: ...

    @property
    def block_count(self) -> int: ...


@dataclass
class ChannelRounding:
    """Maps prune or keep ratios of ``groups`` to legal kept counts (see module docstring).

    ``units [n]`` are the steps, ``lows [n]`` the floors and ``sizes [n]`` the full sizes
    (float64, in group order).
    """

    groups: Sequence[RoundedGroup]
    round_to: int = 8
    min_channels: int = 1
    units: np.ndarray = field(init=False, repr=False)
    lows: np.ndarray = field(init=False, repr=False)
    sizes: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.round_to < 1 or self.min_channels < 1:
            raise OnnxPruneError(
                f"round_to and min_channels must be >= 1, got {self.round_to}, {self.min_channels}"
            )
        sizes = np.array([int(g.size) for g in self.groups], dtype=np.float64)
        units = np.array(
            [math.lcm(self.round_to, max(int(g.block_count or 1), 1)) for g in self.groups],
            dtype=np.float64,
        )
        lows = units * np.ceil(self.min_channels / units)
        self.units, self.sizes = units, sizes
        self.lows = np.where(lows >= sizes, sizes, lows)

    @property
    def group_ids(self) -> list[int]:
        return [int(g.id) for g in self.groups]

    def counts(self, keep_ratios: np.ndarray) -> np.ndarray:
        """Keep-ratios ``[n]`` (or one for all) in [0, 1] -> kept counts ``[n]`` (int64)."""
        ratios = np.broadcast_to(np.asarray(keep_ratios, dtype=np.float64), self.sizes.shape)
        raw = np.clip(ratios, 0.0, 1.0) * self.sizes
        rounded = np.floor(raw / self.units + 0.5) * self.units
        counts = np.clip(rounded, self.lows, self.sizes)
        return np.where(raw >= self.sizes, self.sizes, counts).astype(np.int64)

    def counts_for_prune(self, prune_ratios: np.ndarray | float) -> np.ndarray:
        """Prune ratios ``[n]`` (or one for all) in [0, 1] -> kept counts ``[n]`` (int64)."""
        return self.counts(1.0 - np.asarray(prune_ratios, dtype=np.float64))

    def grown(self, index: int, count: int) -> int:
        """The next legal count above ``count`` for group ``index`` (its size at most)."""
        return int(min(count + self.units[index], self.sizes[index]))


@dataclass(frozen=True)
class _Group:
    id: int
    size: int
    block_count: int = 1


def keep_count(
    size: int, prune_ratio: float, round_to: int = 8, min_channels: int = 1, block_count: int = 1
) -> int:
    """Kept channels of one group of ``size`` at ``prune_ratio`` (:class:`ChannelRounding`)."""
    rounding = ChannelRounding([_Group(0, size, block_count)], round_to, min_channels)
    return int(rounding.counts_for_prune(np.array([prune_ratio]))[0])


def _bisect(fits: Callable[[float], bool], low: float, high: float, iterations: int) -> float:
    """Smallest ``t`` in ``(low, high]`` with ``fits(t)``, given ``not fits(low)`` and
    ``fits(high)`` and ``fits`` monotone."""
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        if fits(middle):
            high = middle
        else:
            low = middle
    return high


class Budget:
    """Prices kept counts of ``rounding``'s groups with ``plan_cost`` and fits them to a MACs
    fraction (see module docstring). Groups outside ``rounding`` keep every channel."""

    def __init__(self, plan_cost: PlanCost, rounding: ChannelRounding) -> None:
        self.plan_cost = plan_cost
        self.rounding = rounding
        sizes = plan_cost.group_sizes
        self._full = np.array([sizes[g] for g in plan_cost.group_ids], dtype=np.float64)
        position = {group_id: i for i, group_id in enumerate(plan_cost.group_ids)}
        missing = [g for g in rounding.group_ids if g not in position]
        if missing:
            raise OnnxPruneError(f"the cost model does not know groups {missing}")
        self._positions = np.array([position[g] for g in rounding.group_ids], dtype=np.int64)
        self.smallest_fraction = self.fraction(rounding.lows)

    def macs(self, counts: np.ndarray) -> int:
        """MACs with ``counts [n]`` kept in the rounding's groups (the others full)."""
        vector = self._full.copy()
        vector[self._positions] = counts
        return self.plan_cost.macs(vector)

    def fraction(self, counts: np.ndarray) -> float:
        """``macs(counts)`` as a fraction of the unpruned model's MACs."""
        full = self.plan_cost.full_macs
        return self.macs(counts) / full if full else 1.0

    def require(self, flops_fraction: float) -> None:
        """Raise :class:`PlanError` when ``flops_fraction`` is below the smallest reachable."""
        smallest = self.smallest_fraction
        if smallest <= flops_fraction:
            return
        rounding = self.rounding
        raise PlanError(
            f"--flops {flops_fraction:g} is out of reach: with every prunable group at its "
            f"minimum ({rounding.min_channels} channel(s), rounded to {rounding.round_to}; "
            f"{len(rounding.groups)} prunable groups, frozen and skipped groups stay full) the "
            f"model keeps {smallest:.4f} of its MACs: the smallest reachable fraction is "
            f"{smallest:.4f}; ask for --flops >= {math.ceil(smallest * 1000) / 1000:.3f}, or a "
            "smaller round-to / min-channels"
        )

    def fit(
        self,
        keep: np.ndarray,
        action: np.ndarray,
        flops_fraction: float,
        also: Callable[[np.ndarray], bool] | None = None,
    ) -> tuple[np.ndarray, float]:
        """Smallest ``u in [0, 2]`` on the wall path from ``keep [n]`` with prune ratios
        ``action [n]`` whose counts keep at most ``flops_fraction`` of the MACs.

        ``also(counts) -> bool`` is a second budget the counts must meet (the latency wall,
        :mod:`onnxprune.latency`); it must be monotone (true stays true for fewer channels).
        Returns ``(counts [n] int64, u)``. At ``u = 2`` every group is at its floor; the caller
        checks reachability with :meth:`require`.
        """
        keep = np.asarray(keep, dtype=np.float64)
        action = np.clip(np.asarray(action, dtype=np.float64), 0.0, 1.0)

        def counts_at(u: float) -> np.ndarray:
            prune = u * action if u <= 1 else action + (u - 1) * (1 - action)
            return self.rounding.counts(keep * (1 - prune))

        def fits(u: float) -> bool:
            counts = counts_at(u)
            return self.fraction(counts) <= flops_fraction and (also is None or also(counts))

        if fits(0.0):
            return counts_at(0.0), 0.0
        u = _bisect(fits, 0.0, 2.0, WALL_ITERATIONS)
        return counts_at(u), u

    def fill(
        self,
        counts: np.ndarray,
        flops_fraction: float,
        also: Callable[[np.ndarray], bool] | None = None,
    ) -> np.ndarray:
        """Grow groups one step at a time while the MACs stay ``<= flops_fraction`` (and
        ``also(counts)`` holds: a second budget, e.g. the predicted latency).

        The group whose kept share *after* growing is smallest goes first (ties: lower group
        id), which keeps the plan as uniform as the rounding allows; a group whose step does
        not fit is never tried again (the others only grow, so it never fits later). A heap
        holds one entry per group, and each step re-prices only the layers the grown group
        touches (:class:`~onnxprune.cost.MacsTracker`), so filling is linear in depth.
        """
        counts = np.asarray(counts, dtype=np.int64).copy()
        rounding = self.rounding
        ids = rounding.group_ids
        vector = self._full.copy()
        vector[self._positions] = counts
        tracker = self.plan_cost.tracker(vector)

        def entry(i: int) -> tuple[float, int, int]:
            return (rounding.grown(i, int(counts[i])) / rounding.sizes[i], ids[i], i)

        heap = [entry(i) for i in range(len(ids)) if counts[i] < rounding.sizes[i]]
        heapq.heapify(heap)
        while heap:
            _, _, i = heapq.heappop(heap)
            grown = rounding.grown(i, int(counts[i]))
            tracker.set(int(self._positions[i]), grown)
            previous, counts[i] = counts[i], grown
            if self._over(tracker.macs, flops_fraction) or (also is not None and not also(counts)):
                tracker.set(int(self._positions[i]), previous)
                counts[i] = previous
                continue
            if counts[i] < rounding.sizes[i]:
                heapq.heappush(heap, entry(i))
        return counts

    def _over(self, macs: int, flops_fraction: float) -> bool:
        """``fraction > flops_fraction`` for a plan of ``macs`` (the test :meth:`fraction`
        makes, without re-pricing)."""
        full = self.plan_cost.full_macs
        return (macs / full if full else 1.0) > flops_fraction


__all__ = ["WALL_ITERATIONS", "Budget", "ChannelRounding", "RoundedGroup", "keep_count"]

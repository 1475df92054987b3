"""Plans under a MACs and/or a predicted-latency budget, and the choice of the faster plan.

``prune --flops`` / ``--latency`` make a uniform plan by the one wall
(:meth:`onnxprune.budget.Budget.fit`, here with the latency table's prediction as the second
budget) and spend what rounding left (:meth:`Budget.fill` with the latency as second budget). Which groups to prune is a
choice with a large effect on speed: on ResNet-56 at 0.50 of the MACs, pruning every group
runs at 0.75 of the original latency, pruning only block interiors (groups not tied across a
residual Add) at 0.70, and with better accuracy. :func:`choose_plan` builds both candidates
under the same budgets and, by default (``scope="auto"``), keeps the one the latency table
predicts faster (with ``--latency`` alone: the one keeping more MACs inside the latency budget,
i.e. more capacity at the same speed); without a table it prunes every group. The choice
and its reason are returned for a one-line note and a JSON field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxprune.budget import Budget, ChannelRounding
from onnxprune.errors import OnnxPruneError
from onnxprune.latency.table import LatencyPredictor, LatencyTable

SCOPES = ("auto", "all", "interiors")


def scope_groups(analysis: Any, scope: str) -> list[Any]:
    """Prunable groups of ``scope``: ``all``, or ``interiors`` (the channels are not summed
    across a residual Add: :func:`onnxprune.deps.residual.summed_groups`; a squeeze-excitation
    gate does not make a group residual)."""
    from onnxprune.deps.residual import summed_groups

    groups = list(analysis.prunable_groups())
    if scope == "all":
        return groups
    if scope == "interiors":
        summed = summed_groups(analysis.model, groups)
        return [g for g in groups if g.id not in summed]
    raise OnnxPruneError(f"unknown plan scope '{scope}'; use one of {', '.join(SCOPES)}")


@dataclass
class PlanCandidate:
    """One candidate plan: its scope, kept counts, MACs kept and predicted latency ratio."""

    scope: str
    kept: dict[int, int]
    macs_fraction: float
    latency_ratio: float | None
    prune_ratio: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "groups": len(self.kept),
            "macs_fraction": round(self.macs_fraction, 6),
            "predicted_latency_ratio": None
            if self.latency_ratio is None
            else round(self.latency_ratio, 6),
        }


@dataclass
class PlanChoice:
    """Which candidate was kept and why (``reason`` is one line)."""

    chosen: PlanCandidate
    reason: str
    candidates: list[PlanCandidate] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.chosen.scope,
            "reason": self.reason,
            "candidates": [c.to_dict() for c in self.candidates],
        }


def budget_plan(
    analysis: Any,
    plan_cost: Any,
    groups: list[Any],
    *,
    flops: float,
    latency: float | None,
    table: LatencyTable | None,
    round_to: int,
    min_channels: int,
    scope: str,
) -> PlanCandidate:
    """The uniform wall plan of ``groups`` (then filled) inside ``flops`` of the MACs and,
    with ``latency``, inside that predicted latency ratio. Raises :class:`PlanError` for an
    unreachable budget (the message gives the smallest reachable fraction)."""
    rounding = ChannelRounding(groups, round_to, min_channels)
    budget = Budget(plan_cost, rounding)
    budget.require(flops)
    predictor = LatencyPredictor(table, rounding.group_ids) if table is not None else None
    also = None
    if latency is not None:
        if predictor is None:
            raise OnnxPruneError("--latency needs a latency table (internal: none was built)")
        predictor.require(latency, rounding.lows)

        def also(counts: np.ndarray) -> bool:
            return predictor.fraction(counts) <= latency + 1e-12

    keep = np.ones(len(groups))
    counts, u = budget.fit(keep, np.zeros_like(keep), flops, also)
    counts = budget.fill(counts, flops, also)
    kept = dict(zip(rounding.group_ids, (int(c) for c in counts), strict=True))
    ratio = None if predictor is None else predictor.fraction(counts)
    return PlanCandidate(scope, kept, budget.fraction(counts), ratio, max(u - 1.0, 0.0))


def choose_plan(
    analysis: Any,
    plan_cost: Any,
    *,
    flops: float,
    latency: float | None,
    table: LatencyTable | None,
    round_to: int,
    min_channels: int,
    scope: str = "auto",
    macs_budget: bool = True,
) -> PlanChoice:
    """The plan of ``scope``, or with ``auto`` the faster of ``all`` and ``interiors`` by the
    latency table (see module docstring). ``macs_budget``: the user gave ``--flops`` (then
    the faster plan wins even with ``--latency``; with ``--latency`` alone, the larger)."""
    if scope not in SCOPES:
        raise OnnxPruneError(f"unknown --plan-scope '{scope}'; use one of {', '.join(SCOPES)}")
    names = ["all", "interiors"] if scope == "auto" else [scope]
    candidates: list[PlanCandidate] = []
    errors: list[OnnxPruneError] = []
    seen: set[tuple[int, ...]] = set()
    why_one = ""
    for name in names:
        groups = scope_groups(analysis, name)
        ids = tuple(g.id for g in groups)
        if (not groups and name != "all") or ids in seen:
            why_one = "no group is tied across a residual Add: interiors are all groups"
            continue
        seen.add(ids)
        try:
            candidates.append(budget_plan(
                analysis, plan_cost, groups, flops=flops, latency=latency, table=table,
                round_to=round_to, min_channels=min_channels, scope=name,
            ))  # fmt: skip
        except OnnxPruneError as exc:  # e.g. interiors alone cannot reach the budget
            errors.append(exc)
            why_one = f"{name} alone cannot reach the budget"  # the error says by how much
    if not candidates:
        if errors:
            raise errors[0]
        raise OnnxPruneError("the model has no prunable channel group (`onnxprune groups`)")
    return _pick(candidates, scope, latency if not macs_budget else None, table, why_one)


def _pick(
    candidates: list[PlanCandidate],
    scope: str,
    latency: float | None,
    table: Any,
    why_one: str = "",
) -> PlanChoice:
    if len(candidates) == 1:
        only = candidates[0]
        why = f"plan scope '{only.scope}' as asked"
        if scope == "auto":
            why = f"pruned {only.scope} groups ({why_one or 'the only candidate'})"
        return PlanChoice(only, why, candidates)
    if table is None:
        chosen = next(c for c in candidates if c.scope == "all")
        return PlanChoice(
            chosen,
            "pruned all groups: no latency table for this runtime to compare them with block "
            "interiors (build one with `onnxprune bench MODEL --latency-table`, or use "
            "--latency)",
            candidates,
        )

    def described(c: PlanCandidate) -> str:
        return f"{c.scope} {c.latency_ratio:.3f} latency at {c.macs_fraction:.3f} MACs"

    if latency is None:
        chosen = min(candidates, key=lambda c: (c.latency_ratio, -c.macs_fraction))
        why = "predicted faster at the same MACs budget"
    else:
        # MACs within 0.01 count as equal: then the faster plan wins
        chosen = max(
            candidates, key=lambda c: (round(c.macs_fraction, 2), -(c.latency_ratio or 1.0))
        )
        why = "keeps more MACs (capacity) inside the same latency budget"
    others = "; ".join(described(c) for c in candidates if c is not chosen)
    reason = f"pruned {chosen.scope} groups: {why} ({described(chosen)}; {others})"
    return PlanChoice(chosen, reason, candidates)


__all__ = [
    "SCOPES",
    "PlanCandidate",
    "PlanChoice",
    "budget_plan",
    "choose_plan",
    "scope_groups",
]

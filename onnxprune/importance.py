"""Which channels to keep: channel importance scores and plans built from them.

Criteria (``channel_scores``), one score per channel of every group, higher = more important:

``l1``
    Sum of ``|w|`` over every weight element removed together with the channel: the
    producer's output rows (filter and bias), the consumers' input columns (every ``H*W``
    column of a flattened channel), and the per-channel parameters of channel-wise ops in
    the group (BatchNormalization scale and bias, Mul/Add constants, depthwise filters).
    BatchNormalization running mean/variance are statistics, not weights, and are skipped.
``l2``
    Euclidean norm of the same elements: ``sqrt(sum(w ** 2))``.
``bn``
    ``|gamma|`` of the BatchNormalization nodes whose channels belong to the group, summed
    over those nodes (Network Slimming). A group with no BN falls back to ``l1``; the
    fallback is reported in :attr:`ChannelScores.fallbacks` (:func:`score_channels`) and by
    the CLI.
``activation``
    Mean ``|activation|`` of each channel over calibration data, averaged over the group's
    tensors whose channel axis holds one position per channel (flattened tensors skipped),
    measured with onnxruntime by adding those tensors as extra graph outputs.

Plans:

Plans (kept counts follow the one rounding rule of :mod:`onnxprune.budget`, shared with the
search environment):

- :func:`plan_from_ratios` keeps ``(1 - R) * C`` channels per group rounded to the nearest
  multiple of ``lcm(round_to, block_count)`` (default ``round_to`` 8, because channel counts
  decide the speed of a pruned model more than MACs), never above ``C``, never below
  ``min_channels``; a group with no such multiple below ``C`` stays whole. With ``round_to``
  1 that removes ``round(R * C)`` channels. Within each block the highest-scoring channels
  are kept; ties go to the lower index.
- :func:`plan_for_flops` finds the smallest uniform ratio ``R`` whose plan keeps at most
  ``flops_fraction`` of the MACs (bisection; kept counts are monotone in ``R``), then fills
  the budget rounding left.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnxprune.budget import Budget, ChannelRounding
from onnxprune.errors import DataError, OnnxPruneError, PlanError
from onnxprune.plan import PruningPlan, model_sha256

if TYPE_CHECKING:
    from onnxprune.deps import ChannelGroup, DependencyAnalysis

CRITERIA = ("l1", "l2", "bn", "activation")

# --------------------------------------------------------------------------- scores


def channel_map(analysis: DependencyAnalysis, tensor: str) -> tuple[np.ndarray, np.ndarray]:
    """``(group_ids, channel_index)``, int64 ``[length of tensor's channel axis]``: the group
    and the channel number within it of every position (group -1: no group, e.g. a Pad's
    zero channels)."""
    public = getattr(analysis, "channel_map", None)
    if callable(public):
        group_ids, index = public(tensor)
        return np.asarray(group_ids), np.asarray(index)
    # Same data through the analysis' atom classes (deps/groups.py), until deps exposes it.
    classes = analysis._cls[analysis.state.chan[tensor].atoms]
    return analysis._class_group[classes], analysis._class_index[classes]


def _param_slices(analysis: DependencyAnalysis):
    """Yield ``(group id, channel index [n], op_type, slot, values [n, k])`` for every weight
    slice surgery removes with a channel: ``ParamSlice`` actions (producer rows, consumer
    columns, per-channel parameters) and grouped-Conv weight rows and columns."""
    from onnxprune.deps.state import GroupedConv, ParamSlice

    nodes = analysis.index.nodes
    for action in analysis.state.actions:
        if isinstance(action, ParamSlice):
            node = nodes[action.node]
            value = analysis.index.const(node.input[action.slot])
            if value is None or action.tensor not in analysis.state.chan:
                continue
            value = np.asarray(value, dtype=np.float64)
            if value.ndim == 0 or value.shape[action.axis] != len(
                analysis.state.chan[action.tensor].atoms
            ):
                continue
            rows = np.moveaxis(value, action.axis, 0).reshape(value.shape[action.axis], -1)
            group_ids, index = channel_map(analysis, action.tensor)
            for group_id in np.unique(group_ids[group_ids >= 0]).tolist():
                where = group_ids == group_id
                yield group_id, index[where], node.op_type, action.slot, rows[where]
        elif isinstance(action, GroupedConv):
            node = nodes[action.node]
            weight = analysis.index.const(node.input[1])
            if weight is None:
                continue
            weight = np.asarray(weight, dtype=np.float64)
            c_out, c_in_per_group = weight.shape[0], weight.shape[1]
            out_per_group = c_out // action.groups
            if action.output in analysis.state.chan:
                rows = weight.reshape(c_out, -1)
                group_ids, index = channel_map(analysis, action.output)
                for group_id in np.unique(group_ids[group_ids >= 0]).tolist():
                    where = group_ids == group_id
                    yield group_id, index[where], node.op_type, 1, rows[where]
            if action.input and action.input in analysis.state.chan:
                group_ids, index = channel_map(analysis, action.input)
                # input channel c feeds the out_per_group rows of block c // c_in_per_group
                columns = np.stack(
                    [
                        weight[
                            (c // c_in_per_group) * out_per_group : (c // c_in_per_group + 1)
                            * out_per_group,
                            c % c_in_per_group,
                        ].ravel()
                        for c in range(len(group_ids))
                    ]
                )
                for group_id in np.unique(group_ids[group_ids >= 0]).tolist():
                    where = group_ids == group_id
                    yield group_id, index[where], node.op_type, 1, columns[where]


_STATISTICS = {("BatchNormalization", 3), ("BatchNormalization", 4)}


def _weight_scores(analysis: DependencyAnalysis, squared: bool) -> dict[int, np.ndarray]:
    """Per group: sum over removed weight elements of ``|w|`` (or ``w**2``) per channel."""
    totals = {g.id: np.zeros(int(g.size)) for g in analysis.groups}
    for group_id, index, op_type, slot, values in _param_slices(analysis):
        if (op_type, slot) in _STATISTICS:
            continue
        per_position = np.square(values).sum(axis=1) if squared else np.abs(values).sum(axis=1)
        np.add.at(totals[group_id], index, per_position)
    return totals


def _bn_gammas(analysis: DependencyAnalysis) -> dict[int, np.ndarray]:
    """Per group with at least one BatchNormalization: summed ``|gamma|`` per channel."""
    out: dict[int, np.ndarray] = {}
    sizes = {g.id: int(g.size) for g in analysis.groups}
    for group_id, index, op_type, slot, values in _param_slices(analysis):
        if op_type == "BatchNormalization" and slot == 1:
            total = out.setdefault(group_id, np.zeros(sizes[group_id]))
            np.add.at(total, index, np.abs(values).sum(axis=1))
    return out


# Tensors measured per group for ``activation`` (evenly spread over its members): bounds the
# memory of the extra outputs on deep models.
_MAX_TENSORS_PER_GROUP = 4


def _activation_scores(analysis: DependencyAnalysis, data: Any) -> dict[int, np.ndarray]:
    """Mean |activation| per channel over ``data`` (a ``Dataset``, every model input fed by
    name, or a bare array for a single-input model), in chunks of 32 samples (of the fixed
    batch for a fixed-batch model, padding rows left out of the means)."""
    import onnxruntime as ort

    from onnxprune.data import as_dataset, input_specs

    if data is None:
        raise DataError("criterion 'activation' needs calibration data; pass --data")
    dataset = as_dataset(data, "calibration data")
    model = analysis.model
    specs = input_specs(model)
    tensors = _activation_tensors(analysis)
    axes = {tensor: axis for per_group in tensors.values() for tensor, axis in per_group}
    wanted = sorted(axes)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for tensor in wanted:
        if tensor not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=tensor))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    sums: dict[str, np.ndarray] = {}
    count = 0
    for real, feeds in dataset.batches(specs, 32):
        try:
            values = dict(zip(names, session.run(None, feeds), strict=True))
        except Exception as exc:
            shapes = ", ".join(f"'{k}' {list(v.shape)}" for k, v in feeds.items())
            raise DataError(
                f"running the model on the calibration data failed for inputs {shapes}: {exc}"
            ) from exc
        rows = len(next(iter(feeds.values())))
        for tensor in wanted:
            value = np.abs(values[tensor])
            if real < rows and value.ndim and value.shape[0] == rows:
                value = value[:real]  # zero rows padded to a fixed batch are not samples
            axis = axes[tensor]
            per_channel = value.sum(axis=tuple(a for a in range(value.ndim) if a != axis))
            per_channel = per_channel / (value.size / value.shape[axis])
            sums[tensor] = sums.get(tensor, 0) + per_channel * real
        count += real
    sizes = {g.id: int(g.size) for g in analysis.groups}
    scores: dict[int, np.ndarray] = {}
    for group_id, per_group in tensors.items():
        total = np.zeros(sizes[group_id])
        for tensor, _axis in per_group:
            group_ids, index = channel_map(analysis, tensor)
            where = group_ids == group_id
            np.add.at(total, index[where], sums[tensor][where] / count)
        scores[group_id] = total / max(len(per_group), 1)
    return scores


def _activation_tensors(analysis: DependencyAnalysis) -> dict[int, list[tuple[str, int]]]:
    """Per prunable group: up to ``_MAX_TENSORS_PER_GROUP`` (tensor, channel axis) of members
    that hold each channel exactly once."""
    out: dict[int, list[tuple[str, int]]] = {}
    for group in analysis.prunable_groups():
        members = [m for m in group.members if m.repeat == 1]
        if len(members) > _MAX_TENSORS_PER_GROUP:
            picks = np.linspace(0, len(members) - 1, _MAX_TENSORS_PER_GROUP).round().astype(int)
            members = [members[i] for i in sorted(set(picks.tolist()))]
        out[group.id] = [(m.tensor, m.axis) for m in members]
    return out


@dataclass
class ChannelScores:
    """Channel importance of every group, and how it was obtained.

    ``scores``: ``{group id: float64 [group.size]}``; ``criterion``: one of :data:`CRITERIA`;
    ``fallbacks``: prunable groups the ``bn`` criterion scored by ``l1`` (no
    BatchNormalization in the group), empty for the other criteria.
    """

    scores: dict[int, np.ndarray]
    criterion: str
    fallbacks: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        fallback = (
            f", groups {', '.join(map(str, self.fallbacks))} scored by l1 (no BatchNormalization)"
            if self.fallbacks
            else ""
        )
        return f"{self.criterion} scores of {len(self.scores)} groups{fallback}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "criterion": self.criterion,
            "scores": {str(k): v.tolist() for k, v in self.scores.items()},
            "fallbacks": list(self.fallbacks),
        }


def score_channels(
    analysis: DependencyAnalysis, criterion: str = "l1", data: Any = None
) -> ChannelScores:
    """Importance of every channel of every group, with the ``bn`` fallbacks.

    ``criterion`` is one of :data:`CRITERIA` (definitions in the module docstring);
    ``activation`` needs ``data`` (a ``Dataset``, one array per model input, or a float32
    array ``[N, ...model input]`` for a single-input model).
    Groups a criterion cannot score (e.g. no weights at all) get zeros.
    """
    if criterion not in CRITERIA:
        raise OnnxPruneError(
            f"unknown criterion '{criterion}'; choose one of {', '.join(CRITERIA)}"
        )
    sizes = {g.id: int(g.size) for g in analysis.groups}
    scores: dict[int, np.ndarray] = {}
    fallbacks: list[int] = []
    if criterion in ("l1", "l2", "bn"):
        weights = _weight_scores(analysis, squared=criterion == "l2")
        for group_id in sizes:
            total = weights[group_id]
            scores[group_id] = np.sqrt(total) if criterion == "l2" else total
        if criterion == "bn":
            gammas = _bn_gammas(analysis)
            prunable = {g.id for g in analysis.prunable_groups()}
            for group_id in sizes:
                if group_id in gammas:
                    scores[group_id] = np.asarray(gammas[group_id], dtype=np.float64)
                elif group_id in prunable:
                    fallbacks.append(group_id)
    else:
        measured = _activation_scores(analysis, data)
        for group_id, size in sizes.items():
            scores[group_id] = np.asarray(measured.get(group_id, np.zeros(size)), dtype=np.float64)
    return ChannelScores(scores, criterion, fallbacks)


def channel_scores(
    analysis: DependencyAnalysis, criterion: str = "l1", data: Any = None
) -> dict[int, np.ndarray]:
    """``{group id: float64 [group.size]}``: the scores of :func:`score_channels` alone."""
    return score_channels(analysis, criterion, data).scores


def _score_table(
    analysis: DependencyAnalysis,
    scores: Mapping[int, np.ndarray] | ChannelScores | None,
    criterion: str,
    data: Any,
) -> tuple[Mapping[int, np.ndarray], str]:
    """The score mapping a plan is cut by, and the label its meta records."""
    if scores is None:
        return channel_scores(analysis, criterion, data), criterion
    if isinstance(scores, ChannelScores):
        return scores.scores, scores.criterion
    return scores, "given scores"


# --------------------------------------------------------------------------- plans


def _top_indices(scores: np.ndarray, kept: int, blocks: int) -> list[int]:
    """Highest-scoring ``kept`` channels, ``kept / blocks`` from each equal block."""
    size = len(scores)
    block_size = size // blocks
    per_block = kept // blocks
    indices: list[int] = []
    for block in range(blocks):
        part = scores[block * block_size : (block + 1) * block_size]
        order = np.argsort(-part, kind="stable")[:per_block]
        indices += (np.sort(order) + block * block_size).tolist()
    return indices


def _resolve_ratios(
    analysis: DependencyAnalysis, prune_ratios: Mapping[int, float] | float
) -> dict[int, float]:
    prunable = {g.id: g for g in analysis.prunable_groups()}
    if isinstance(prune_ratios, Mapping):
        ratios = {int(k): float(v) for k, v in prune_ratios.items()}
        for group_id in ratios:
            if group_id not in prunable:
                known = {g.id: g for g in analysis.groups}
                if group_id in known:
                    raise PlanError(
                        f"group {group_id} is frozen ({known[group_id].frozen_reason}); "
                        "it cannot be given a prune ratio"
                    )
                raise PlanError(f"group {group_id} does not exist in this model")
    else:
        ratios = dict.fromkeys(prunable, float(prune_ratios))
    for group_id, ratio in ratios.items():
        if not 0.0 <= ratio < 1.0 or math.isnan(ratio):
            raise PlanError(
                f"prune ratio {ratio} for group {group_id} is outside [0, 1); "
                "it is the fraction of channels removed"
            )
    return ratios


def _rounding(
    analysis: DependencyAnalysis, group_ids: Iterable[int], round_to: int, min_channels: int
) -> ChannelRounding:
    """The one channel rounding (:mod:`onnxprune.budget`) over these prunable groups."""
    wanted = set(group_ids)
    groups = [g for g in analysis.prunable_groups() if g.id in wanted]
    return ChannelRounding(groups, round_to, min_channels)


def keep_counts_for_ratios(
    analysis: DependencyAnalysis,
    prune_ratios: Mapping[int, float] | float,
    round_to: int = 8,
    min_channels: int = 1,
) -> dict[int, int]:
    """Kept channels per prunable group for ``prune_ratios`` (no scores needed)."""
    ratios = _resolve_ratios(analysis, prune_ratios)
    rounding = _rounding(analysis, ratios, round_to, min_channels)
    counts = rounding.counts_for_prune(np.array([ratios[g] for g in rounding.group_ids]))
    return dict(zip(rounding.group_ids, counts.tolist(), strict=True))


def _blocks(group: ChannelGroup) -> int:
    return max(int(getattr(group, "block_count", 1) or 1), 1)


def plan_from_counts(
    analysis: DependencyAnalysis,
    counts: Mapping[int, int],
    scores: Mapping[int, np.ndarray],
    meta: dict[str, Any] | None = None,
) -> PruningPlan:
    """Keep the ``counts[g]`` best channels of each group by ``scores`` (equal per block)."""
    keep: dict[int, list[int]] = {}
    for group in analysis.prunable_groups():
        kept = counts.get(group.id, int(group.size))
        if kept >= group.size:
            continue
        keep[group.id] = _top_indices(np.asarray(scores[group.id]), kept, _blocks(group))
    return PruningPlan.from_keep(analysis, keep, meta=meta)


def plan_from_ratios(
    analysis: DependencyAnalysis,
    prune_ratios: Mapping[int, float] | float,
    criterion: str = "l1",
    round_to: int = 8,
    min_channels: int = 1,
    scores: Mapping[int, np.ndarray] | ChannelScores | None = None,
    data: Any = None,
) -> PruningPlan:
    """A plan removing about ``R * C`` channels of each group (rounded, see module doc).

    ``prune_ratios`` is one ratio for every prunable group or ``{group id: ratio}`` (other
    groups untouched); ratios are fractions *removed*, in ``[0, 1)``. ``scores`` overrides
    ``criterion`` (``{group id: [size]}``, or a :class:`ChannelScores` record, whose criterion
    goes into the plan's meta). Raises :class:`PlanError` for a frozen or unknown
    group or a ratio out of range.
    """
    counts = keep_counts_for_ratios(analysis, prune_ratios, round_to, min_channels)
    table, label = _score_table(analysis, scores, criterion, data)
    meta: dict[str, Any] = {
        "criterion": label,
        "prune_ratio": prune_ratios if not isinstance(prune_ratios, Mapping) else None,
        "round_to": round_to,
        "min_channels": min_channels,
    }
    if isinstance(prune_ratios, Mapping):
        meta["prune_ratios"] = {str(k): v for k, v in prune_ratios.items()}
    return plan_from_counts(analysis, counts, table, meta)


def plan_for_flops(
    analysis: DependencyAnalysis,
    flops_fraction: float,
    criterion: str = "l1",
    round_to: int = 8,
    min_channels: int = 1,
    scores: Mapping[int, np.ndarray] | ChannelScores | None = None,
    data: Any = None,
    plan_cost: Any = None,
    groups: list[int] | None = None,
    fill: bool = True,
) -> PruningPlan:
    """The uniform-ratio plan keeping at most ``flops_fraction`` of the MACs.

    The smallest uniform prune ratio ``R`` over the prunable groups (or only ``groups``) whose
    rounded kept counts keep ``PlanCost.macs <= flops_fraction * full MACs``: the wall of
    :meth:`onnxprune.budget.Budget.fit` from the unpruned model with a zero action, the same
    fit the search environment uses. With coarse rounding (``round_to`` 8 on 16..64-channel
    layers) that uniform plan can land far below the target (ResNet-56: 0.36 for a 0.5
    target), so with ``fill`` the budget left is then spent greedily
    (:meth:`~onnxprune.budget.Budget.fill`): the group whose kept share after one more
    rounding step is smallest grows by that step, as long as the MACs stay within the target.
    The realised fraction is in ``plan.meta['macs_fraction']``; it is always
    ``<= flops_fraction``. Raises :class:`PlanError` with the smallest reachable fraction
    (:meth:`~onnxprune.budget.Budget.require`) when even the minimum counts keep too much.
    """
    from onnxprune.cost import PlanCost

    if not 0.0 < flops_fraction <= 1.0:
        raise PlanError(f"--flops {flops_fraction} must be a fraction in (0, 1] of the MACs kept")
    if plan_cost is None:
        plan_cost = PlanCost(analysis.model, analysis.channel_exprs(), analysis.group_sizes())
    targets = [g.id for g in analysis.prunable_groups()]
    if groups is not None:
        targets = [g for g in targets if g in set(groups)]
    budget = Budget(plan_cost, _rounding(analysis, targets, round_to, min_channels))
    budget.require(flops_fraction)
    keep = np.ones(len(budget.rounding.groups))
    vector, u = budget.fit(keep, np.zeros_like(keep), flops_fraction)
    if fill:
        vector = budget.fill(vector, flops_fraction)
    counts = dict(zip(budget.rounding.group_ids, vector.tolist(), strict=True))
    table, label = _score_table(analysis, scores, criterion, data)
    meta = {
        "criterion": label,
        "flops_target": flops_fraction,
        "prune_ratio": round(max(u - 1.0, 0.0), 6),  # the wall's u > 1 is the uniform R + 1
        "round_to": round_to,
        "min_channels": min_channels,
        "macs_fraction": round(budget.fraction(vector), 6),
        "filled": fill,
    }
    return plan_from_counts(analysis, counts, table, meta=meta)


__all__ = [
    "CRITERIA",
    "ChannelScores",
    "channel_scores",
    "keep_counts_for_ratios",
    "model_sha256",
    "plan_for_flops",
    "plan_from_counts",
    "plan_from_ratios",
    "score_channels",
    "channel_map",
]

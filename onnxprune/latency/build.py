"""Building the latency table: every group timed in context, at the widths it may take.

Method (NetAdapt, Yang et al. 2018, sec. 3.2, measured "in context" as HALP, Shen et al.
2022, sec. 3.2, does for its latency LUT): for every timed group ``g`` and every width ``w``
the rounding allows below its full size, the model is pruned to ``g`` at ``w`` with every
other group full (:func:`onnxprune.surgery.apply_plan`) and timed *interleaved* with the
unpruned model (:func:`onnxprune.evaluate.interleaved_timings`, the gate's method: rounds of
one run each, order alternating), so machine noise hits both alike. The saving is relative:
``1 - q(variant) / q(full)`` with ``q`` the ``QUANTILE`` (the minimum) of each side's
rounds - the least disturbed runs, as the gate's fastest-run check reads them - times the
full model's time measured once at the start. A relative saving stays right when the
machine's load changes during the build (both sides of a round slow down alike).

Cost control, since a table must build in well under two minutes for a ResNet-56 at batch 32:

* **Shared rows, timed together.** Groups whose layers have the same shapes, attributes and
  input sizes (the nine blocks of a ResNet stage) have one *signature*
  (:func:`group_signature`, built from op types, attributes and tensor shapes only, never
  names) and form a class; the class is timed once per width with *all* its groups at that
  width, and each group is credited an equal share of the saving (marked ``*`` in the
  printed table for all but the first).
* **Few widths.** Only the widths the channel rounding allows (``--round-to 8``: onnxruntime's
  CPU convolutions work in blocks of 8 channels, so widths between two multiples of 8 cost
  the same as the larger one; docs/LATENCY.md has the measurement).
* **Short loops.** Each variant gets ``rounds`` rounds sized to about ``SECONDS_PER_VARIANT``
  of timing (at least ``MIN_ROUNDS``, at most ``MAX_ROUNDS``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import onnx

from onnxprune.budget import ChannelRounding
from onnxprune.errors import OnnxPruneError
from onnxprune.latency.table import GroupTiming, LatencyTable, monotone_savings

SECONDS_PER_VARIANT = 1.0
MIN_ROUNDS = 10
MAX_ROUNDS = 200
QUANTILE = 0  # the minimum: on a shared machine even the 20th percentile is disturbed
WARMUP_RUNS = 2


class VariantTimer(Protocol):
    """Times model variants against the unpruned model (a fake one in tests)."""

    rounds: int

    def base_ms(self) -> float:
        """Median time (ms) of the unpruned model."""
        ...

    def saved_ms(self, variant: onnx.ModelProto) -> float:
        """Time (ms) ``variant`` saves against the unpruned model."""
        ...


def batched_shapes(
    input_shapes: Mapping[str, Sequence[int]] | None, batch: int
) -> dict[str, list[int]] | None:
    """``input_shapes`` (the batch-1 sizes the MACs are priced at) with the first dim set
    to ``batch``: the size the table is timed at."""
    if not input_shapes:
        return None
    return {name: [int(batch), *(int(d) for d in dims[1:])] for name, dims in input_shapes.items()}


class SessionTimer:
    """The real timer: onnxruntime sessions with the deployment's provider, threads, batch
    and input; paired interleaved rounds against the unpruned model."""

    def __init__(
        self,
        model: onnx.ModelProto,
        batch: int = 1,
        device: str = "cpu",
        threads: int | None = 1,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        rounds: int | None = None,
    ) -> None:
        from onnxprune.evaluate import batch_unsupported, make_feed, make_session, time_run

        self.batch, self.device, self.threads = batch, device, threads
        self.input_shapes = batched_shapes(input_shapes, batch)
        self.base = make_session(model, device=device, threads=threads)
        reason = batch_unsupported(self.base, batch)
        if reason is not None:
            raise OnnxPruneError(
                f"the model has a {reason} input: its latency cannot be timed at --batch "
                f"{batch}; use --batch {reason.split()[-1]}"
            )
        self.base_feed = make_feed(self.base, batch, self.input_shapes, seed=0)
        for _ in range(WARMUP_RUNS):
            self.base.run(None, self.base_feed)
        first = float(np.median([time_run(self.base, self.base_feed) for _ in range(3)]))
        wanted = int(SECONDS_PER_VARIANT * 1000 / max(2 * first, 1e-6))
        self.rounds = rounds or min(max(wanted, MIN_ROUNDS), MAX_ROUNDS)
        times = [time_run(self.base, self.base_feed) for _ in range(2 * self.rounds)]
        self._reference_ms = float(np.percentile(times, QUANTILE))

    def base_ms(self) -> float:
        return self._reference_ms

    def saved_ms(self, variant: onnx.ModelProto) -> float:
        from onnxprune.evaluate import interleaved_timings, make_feed, make_session

        session = make_session(variant, device=self.device, threads=self.threads)
        feed = make_feed(session, self.batch, self.input_shapes, seed=0)
        for _ in range(WARMUP_RUNS):
            session.run(None, feed)
        base_ms, variant_ms = interleaved_timings(
            self.base, session, self.base_feed, feed, self.rounds
        )
        base_q = float(np.percentile(base_ms, QUANTILE))
        variant_q = float(np.percentile(variant_ms, QUANTILE))
        return (1.0 - variant_q / base_q) * self._reference_ms


def legal_widths(rounding: ChannelRounding, index: int) -> list[int]:
    """Every kept count the rounding allows group ``index`` (ascending, the full size last)."""
    low, unit, size = rounding.lows[index], rounding.units[index], rounding.sizes[index]
    widths = [int(w) for w in np.arange(low, size, unit)] + [int(size)]
    return sorted(set(widths))


def group_signature(analysis: Any, group: Any, shapes: Mapping[str, Any]) -> str:
    """What decides a group's latency row, from structure only: the op type, attributes and
    input/output shapes of its producers and consumers, and the shapes of its tensors."""
    nodes = {node.name: node for node in analysis.model.graph.node}
    parts: list[Any] = [int(group.size), int(group.block_count or 1)]
    for role, names in (("p", group.producers), ("c", group.consumers)):
        described = []
        for name in names:
            node = nodes.get(name)
            if node is None:
                continue
            attrs = sorted(
                (a.name, str(onnx.helper.get_attribute_value(a))) for a in node.attribute
            )
            ins = [shapes.get(t) for t in node.input]
            outs = [shapes.get(t) for t in node.output]
            described.append(repr((node.op_type, attrs, ins, outs)))
        parts.append((role, sorted(described)))
    members = sorted(repr((shapes.get(m.tensor), m.axis)) for m in group.members)
    parts.append(members)
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _variant(analysis: Any, groups: list[Any], width: int) -> onnx.ModelProto:
    """The model with every group of ``groups`` at ``width`` channels and all other groups
    full (which channels does not matter for time; the first of each block are kept)."""
    return _cut(analysis, groups, {g.id: width for g in groups})


def _cut(analysis: Any, groups: list[Any], kept: dict[int, int]) -> onnx.ModelProto:
    from onnxprune.importance import plan_from_counts
    from onnxprune.surgery import apply_plan

    scores = {g.id: -np.arange(g.size, dtype=np.float64) for g in groups}
    return apply_plan(analysis, plan_from_counts(analysis, kept, scores))


def calibration_plans(rounding: ChannelRounding) -> list[dict[int, int]]:
    """Plans pruning every group at once: all at the floor, and all at the legal width
    nearest half the size (distinct, and not the unpruned model)."""
    floors, halves = {}, {}
    for index, group_id in enumerate(rounding.group_ids):
        widths = legal_widths(rounding, index)
        floors[group_id] = widths[0]
        size = widths[-1]
        halves[group_id] = min(widths, key=lambda w: (abs(w - size / 2), w))
    plans = []
    for plan in (floors, halves):
        full = all(plan[g] == rounding.sizes[i] for i, g in enumerate(rounding.group_ids))
        if not full and plan not in plans:
            plans.append(plan)
    return plans


def calibrate(
    analysis: Any, rounding: ChannelRounding, table: LatencyTable, timer: VariantTimer,
    progress: Any = None,
) -> list[dict[str, float]]:  # fmt: skip
    """The calibration points: for each of :func:`calibration_plans`, the table's summed
    saving (rows less interactions, :meth:`~onnxprune.latency.LatencyTable.summed_ms`) and
    the measured one (the curve through them is
    :meth:`~onnxprune.latency.LatencyTable.calibrated`). It corrects what the sum misses:
    onnxruntime's kernels change speed with the whole network's widths, and groups meeting
    in layers of no timed pair."""
    groups = [analysis.group(g) for g in rounding.group_ids]
    points = []
    for kept in calibration_plans(rounding):
        summed = table.summed_ms(kept)
        measured = timer.saved_ms(_cut(analysis, groups, kept))
        points.append({"summed_ms": summed, "measured_ms": measured})
        if progress is not None:
            progress.advance(status="calibration: every group pruned at once")
    return points


def meetings(analysis: Any, rounding: ChannelRounding) -> list[tuple[int, int]]:
    """Pairs of rounding indices ``(i, j)``, ``i < j``, whose groups meet in one layer: a
    node that consumes one group's channels (input columns) and produces the other's
    (output rows), as a convolution between two searched groups does."""
    produced: dict[str, set[int]] = {}
    consumed: dict[str, set[int]] = {}
    for index, group_id in enumerate(rounding.group_ids):
        group = analysis.group(group_id)
        for name in group.producers:
            produced.setdefault(name, set()).add(index)
        for name in group.consumers:
            consumed.setdefault(name, set()).add(index)
    pairs = {
        (min(i, j), max(i, j))
        for name, outs in produced.items()
        for j in outs
        for i in consumed.get(name, ())
        if i != j
    }
    return sorted(pairs)


def _class_pairs(
    analysis: Any, rounding: ChannelRounding
) -> list[tuple[tuple[int, int], list[tuple[int, int]]]]:
    """The pairs of signature classes that meet (:func:`meetings`), each with its member
    pairs of rounding indices; pairs inside one class are left out (the class is timed
    jointly, so its row holds them), as are classes with a single width."""
    classes = signature_classes(analysis, rounding)
    of = {i: c for c, (members, widths, _) in enumerate(classes) if len(widths) > 1
          for i in members}  # fmt: skip
    grouped: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, j in meetings(analysis, rounding):
        if i in of and j in of and of[i] != of[j]:
            key = (min(of[i], of[j]), max(of[i], of[j]))
            grouped.setdefault(key, []).append((i, j))
    return sorted(grouped.items())


def _pair_points(rounding: ChannelRounding, a: int, b: int) -> list[tuple[int, int]]:
    """The widths a pair of classes (first members ``a``, ``b``) is timed at: both at their
    floor, and both at the legal width nearest half their size (one point when equal)."""

    def floor_and_half(index: int) -> tuple[int, int]:
        widths = legal_widths(rounding, index)
        return widths[0], min(widths[:-1], key=lambda w: (abs(w - widths[-1] / 2), w))

    return sorted(set(zip(floor_and_half(a), floor_and_half(b), strict=True)))


def fit_interactions(
    analysis: Any, rounding: ChannelRounding, rows: Sequence[GroupTiming], timer: VariantTimer,
    progress: Any = None,
) -> tuple[list[tuple[int, int, float]], int]:  # fmt: skip
    """The interactions of the table (:mod:`onnxprune.latency.table`): every pair of classes
    that meet is timed with both classes pruned at once, at matched widths
    (:func:`_pair_points`); the overcount ``sum of the rows - measured`` is fitted as
    ``kappa * sum over member pairs of saved_g saved_h`` by least squares, clipped at 0, and
    every ``kappa`` is scaled down so that no group's ``sum_h kappa_gh saved_h(floor)`` exceeds
    1 (the monotone prediction). Returns ``(interactions, variants timed)``."""
    by_index = list(rows)
    ids = rounding.group_ids
    classes = signature_classes(analysis, rounding)
    found: list[tuple[int, int, float]] = []
    timed = 0
    for (ca, cb), pairs in _class_pairs(analysis, rounding):
        members_a, members_b = classes[ca][0], classes[cb][0]
        both = [analysis.group(ids[i]) for i in (*members_a, *members_b)]
        xs, overs = [], []
        for wa, wb in _pair_points(rounding, members_a[0], members_b[0]):
            kept = {ids[i]: wa for i in members_a} | {ids[i]: wb for i in members_b}
            measured = timer.saved_ms(_cut(analysis, both, kept))
            timed += 1
            saved = {i: by_index[i].saved(kept[ids[i]]) for i in (*members_a, *members_b)}
            xs.append(sum(saved[i] * saved[j] for i, j in pairs))
            overs.append(sum(saved.values()) - measured)
            if progress is not None:
                progress.advance(status=f"interaction: {len(both)} groups at {wa} and {wb}")
        x, over = np.array(xs), np.array(overs)
        kappa = float(x @ over / (x @ x)) if float(x @ x) > 0 else 0.0
        found += [(ids[i], ids[j], max(kappa, 0.0)) for i, j in pairs]
    return _bounded(found, {row.group_id: row.saved_ms[0] for row in by_index}), timed


def _bounded(
    found: list[tuple[int, int, float]], floor_saving: Mapping[int, float]
) -> list[tuple[int, int, float]]:
    """``found`` with each ``kappa`` divided by the larger of 1 and both groups' load
    ``sum_h kappa_gh saved_h(floor)``: afterwards no load exceeds 1."""
    load: dict[int, float] = {}
    for a, b, kappa in found:
        load[a] = load.get(a, 0.0) + kappa * floor_saving[b]
        load[b] = load.get(b, 0.0) + kappa * floor_saving[a]
    return [(a, b, k / max(1.0, load[a], load[b])) for a, b, k in found if k > 0]


def signature_classes(
    analysis: Any, rounding: ChannelRounding
) -> list[tuple[list[int], list[int], str]]:
    """Groups of ``rounding`` with one signature and the same legal widths, in first-seen
    order: ``[(rounding indices, widths, signature)]``."""
    from onnxprune.model import infer_model_shapes, tensor_shapes

    shapes = tensor_shapes(infer_model_shapes(analysis.model))
    classes: dict[tuple[str, tuple[int, ...]], list[int]] = {}
    for index, group_id in enumerate(rounding.group_ids):
        group = analysis.group(group_id)
        if group is None:
            raise OnnxPruneError(f"group {group_id} is not in the model's channel analysis")
        widths = tuple(legal_widths(rounding, index))
        classes.setdefault((group_signature(analysis, group, shapes), widths), []).append(index)
    return [(members, list(widths), sig) for (sig, widths), members in classes.items()]


def build_table(
    analysis: Any,
    rounding: ChannelRounding,
    timer: VariantTimer,
    key: dict[str, Any],
    progress: Any = None,
) -> LatencyTable:
    """Time every class of equal groups of ``rounding`` at its legal widths (module
    docstring): all ``n`` groups of a class at width ``w`` together, each credited ``1/n``
    of the saving - ``n`` times the signal of one group against the same timing noise (on
    a loaded 2-core machine one ResNet block's saving is smaller than the noise of its
    timing), and the additivity inside the class is measured rather than assumed.

    ``progress`` (optional) gets ``advance()`` per timed variant; its total is
    :func:`count_variants`. Raises :class:`OnnxPruneError` for a group the analysis lacks.
    """
    started = time.perf_counter()
    rows: dict[int, GroupTiming] = {}
    timed = 0
    for members, widths, signature in signature_classes(analysis, rounding):
        groups = [analysis.group(rounding.group_ids[i]) for i in members]
        saved = []
        for width in widths[:-1]:
            saved.append(timer.saved_ms(_variant(analysis, groups, width)) / len(groups))
            timed += 1
            if progress is not None:
                progress.advance(status=f"{len(groups)} group(s) at {width}/{groups[0].size}")
        fitted = monotone_savings([*saved, 0.0])
        for position, group in enumerate(groups):
            rows[group.id] = GroupTiming(group.id, group.size, widths, list(fitted), signature,
                                         timed=position == 0)  # fmt: skip
    ordered = [rows[g] for g in rounding.group_ids]
    interactions, paired = fit_interactions(analysis, rounding, ordered, timer, progress)
    table = LatencyTable(key=key, base_ms=timer.base_ms(), groups=ordered,
                         interactions=interactions, rounds=timer.rounds)  # fmt: skip
    if _classes_with_variants(ordered) >= 2:  # one class: its joint timing is the truth
        table.calibration = calibrate(analysis, rounding, table, timer, progress)
    table.build_seconds = time.perf_counter() - started
    table.variants_timed = timed + paired + len(table.calibration)
    return table


def _classes_with_variants(rows: Sequence[GroupTiming]) -> int:
    return sum(1 for row in rows if row.timed and len(row.widths) > 1)


def count_variants(analysis: Any, rounding: ChannelRounding) -> int:
    """How many variants :func:`build_table` will time (for a progress bar's total)."""
    classes = signature_classes(analysis, rounding)
    total = sum(len(widths) - 1 for _, widths, _ in classes)
    for (ca, cb), _ in _class_pairs(analysis, rounding):
        total += len(_pair_points(rounding, classes[ca][0][0], classes[cb][0][0]))
    if sum(1 for _, widths, _ in classes if len(widths) > 1) >= 2:
        total += len(calibration_plans(rounding))
    return total


__all__ = [
    "SessionTimer",
    "signature_classes",
    "VariantTimer",
    "batched_shapes",
    "build_table",
    "calibrate",
    "calibration_plans",
    "count_variants",
    "fit_interactions",
    "group_signature",
    "legal_widths",
    "meetings",
]

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
    analysis: Any, rounding: ChannelRounding, rows: Sequence[GroupTiming], timer: VariantTimer,
    progress: Any = None,
) -> list[dict[str, float]]:  # fmt: skip
    """The calibration points: for each of :func:`calibration_plans`, the rows' summed
    saving and the measured one (the curve through them is
    :meth:`~onnxprune.latency.LatencyTable.calibrated`). It corrects what the sum over
    classes misses: the savings of groups meeting in one layer do not add up, and
    onnxruntime's kernels change speed with the whole network's widths."""
    by_id = {row.group_id: row for row in rows}
    groups = [analysis.group(g) for g in rounding.group_ids]
    points = []
    for kept in calibration_plans(rounding):
        summed = sum(by_id[g].saved(c) for g, c in kept.items())
        measured = timer.saved_ms(_cut(analysis, groups, kept))
        points.append({"summed_ms": summed, "measured_ms": measured})
        if progress is not None:
            progress.advance(status="calibration: every group pruned at once")
    return points


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
    points: list[dict[str, float]] = []
    if _classes_with_variants(ordered) >= 2:  # one class: its joint timing is the truth
        points = calibrate(analysis, rounding, ordered, timer, progress)
    return LatencyTable(
        key=key,
        base_ms=timer.base_ms(),
        groups=ordered,
        calibration=points,
        build_seconds=time.perf_counter() - started,
        variants_timed=timed + len(points),
        rounds=timer.rounds,
    )


def _classes_with_variants(rows: Sequence[GroupTiming]) -> int:
    return sum(1 for row in rows if row.timed and len(row.widths) > 1)


def count_variants(analysis: Any, rounding: ChannelRounding) -> int:
    """How many variants :func:`build_table` will time (for a progress bar's total)."""
    classes = signature_classes(analysis, rounding)
    total = sum(len(widths) - 1 for _, widths, _ in classes)
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
    "group_signature",
    "legal_widths",
]

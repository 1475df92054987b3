"""Library-level verbs over the pipeline stages: prune, recover, compare.

- :func:`prune_model` -- a model and one of a uniform ratio, a MACs budget or a plan ->
  :class:`PruneResult` (the plan, the pruned model, costs before and after, the ``bn``
  fallbacks, notes). ``onnxprune prune`` is this call plus saving and printing.
- :func:`recover_model` -- the one recovery dispatch: ``none``, ``ls`` (least squares),
  ``finetune`` (distillation) or ``ls+finetune`` -> :class:`RecoverResult` with ``.model``.
  ``onnxprune recover`` and ``benchmarks/recover_cifar.py`` use it; its defaults are those of
  :func:`~onnxprune.recover.lsq.least_squares_recover` and
  :func:`~onnxprune.recover.finetune.finetune`, so ``recover_model(pruned, reference, data,
  method).model`` is what the search's final step computes.
- :func:`compare` -- accuracy / fidelity of an original and a pruned model on the same data
  (:mod:`onnxprune.evaluate`), plus p50 latency at batch 1 and 32 when asked ->
  :class:`Comparison`. Either side may be an open onnxruntime session.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxprune.errors import InternalError, OnnxPruneError

RECOVERY_METHODS = ("none", "ls", "finetune", "ls+finetune")
#: What a prune prints for MACs and params when the input size is dynamic and not given.
COST_UNAVAILABLE = "n/a (dynamic input size; pass --input-shape)"

ModelLike = onnx.ModelProto | str | os.PathLike[str]


# --------------------------------------------------------------------------------------------
# prune


@dataclass
class PruneResult:
    """What :func:`prune_model` made. Costs are :class:`~onnxprune.cost.CostReport` records,
    ``None`` when the input size is dynamic and not given (a ratio or plan prune needs no
    cost); ``input_shapes`` is the input size the costs are for (declared dims otherwise,
    ``None`` for a dynamic one)."""

    plan: Any
    model: onnx.ModelProto
    original_cost: Any
    pruned_cost: Any
    how: str
    groups: int
    prunable_groups: int
    groups_pruned: int
    channels_removed: int
    fallbacks: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    input_shapes: dict[str, list[int | None]] = field(default_factory=dict)

    @staticmethod
    def _ratio(before: int, after: int) -> float:
        return after / before if before else 1.0

    def _costs(self) -> dict[str, Any]:
        before, after = self.original_cost, self.pruned_cost
        if before is None or after is None:
            return {k: None for k in ("macs_before", "macs_after", "macs_ratio")} | {
                "params_before": None, "params_after": None, "params_ratio": None,
                "cost_unavailable": COST_UNAVAILABLE,
            }  # fmt: skip
        return {
            "macs_before": before.macs,
            "macs_after": after.macs,
            "macs_ratio": self._ratio(before.macs, after.macs),
            "params_before": before.params,
            "params_after": after.params,
            "params_ratio": self._ratio(before.params, after.params),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.meta,
            "groups": self.groups,
            "prunable_groups": self.prunable_groups,
            "groups_pruned": self.groups_pruned,
            "channels_removed": self.channels_removed,
            "input_shapes": self.input_shapes,
            **self._costs(),
            "bn_fallback_groups": list(self.fallbacks),
        }

    def __str__(self) -> str:
        def change(before: int, after: int) -> str:
            if not before:
                return f"{before} -> {after}"
            return f"{before:,} -> {after:,} ({after / before:.4f})"

        from onnxprune.model import format_shapes

        before, after = self.original_cost, self.pruned_cost
        lines = [
            f"plan     {self.how}",
            f"groups   {self.groups_pruned} of {self.prunable_groups} prunable groups "
            f"thinned, {self.channels_removed} channels removed",
            f"input    {format_shapes(self.input_shapes)}",
        ]
        if before is None or after is None:
            lines += [f"MACs     {COST_UNAVAILABLE}", f"params   {COST_UNAVAILABLE}"]
        else:
            lines += [
                f"MACs     {change(before.macs, after.macs)}",
                f"params   {change(before.params, after.params)}",
            ]
        return "\n".join(lines)


def _prune_checks(
    ratio: float | None,
    flops: float | None,
    plan: Any,
    criterion: str,
    data: Any,
    latency: float | None = None,
) -> None:
    budget = flops if latency is None else (flops or 1.0)
    if sum(v is not None for v in (ratio, budget, plan)) != 1:
        raise OnnxPruneError(
            "give exactly one of --ratio, --flops or --plan (--latency may replace or join --flops)"
        )
    if flops is not None and not 0.0 < flops <= 1.0:
        raise OnnxPruneError(f"--flops {flops} must be a fraction in (0, 1] of the MACs kept")
    if latency is not None and not 0.0 < latency <= 1.0:
        raise OnnxPruneError(
            f"--latency {latency} must be a fraction in (0, 1] of the original latency"
        )
    if criterion == "activation" and data is None and plan is None:
        raise OnnxPruneError("--criterion activation needs calibration data: add --data PATH")
    if ratio is not None and not 0.0 <= ratio < 1.0:
        raise OnnxPruneError(f"--ratio {ratio} must be in [0, 1): the fraction of channels removed")


def _budget_plan(
    analysis: Any, scores: Any, flops: float | None, criterion: str, round_to: int,
    min_channels: int, speed: Any,
) -> Any:  # fmt: skip
    """The plan under the MACs and/or latency budget, of the scope the latency table
    predicts faster (:func:`onnxprune.latency.plans.choose_plan`)."""
    from onnxprune.budget import ChannelRounding
    from onnxprune.cost import PlanCost
    from onnxprune.importance import plan_from_counts
    from onnxprune.latency.cache import latency_table, load_cached, table_key
    from onnxprune.latency.plans import choose_plan

    plan_cost = PlanCost(analysis.model, analysis.channel_exprs(), analysis.group_sizes())
    rounding = ChannelRounding(analysis.prunable_groups(), round_to, min_channels)
    batch, device, threads = speed.batch, speed.device, speed.threads
    shapes = dict(plan_cost.input_shapes)
    table = None
    if speed.latency is not None or speed.scope == "auto":
        if speed.latency is not None:
            table = latency_table(
                analysis, rounding, batch=batch, device=device, threads=threads,
                input_shapes=shapes, timer=speed.timer, show_progress=speed.show_progress,
            )  # fmt: skip
        else:
            table = load_cached(table_key(analysis, rounding, batch, device, threads, shapes))
    target = 1.0 if flops is None else flops
    choice = choose_plan(
        analysis, plan_cost, flops=target, latency=speed.latency, table=table,
        round_to=round_to, min_channels=min_channels, scope=speed.scope,
        macs_budget=flops is not None,
    )  # fmt: skip
    chosen = choice.chosen
    meta = {
        "criterion": criterion,
        "flops_target": flops,
        "latency_target": speed.latency,
        "prune_ratio": round(chosen.prune_ratio, 6),
        "round_to": round_to,
        "min_channels": min_channels,
        "macs_fraction": round(chosen.macs_fraction, 6),
        "predicted_latency_ratio": chosen.latency_ratio,
        "filled": True,
        "plan_choice": choice.to_dict(),
        "latency_table": None if table is None else {
            "batch": batch, "path": table.path, "cached": table.cached,
            "build_seconds": round(table.build_seconds, 3), "base_ms": table.base_ms,
        },
    }  # fmt: skip
    table_scores = getattr(scores, "scores", scores)  # a ChannelScores record or a mapping
    meta["criterion"] = getattr(scores, "criterion", criterion)
    return plan_from_counts(analysis, chosen.kept, table_scores, meta=meta)


@dataclass
class SpeedOptions:
    """How ``prune --flops`` / ``--latency`` consult the latency model: the latency target
    (None: MACs only), the runtime it is timed on (batch, device, threads), the plan scope
    (``auto`` | ``all`` | ``interiors``, :mod:`onnxprune.latency.plans`) and a timer for
    tests."""

    latency: float | None = None
    batch: int = 1
    device: str = "cpu"
    threads: int | None = 1
    scope: str = "auto"
    timer: Any = None
    show_progress: bool = True


def _make_plan(
    analysis: Any,
    ratio: float | None,
    flops: float | None,
    plan: Any,
    criterion: str,
    round_to: int,
    min_channels: int,
    data: Any,
    speed: SpeedOptions | None = None,
) -> tuple[Any, Any]:
    """``(plan, ChannelScores or None)`` for the one mode given."""
    from onnxprune import importance
    from onnxprune.plan import PruningPlan

    if plan is not None:
        loaded = plan if isinstance(plan, PruningPlan) else PruningPlan.load(plan, analysis)
        return loaded, None
    scores = importance.score_channels(analysis, criterion, data)
    if ratio is not None:
        made = importance.plan_from_ratios(
            analysis, ratio, criterion, round_to, min_channels, scores=scores
        )
    elif speed is not None and (speed.latency is not None or flops is not None):
        made = _budget_plan(analysis, scores, flops, criterion, round_to, min_channels, speed)
    elif flops is not None:
        made = importance.plan_for_flops(
            analysis, flops, criterion, round_to, min_channels, scores=scores
        )
    else:
        raise InternalError("prune mode checked by _prune_checks: one of ratio, flops, plan")
    return made, scores


def prune_model(
    model: ModelLike,
    *,
    ratio: float | None = None,
    flops: float | None = None,
    plan: Any = None,
    criterion: str = "l1",
    round_to: int = 8,
    min_channels: int = 1,
    data: Any = None,
    calib_samples: int = 256,
    input_shapes: Any = None,
    shapes_source: str = "--input-shape",
    speed: SpeedOptions | None = None,
) -> PruneResult:
    """Prune ``model`` (a ``ModelProto`` or a path) by exactly one of:

    - ``ratio``: remove ``round(R * C)`` channels of every prunable group (then rounded);
    - ``flops``: keep at most this fraction of the MACs (uniform ratio + budget fill);
    - ``plan``: a :class:`~onnxprune.plan.PruningPlan` or a plan JSON path.

    ``criterion`` ranks channels (``activation`` needs ``data``: a ``Dataset`` or an array of
    model inputs, of which a seeded ``calib_samples`` are used); ``round_to`` and
    ``min_channels`` are the rounding of :mod:`onnxprune.budget`. The pruned model passes
    ``onnx.checker``. ``input_shapes`` (``{input: dims}``, see
    :func:`~onnxprune.model.fix_input_shapes`) fixes dynamic input dims first: the costs
    are then for that size, and shape computations are folded for it (the pruned model
    runs at that size; ``shapes_source`` names them in errors). ``speed``
    (:class:`SpeedOptions`) adds a latency budget (``--latency``, combinable with ``flops``)
    and the choice between pruning all groups and block interiors only; without it
    ``flops`` prunes all groups (:func:`onnxprune.importance.plan_for_flops`). Without it, ``ratio`` and ``plan`` work on any model and the costs
    are ``None`` when the size is dynamic; ``flops`` needs a known size. Raises
    :class:`OnnxPruneError` for an impossible request.
    """
    from onnxprune.data import as_dataset
    from onnxprune.deps import analyze
    from onnxprune.model import check_model, fix_input_shapes, fixed_input_note, load_model
    from onnxprune.surgery import apply_plan

    _prune_checks(ratio, flops, plan, criterion, data, speed.latency if speed else None)
    name = None if isinstance(model, onnx.ModelProto) else str(model)
    loaded = model if isinstance(model, onnx.ModelProto) else load_model(model)
    fixed = fix_input_shapes(loaded, input_shapes, source=shapes_source)
    analysis = analyze(fixed)
    notes = [note] if (note := fixed_input_note(loaded, fixed)) is not None else []
    if not analysis.prunable_groups() and plan is None:
        where = f"'{name}'" if name else "the model"
        notes.append(
            f"{where} has no prunable channel group; `onnxprune groups {name or 'MODEL'}` shows why"
        )
    calib = None
    if criterion == "activation" and plan is None:
        calib = as_dataset(data, "calibration data").sample(calib_samples)
    chosen, scores = _make_plan(
        analysis, ratio, flops, plan, criterion, round_to, min_channels, calib, speed
    )
    pruned = apply_plan(analysis, chosen)
    check_model(pruned)
    sizes = analysis.group_sizes()
    thinned = [g for g, keep in chosen.keep.items() if len(keep) < sizes[g]]
    if plan is not None:
        how = f"plan file {plan}" if not hasattr(plan, "keep") else "given plan"
    else:
        how = f"uniform ratio {chosen.meta.get('prune_ratio')}"
        choice = chosen.meta.get("plan_choice")
        if choice is not None:
            notes.append(f"plan: {choice['reason']}")
        if speed is not None and speed.latency is not None:
            how = (
                f"latency target {speed.latency} (predicted "
                f"{chosen.meta['predicted_latency_ratio']:.3f})"
                + (f", MACs target {flops}" if flops is not None else "")
                + f": {how} + budget fill"
            )
        elif flops is not None:
            how = f"MACs target {flops}: {how}" + (
                " + budget fill" if chosen.meta.get("filled") else ""
            )
        how += f" ({criterion}, round-to {round_to}, min-channels {min_channels})"
    original_cost, pruned_cost, shapes = _costs(analysis.model, pruned)
    return PruneResult(
        plan=chosen,
        model=pruned,
        original_cost=original_cost,
        pruned_cost=pruned_cost,
        input_shapes=shapes,
        how=how,
        groups=len(analysis.groups),
        prunable_groups=len(analysis.prunable_groups()),
        groups_pruned=len(thinned),
        channels_removed=sum(sizes[g] - len(chosen.keep[g]) for g in thinned),
        fallbacks=list(scores.fallbacks) if scores is not None else [],
        notes=notes,
    )


def _costs(original: onnx.ModelProto, pruned: onnx.ModelProto) -> tuple[Any, Any, dict]:
    """``(original cost, pruned cost, input shapes they are for)``; both costs ``None`` when
    the input size is dynamic (then the shapes hold ``None`` for the dynamic dims)."""
    from onnxprune.cost import DynamicInputError, model_cost
    from onnxprune.model import input_shapes

    try:
        before = model_cost(original)
    except DynamicInputError:
        declared = input_shapes(original)
        shapes = {k: [d if isinstance(d, int) else None for d in v] for k, v in declared.items()}
        return None, None, shapes
    return before, model_cost(pruned), dict(before.input_shapes)


# --------------------------------------------------------------------------------------------
# recover


@dataclass
class RecoverResult:
    """What :func:`recover_model` did: the recovered ``model`` (same structure as the pruned
    one) and the record of each phase that ran."""

    model: onnx.ModelProto
    method: str
    least_squares: Any = None
    finetune: Any = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"method": self.method, "seconds": self.seconds}
        if self.least_squares is not None:
            record["least_squares"] = self.least_squares.to_dict()
        if self.finetune is not None:
            record["finetune"] = self.finetune.to_dict()
        return record

    def __str__(self) -> str:
        lines = [f"recovery '{self.method}' in {self.seconds:.1f} s"]
        if self.least_squares is not None:
            lines.append(str(self.least_squares).splitlines()[0])
        if self.finetune is not None:
            lines.append(str(self.finetune))
        return "\n".join(lines)


def recover_model(
    pruned: onnx.ModelProto,
    reference: onnx.ModelProto,
    data: Any,
    method: str = "ls",
    *,
    ls_images: int = 1000,
    epochs: float = 1.0,
    lr: float = 3e-4,
    batch: int = 64,
    optimizer: str = "adam",
    bn: str = "train",
    augment: bool = True,
    minutes: float | None = None,
    seed: int = 0,
    threads: int | None = None,
    activation_memory: int | None = None,
    spill_dir: Any = None,
    show_progress: bool = False,
    report: Callable[[str], None] | None = None,
) -> RecoverResult:
    """Recover ``pruned``'s accuracy from the unpruned ``reference`` on ``data`` (a
    ``Dataset`` or an array of model inputs).

    ``method`` is one of :data:`RECOVERY_METHODS`: ``ls`` refits each layer whose inputs were
    pruned (:func:`~onnxprune.recover.lsq.reconstruct`, on a seeded ``ls_images`` subset;
    layers are paired with the reference by structure and weights, so the reference may come
    from another exporter; it raises :class:`OnnxPruneError` naming a layer it cannot pair),
    ``finetune`` distils the reference into the pruned graph
    (:func:`~onnxprune.recover.finetune.distill`: ``epochs``, ``lr``, ``batch``,
    ``optimizer``, ``bn``, ``augment``, ``minutes`` of wall clock), ``ls+finetune`` both in
    that order. Weights in ``Constant`` nodes are recovered like initializers, and a model with
    a fixed batch dimension runs in chunks of that batch. Both phases run torch on ``threads``
    intra-op threads, 1 when None (:func:`~onnxprune.recover.batching.recovery_thread_count`).
    Least squares keeps ``activation_memory`` bytes of activations in RAM (None: its default)
    and spills the rest under ``spill_dir`` (:mod:`onnxprune.recover.stream`). ``show_progress`` draws a progress
    bar per phase on stderr; ``report`` gets a summary after each phase (for ``ls`` also one
    line per pruned-input layer it left as it was).
    """
    from onnxprune.progress import progress

    if method not in RECOVERY_METHODS:
        raise OnnxPruneError(
            f"recovery method '{method}' is unknown; choose one of {', '.join(RECOVERY_METHODS)}"
        )
    start = time.perf_counter()
    result = RecoverResult(model=pruned, method=method)
    if method in ("ls", "ls+finetune"):
        from onnxprune.recover.lsq import layers_to_refit, reconstruct
        from onnxprune.recover.stream import DEFAULT_ACTIVATION_MEMORY

        memory = DEFAULT_ACTIVATION_MEMORY if activation_memory is None else activation_memory
        total = len(layers_to_refit(pruned, reference)) if show_progress else None
        with progress("least squares", total, enabled=show_progress) as task:
            result.least_squares = reconstruct(
                result.model, reference, data, max_images=ls_images, seed=seed, threads=threads,
                activation_memory=memory, spill_dir=spill_dir, on_layer=lambda fit: task.advance(1, status=fit.node),
            )  # fmt: skip
        result.model = result.least_squares.model
        if report is not None:  # the summary, and each pruned-input layer left as it was
            lines = str(result.least_squares).splitlines()
            report("\n".join([lines[0], *(x for x in lines[1:] if "not refit:" in x)]))
    if method in ("finetune", "ls+finetune"):
        from onnxprune.recover.finetune import distill

        with progress("fine-tune", None, enabled=show_progress) as task:
            result.finetune = distill(
                result.model, reference, data, epochs=epochs, lr=lr, batch=batch,
                optimizer=optimizer, bn=bn, augment=augment, max_minutes=minutes, seed=seed,
                threads=threads, on_step=lambda step, total, loss: task.advance(1, status=f"loss {loss:.3f}"),
            )  # fmt: skip
        result.model = result.finetune.model
        if report is not None:
            report(str(result.finetune))
    result.seconds = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------------------------
# compare


@dataclass
class Comparison:
    """Both models on the same ``samples``: ``original`` scored against the labels, ``pruned``
    against the labels and against the original's outputs (agreement, KL, SNR, cosine, ...;
    :func:`onnxprune.evaluate.fidelity_from_outputs`); ``metric`` is the headline figure.

    Latency per batch size (1 and 32), measured interleaved with the gate's method: p50 in ms
    of each model, ``latency_ratio[b] = (ratio, low, high)`` (median ratio pruned/original and
    its 95 % paired-bootstrap interval). A batch size the model cannot run has ``None`` and
    ``latency_note[b]`` says why (``"fixed batch 1"``). Empty when not measured.
    """

    original: Any
    pruned: Any
    samples: int
    labelled: bool
    metric: str = "agreement"
    original_latency_ms: dict[int, float | None] = field(default_factory=dict)
    pruned_latency_ms: dict[int, float | None] = field(default_factory=dict)
    latency_ratio: dict[int, tuple[float, float, float] | None] = field(default_factory=dict)
    latency_note: dict[int, str] = field(default_factory=dict)
    original_logits: list[np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def original_accuracy(self) -> float | None:
        """Top-1 with labels; for agreement 100 (the original agrees with itself); for the
        other fidelity figures None (the original is the reference they are measured to)."""
        if self.metric == "top1":
            return self.original.top1
        return 100.0 if self.metric in ("agreement", "timestep") else None

    @property
    def pruned_accuracy(self) -> float | None:
        """The pruned model's headline figure (``metric``)."""
        return self.pruned.value(self.metric)

    def to_dict(self) -> dict[str, Any]:
        def ratio(batch: int) -> dict[str, float] | None:
            value = self.latency_ratio.get(batch)
            return (
                None if value is None else dict(zip(("ratio", "low", "high"), value, strict=True))
            )

        return {
            "samples": self.samples,
            "labelled": self.labelled,
            "metric": self.metric,
            "original": self.original.to_dict(),
            "pruned": self.pruned.to_dict(),
            "original_accuracy": self.original_accuracy,
            "pruned_accuracy": self.pruned_accuracy,
            "original_latency_ms": {str(b): v for b, v in self.original_latency_ms.items()},
            "pruned_latency_ms": {str(b): v for b, v in self.pruned_latency_ms.items()},
            "latency_ratio": {str(b): ratio(b) for b in self.pruned_latency_ms},
            "latency_note": {str(b): v for b, v in self.latency_note.items()},
        }

    def __str__(self) -> str:
        lines = [f"original: {self.original}", f"pruned:   {self.pruned}"]
        for batch, ms in self.pruned_latency_ms.items():
            base = self.original_latency_ms.get(batch)
            interval = self.latency_ratio.get(batch)
            if ms is None or base is None or interval is None:
                lines.append(f"latency b{batch}: n/a ({self.latency_note.get(batch, 'not run')})")
                continue
            lines.append(
                f"latency b{batch}: {base:.3f} ms -> {ms:.3f} ms ({interval[0]:.3f}x "
                f"[{interval[1]:.3f}, {interval[2]:.3f}], interleaved)"
            )
        return "\n".join(lines)


def _session(model: Any, device: str, threads: int | None) -> Any:
    import onnxruntime as ort

    from onnxprune.evaluate import make_session

    if isinstance(model, ort.InferenceSession):
        return model
    return make_session(model, device=device, threads=threads)


def _interleaved_latency(
    result: Comparison,
    sessions: tuple[Any, Any],
    sample_shapes: Mapping[str, tuple[int, ...]],
    runs: int,
) -> None:
    """Time both sessions interleaved (the gate's method) at batch 1 (``runs`` rounds) and
    32 (``max(5, runs // 2)``), on random input of the data's sample shape for every input
    (``{input: sample dims}``); a batch size either model cannot run is recorded as ``None``
    with the reason."""
    from onnxprune.evaluate import (
        batch_unsupported,
        interleaved_timings,
        make_feed,
        ratio_interval,
    )

    base, cand = sessions
    for batch, rounds in ((1, runs), (32, max(5, runs // 2))):
        reason = batch_unsupported(base, batch) or batch_unsupported(cand, batch)
        if reason is not None:
            result.original_latency_ms[batch] = result.pruned_latency_ms[batch] = None
            result.latency_ratio[batch] = None
            result.latency_note[batch] = reason
            continue
        feed = make_feed(base, batch, samples=sample_shapes)
        interleaved_timings(base, cand, feed, feed, max(2, rounds // 5))  # warm-up
        base_ms, cand_ms = interleaved_timings(base, cand, feed, feed, rounds)
        result.original_latency_ms[batch] = float(np.median(base_ms))
        result.pruned_latency_ms[batch] = float(np.median(cand_ms))
        result.latency_ratio[batch] = ratio_interval(base_ms, cand_ms)


def compare(
    original: Any,
    pruned: Any,
    data: Any,
    *,
    original_logits: Any = None,
    batch_size: int = 256,
    latency_runs: int = 0,
    device: str = "cpu",
    threads: int | None = None,
    metric: str | None = None,
) -> Comparison:
    """Accuracy / fidelity of ``original`` and ``pruned`` on ``data`` (a ``Dataset``).

    Each model is a ``ModelProto``, a path, or an open ``InferenceSession`` (used as is).
    ``original_logits`` (the original's outputs from an earlier :class:`Comparison` on the
    same data) skips running the original again. ``metric`` is the headline figure (one of
    :data:`onnxprune.fidelity.METRICS`; ``None``: chosen from the outputs and labels, see
    :func:`onnxprune.fidelity.auto_metric`); one the outputs cannot give is an
    :class:`OnnxPruneError`. ``latency_runs > 0`` also times both, interleaved, at batch 1
    (that many rounds) and batch 32 (``max(5, runs // 2)``) where the models accept it.
    """
    from onnxprune.data import as_dataset
    from onnxprune.evaluate import fidelity_from_outputs, predict_outputs
    from onnxprune.fidelity import measurable, metric_problem

    original_session = _session(original, device, threads)
    pruned_session = _session(pruned, device, threads)
    if original_logits is None:
        original_logits = predict_outputs(original_session, data, batch_size)
    elif isinstance(original_logits, np.ndarray):
        original_logits = [original_logits]
    pruned_outputs = predict_outputs(pruned_session, data, batch_size)
    labelled = data.y is not None
    if metric is not None and metric_problem(metric, labelled, original_logits):
        raise OnnxPruneError(
            f"metric '{metric}' {metric_problem(metric, labelled, original_logits)}; use "
            f"{' or '.join(measurable(labelled, original_logits))}"
        )
    names = [o.name for o in pruned_session.get_outputs()]
    pruned_result = fidelity_from_outputs(pruned_outputs, data.y, original_logits, names, metric)
    original_result = fidelity_from_outputs(original_logits, data.y, None, names, "top1")
    original_result.metric = pruned_result.metric
    result = Comparison(
        original=original_result,
        pruned=pruned_result,
        samples=len(data),
        labelled=labelled,
        metric=pruned_result.metric or "agreement",
        original_logits=original_logits,
    )
    if latency_runs:
        sessions = (original_session, pruned_session)
        names = [i.name for i in original_session.get_inputs()]
        samples = as_dataset(data).sample_shapes(names)
        _interleaved_latency(result, sessions, samples, latency_runs)
    return result


__all__ = [
    "COST_UNAVAILABLE",
    "RECOVERY_METHODS",
    "Comparison",
    "PruneResult",
    "RecoverResult",
    "compare",
    "prune_model",
    "recover_model",
]

"""Everything a search needs before its first episode, checked before anything is written.

:func:`prepare` loads the model, analyses its channel groups (:func:`onnxprune.deps.analyze`),
prices plans with :class:`onnxprune.cost.PlanCost` (an impossible budget fails here, naming
the smallest reachable fraction), splits the data (:mod:`onnxprune.search.splits`), ranks
channels, builds the reward (:class:`~onnxprune.search.reward.PlanEvaluator`), the
:class:`~onnxprune.env.PruningEnv` and the strategy's agent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxprune.deps.residual import summed_groups
from onnxprune.errors import OnnxPruneError
from onnxprune.rl.agents import Agent, AgentSetup, agent_class
from onnxprune.search.reward import (
    PlanEvaluator,
    reference_logits,
    reward_metric,
)
from onnxprune.search.splits import DataSplits, SplitSizes, make_splits
from onnxprune.search.strategy import SKIP_RULES, Strategy


def select_groups(analysis: Any, skip: list[str]) -> tuple[list[Any], list[str]]:
    """Prunable groups the agent controls, after the structural ``skip`` rules.

    ``residual``: groups whose channels are summed across a residual connection (an
    ``Add``/``Sub``/``Sum`` with two or more of the group's tensors as inputs,
    :func:`summed_groups`); groups tied only by a gate (a squeeze-excitation ``Mul``) are block
    interiors and stay searchable. ``grouped``: groups of grouped/depthwise convolutions
    (``block_count > 1``). Returns ``(groups, notes)``; notes say how many groups each rule
    removed.
    """
    groups = list(analysis.prunable_groups())
    notes = []
    for rule in skip:
        if rule == "residual":
            summed = summed_groups(analysis.model, groups)
            keep = [g for g in groups if g.id not in summed]
        elif rule == "grouped":
            keep = [g for g in groups if g.block_count <= 1]
        else:
            raise OnnxPruneError(f"unknown skip rule '{rule}'; use one of {', '.join(SKIP_RULES)}")
        if len(keep) < len(groups):
            notes.append(f"skip rule '{rule}' left {len(groups) - len(keep)} group(s) full")
        groups = keep
    return groups, notes


@dataclass
class SearchSetup:
    """A prepared search: the inputs of the loop and of the final stage."""

    model_file: Path
    outdir: Path
    strategy: Strategy
    seed: int
    flops: float
    analysis: Any
    groups: list[Any]
    splits: DataSplits
    metric: str
    scores: Any
    evaluator: PlanEvaluator
    env: Any
    agent: Agent
    original_session: Any
    device: str
    threads: int | None
    started: float = field(default_factory=time.perf_counter)
    notes: list[str] = field(default_factory=list)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    latency_budget: Any = None  # a search.latency.LatencyBudget with --latency

    def __str__(self) -> str:
        return (
            f"search of '{self.model_file}' with {self.strategy.name} ({self.strategy.agent}), "
            f"{len(self.groups)} groups, {self.metric} reward; {self.splits}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": str(self.model_file),
            "outdir": str(self.outdir),
            "strategy": self.strategy.to_dict(),
            "seed": self.seed,
            "flops": self.flops,
            "groups": [g.id for g in self.groups],
            "metric": self.metric,
            "splits": self.splits.to_dict(),
            "input_shapes": self.input_shapes,
            "latency": None if self.latency_budget is None else self.latency_budget.target,
            "notes": self.notes,
        }


def _load(
    model_file: Path, strat: Strategy, data: Any, input_shapes: Any
) -> tuple[Any, Any, Any, list[Any], Any, list[str]]:
    """``(model as loaded, dataset, analysis, searched groups, plan cost, notes)``.

    The input size is ``input_shapes`` for the inputs it names, else that of one sample of
    ``data`` (batch 1) for every input: a dynamic size is fixed to it before the analysis,
    so shape computations fold for it.
    """
    from onnxprune.cost import PlanCost
    from onnxprune.data import Dataset, input_specs, load_data
    from onnxprune.deps import analyze
    from onnxprune.model import (
        data_input_shapes,
        fix_input_shapes,
        fixed_input_note,
        graph_inputs,
        input_shapes_from,
        load_model,
    )

    model = load_model(model_file)
    dataset = data if isinstance(data, Dataset) else load_data(data, model)
    dataset.check_inputs(input_specs(model))
    samples = dataset.sample_shapes([i.name for i in graph_inputs(model)])
    data_source = f"the data ({dataset.source})"
    shapes, source = input_shapes_from(model, input_shapes, samples, data_source)
    fixed = fix_input_shapes(model, shapes, source=source)
    # the data must run at the size the MACs are priced at: a mismatch is one clear error
    fix_input_shapes(fixed, data_input_shapes(fixed, samples), source=data_source)
    note = fixed_input_note(model, fixed)
    analysis = analyze(fixed)
    groups, notes = select_groups(analysis, strat.skip)
    notes = ([note] if note is not None else []) + notes
    plan_cost = PlanCost(analysis.model, analysis.channel_exprs(), analysis.group_sizes())
    if not groups:
        prunable = len(list(analysis.prunable_groups()))
        why = (
            f"all {len(analysis.groups)} of its channel groups are frozen"
            if not prunable
            else f"the skip rules {strat.skip} left none of its {prunable} prunable groups"
        )
        raise OnnxPruneError(
            f"model '{model_file}' has nothing to search: {why} (run `onnxprune groups "
            f"{model_file}` to see why each group is frozen)"
        )
    return fixed, dataset, analysis, groups, plan_cost, notes


def _splits(data: Any, eval_data: Any, model: Any, strat: Strategy, seed: int) -> DataSplits:
    from onnxprune.data import Dataset, load_data

    dataset = data if isinstance(data, Dataset) else load_data(data, model)
    if eval_data is not None and not isinstance(eval_data, Dataset):
        eval_data = load_data(eval_data, model)
    return make_splits(dataset, eval_data, SplitSizes.of(strat), seed)


def _fit_note(strat: Strategy, splits: DataSplits) -> str:
    fit = (
        f"{len(splits.fit)} images disjoint from the reward and held-out splits"
        if splits.fit is not None
        else f"{min(strat.recover_images, len(splits.reward))} reward-split images "
        "(too little data for a separate fit split: the reward is optimistic)"
    )
    return "reward measured after least-squares recovery of each candidate, fitted on " + fit


def prepare(
    model_file: Path,
    data: Any,
    eval_data: Any,
    flops: float,
    strat: Strategy,
    outdir: Path,
    seed: int,
    device: str,
    threads: int | None,
    started: float,
    input_shapes: Any = None,
    latency: Any = None,
) -> SearchSetup:
    """Build the search; raises :class:`OnnxPruneError` for bad input before any file is
    written. ``input_shapes`` (``{input: dims}``) is the input size the MACs are for
    (default: one sample of ``data``). ``latency`` (:class:`LatencyRequest`) adds the
    latency budget (:mod:`onnxprune.search.latency`)."""
    from onnxprune.env import ActionGroup, PruningEnv
    from onnxprune.evaluate import make_session
    from onnxprune.importance import channel_scores

    model, dataset, analysis, groups, plan_cost, notes = _load(
        model_file, strat, data, input_shapes
    )
    splits = _splits(dataset, eval_data, model, strat, seed)
    reward_split = splits.reward
    session = make_session(analysis.model.SerializeToString(), device=device, threads=threads)
    metric = reward_metric(strat.reward, reward_split, reward_split.source, session)
    reference = reference_logits(metric, session, reward_split, strat.batch_size)
    if reference is not None:
        notes.append(
            f"reward = fidelity to the unpruned model ({metric}); data has no labels"
            if not reward_split.labelled
            else f"reward = fidelity ({metric})"
        )
    scores = channel_scores(analysis, strat.criterion, data=reward_split)
    ls = strat.reward_recover == "ls"
    evaluator = PlanEvaluator(
        analysis,
        scores,
        reward_split,
        metric,
        reference,
        device,
        strat.batch_size,
        threads,
        recover_images=strat.recover_images if ls else None,
        fit_split=splits.fit,
    )
    if ls:
        notes.append(_fit_note(strat, splits))
    kind = agent_class(strat.agent)
    budget = None
    if latency is not None:
        from onnxprune.search.latency import build_latency_budget

        budget = build_latency_budget(
            analysis, groups, strat, latency.target, latency.batch, device, threads,
            dict(plan_cost.input_shapes), latency.show_progress, latency.lut_timer,
        )  # fmt: skip
    env = PruningEnv(
        [ActionGroup(g.id, g.size, g.block_count) for g in groups],
        plan_cost,
        evaluator,
        flops,
        steps_per_episode=kind.env_steps(strat.steps_per_episode),
        round_to=strat.round_to,
        min_channels=strat.min_channels,
        latency=None if budget is None else budget.predictor,
        latency_target=None if budget is None else budget.target,
        rounding=None if budget is None else budget.rounding,
    )
    setup = AgentSetup(
        env, analysis, groups, seed, strat.warmup, strat.noise, strat.ddpg, strat.encoder_dim
    )
    return SearchSetup(
        model_file=model_file,
        outdir=outdir,
        strategy=strat,
        seed=seed,
        flops=flops,
        analysis=analysis,
        groups=groups,
        splits=splits,
        metric=metric,
        scores=scores,
        evaluator=evaluator,
        env=env,
        agent=kind.build(setup),
        original_session=session,
        device=device,
        threads=threads,
        started=started,
        notes=notes,
        input_shapes=dict(plan_cost.input_shapes),
        latency_budget=budget,
    )


@dataclass
class LatencyRequest:
    """``search --latency``: the target fraction of the original's latency at ``batch``;
    ``lut_timer`` / ``measure`` replace the onnxruntime timing (tests)."""

    target: float
    batch: int = 1
    show_progress: bool = True
    lut_timer: Any = None
    measure: Any = None

"""The final stage of a search: materialise the chosen plan, recover, evaluate, write.

``finalize(setup, outcome, latency_runs)`` runs, in order, :func:`_materialize` (plan and
surgery, :func:`onnxprune.surgery.apply_plan`), :func:`_recover` (the strategy's
``recover``, fitted on the reward split), :func:`_evaluate` (original and pruned on the
held-out split; latency p50 at batch 1 and 32, interleaved as the gate times,
with the ratio's interval; ``None`` and the reason for a batch size the model cannot run) and :func:`_write` (``pruned.onnx``,
``plan.json``, ``report.json``, ``report.md`` and plots, :mod:`onnxprune.search.report`).
"""

from __future__ import annotations

import time
from typing import Any

from onnxprune.errors import InternalError
from onnxprune.search.prepare import SearchSetup
from onnxprune.search.result import SearchOutcome, SearchResult
from onnxprune.search.reward import heldout_metric


def _materialize(setup: SearchSetup, outcome: SearchOutcome) -> tuple[Any, Any]:
    """``(plan, pruned model)`` of the chosen plan; the plan's meta says how it was found."""
    from onnxprune.importance import plan_from_counts
    from onnxprune.surgery import apply_plan

    strategy = setup.strategy
    meta = {
        "strategy": strategy.name,
        "agent": strategy.agent,
        "criterion": strategy.criterion,
        "round_to": strategy.round_to,
        "min_channels": strategy.min_channels,
        "flops_target": setup.flops,
        "seed": setup.seed,
        "best_episode": outcome.best.episode,
        "reward": setup.metric,
    }
    plan = plan_from_counts(setup.analysis, outcome.best.kept, setup.scores, meta=meta)
    return plan, apply_plan(setup.analysis, plan)


def _recover(setup: SearchSetup, pruned: Any) -> Any:
    """The strategy's final recovery of ``pruned``, fitted on the reward split
    (:func:`onnxprune.pipeline.recover_model`, the one recovery dispatch)."""
    from onnxprune.pipeline import recover_model

    method = setup.strategy.recover
    if method == "none":
        return pruned
    setup.notes.append(f"recovery '{method}' used the reward split as calibration data")
    return recover_model(
        pruned, setup.analysis.model, setup.splits.reward, method, threads=setup.threads
    ).model


def _evaluate(
    setup: SearchSetup, pruned: Any, latency_runs: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(original, pruned)`` report sides: cost, held-out accuracy, latency p50
    (:func:`onnxprune.pipeline.compare` on the held-out split)."""
    from onnxprune.cost import model_cost
    from onnxprune.pipeline import compare

    original_cost, pruned_cost = model_cost(setup.analysis.model), model_cost(pruned)
    if pruned_cost.macs > setup.flops * original_cost.macs + 1e-9:
        raise InternalError(
            f"the pruned model keeps {pruned_cost.macs / original_cost.macs:.4f} of the "
            f"MACs, above --flops {setup.flops}"
        )
    comparison = compare(
        setup.original_session,
        pruned.SerializeToString(),
        setup.splits.heldout,
        batch_size=setup.strategy.batch_size,
        latency_runs=latency_runs,
        device=setup.device,
        threads=setup.threads,
        metric=heldout_metric(setup.strategy.reward, setup.metric),
    )
    _warn_small_heldout(setup, len(setup.splits.heldout))

    def side(cost: Any, evaluation: Any, accuracy: float | None, latency: dict) -> dict:
        return {
            "macs": int(cost.macs),
            "flops": int(cost.flops),
            "params": int(cost.params),
            "accuracy": accuracy,
            "metric": comparison.metric,
            "eval": evaluation.to_dict(),
            "latency_ms_b1": latency.get(1),
            "latency_ms_b32": latency.get(32),
            "latency_note": {str(b): why for b, why in comparison.latency_note.items()},
        }

    original = side(
        original_cost,
        comparison.original,
        comparison.original_accuracy,
        comparison.original_latency_ms,
    )
    pruned_side = side(
        pruned_cost, comparison.pruned, comparison.pruned_accuracy, comparison.pruned_latency_ms
    )
    # The ratio and its interval come from the interleaved, paired timings (gate's method).
    pruned_side["latency_ratio"] = comparison.to_dict()["latency_ratio"]
    return original, pruned_side


def _warn_small_heldout(setup: SearchSetup, count: int) -> None:
    """A loud note when the held-out split is too small for its figure to mean much."""
    from onnxprune.fidelity import MIN_RELIABLE_SAMPLES

    if count < MIN_RELIABLE_SAMPLES:
        setup.notes.append(
            f"WARNING: the held-out split has only {count} sample(s) (< {MIN_RELIABLE_SAMPLES}): "
            "its accuracy/fidelity interval is wide, read the interval, not the point; give "
            "more --data, a smaller --reward-samples, or --eval-data"
        )


def _group_rows(setup: SearchSetup, plan: Any, kept: dict[int, int]) -> list[dict[str, Any]]:
    rows = []
    for group in setup.groups:
        count = kept.get(group.id, group.size)
        rows.append(
            {
                "id": group.id,
                "size": group.size,
                "kept": int(count),
                "keep_ratio": count / group.size,
                "tensor": next(iter(plan.tensors.get(group.id) or []), None),
            }
        )
    return rows


def _write(
    setup: SearchSetup, outcome: SearchOutcome, plan: Any, pruned: Any, sides: tuple[dict, dict]
) -> SearchResult:
    """Write ``pruned.onnx``, ``plan.json`` and the report; returns the result."""
    from onnxprune.model import save_model
    from onnxprune.search.report import write_report

    out, strategy, indices = setup.outdir, setup.strategy, setup.splits.indices
    files = {
        "pruned": str(save_model(pruned, out / "pruned.onnx", protect=[setup.model_file])),
        "plan": str(plan.save(out / "plan.json")),
    }
    result = SearchResult(
        model=str(setup.model_file),
        strategy=strategy,
        seed=setup.seed,
        flops_target=setup.flops,
        input_shapes=setup.input_shapes,
        reward_metric=setup.metric,
        reward_samples=len(setup.splits.reward),
        eval_samples=len(setup.splits.heldout),
        eval_source=setup.splits.eval_source,
        episodes=outcome.log,
        best_episode=outcome.best.episode,
        best_reward=outcome.best.reward,
        groups=_group_rows(setup, plan, outcome.best.kept),
        kept=dict(outcome.best.kept),
        original=sides[0],
        pruned=sides[1],
        recover=strategy.recover,
        outdir=str(out),
        files=files,
        seconds=time.perf_counter() - setup.started,
        search_seconds=outcome.search_seconds,
        evaluations=setup.env.n_evaluations,
        interrupted=outcome.interrupted,
        resumed_from=outcome.resumed_from,
        notes=setup.notes,
        reward_indices=indices.reward.tolist(),
        heldout_indices=None if indices.heldout is None else indices.heldout.tolist(),
        selection=outcome.selection,
        evaluator=outcome.evaluator,
        latency=None if setup.latency_budget is None else setup.latency_budget.to_dict(),
    )
    if setup.latency_budget is not None:
        from onnxprune.latency.plot import plot_table

        result.files["latency_plot"] = str(
            plot_table(setup.latency_budget.table, out / "latency_table.png")
        )
    result.files.update(write_report(result, out))
    return result


def finalize(setup: SearchSetup, outcome: SearchOutcome, latency_runs: int) -> SearchResult:
    """Materialise the chosen plan, recover, evaluate on the held-out split, write files."""
    plan, pruned = _materialize(setup, outcome)
    pruned = _recover(setup, pruned)
    sides = _evaluate(setup, pruned, latency_runs)
    return _write(setup, outcome, plan, pruned, sides)

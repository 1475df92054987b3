"""The final stage of a search: materialise the chosen plan, recover, evaluate, write.

``finalize(setup, outcome, latency_runs)`` runs, in order, :func:`_materialize` (plan and
surgery, :func:`onnxprune.surgery.apply_plan`), :func:`_recover` (the strategy's
``recover``, fitted on the reward split), :func:`_evaluate` (original and pruned on the
held-out split; latency p50 at batch 1 and 32) and :func:`_write` (``pruned.onnx``,
``plan.json``, ``report.json``, ``report.md`` and plots, :mod:`onnxprune.search.report`).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import Any

from onnxprune.errors import InternalError, OnnxPruneError
from onnxprune.search.prepare import SearchSetup
from onnxprune.search.result import SearchOutcome, SearchResult

_RECOVER_FUNCTIONS = {
    "ls": ("onnxprune.recover.lsq", "least_squares_recover"),
    "finetune": ("onnxprune.recover.finetune", "finetune"),
}


def recover_function(method: str) -> Callable[..., Any] | None:
    """The recovery function for ``method`` (``None`` for ``none``): ``(pruned, original,
    calibration split) -> recovered model``; a clear error when this build lacks it."""
    if method == "none":
        return None
    module_name, function = _RECOVER_FUNCTIONS[method]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        module = None
    if module is None or not hasattr(module, function):
        raise OnnxPruneError(
            f"--recover {method} is not available in this build ({module_name}.{function} is "
            "missing); use --recover none or ls"
        )
    return getattr(module, function)


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
    """The strategy's final recovery of ``pruned`` (the one place that dispatches on it)."""
    recover_fn = recover_function(setup.strategy.recover)
    if recover_fn is None:
        return pruned
    setup.notes.append(
        f"recovery '{setup.strategy.recover}' used the reward split as calibration data"
    )
    return recover_fn(pruned, setup.analysis.model, setup.splits.reward)


def _latency(session: Any, batch: int, runs: int) -> float:
    from onnxprune.evaluate import measure_latency

    return float(measure_latency(session, runs=runs, warmup=max(2, runs // 5), batch=batch).p50)


def _evaluate(
    setup: SearchSetup, pruned: Any, latency_runs: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(original, pruned)`` report sides: cost, held-out accuracy, latency p50."""
    from onnxprune.cost import model_cost
    from onnxprune.evaluate import accuracy_from_logits, make_session, predict

    original_cost, pruned_cost = model_cost(setup.analysis.model), model_cost(pruned)
    if pruned_cost.macs > setup.flops * original_cost.macs + 1e-9:
        raise InternalError(
            f"the pruned model keeps {pruned_cost.macs / original_cost.macs:.4f} of the "
            f"MACs, above --flops {setup.flops}"
        )
    heldout, batch = setup.splits.heldout, setup.strategy.batch_size
    pruned_session = make_session(
        pruned.SerializeToString(), device=setup.device, threads=setup.threads
    )
    original_logits = predict(setup.original_session, heldout.x, batch)
    original_eval = accuracy_from_logits(original_logits, heldout.y)
    pruned_eval = accuracy_from_logits(
        predict(pruned_session, heldout.x, batch), heldout.y, original_logits
    )
    labelled = heldout.y is not None

    def side(cost: Any, evaluation: Any, session: Any) -> dict[str, Any]:
        timed = bool(latency_runs)
        return {
            "macs": int(cost.macs),
            "flops": int(cost.flops),
            "params": int(cost.params),
            "accuracy": evaluation.top1 if labelled else evaluation.agreement,
            "eval": evaluation.to_dict(),
            "latency_ms_b1": _latency(session, 1, latency_runs) if timed else None,
            "latency_ms_b32": _latency(session, 32, max(5, latency_runs // 2)) if timed else None,
        }

    original = side(original_cost, original_eval, setup.original_session)
    if not labelled:
        original["accuracy"] = 100.0  # agreement of the model with itself
    return original, side(pruned_cost, pruned_eval, pruned_session)


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
    )
    result.files.update(write_report(result, out))
    return result


def finalize(setup: SearchSetup, outcome: SearchOutcome, latency_runs: int) -> SearchResult:
    """Materialise the chosen plan, recover, evaluate on the held-out split, write files."""
    plan, pruned = _materialize(setup, outcome)
    pruned = _recover(setup, pruned)
    sides = _evaluate(setup, pruned, latency_runs)
    return _write(setup, outcome, plan, pruned, sides)

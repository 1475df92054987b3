"""The latency budget of a search (``onnxprune search --latency F``).

1. :func:`build_latency_budget` (in :func:`onnxprune.search.prepare.prepare`): the latency
   table of the searched groups (:func:`onnxprune.latency.latency_table`, cached on disk),
   its predictor for the environment's latency wall, and the rounding (with the strategy's
   ``latency_steps``: only widths where latency changes, :mod:`onnxprune.latency.steps`).
   An unreachable budget fails here, naming the smallest reachable ratio.
2. :func:`verify_latency` (after the final pick): the chosen plan is cut and timed
   *interleaved* with the original by the gate (:func:`onnxprune.gate.run_gate`, paired
   bootstrap interval, noise signs; on a machine the gate calls noisy the ratio of the
   fastest runs is the figure, see :attr:`Measurement.judged`). When it misses the budget, the
   predicted budget is tightened by the miss (``target * F / measured``, times
   ``TIGHTEN_MARGIN``) and the plan re-picked: the best-rewarded evaluated plan inside the
   tighter prediction, else the chosen plan shrunk along the wall until it fits and then
   grown back, group by group, while it still fits (:meth:`~onnxprune.budget.Budget.fill`). At most
   ``MAX_REPICKS`` times; every attempt (predicted vs measured) goes into the report, with
   the table's prediction error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxprune.search.result import BestPlan

MAX_REPICKS = 3
TIGHTEN_MARGIN = 0.98
VERIFY_RUNS = 30


@dataclass
class Measurement:
    """A measured latency ratio (pruned / original) with its interval and noise signs."""

    ratio: float
    low: float
    high: float
    base_ms: float
    pruned_ms: float
    noise: list[str] = field(default_factory=list)
    min_ratio: float | None = None

    @property
    def judged(self) -> float:
        """The ratio the budget is judged by: the median ratio, or on a machine the gate
        calls noisy the fastest-run ratio (the least disturbed runs; a loaded machine's
        medians measure the scheduler, not the models)."""
        if self.noise and self.min_ratio is not None:
            return self.min_ratio
        return self.ratio


Measure = Callable[[Any, dict[int, int]], Measurement]


@dataclass
class LatencyBudget:
    """The search's latency budget: ``target`` (fraction of the original's latency at
    ``batch``), the table, the wall's predictor and rounding, and the verification record."""

    target: float
    batch: int
    table: Any
    predictor: Any
    rounding: Any
    measure: Measure
    steps: bool = False
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        errors = [a["prediction_error"] for a in self.attempts]
        table = self.table
        return {
            "target": self.target,
            "batch": self.batch,
            "latency_steps": self.steps,
            "table": {
                "path": table.path,
                "cached": table.cached,
                "build_seconds": round(table.build_seconds, 3),
                "variants_timed": table.variants_timed,
                "rounds": table.rounds,
                "base_ms": table.base_ms,
                "key": table.key,
            },
            "attempts": self.attempts,
            "repicks": max(len(self.attempts) - 1, 0),
            "passed": bool(self.attempts and self.attempts[-1]["passed"]),
            "prediction_error": float(np.mean(errors)) if errors else None,
        }


def gate_measure(setup: Any, runs: int = VERIFY_RUNS) -> Measure:
    """The real measurement: the pruned model timed interleaved with the original by the
    gate at the budget's batch, threads and device."""

    def measure(pruned: Any, kept: dict[int, int]) -> Measurement:
        from onnxprune.gate import run_gate

        budget = setup.latency_budget
        gate = run_gate(
            setup.analysis.model, pruned, budget.target, batch=budget.batch, runs=runs,
            warmup=3, threads=setup.threads or 1, device=setup.device,
            input_shape=None, max_rounds=2 * runs,
        )  # fmt: skip
        return Measurement(gate.ratio, gate.ci_low, gate.ci_high, gate.base_median_ms,
                           gate.cand_median_ms, list(gate.noise), gate.min_ratio)  # fmt: skip

    return measure


def build_latency_budget(
    analysis: Any,
    groups: list[Any],
    strat: Any,
    latency: float,
    batch: int,
    device: str,
    threads: int | None,
    input_shapes: dict[str, list[int]],
    show_progress: bool,
    lut_timer: Any = None,
) -> LatencyBudget:
    """Table, predictor and rounding for ``groups``; raises :class:`PlanError` when even
    every group at its floor is predicted slower than ``latency``."""
    from onnxprune.budget import ChannelRounding
    from onnxprune.latency import LatencyPredictor, latency_table
    from onnxprune.latency.steps import step_rounding

    rounding = ChannelRounding(groups, strat.round_to, strat.min_channels)
    table = latency_table(
        analysis, rounding, batch=batch, device=device, threads=threads or 1,
        input_shapes=input_shapes, timer=lut_timer, show_progress=show_progress,
    )  # fmt: skip
    if strat.latency_steps:
        rounding = step_rounding(rounding, table)
    predictor = LatencyPredictor(table, rounding.group_ids)
    predictor.require(latency, rounding.lows)
    return LatencyBudget(latency, batch, table, predictor, rounding, measure=_unset,
                         steps=bool(strat.latency_steps))  # fmt: skip


def _unset(pruned: Any, kept: dict[int, int]) -> Measurement:
    from onnxprune.errors import InternalError

    raise InternalError("the latency budget's measurement was not set up")


def _cut(setup: Any, kept: dict[int, int]) -> Any:
    from onnxprune.importance import plan_from_counts
    from onnxprune.surgery import apply_plan

    return apply_plan(setup.analysis, plan_from_counts(setup.analysis, kept, setup.scores))


def _repick(setup: Any, best: BestPlan, log: list[Any], target: float) -> tuple[BestPlan, str]:
    """The best-rewarded evaluated plan predicted inside ``target``, else ``best`` shrunk
    along the wall path until its prediction fits and filled back up to ``target`` (then
    evaluated)."""
    env, predictor = setup.env, setup.latency_budget.predictor
    inside = [
        (reward, key)
        for key, reward in env.cache.items()
        if predictor.fraction(np.array(key)) <= target and env.within_budget(np.array(key))
    ]
    if inside:
        reward, key = max(inside, key=lambda item: (item[0], item[1]))
        kept = env.kept_dict(key)
        episode = next((e.episode for e in log if e.kept == kept), best.episode)
        return BestPlan(reward, episode, kept), "best evaluated plan inside the tighter budget"
    counts = np.array([best.kept[g] for g in env.group_ids], dtype=np.float64)
    keep = counts / env.rounding.sizes

    def fits(c: np.ndarray) -> bool:
        return predictor.fraction(c) <= target + 1e-12

    shrunk, _ = env.budget.fit(keep, np.zeros_like(keep), env.flops_target, fits)
    # the wall path moves in whole rounding steps: grow back what still fits, so the re-pick
    # lands at the tighter budget instead of below it
    shrunk = env.budget.fill(shrunk, env.flops_target, fits)
    kept = env.kept_dict(shrunk)
    reward, _ = env.evaluate(kept)
    how = "the chosen plan shrunk along the wall and filled up to the tighter budget"
    reached = predictor.fraction(shrunk)
    if reached > target + 1e-12:
        how += f" to its floors (predicted {reached:.3f}: the tighter budget is out of reach)"
    return BestPlan(reward, best.episode, kept), how


def verify_latency(setup: Any, best: BestPlan, log: list[Any]) -> BestPlan:
    """Measure ``best``; re-pick under a tighter predicted budget while it misses (module
    docstring). Returns the plan to finalise; the attempts are in ``setup.latency_budget``."""
    budget = setup.latency_budget
    target = budget.target
    how = "final pick"
    for attempt in range(MAX_REPICKS + 1):
        predicted = budget.predictor.kept_fraction(best.kept)
        measurement = budget.measure(_cut(setup, best.kept), best.kept)
        measured = measurement.judged
        passed = measured <= budget.target
        budget.attempts.append({
            "attempt": attempt, "how": how, "episode": best.episode, "reward": best.reward,
            "predicted_target": target, "predicted": predicted, "measured": measured,
            "median_ratio": measurement.ratio, "fastest_run_ratio": measurement.min_ratio,
            "judged_by": "fastest runs (noisy machine)" if measured != measurement.ratio
            else "median", "interval": [measurement.low, measurement.high],
            "base_ms": measurement.base_ms, "pruned_ms": measurement.pruned_ms,
            "noise": measurement.noise, "passed": passed,
            "prediction_error": abs(predicted - measured) / max(measured, 1e-9),
        })  # fmt: skip
        if passed:
            break
        if attempt == MAX_REPICKS:
            setup.notes.append(
                f"WARNING: the measured latency ratio {measured:.3f} still misses "
                f"--latency {budget.target} after {MAX_REPICKS} re-picks; the machine may be "
                "too noisy (see the noise signs in report.json), or the budget too tight"
            )
            break
        target = min(target, predicted) * budget.target / measured * TIGHTEN_MARGIN
        previous = best
        best, how = _repick(setup, best, log, target)
        if best.kept == previous.kept:
            setup.notes.append(
                f"WARNING: the measured latency ratio {measured:.3f} misses --latency "
                f"{budget.target} and no plan is predicted faster (every group at its floor: "
                f"predicted {predicted:.3f}); ask for a larger --latency or a smaller "
                "--min-channels"
            )
            break
        setup.notes.append(
            f"latency: measured {measured:.3f} > --latency {budget.target} (predicted "
            f"{predicted:.3f}); tightened the predicted budget to {target:.3f} and re-picked "
            f"({how})"
        )
    return best


def latency_lines(record: dict[str, Any] | None) -> list[str]:
    """The report.md section of the latency budget (empty without one)."""
    if not record:
        return []
    table = record["table"]
    source = (
        f"cached ({table['path']})"
        if table["cached"]
        else f"built in {table['build_seconds']:.1f} s ({table['variants_timed']} variants, "
        f"{table['rounds']} rounds each)"
    )
    lines = [
        "",
        "## Latency budget",
        "",
        f"- budget: {record['target']:g} of the original latency at batch {record['batch']}; "
        f"latency table {source}, full model {table['base_ms']:.3f} ms",
        f"- action space: {'only widths where latency changes' if record['latency_steps'] else 'every rounded width'}",
        f"- verification: {'passed' if record['passed'] else 'MISSED'} after "
        f"{record['repicks']} re-pick(s); mean prediction error "
        f"{100 * (record['prediction_error'] or 0):.1f} %",
        "",
        "| attempt | how | predicted budget | predicted | measured | judged by | median ratio "
        "[95 % CI] | passed |",
        "|---:|---|---:|---:|---:|---|---:|---|",
    ]
    for a in record["attempts"]:
        low, high = a["interval"]
        lines.append(
            f"| {a['attempt']} | {a['how']} | {a['predicted_target']:.3f} | {a['predicted']:.3f} "
            f"| {a['measured']:.3f} | {a['judged_by']} | {a['median_ratio']:.3f} "
            f"[{low:.3f}, {high:.3f}] | {'yes' if a['passed'] else 'no'} |"
        )
    lines += ["", "![latency table](latency_table.png)"]
    return lines


__all__ = [
    "LatencyBudget",
    "Measurement",
    "build_latency_budget",
    "gate_measure",
    "latency_lines",
    "verify_latency",
]

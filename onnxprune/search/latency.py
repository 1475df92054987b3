"""The latency budget of a search (``onnxprune search --latency F``).

1. :func:`build_latency_budget` (in :func:`onnxprune.search.prepare.prepare`): the latency
   table of the searched groups (:func:`onnxprune.latency.latency_table`, cached on disk),
   its predictor for the environment's latency wall, and the rounding (with the strategy's
   ``latency_steps``: only widths where latency changes, :mod:`onnxprune.latency.steps`).
   An unreachable budget fails here, naming the smallest reachable ratio.
2. :func:`verify_latency` (after the final pick): the chosen plan is cut and timed
   *interleaved* with the original by the gate (:func:`onnxprune.gate.run_gate`, paired
   bootstrap interval, noise signs; on a machine the gate calls noisy the ratio of the
   fastest runs is the figure, see :attr:`Measurement.judged`). When it misses the budget,
   or passes more than ``1 - LOOSEN_BELOW`` of it faster than asked, the predicted budget is
   moved toward ``F * TIGHTEN_MARGIN`` measured: by the miss's ratio when only one side is
   known, else by a secant between the slowest-predicted plan that passed and the failing
   plan just above it (the table is optimistic over chained groups, so one ratio overshoots).
   The re-pick is the better-rewarded of the best evaluated plan inside the new prediction and
   the search's pick moved along the wall until it fits, then grown back group by group while
   it still fits (:meth:`~onnxprune.budget.Budget.fill`). At most ``MAX_REPICKS`` times; the
   best-rewarded plan that passed is kept, and every attempt (predicted vs measured, reward,
   kept) goes into the report, with the table's prediction error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxprune.search.result import BestPlan

MAX_REPICKS = 4
TIGHTEN_MARGIN = 0.98
LOOSEN_BELOW = 0.95
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
            "passed": any(a["passed"] for a in self.attempts),
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


def _repick(
    setup: Any, pick: BestPlan, log: list[Any], target: float, measured: set[tuple[int, ...]]
) -> tuple[BestPlan, str]:
    """The better-rewarded of two plans predicted inside ``target``: the best evaluated plan
    not measured yet, and the search's pick moved along the wall path until its prediction
    fits (shrunk when tightening) and filled back up to ``target`` (evaluated here)."""
    env, predictor = setup.env, setup.latency_budget.predictor

    def fits(c: np.ndarray) -> bool:
        return predictor.fraction(c) <= target + 1e-12

    inside = [
        (reward, key)
        for key, reward in env.cache.items()
        if key not in measured and fits(np.array(key)) and env.within_budget(np.array(key))
    ]
    counts = np.array([pick.kept[g] for g in env.group_ids], dtype=np.float64)
    keep = counts / env.rounding.sizes
    moved, _ = env.budget.fit(keep, np.zeros_like(keep), env.flops_target, fits)
    # the wall path moves in whole rounding steps: grow back what still fits, so the re-pick
    # lands at the budget instead of below it
    moved = env.budget.fill(moved, env.flops_target, fits)
    kept = env.kept_dict(moved)
    reward, _ = env.evaluate(kept)
    how = "the chosen plan moved along the wall and filled up to the predicted budget"
    reached = predictor.fraction(moved)
    if reached > target + 1e-12:
        how += f" to its floors (predicted {reached:.3f}: the budget is out of reach)"
    if inside:
        other, key = max(inside, key=lambda item: (item[0], item[1]))
        if other > reward:
            other_kept = env.kept_dict(key)
            episode = next((e.episode for e in log if e.kept == other_kept), pick.episode)
            return BestPlan(other, episode, other_kept), "best evaluated plan inside the budget"
    return BestPlan(reward, pick.episode, kept), how


@dataclass
class _Point:
    """One verified plan: its prediction, its measured ratio and whether it passed."""

    plan: BestPlan
    predicted: float
    measured: float
    passed: bool


def _next_target(points: list[_Point], budget: float) -> float:
    """The next predicted budget, aimed at ``budget * TIGHTEN_MARGIN`` measured: interpolated
    between the passing plan predicted slowest and the failing plan just above it (a secant
    on predicted vs measured ratio), or scaled by the one side's miss when only it exists."""
    aim = budget * TIGHTEN_MARGIN
    passing = [p for p in points if p.passed]
    lo = max(passing, key=lambda p: p.predicted) if passing else None
    above = [p for p in points if not p.passed and (lo is None or p.predicted > lo.predicted)]
    hi = min(above, key=lambda p: p.predicted) if above else None
    if lo is not None and hi is not None and hi.measured > lo.measured:
        slope = (hi.predicted - lo.predicted) / (hi.measured - lo.measured)
        return lo.predicted + (aim - lo.measured) * slope
    ref = hi if hi is not None else lo
    assert ref is not None
    return ref.predicted * aim / max(ref.measured, 1e-9)


def verify_latency(setup: Any, best: BestPlan, log: list[Any]) -> BestPlan:
    """Measure ``best``; while it misses the budget, or passes more than ``1 - LOOSEN_BELOW``
    inside it, re-pick under the next predicted budget (:func:`_next_target`). Returns the
    best-rewarded plan that passed (else the last one measured); the attempts are in
    ``setup.latency_budget``."""
    budget = setup.latency_budget
    pick, target, how = best, budget.target, "final pick"
    points: list[_Point] = []
    for attempt in range(MAX_REPICKS + 1):
        predicted = budget.predictor.kept_fraction(best.kept)
        measurement = budget.measure(_cut(setup, best.kept), best.kept)
        measured = measurement.judged
        passed = measured <= budget.target
        points.append(_Point(best, predicted, measured, passed))
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
        if passed and measured >= LOOSEN_BELOW * budget.target:
            break
        if attempt == MAX_REPICKS:
            if not any(p.passed for p in points):
                setup.notes.append(
                    f"WARNING: the measured latency ratio {measured:.3f} still misses "
                    f"--latency {budget.target} after {MAX_REPICKS} re-picks; the machine may "
                    "be too noisy (see the noise signs in report.json), or the budget too tight"
                )
            break
        previous, target = target, _next_target(points, budget.target)
        if passed and abs(target - previous) <= 0.005 * budget.target:
            break  # the next budget is the one just tried: converged
        done = {setup.env.plan_key(p.plan.kept) for p in points}
        best, how = _repick(setup, pick, log, target, done)
        if setup.env.plan_key(best.kept) in done:
            if not any(p.passed for p in points):
                setup.notes.append(
                    f"WARNING: the measured latency ratio {measured:.3f} misses --latency "
                    f"{budget.target} and no plan is predicted faster (every group at its "
                    f"floor: predicted {predicted:.3f}); ask for a larger --latency or a "
                    "smaller --min-channels"
                )
            break
        verb = (
            f"passed, more than {100 * (1 - LOOSEN_BELOW):.0f} % faster than asked; loosened"
            if passed
            else "tightened"
        )
        setup.notes.append(
            f"latency: measured {measured:.3f} {'<=' if passed else '>'} --latency "
            f"{budget.target} (predicted {predicted:.3f}); {verb} the predicted budget to "
            f"{target:.3f} and re-picked ({how})"
        )
    passing = [p for p in points if p.passed]
    chosen = max(passing, key=lambda p: (p.plan.reward, p.measured)) if passing else points[-1]
    index = points.index(chosen)
    for i, record in enumerate(budget.attempts):
        record["kept"] = i == index
    if index != len(points) - 1:
        setup.notes.append(
            f"latency: kept attempt {index} (reward {chosen.plan.reward:.4f}, measured "
            f"{chosen.measured:.3f}), the best-rewarded plan that passed"
        )
    return chosen.plan


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
        "[95 % CI] | reward | passed | kept |",
        "|---:|---|---:|---:|---:|---|---:|---:|---|---|",
    ]
    for a in record["attempts"]:
        low, high = a["interval"]
        lines.append(
            f"| {a['attempt']} | {a['how']} | {a['predicted_target']:.3f} | {a['predicted']:.3f} "
            f"| {a['measured']:.3f} | {a['judged_by']} | {a['median_ratio']:.3f} "
            f"[{low:.3f}, {high:.3f}] | {a['reward']:.4f} | {'yes' if a['passed'] else 'no'} "
            f"| {'**kept**' if a.get('kept') else ''} |"
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

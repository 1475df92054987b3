"""The DNN-Graph environment (paper 002, section 3.1 and fig. 1; section 3.2.2).

One episode is one compression of the model, in up to ``steps_per_episode`` pruning steps:

* **State.** The keep-ratio of every action group after the steps so far, plus the step
  fraction: the *state record* ``[n_groups + 1]`` (float64). The observation an encoder sees
  is built from it on demand by ``observe(record)``: the hierarchical computational graph
  with the current keep-ratios in its features (``Hierarchy.to_pyg(keep_ratios)``), so the
  graph is updated after every pruning step as in section 3.2.2.
* **Action.** One prune ratio in ``[0, 1]`` per action group, ``[n_groups]``: the *shape*
  of this step's pruning. A step turns the keep-ratios ``k`` into ``k * (1 - a)``, rescaled
  by the wall below so the step lands on its share of the budget.
* **Steps.** With ``T = steps_per_episode``, step ``t`` must bring the MACs to
  ``1 - (1 - flops) * t / T`` of the original, so the model shrinks in ``T`` equal steps
  and the agent sees the pruned graph after each one (paper: "continuously compress the
  DNN until it satisfies the constraint"; the graph is rebuilt after every step).
* **FLOPs wall (hard guarantee).** Kept channel counts follow the one rounding rule
  (:class:`onnxprune.budget.ChannelRounding`: ``round_to``, ``min_channels``, grouped-conv
  blocks) and are priced with :class:`onnxprune.cost.PlanCost`. Every step is rescaled along
  the wall path of :meth:`onnxprune.budget.Budget.fit`: ``u in [0, 2]``, prune ``u * a`` for
  ``u <= 1`` (shrinks an overshooting action back so the step's budget is used fully), and
  ``a + (u - 1) * (1 - a)`` for ``u > 1`` (prunes further, in proportion to what each group
  has left, down to the minimum channel counts at ``u = 2``). MACs are monotone in ``u``, so
  bisection finds the smallest ``u`` whose MACs fit the step's target; since the
  construction checked that the all-minimum plan fits the final budget
  (:meth:`~onnxprune.budget.Budget.require`, the same check as ``prune --flops``), every
  episode ends inside it.
* **Latency wall (optional).** With ``latency`` (a predictor whose ``fraction(counts)`` is
  the predicted latency ratio, :class:`onnxprune.latency.LatencyPredictor`) and
  ``latency_target``, the same bisection also requires the predicted latency of the step's
  counts to be at most ``1 - (1 - latency_target) * t / T``; the prediction is monotone in
  the counts, so the smallest fitting ``u`` exists, and the construction checked that the
  all-minimum plan fits (``latency.require``): every episode ends inside *both* budgets.
* **Episode end.** After ``T`` steps (earlier if rounding already met the final budget).
* **Reward.** Zero for intermediate steps; at the end ``reward_fn(kept)`` (eq. 8: minus the
  top-1 error on the reward split, or a fidelity score without labels - the caller decides).
  Results are cached by kept counts: keep-indices are a fixed function of the counts (the
  channel ranking is computed once), so equal counts mean the same pruned model.
  ``step(action, evaluate=False)`` only proposes: the last step's reward is left NaN and the
  caller supplies it later with :meth:`PruningEnv.record` (a search round evaluates its
  candidates elsewhere, in parallel).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxprune.budget import Budget, ChannelRounding
from onnxprune.cost import PlanCost
from onnxprune.errors import OnnxPruneError


@dataclass(frozen=True)
class ActionGroup:
    """One prunable channel group the agent controls: ``id``, full ``size``, ``block_count``."""

    id: int
    size: int
    block_count: int = 1

    def __str__(self) -> str:
        blocks = f", {self.block_count} blocks" if self.block_count > 1 else ""
        return f"group {self.id} ({self.size} channels{blocks})"

    def to_dict(self) -> dict[str, int]:
        return {"id": self.id, "size": self.size, "block_count": self.block_count}


@dataclass
class StepResult:
    """What :meth:`PruningEnv.step` returns: next state record, reward, done flag and info."""

    record: np.ndarray
    reward: float
    done: bool
    kept: dict[int, int]
    macs_fraction: float
    wall_u: float | None = None
    cached: bool = False

    def __str__(self) -> str:
        end = f", reward {self.reward:.4f}" if self.done else ""
        return f"step: MACs kept {self.macs_fraction:.3f}{end}{' (cached)' if self.cached else ''}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "reward": self.reward,
            "done": self.done,
            "kept": {str(k): v for k, v in self.kept.items()},
            "macs_fraction": self.macs_fraction,
            "wall_u": self.wall_u,
            "cached": self.cached,
        }


class PruningEnv:
    """FLOPs-constrained DNN-Graph environment (see module docstring).

    Parameters
    ----------
    groups: the action groups, in action order (``[n_groups]``).
    plan_cost: prices kept counts; groups absent from ``groups`` stay full.
    reward_fn: ``(kept: dict[group_id, count]) -> float``, called once per distinct plan.
    flops_target: fraction of the original MACs to keep, in (0, 1].
    observe: ``(record) -> encoder input``; default :meth:`feature_matrix`.
    steps_per_episode: pruning steps before the wall forces the budget (>= 1).
    round_to, min_channels: channel rounding (see :class:`ChannelRounding`).
    latency, latency_target: the optional latency wall (module docstring); ``latency`` has
    ``fraction(counts [n]) -> float`` and ``require(target, lows [n])``.
    rounding: a prepared rounding of ``groups`` (e.g. latency steps) instead of
    ``round_to``/``min_channels``.
    """

    def __init__(
        self,
        groups: Sequence[ActionGroup],
        plan_cost: PlanCost,
        reward_fn: Callable[[dict[int, int]], float],
        flops_target: float,
        *,
        observe: Callable[[np.ndarray], Any] | None = None,
        steps_per_episode: int = 1,
        round_to: int = 8,
        min_channels: int = 1,
        latency: Any = None,
        latency_target: float | None = None,
        rounding: ChannelRounding | None = None,
    ) -> None:
        if not groups:
            raise OnnxPruneError(
                "the model has no prunable channel group left for the search "
                "(run `onnxprune groups MODEL` to see why each group is frozen)"
            )
        if not 0 < flops_target <= 1:
            raise OnnxPruneError(f"--flops must be a fraction in (0, 1], got {flops_target}")
        if steps_per_episode < 1:
            raise OnnxPruneError(f"steps_per_episode must be >= 1, got {steps_per_episode}")
        self.groups = list(groups)
        self.group_ids = [g.id for g in self.groups]
        self.plan_cost = plan_cost
        self.reward_fn = reward_fn
        self.flops_target = float(flops_target)
        self.steps_per_episode = steps_per_episode
        self.rounding = rounding or ChannelRounding(self.groups, round_to, min_channels)
        self.budget = Budget(plan_cost, self.rounding)
        self.observe = observe or self.feature_matrix
        self.target_macs = self.flops_target * plan_cost.full_macs
        self.min_fraction = self.budget.smallest_fraction
        self.budget.require(self.flops_target)
        self.latency = latency
        self.latency_target: float | None = None
        if latency is not None:
            lat = float(latency_target if latency_target is not None else 1.0)
            if not 0 < lat <= 1:
                raise OnnxPruneError(f"--latency must be a fraction in (0, 1], got {lat}")
            latency.require(lat, self.rounding.lows)
            self.latency_target = lat
        self.cache: dict[tuple[int, ...], float] = {}
        self._sizes = self.rounding.sizes
        self.removable_macs = self._marginal_macs()  # [n] MACs fraction each group can remove alone
        self.reset()

    def __str__(self) -> str:
        return (
            f"PruningEnv({len(self.groups)} groups, keep {self.flops_target:g} of "
            f"{self.plan_cost.full_macs:,} MACs, {self.steps_per_episode} step(s)/episode, "
            f"{len(self.cache)} plans cached)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": [g.to_dict() for g in self.groups],
            "flops_target": self.flops_target,
            "full_macs": self.plan_cost.full_macs,
            "steps_per_episode": self.steps_per_episode,
            "round_to": self.rounding.round_to,
            "min_channels": self.rounding.min_channels,
            "min_fraction": self.min_fraction,
            "latency_target": self.latency_target,
            "cached_plans": len(self.cache),
            "evaluations": self.n_evaluations,
        }

    @property
    def n_evaluations(self) -> int:
        """Distinct plans evaluated so far: every cached plan was evaluated exactly once (a
        cache restored by a resumed search counts too)."""
        return len(self.cache)

    @property
    def n_actions(self) -> int:
        return len(self.groups)

    @property
    def record_size(self) -> int:
        return len(self.groups) + 1

    def kept_dict(self, counts: Iterable[int]) -> dict[int, int]:
        return {gid: int(c) for gid, c in zip(self.group_ids, counts, strict=True)}

    def macs_fraction(self, counts: np.ndarray) -> float:
        """MACs kept by ``counts [n_groups]`` as a fraction of the original model."""
        return self.budget.fraction(counts)

    def _macs(self, counts: np.ndarray) -> int:
        return self.budget.macs(counts)

    def _marginal_macs(self) -> np.ndarray:
        """MACs removed by pruning each group alone to its minimum, as a fraction ``[n]``."""
        full = np.asarray(self._sizes, dtype=np.int64)
        out = np.empty(len(self.groups))
        for i in range(len(self.groups)):
            counts = full.copy()
            counts[i] = int(self.rounding.lows[i])
            out[i] = 1.0 - self.macs_fraction(counts)
        return out

    def feature_matrix(self, record: np.ndarray) -> Any:
        """Default observation ``[n_groups, 4]`` float32 torch tensor: keep-ratio, step
        fraction, log2 size / 10, share of MACs the group can remove."""
        import torch

        n = len(self.groups)
        features = np.stack(
            [
                record[:n],
                np.full(n, record[n]),
                np.log2(self._sizes) / 10.0,
                self.removable_macs,
            ],
            axis=1,
        )
        return torch.as_tensor(features, dtype=torch.float32)

    def keep_ratios(self, record: np.ndarray) -> dict[int, float]:
        """Group id -> keep-ratio from a state record (for ``Hierarchy.to_pyg``)."""
        ratios = record[: len(self.groups)]
        return {gid: float(r) for gid, r in zip(self.group_ids, ratios, strict=True)}

    def reset(self) -> np.ndarray:
        """Start an episode from the unpruned model; returns the state record ``[n + 1]``."""
        self._keep = np.ones(len(self.groups))
        self._step = 0
        return self._record()

    def _record(self) -> np.ndarray:
        return np.concatenate([self._keep, [self._step / self.steps_per_episode]])

    def step_target(self, step: int) -> float:
        """MACs fraction step ``step`` (1-based) must reach: the budget in equal steps."""
        return 1.0 - (1.0 - self.flops_target) * min(step, self.steps_per_episode) / (
            self.steps_per_episode
        )

    def latency_fraction(self, counts: np.ndarray) -> float | None:
        """Predicted latency ratio of ``counts [n]`` (None without a latency wall)."""
        return None if self.latency is None else float(self.latency.fraction(counts))

    def step_latency(self, step: int) -> float | None:
        """Predicted latency ratio step ``step`` must reach (None without a latency wall)."""
        if self.latency_target is None:
            return None
        share = min(step, self.steps_per_episode) / self.steps_per_episode
        return 1.0 - (1.0 - self.latency_target) * share

    def wall(
        self,
        keep: np.ndarray,
        action: np.ndarray,
        target_macs: float | None = None,
        target_latency: float | None = None,
    ) -> tuple[np.ndarray, float]:
        """Smallest ``u in [0, 2]`` on the wall path whose kept counts fit ``target_macs``
        (default: the episode's budget); see :meth:`onnxprune.budget.Budget.fit`.

        ``keep [n]``: keep-ratios before this step; ``action [n]``: prune ratios;
        ``target_latency``: predicted latency ratio (default: the episode's, if any).
        Returns ``(counts [n], u)``.
        """
        target = self.target_macs if target_macs is None else target_macs
        full = self.plan_cost.full_macs
        lat_target = self.latency_target if target_latency is None else target_latency
        also = None
        if self.latency is not None and lat_target is not None:
            limit, predictor = lat_target, self.latency

            def also(counts: np.ndarray) -> bool:
                return predictor.fraction(counts) <= limit + 1e-12

        return self.budget.fit(keep, action, target / full if full else 1.0, also)

    def uniform_kept(self) -> dict[int, int]:
        """The uniform plan: one prune ratio for every group, the largest the FLOPs (and,
        with ``--latency``, the latency) wall allows (the ``uniform`` agent's zero action
        in one step)."""
        n = len(self.groups)
        counts, _ = self.wall(np.ones(n), np.zeros(n), self.target_macs)
        return self.kept_dict(counts)

    def step(self, action: np.ndarray, evaluate: bool = True) -> StepResult:
        """Apply prune ratios ``action [n_groups]`` in [0, 1]; see the module docstring.

        ``evaluate=False``: the last step's reward is NaN (not evaluated; see :meth:`record`).
        """
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape[0] != len(self.groups):
            raise OnnxPruneError(
                f"action has {action.shape[0]} ratios but the environment has "
                f"{len(self.groups)} prunable groups"
            )
        if not np.all(np.isfinite(action)):
            raise OnnxPruneError(f"action contains non-finite ratios: {action.tolist()}")
        action = np.clip(action, 0.0, 1.0)
        self._step += 1
        last = self._step >= self.steps_per_episode
        target = (
            self.target_macs if last else self.step_target(self._step) * self.plan_cost.full_macs
        )
        lat_target = self.latency_target if last else self.step_latency(self._step)
        counts, wall_u = self.wall(self._keep, action, target, lat_target)
        self._keep = counts / self._sizes
        # a rounding overshoot may already meet the final budget before the last step
        done = last or self.within_budget(counts)
        kept = self.kept_dict(counts)
        fraction = self.macs_fraction(counts)
        reward, cached = 0.0, False
        if done and evaluate:
            reward, cached = self.evaluate(kept)
        elif done:
            reward = math.nan
        return StepResult(self._record(), reward, done, kept, fraction, wall_u, cached)

    def within_budget(self, counts: np.ndarray) -> bool:
        """True when ``counts [n]`` meet the MACs budget and the predicted latency budget."""
        if self.macs_fraction(counts) > self.flops_target:
            return False
        latency, target = self.latency_fraction(counts), self.latency_target
        return latency is None or target is None or latency <= target + 1e-12

    def evaluate(self, kept: dict[int, int]) -> tuple[float, bool]:
        """``reward_fn(kept)``, cached by counts; returns ``(reward, was_cached)``."""
        key = self.plan_key(kept)
        if key in self.cache:
            return self.cache[key], True
        self.record(kept, self.reward_fn(kept))
        return self.cache[key], False

    def plan_key(self, kept: dict[int, int]) -> tuple[int, ...]:
        """The cache key of a plan: its kept counts in action order."""
        return tuple(kept[gid] for gid in self.group_ids)

    def record(self, kept: dict[int, int], reward: float) -> None:
        """Cache ``reward`` for ``kept``, evaluated elsewhere (it must be finite)."""
        reward = float(reward)
        if not math.isfinite(reward):
            raise OnnxPruneError(f"reward function returned {reward} for plan {kept}")
        self.cache[self.plan_key(kept)] = reward


@dataclass
class EnvCheck:
    """Result of :func:`check_env`: the checks that ran, all passed."""

    checks: list[str]

    def __str__(self) -> str:
        return "environment OK: " + "; ".join(self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"checks": self.checks}


def check_env(env: PruningEnv, n_random: int = 8, seed: int = 0) -> EnvCheck:
    """SB3-style environment checker; raises :class:`OnnxPruneError` naming the failed check.

    Checks: reset record shape ``[n + 1]`` and bounds; the observation builds; extreme
    (all 0, all 1) and ``n_random`` seeded random actions end inside the budget within
    ``steps_per_episode`` steps with finite rewards and records in [0, 1]; replaying the
    same actions from ``reset`` gives the same counts and reward (determinism).
    """
    checks = []
    record = env.reset()
    if record.shape != (env.record_size,):
        raise OnnxPruneError(
            f"check_env: reset record has shape {record.shape}, want {(env.record_size,)}"
        )
    if not np.all((record >= 0) & (record <= 1)):
        raise OnnxPruneError("check_env: reset record leaves [0, 1]")
    env.observe(record)
    checks.append(f"record shape ({env.record_size},), observation builds")
    rng = np.random.default_rng(seed)
    episodes = [np.zeros(env.n_actions), np.ones(env.n_actions)]
    episodes += [rng.uniform(0, 1, env.n_actions) for _ in range(n_random)]
    for action in episodes:
        results = []
        for _ in range(2):
            env.reset()
            for _ in range(env.steps_per_episode):
                result = env.step(action)
                if not np.all((result.record >= 0) & (result.record <= 1 + 1e-12)):
                    raise OnnxPruneError("check_env: state record leaves [0, 1] after a step")
                env.observe(result.record)
                if result.done:
                    break
            if not result.done:
                raise OnnxPruneError(
                    f"check_env: episode not done after {env.steps_per_episode} steps"
                )
            counts = np.array([result.kept[g] for g in env.group_ids])
            latency, lat_target = env.latency_fraction(counts), env.latency_target
            if latency is not None and lat_target is not None and latency > lat_target + 1e-12:
                raise OnnxPruneError(
                    f"check_env: episode ended at a predicted latency ratio {latency:.4f}, above "
                    f"the budget {env.latency_target}"
                )
            if result.macs_fraction > env.flops_target + 1e-12:
                raise OnnxPruneError(
                    f"check_env: episode ended at {result.macs_fraction:.4f} of the MACs, above "
                    f"the budget {env.flops_target}"
                )
            if not math.isfinite(result.reward):
                raise OnnxPruneError("check_env: reward is not finite")
            results.append((result.kept, result.reward))
        if results[0] != results[1]:
            raise OnnxPruneError("check_env: the same actions gave different plans or rewards")
    checks.append(f"{len(episodes)} episodes inside the budget, finite rewards, deterministic")
    env.reset()
    return EnvCheck(checks)

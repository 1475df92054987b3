"""The search: strategy presets, data splits, agents, checkpoints, final plan and report.

``run_search(model, data, flops, strategy, outdir, seed)`` (:mod:`~onnxprune.search.loop`)
does, in order:

1. :mod:`~onnxprune.search.prepare`: loads the model, analyses its channel groups and prices
   plans (an impossible budget fails here, naming the smallest reachable fraction); splits
   the data (:mod:`~onnxprune.search.splits`: reward, least-squares fit, selection and
   held-out splits, seeded and disjoint); builds the reward
   (:mod:`~onnxprune.search.reward`), the :class:`onnxprune.env.PruningEnv` and the
   strategy's agent (:mod:`onnxprune.rl.agents`).
2. :mod:`~onnxprune.search.loop`: ``episodes`` episodes in rounds of ``parallel``
   candidates (:mod:`~onnxprune.search.rounds`: the agent proposes them, an evaluator of
   :mod:`~onnxprune.search.evaluators` scores them in-process, on worker processes or on
   Ray actors, the agent learns from them), a checkpoint after each round
   (:mod:`~onnxprune.search.checkpoint`, ``--resume``), then the final pick (the best few
   plans re-scored on the selection split).
3. :mod:`~onnxprune.search.finalize`: materialises the plan, recovers, evaluates original
   and pruned on the held-out split, times both and writes ``pruned.onnx``, ``plan.json``
   and the report (:mod:`~onnxprune.search.report`).

Presets and their ``extends`` chains: :mod:`~onnxprune.search.strategy`; records:
:mod:`~onnxprune.search.result`.
"""

from onnxprune.rl.agents import BASELINE_MOMENTUM
from onnxprune.rl.config import DDPGConfig, NoiseSettings
from onnxprune.search.checkpoint import CHECKPOINT
from onnxprune.search.loop import run_search
from onnxprune.search.prepare import select_groups
from onnxprune.search.result import EpisodeRecord, SearchResult
from onnxprune.search.reward import PlanEvaluator, reward_from
from onnxprune.search.strategy import (
    AGENTS,
    CRITERIA,
    RECOVERY,
    REWARDS,
    SKIP_RULES,
    Strategy,
    load_strategy,
    parse_strategy,
    strategy_names,
)

__all__ = [
    "AGENTS",
    "BASELINE_MOMENTUM",
    "CHECKPOINT",
    "CRITERIA",
    "DDPGConfig",
    "NoiseSettings",
    "RECOVERY",
    "REWARDS",
    "SKIP_RULES",
    "EpisodeRecord",
    "PlanEvaluator",
    "SearchResult",
    "Strategy",
    "load_strategy",
    "parse_strategy",
    "reward_from",
    "run_search",
    "select_groups",
    "strategy_names",
]

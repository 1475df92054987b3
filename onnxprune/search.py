"""The search loop: strategy presets, agents, checkpoints, resume, final plan and report.

``run_search(model, data, flops, strategy, outdir, seed)`` does, in order:

1. Loads the model, analyses its channel groups (:func:`onnxprune.deps.analyze`) and prices
   plans with :class:`onnxprune.cost.PlanCost`. An impossible budget fails here, naming the
   smallest reachable fraction.
2. Splits the data with a seeded shuffle into a *reward split* (``reward_samples``) and a
   *held-out split* (the rest, or ``eval_samples`` of it). The reward never sees the
   held-out samples; ``eval_data`` replaces the held-out split with another file.
3. Builds the :class:`onnxprune.env.PruningEnv` whose reward is, after the paper (eq. 8),
   ``-error = top1/100 - 1`` on the reward split when the data has labels; without labels,
   the fidelity ``agreement/100 - 1`` (top-1 agreement with the unpruned model) or ``-KL``
   (``reward = "kl"``). The report names the reward used. With ``reward_recover = "ls"``
   each candidate is first repaired by least-squares reconstruction
   (:mod:`onnxprune.recover.lsq`, ``recover_images`` images of the reward split), so the
   search optimises the accuracy the recovered model will have.
4. Runs the strategy's agent for ``episodes`` episodes (see :data:`AGENTS`): ``warmup``
   episodes of uniform random actions, then the actor's action with truncated-normal noise
   whose sigma decays by ``noise.decay`` per episode (paper 002, section 5). Every step of an
   episode is stored with the episode's final reward minus a moving-average baseline (AMC)
   as a terminal transition, i.e. the critic regresses the Monte-Carlo return (discount 1,
   reward only at the end), and ``ddpg.updates_per_episode`` DDPG updates follow each
   exploitation episode. After every episode a checkpoint (agent, buffer, noise, generator
   states, plan cache, episode log, best plan) is written to ``OUTDIR/checkpoint.pt``;
   ``resume=True`` continues from it and ends with the same result as an uninterrupted run.
   Ctrl-C (``KeyboardInterrupt``) stops the loop and keeps the best plan so far.
5. Picks the final plan: with ``select_top > 1`` the best few plans by reward are re-scored
   on a *selection split* (``select_samples`` further samples, disjoint from the others) and
   the best sample-weighted mean of both scores wins; the top reward alone is optimistic.
6. Materialises the best plan (:func:`onnxprune.surgery.apply_plan`), optionally recovers
   accuracy (``recover``), evaluates original and pruned on the held-out split, times both
   (latency p50 at batch 1 and 32) and writes ``pruned.onnx``, ``plan.json``,
   ``report.json``, ``report.md`` and plots (:mod:`onnxprune.report`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from onnxprune.atomic import atomic_path
from onnxprune.errors import InternalError, OnnxPruneError

AGENTS = ("gnn-rl", "agmc", "amc", "uniform", "random")
SKIP_RULES = ("residual", "grouped")
REWARDS = ("auto", "top1", "agreement", "kl")
RECOVERY = ("none", "ls", "finetune")
CRITERIA = ("l1", "l2", "bn", "activation")
CHECKPOINT = "checkpoint.pt"
BASELINE_MOMENTUM = 0.95


# ------------------------------------------------------------------------------------------
# strategies


@dataclass
class NoiseSettings:
    """Exploration noise: initial ``sigma`` and per-episode ``decay``."""

    sigma: float = 0.5
    decay: float = 0.99


@dataclass
class DDPGSettings:
    """DDPG hyper-parameters (see :class:`onnxprune.rl.ddpg.DDPGConfig`)."""

    hidden: int = 300
    lr_actor: float = 1e-4
    lr_critic: float = 1e-3
    tau: float = 0.01
    batch_size: int = 64
    buffer_size: int = 2000
    updates_per_episode: int = 10
    head: str = "per-group"
    id_dim: int = 0
    critic: str = "joint"


@dataclass
class Strategy:
    """A search preset (``strategies/<name>.toml``). Fields are the TOML keys."""

    name: str
    source: str
    agent: str = "gnn-rl"
    episodes: int = 180
    warmup: int = 30
    steps_per_episode: int = 1
    criterion: str = "l1"
    round_to: int = 8
    min_channels: int = 8
    skip: list[str] = field(default_factory=lambda: ["residual"])
    reward: str = "auto"
    reward_samples: int = 500
    eval_samples: int = 0
    batch_size: int = 250
    recover: str = "none"
    reward_recover: str = "none"
    recover_images: int = 250
    encoder_dim: int = 64
    select_top: int = 1
    select_samples: int = 1000
    evaluations: int = 0
    noise: NoiseSettings = field(default_factory=NoiseSettings)
    ddpg: DDPGSettings = field(default_factory=DDPGSettings)

    def __str__(self) -> str:
        return (
            f"strategy '{self.name}' ({self.agent}, {self.episodes} episodes, {self.warmup} warm-up, "
            f"round_to {self.round_to}, skip {self.skip or 'none'}) from {self.source}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_INT_KEYS = {
    "episodes": 1,
    "warmup": 0,
    "steps_per_episode": 1,
    "round_to": 1,
    "min_channels": 1,
    "reward_samples": 1,
    "eval_samples": 0,
    "batch_size": 1,
    "encoder_dim": 1,
    "recover_images": 1,
    "select_top": 1,
    "select_samples": 1,
    "evaluations": 0,
}
_CHOICE_KEYS = {
    "agent": AGENTS,
    "criterion": CRITERIA,
    "reward": REWARDS,
    "recover": RECOVERY,
    "reward_recover": ("none", "ls"),
}


def strategy_names() -> list[str]:
    """Names of the bundled presets."""
    folder = resources.files("onnxprune").joinpath("strategies")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _check_number(source: str, key: str, value: Any, kind: type, minimum: float | None) -> Any:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok:
        raise OnnxPruneError(
            f"{source}: key '{key}' must be {'an integer' if kind is int else 'a number'}, "
            f"got {value!r}"
        )
    if minimum is not None and value < minimum:
        raise OnnxPruneError(f"{source}: key '{key}' must be >= {minimum}, got {value!r}")
    return kind(value)


def _table(source: str, name: str, data: Any, cls: type) -> Any:
    if not isinstance(data, dict):
        raise OnnxPruneError(f"{source}: '{name}' must be a table ([{name}]), got {data!r}")
    known = set(getattr(cls, "__dataclass_fields__", {}))
    values = {}
    for key, value in data.items():
        if key not in known:
            raise OnnxPruneError(
                f"{source}: unknown key '{name}.{key}'; known keys: {', '.join(sorted(known))}"
            )
        default = getattr(cls(), key)
        if isinstance(default, str):
            from onnxprune.rl.ddpg import CRITICS, HEADS

            choices = HEADS if key == "head" else CRITICS
            if value not in choices:
                raise OnnxPruneError(
                    f"{source}: key '{name}.{key}' must be one of {', '.join(choices)}, "
                    f"got {value!r}"
                )
            values[key] = value
            continue
        values[key] = _check_number(source, f"{name}.{key}", value, type(default), 0)
    settings = cls(**values)
    if isinstance(settings, NoiseSettings):
        if not settings.sigma > 0 or not 0 < settings.decay <= 1:
            raise OnnxPruneError(
                f"{source}: noise needs sigma > 0 and 0 < decay <= 1, got {settings}"
            )
    if isinstance(settings, DDPGSettings) and not 0 < settings.tau <= 1:
        raise OnnxPruneError(f"{source}: key 'ddpg.tau' must be in (0, 1], got {settings.tau}")
    return settings


def parse_strategy(data: Mapping[str, Any], name: str, source: str) -> Strategy:
    """Validate a preset's TOML table; errors name ``source`` and the key."""
    known = set(Strategy.__dataclass_fields__) - {"name", "source"}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise OnnxPruneError(
                f"{source}: unknown key '{key}'; known keys: {', '.join(sorted(known))}"
            )
        if key in _INT_KEYS:
            values[key] = _check_number(source, key, value, int, _INT_KEYS[key])
        elif key in _CHOICE_KEYS:
            if value not in _CHOICE_KEYS[key]:
                raise OnnxPruneError(
                    f"{source}: key '{key}' = {value!r} is not one of "
                    f"{', '.join(_CHOICE_KEYS[key])}"
                )
            values[key] = value
        elif key == "skip":
            if not isinstance(value, list) or any(v not in SKIP_RULES for v in value):
                raise OnnxPruneError(
                    f"{source}: key 'skip' must be a list of structural rules from "
                    f"{', '.join(SKIP_RULES)} (groups are never skipped by name), got {value!r}"
                )
            values[key] = list(value)
        elif key == "noise":
            values[key] = _table(source, "noise", value, NoiseSettings)
        elif key == "ddpg":
            values[key] = _table(source, "ddpg", value, DDPGSettings)
    strategy = Strategy(name=name, source=source, **values)
    if strategy.warmup > strategy.episodes:
        raise OnnxPruneError(
            f"{source}: warmup ({strategy.warmup}) exceeds episodes ({strategy.episodes})"
        )
    return strategy


def load_strategy(name_or_path: str | os.PathLike[str]) -> Strategy:
    """A bundled preset by name (``gnn-rl``, ``agmc``, ``amc``, ``uniform``, ``random``,
    ``fast``) or a ``.toml`` file. Unknown keys and bad values raise
    :class:`OnnxPruneError` naming the file and the key."""
    text_name = str(name_or_path)
    path = Path(text_name)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise OnnxPruneError(f"strategy file '{path}' does not exist; check --strategy")
        source, name, raw = str(path), path.stem, path.read_bytes()
    else:
        names = strategy_names()
        if text_name not in names:
            raise OnnxPruneError(
                f"unknown strategy '{text_name}'; use one of {', '.join(names)} or a .toml file"
            )
        resource = resources.files("onnxprune").joinpath("strategies", f"{text_name}.toml")
        source, name, raw = f"strategies/{text_name}.toml", text_name, resource.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise OnnxPruneError(f"strategy file '{source}' is not valid TOML: {exc}") from exc
    return parse_strategy(data, name, source)


# ------------------------------------------------------------------------------------------
# records


@dataclass
class EpisodeRecord:
    """One finished episode: its reward, MACs kept, kept counts and how it was chosen."""

    episode: int
    phase: str
    reward: float
    macs_fraction: float
    kept: dict[int, int]
    cached: bool
    seconds: float

    def __str__(self) -> str:
        return (
            f"episode {self.episode} ({self.phase}): reward {self.reward:.4f}, "
            f"MACs kept {self.macs_fraction:.3f}{' (cached)' if self.cached else ''}"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kept"] = {str(k): v for k, v in self.kept.items()}
        return data


@dataclass
class SearchResult:
    """Everything a search produced (``report.json`` is ``to_dict()``)."""

    model: str
    strategy: Strategy
    seed: int
    flops_target: float
    reward_metric: str
    reward_samples: int
    eval_samples: int
    eval_source: str
    episodes: list[EpisodeRecord]
    best_episode: int
    best_reward: float
    groups: list[dict[str, Any]]
    kept: dict[int, int]
    original: dict[str, Any]
    pruned: dict[str, Any]
    recover: str
    outdir: str
    files: dict[str, str]
    seconds: float
    search_seconds: float
    evaluations: int
    interrupted: bool = False
    resumed_from: int | None = None
    notes: list[str] = field(default_factory=list)
    reward_indices: list[int] = field(default_factory=list)
    heldout_indices: list[int] | None = None
    selection: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        o, p = self.original, self.pruned
        acc = ""
        if o.get("accuracy") is not None and p.get("accuracy") is not None:
            acc = f", held-out {self.reward_metric_label()} {o['accuracy']:.2f} -> {p['accuracy']:.2f} %"
        stop = " (interrupted)" if self.interrupted else ""
        return (
            f"search{stop}: {self.strategy.name} ({self.strategy.agent}), seed {self.seed}, "
            f"{len(self.episodes)} episodes, best reward {self.best_reward:.4f} at episode "
            f"{self.best_episode}; MACs {o['macs']:,} -> {p['macs']:,} "
            f"({p['macs'] / max(o['macs'], 1):.3f}){acc}; wrote {self.outdir}"
        )

    def reward_metric_label(self) -> str:
        return "top-1" if self.reward_metric == "top1" else "agreement"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "strategy": self.strategy.to_dict(),
            "seed": self.seed,
            "flops_target": self.flops_target,
            "reward_metric": self.reward_metric,
            "reward_samples": self.reward_samples,
            "eval_samples": self.eval_samples,
            "eval_source": self.eval_source,
            "best_episode": self.best_episode,
            "best_reward": self.best_reward,
            "groups": self.groups,
            "kept": {str(k): v for k, v in self.kept.items()},
            "original": self.original,
            "pruned": self.pruned,
            "recover": self.recover,
            "outdir": self.outdir,
            "files": self.files,
            "seconds": self.seconds,
            "search_seconds": self.search_seconds,
            "evaluations": self.evaluations,
            "interrupted": self.interrupted,
            "resumed_from": self.resumed_from,
            "notes": self.notes,
            "reward_indices": self.reward_indices,
            "heldout_indices": self.heldout_indices,
            "selection": self.selection,
            "episodes": [e.to_dict() for e in self.episodes],
        }


# ------------------------------------------------------------------------------------------
# building blocks


def select_groups(analysis: Any, skip: list[str]) -> tuple[list[Any], list[str]]:
    """Prunable groups the agent controls, after the structural ``skip`` rules.

    ``residual``: groups with more than one producer (channels tied across a residual Add);
    ``grouped``: groups of grouped/depthwise convolutions (``block_count > 1``).
    Returns ``(groups, notes)``; notes say how many groups each rule removed.
    """
    groups = list(analysis.prunable_groups())
    notes = []
    for rule in skip:
        if rule == "residual":
            keep = [g for g in groups if len(g.producers) <= 1]
        elif rule == "grouped":
            keep = [g for g in groups if g.block_count <= 1]
        else:
            raise OnnxPruneError(f"unknown skip rule '{rule}'; use one of {', '.join(SKIP_RULES)}")
        if len(keep) < len(groups):
            notes.append(f"skip rule '{rule}' left {len(groups) - len(keep)} group(s) full")
        groups = keep
    return groups, notes


class PlanEvaluator:
    """``(kept) -> reward`` on the reward split: plan -> surgery -> ORT session -> predict.

    ``metric``: ``top1`` (labels), ``agreement`` or ``kl`` (fidelity to ``reference``, the
    unpruned model's logits on the same samples).
    """

    def __init__(
        self,
        analysis: Any,
        scores: Mapping[int, np.ndarray],
        split: Any,
        metric: str,
        reference: np.ndarray | None,
        device: str,
        batch_size: int,
        threads: int | None = None,
        recover_images: int | None = None,
        fit_split: Any = None,
    ) -> None:
        self.analysis = analysis
        # Images the per-candidate least squares is fitted on; scoring a candidate on the
        # images it was fitted to would reward over-fitting, so this is a separate split
        # whenever the data allows (see run_search).
        self.fit_split = fit_split if fit_split is not None else split
        self.scores = scores
        self.split = split
        self.metric = metric
        self.reference = reference
        self.device = device
        self.batch_size = batch_size
        self.threads = threads
        self.recover_images = recover_images
        self.seconds = 0.0
        self.calls = 0

    def plan(self, kept: Mapping[int, int], meta: dict[str, Any] | None = None) -> Any:
        """The :class:`~onnxprune.plan.PruningPlan` keeping the ``kept[g]`` best channels."""
        from onnxprune.importance import plan_from_counts

        return plan_from_counts(self.analysis, kept, self.scores, meta=meta)

    def model(self, kept: Mapping[int, int]) -> Any:
        """The pruned model; with ``recover_images`` its pruned-input layers are refit by
        least squares on (at most that many images of) the reward split first."""
        from onnxprune.surgery import apply_plan

        pruned = apply_plan(self.analysis, self.plan(kept))
        if self.recover_images:
            from onnxprune.recover.lsq import reconstruct

            pruned = reconstruct(
                pruned,
                self.analysis.model,
                self.fit_split,
                max_images=self.recover_images,
                positions_per_image=16,
                seed=0,
            ).model
        return pruned

    def __call__(self, kept: Mapping[int, int]) -> float:
        from onnxprune.evaluate import accuracy_from_logits, make_session, predict

        start = time.perf_counter()
        session = make_session(
            self.model(kept).SerializeToString(),
            device=self.device,
            threads=self.threads,
            spin=False,
        )
        logits = predict(session, self.split.x, self.batch_size)
        result = accuracy_from_logits(logits, self.split.y, self.reference)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return reward_from(result, self.metric)


def reward_from(result: Any, metric: str) -> float:
    """Eq. 8 reward from an ``EvalResult``: ``-error`` as a fraction, or ``-KL``."""
    if metric == "top1":
        return result.top1 / 100.0 - 1.0
    if metric == "agreement":
        return result.agreement / 100.0 - 1.0
    return -float(result.kl)


def _graph_agent(kind: str, hierarchy: Any, env: Any, strategy: Strategy, seed: int) -> Any:
    """DDPG whose actor and critic read the graph: gnn-rl uses every level of the hierarchy
    with :class:`~onnxprune.rl.mgnn.MultiStageGNN`; agmc uses the layer graph with
    :class:`~onnxprune.rl.gcn.GCNEncoder`. Encoder rows are reordered to the action groups."""
    import torch

    from onnxprune.rl.ddpg import DDPG, DDPGConfig
    from onnxprune.rl.gcn import GCNEncoder
    from onnxprune.rl.mgnn import MultiStageGNN

    rows_of = {g: i for i, g in enumerate(hierarchy.prunable_group_ids)}
    missing = [g for g in env.group_ids if g not in rows_of]
    if missing:
        raise InternalError(
            f"the hierarchical graph does not know channel group(s) {missing[:5]}; "
            "cannot build the graph agent"
        )
    rows = torch.tensor([rows_of[g] for g in env.group_ids], dtype=torch.long)
    encoder_cls = MultiStageGNN if kind == "gnn-rl" else GCNEncoder
    made = [0]

    class ActionGroupEncoder(torch.nn.Module):
        """``forward(keep_ratios) -> (g [D], group_emb [n_actions, D])`` in action order."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = encoder_cls(
                hierarchy, hidden=strategy.encoder_dim, seed=seed * 2 + made[0]
            )
            made[0] += 1

        def forward(self, keep_ratios: Any) -> tuple[Any, Any]:
            g, group_emb = self.inner(keep_ratios)
            return g, group_emb[rows]

    config = DDPGConfig(**asdict(strategy.ddpg))
    return DDPG(ActionGroupEncoder, env.keep_ratios, env.reset(), env.n_actions, config, seed=seed)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _fingerprint(
    model_sha: str, strategy: Strategy, seed: int, flops: float, n_reward: int
) -> dict:
    """What must match for ``--resume``. The episode count may grow (extend a finished run);
    for ``random`` the warm-up follows it, so it may too; the final recovery may differ."""
    settings = strategy.to_dict()
    for free in ("episodes", "evaluations", "recover", "eval_samples", "name", "source"):
        settings.pop(free)
    if strategy.agent == "random":
        settings.pop("warmup")
    return {
        "model_sha": model_sha,
        "strategy": settings,
        "seed": seed,
        "flops": flops,
        "reward_samples": n_reward,
    }


# ------------------------------------------------------------------------------------------
# the loop


def run_search(
    model_path: str | os.PathLike[str],
    data: Any,
    flops: float,
    strategy: str | os.PathLike[str] | Strategy = "gnn-rl",
    outdir: str | os.PathLike[str] = "onnxprune-out",
    seed: int = 0,
    *,
    episodes: int | None = None,
    evaluations: int | None = None,
    reward_samples: int | None = None,
    eval_samples: int | None = None,
    eval_data: Any = None,
    device: str = "cpu",
    recover: str | None = None,
    resume: bool = False,
    show_progress: bool = True,
    latency_runs: int = 20,
    threads: int | None = None,
    on_episode: Callable[[EpisodeRecord], None] | None = None,
) -> SearchResult:
    """Search per-group prune ratios that keep ``flops`` of the MACs (see module docstring).

    ``data``/``eval_data``: a path (``.npz``, ``.npy``, image folder) or a
    :class:`onnxprune.data.Dataset`. ``episodes``, ``evaluations``, ``reward_samples``,
    ``eval_samples``, ``recover`` override the strategy. ``evaluations`` (> 0) stops the
    search once that many distinct plans have been evaluated (repeats hit the cache and are
    free), so agents can be compared at an equal evaluation budget. ``on_episode`` is called
    after each episode (it may raise ``KeyboardInterrupt`` to stop, as Ctrl-C does). Returns :class:`SearchResult`;
    raises :class:`OnnxPruneError` for bad input and impossible budgets.
    """
    import torch

    from onnxprune.cost import PlanCost, model_cost
    from onnxprune.data import Dataset, load_data
    from onnxprune.deps import analyze
    from onnxprune.env import ActionGroup, PruningEnv
    from onnxprune.evaluate import make_session, predict
    from onnxprune.importance import channel_scores
    from onnxprune.model import load_model
    from onnxprune.plan import model_sha256
    from onnxprune.rl.noise import TruncatedNormalNoise

    started = time.perf_counter()
    strat = copy.deepcopy(strategy) if isinstance(strategy, Strategy) else load_strategy(strategy)
    if episodes is not None:
        if episodes < 1:
            raise OnnxPruneError(f"--episodes must be >= 1, got {episodes}")
        strat.warmup = min(strat.warmup, episodes) if strat.agent != "random" else episodes
        strat.episodes = 1 if strat.agent == "uniform" else episodes
    if evaluations is not None:
        if evaluations < 0:
            raise OnnxPruneError(f"evaluations must be >= 0 (0: no limit), got {evaluations}")
        strat.evaluations = evaluations
    if strat.agent == "uniform":  # one deterministic plan: more episodes would repeat it
        strat.episodes, strat.warmup = 1, 0
    elif strat.agent == "random":  # every episode is a random draw
        strat.warmup = strat.episodes
    if reward_samples is not None:
        strat.reward_samples = reward_samples
    if eval_samples is not None:
        strat.eval_samples = eval_samples
    if recover is not None:
        if recover not in RECOVERY:
            raise OnnxPruneError(f"--recover must be one of {', '.join(RECOVERY)}, got '{recover}'")
        strat.recover = recover
    if not 0 < flops <= 1:
        raise OnnxPruneError(f"--flops must be a fraction of the MACs in (0, 1], got {flops}")
    _check_recover(strat.recover)
    out = Path(outdir)
    model_file = Path(model_path)
    if out.exists() and not out.is_dir():
        raise OnnxPruneError(f"output '{out}' exists and is not a folder; pass a folder with -o")

    model = load_model(model_file)
    analysis = analyze(model)
    groups, notes = select_groups(analysis, strat.skip)
    frozen = [g.id for g in analysis.groups if not g.prunable]
    plan_cost = PlanCost(
        analysis.model, analysis.channel_exprs(), analysis.group_sizes(), frozen=frozen
    )
    action_groups = [ActionGroup(g.id, g.size, g.block_count) for g in groups]
    if not action_groups:
        raise OnnxPruneError(
            f"model '{model_file}' has no prunable channel group left after the skip rules "
            f"{strat.skip} (run `onnxprune groups {model_file}` to see why groups are frozen)"
        )

    dataset = data if isinstance(data, Dataset) else load_data(data, model)
    if len(dataset) < 2:
        raise OnnxPruneError(
            f"data '{dataset.source}' has {len(dataset)} sample(s); need at least 2"
        )
    n_reward = min(
        strat.reward_samples, len(dataset) if eval_data is not None else len(dataset) - 1
    )
    # one seeded permutation; the reward split is its head, the held-out split the rest, so
    # the two are disjoint by construction (the data may be sorted by class: shuffle first)
    order = np.random.default_rng(seed).permutation(len(dataset))
    reward_indices = np.sort(order[:n_reward])
    reward_split = dataset.subset(reward_indices)
    # Per-candidate least squares is fitted on its own split (after the reward split in the
    # permutation), so the reward scores candidates on images their refit never saw.
    n_fit = 0
    if strat.reward_recover == "ls":
        spare = len(dataset) - n_reward
        if eval_data is None:  # the held-out split keeps at least half of what remains
            spare //= 2
        n_fit = max(0, min(strat.recover_images, spare))
    fit_split = dataset.subset(np.sort(order[n_reward : n_reward + n_fit])) if n_fit else None
    order = np.concatenate([order[:n_reward], order[n_reward + n_fit :]])
    # The final pick re-scores the best few plans on a selection split (next in the
    # permutation): the top reward over many noisy evaluations is optimistic ("winner's
    # curse"), more images for the last few candidates make the choice less of a lottery.
    n_select = 0
    if strat.select_top > 1:
        spare = len(order) - n_reward
        if eval_data is None:
            spare //= 2
        n_select = max(0, min(strat.select_samples, spare))
    select_split = (
        dataset.subset(np.sort(order[n_reward : n_reward + n_select])) if n_select else None
    )
    order = np.concatenate([order[:n_reward], order[n_reward + n_select :]])
    if eval_data is not None:
        heldout = eval_data if isinstance(eval_data, Dataset) else load_data(eval_data, model)
        heldout_indices = None
        if strat.eval_samples and strat.eval_samples < len(heldout):
            pick = np.random.default_rng(seed).permutation(len(heldout))[: strat.eval_samples]
            heldout = heldout.subset(np.sort(pick))
        eval_source = heldout.source
    else:
        rest = order[n_reward:]
        if strat.eval_samples:
            rest = rest[: strat.eval_samples]
        heldout_indices = np.sort(rest)
        heldout = dataset.subset(heldout_indices)
        eval_source = f"{dataset.source} (held-out split, disjoint from the reward split)"
    metric = strat.reward
    if metric == "auto":
        metric = "top1" if reward_split.labelled else "agreement"
    if metric == "top1" and not reward_split.labelled:
        raise OnnxPruneError(
            f"reward 'top1' needs labels but data '{dataset.source}' has none; use reward = "
            "'agreement' or 'kl' (fidelity to the unpruned model)"
        )

    original_session = make_session(
        analysis.model.SerializeToString(), device=device, threads=threads
    )
    reference = None
    if metric in ("agreement", "kl"):
        reference = predict(original_session, reward_split.x, strat.batch_size)
        notes.append(
            f"reward = fidelity to the unpruned model ({metric}); data has no labels"
            if not reward_split.labelled
            else f"reward = fidelity ({metric})"
        )
    scores = channel_scores(analysis, strat.criterion, data=reward_split)
    evaluator = PlanEvaluator(
        analysis,
        scores,
        reward_split,
        metric,
        reference,
        device,
        strat.batch_size,
        threads,
        recover_images=strat.recover_images if strat.reward_recover == "ls" else None,
        fit_split=fit_split,
    )
    if strat.reward_recover == "ls":
        notes.append(
            "reward measured after least-squares recovery of each candidate, fitted on "
            + (
                f"{n_fit} images disjoint from the reward and held-out splits"
                if fit_split is not None
                else f"{min(strat.recover_images, len(reward_split))} reward-split images "
                "(too little data for a separate fit split: the reward is optimistic)"
            )
        )
    steps = strat.steps_per_episode if strat.agent in ("gnn-rl", "agmc") else 1
    env = PruningEnv(
        action_groups,
        plan_cost,
        evaluator,
        flops,
        steps_per_episode=steps,
        round_to=strat.round_to,
        min_channels=strat.min_channels,
    )

    # agents
    noise = TruncatedNormalNoise(strat.noise.sigma, strat.noise.decay, seed=seed)
    agent: Any = None
    amc_state = None
    if strat.agent in ("gnn-rl", "agmc"):
        from onnxprune.hgraph import build_hierarchy

        hierarchy = build_hierarchy(analysis.model, analysis)
        agent = _graph_agent(strat.agent, hierarchy, env, strat, seed)
    elif strat.agent == "amc":
        from onnxprune.rl.amc import AMCState, layer_shapes, make_amc_agent
        from onnxprune.rl.ddpg import DDPGConfig

        shapes = layer_shapes(
            analysis.model, [g.producers for g in groups], [g.size for g in groups]
        )
        amc_state = AMCState(shapes, env.removable_macs)
        agent = make_amc_agent(amc_state, DDPGConfig(**asdict(strat.ddpg)), seed=seed)

    log: list[EpisodeRecord] = []
    best: tuple[float, int, dict[int, int]] | None = None
    baseline: float | None = None
    start_episode = 0
    resumed_from = None
    fingerprint = _fingerprint(model_sha256(analysis.model), strat, seed, flops, n_reward)
    checkpoint = out / CHECKPOINT
    # Created only now, after every input check: a refused run leaves nothing behind.
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        if not checkpoint.exists():
            raise OnnxPruneError(
                f"--resume: no checkpoint '{checkpoint}' in the output folder; run without --resume"
            )
        state = torch.load(checkpoint, weights_only=False)
        if state["fingerprint"] != fingerprint:
            raise OnnxPruneError(
                f"--resume: checkpoint '{checkpoint}' was made with another model, strategy, seed, "
                "--flops or --reward-samples; use the same arguments or a new output folder"
            )
        if agent is not None:
            agent.load_state_dict(state["agent"])
        noise.load_state_dict(state["noise"])
        env.cache.update(state["cache"])
        log = [EpisodeRecord(**e) for e in state["log"]]
        best, baseline = state["best"], state["baseline"]
        start_episode = resumed_from = len(log)

    interrupted = False
    search_start = time.perf_counter()
    from onnxprune.progress import progress

    # The agent's networks are tiny: one torch thread is fastest, and a second one only
    # busy-waits for cycles the onnxruntime reward sessions need (restored before recovery).
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with (
        _restore_torch_threads(torch_threads),
        progress(f"search {strat.name}", strat.episodes, enabled=show_progress) as bar,
    ):
        if start_episode:
            bar.advance(start_episode, status="resumed")
        try:
            for episode in range(start_episode, strat.episodes):
                if strat.evaluations and env.n_evaluations >= strat.evaluations:
                    notes.append(
                        f"stopped at episode {episode}: {env.n_evaluations} distinct plans "
                        f"evaluated (evaluation budget {strat.evaluations})"
                    )
                    break
                t0 = time.perf_counter()
                warm = episode < strat.warmup
                phase = "warm-up" if warm else "explore"
                record = env.reset()
                stored: list[tuple[Any, np.ndarray]] = []
                if strat.agent == "uniform":
                    result = env.step(np.zeros(env.n_actions))
                    phase = "uniform"
                elif strat.agent == "random":
                    result = env.step(noise.uniform(env.n_actions))
                    phase = "random"
                elif strat.agent == "amc":
                    states, actions = _amc_rollout(agent, amc_state, noise, warm)
                    result = env.step(actions)
                    stored = list(zip(states, [np.array([a]) for a in actions], strict=True))
                else:
                    while True:
                        if warm:
                            action = noise.uniform(env.n_actions)
                        else:
                            action = noise.sample(agent.act(record))
                        stored.append((record, action))
                        result = env.step(action)
                        record = result.record
                        if result.done:
                            break
                reward = result.reward
                if agent is not None:
                    baseline = (
                        reward
                        if baseline is None
                        else (BASELINE_MOMENTUM * baseline + (1 - BASELINE_MOMENTUM) * reward)
                    )
                    for state_record, action in stored:
                        agent.remember(state_record, action, reward - baseline, None, True)
                    if not warm:
                        for _ in range(strat.ddpg.updates_per_episode):
                            agent.update()
                        noise.step()
                if best is None or reward > best[0]:
                    best = (reward, episode, dict(result.kept))
                entry = EpisodeRecord(
                    episode,
                    phase,
                    reward,
                    result.macs_fraction,
                    dict(result.kept),
                    result.cached,
                    time.perf_counter() - t0,
                )
                log.append(entry)
                _atomic_torch_save(
                    {
                        "fingerprint": fingerprint,
                        "agent": agent.state_dict() if agent is not None else None,
                        "noise": noise.state_dict(),
                        "cache": dict(env.cache),
                        "log": [asdict(e) for e in log],
                        "best": best,
                        "baseline": baseline,
                    },
                    checkpoint,
                )
                bar.advance(
                    1,
                    status=f"best {best[0]:+.4f} (ep {best[1]}), MACs {result.macs_fraction:.3f}",
                )
                if on_episode is not None:
                    on_episode(entry)
        except KeyboardInterrupt:
            interrupted = True
            notes.append(f"interrupted after {len(log)} episode(s); kept the best plan so far")
            if best is None:
                raise
    assert best is not None
    selection: list[dict[str, Any]] = []
    if select_split is not None and len(env.cache) > 1 and not interrupted:
        best, selection = _select(
            env, evaluator, best, log, select_split, strat.select_top, metric, original_session
        )
        notes.append(
            f"final plan: the best of the top {len(selection)} plans by reward, re-scored on "
            f"{len(select_split)} more images disjoint from the reward and held-out splits "
            f"(weighted with the reward split: {len(reward_split)} + {len(select_split)} images)"
        )
    elif strat.select_top > 1:
        why = "interrupted" if interrupted else "no data left for a selection split, or one plan"
        notes.append(f"final plan: the top reward ({why})")
    search_seconds = time.perf_counter() - search_start

    return _finalize(
        model_file=model_file,
        analysis=analysis,
        strategy=strat,
        seed=seed,
        flops=flops,
        metric=metric,
        reward_split=reward_split,
        heldout=heldout,
        eval_source=eval_source,
        scores=scores,
        best=best,
        log=log,
        env=env,
        original_cost=model_cost(analysis.model),
        original_session=original_session,
        device=device,
        threads=threads,
        latency_runs=latency_runs,
        outdir=out,
        started=started,
        search_seconds=search_seconds,
        interrupted=interrupted,
        resumed_from=resumed_from,
        notes=notes,
        groups=groups,
        split_indices=(reward_indices, heldout_indices),
        selection=selection,
    )


def _select(
    env: Any,
    evaluator: PlanEvaluator,
    best: tuple[float, int, dict[int, int]],
    log: list[EpisodeRecord],
    split: Any,
    top: int,
    metric: str,
    original_session: Any,
) -> tuple[tuple[float, int, dict[int, int]], list[dict[str, Any]]]:
    """Re-score the ``top`` distinct plans with the best rewards on ``split`` and return the
    one with the best sample-weighted mean of both scores, plus the table of candidates."""
    from onnxprune.evaluate import predict

    ranked = sorted(env.cache.items(), key=lambda item: -item[1])[:top]
    reference = None
    if metric in ("agreement", "kl"):
        reference = predict(original_session, split.x, evaluator.batch_size)
    scorer = copy.copy(evaluator)
    scorer.split, scorer.reference = split, reference
    n_reward, n_select = len(evaluator.split), len(split)
    rows = []
    for key, reward in ranked:
        kept = env.kept_dict(key)
        again = scorer(kept)
        combined = (n_reward * reward + n_select * again) / (n_reward + n_select)
        rows.append(
            {
                "kept": {str(k): v for k, v in kept.items()},
                "reward": reward,
                "select_reward": again,
                "combined": combined,
            }
        )
    winner = max(range(len(rows)), key=lambda i: rows[i]["combined"])
    for i, row in enumerate(rows):
        row["chosen"] = i == winner
    kept = env.kept_dict(ranked[winner][0])
    episode = next((e.episode for e in log if e.kept == kept), best[1])
    return (ranked[winner][1], episode, kept), rows


@contextlib.contextmanager
def _restore_torch_threads(count: int) -> Iterator[None]:
    import torch

    try:
        yield
    finally:
        torch.set_num_threads(count)


def _amc_rollout(
    agent: Any, state: Any, noise: Any, warm: bool
) -> tuple[list[np.ndarray], np.ndarray]:
    from onnxprune.rl.amc import propose

    return propose(agent, state, noise, warm)


_RECOVER_FUNCTIONS = {
    "ls": ("onnxprune.recover.lsq", "least_squares_recover"),
    "finetune": ("onnxprune.recover.finetune", "finetune"),
}


def _recover_function(method: str) -> Callable[..., Any] | None:
    """The recovery function for ``method`` (``None`` for ``none``); a clear error when this
    build does not have it."""
    if method == "none":
        return None
    import importlib

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


def _check_recover(method: str) -> None:
    _recover_function(method)


def _latency(session: Any, batch: int, runs: int) -> float:
    from onnxprune.evaluate import measure_latency

    return float(measure_latency(session, runs=runs, warmup=max(2, runs // 5), batch=batch).p50)


def _finalize(
    *,
    model_file: Path,
    analysis: Any,
    strategy: Strategy,
    seed: int,
    flops: float,
    metric: str,
    reward_split: Any,
    heldout: Any,
    eval_source: str,
    scores: Any,
    best: tuple[float, int, dict[int, int]],
    log: list[EpisodeRecord],
    env: Any,
    original_cost: Any,
    original_session: Any,
    device: str,
    threads: int | None,
    latency_runs: int,
    outdir: Path,
    started: float,
    search_seconds: float,
    interrupted: bool,
    resumed_from: int | None,
    notes: list[str],
    groups: list[Any],
    split_indices: tuple[np.ndarray, np.ndarray | None],
    selection: list[dict[str, Any]],
) -> SearchResult:
    """Materialise the best plan, recover, evaluate on the held-out split, time, write files."""
    from onnxprune.cost import model_cost
    from onnxprune.evaluate import accuracy_from_logits, make_session, predict
    from onnxprune.importance import plan_from_counts
    from onnxprune.model import save_model
    from onnxprune.report import write_report
    from onnxprune.surgery import apply_plan

    best_reward, best_episode, kept = best
    meta = {
        "strategy": strategy.name,
        "agent": strategy.agent,
        "criterion": strategy.criterion,
        "round_to": strategy.round_to,
        "min_channels": strategy.min_channels,
        "flops_target": flops,
        "seed": seed,
        "best_episode": best_episode,
        "reward": metric,
    }
    plan = plan_from_counts(analysis, kept, scores, meta=meta)
    pruned = apply_plan(analysis, plan)
    recover_fn = _recover_function(strategy.recover)
    if recover_fn is not None:
        pruned = recover_fn(pruned, analysis.model, reward_split)
        notes.append(f"recovery '{strategy.recover}' used the reward split as calibration data")
    pruned_cost = model_cost(pruned)
    if pruned_cost.macs > flops * original_cost.macs + 1e-9:
        raise InternalError(
            f"the pruned model keeps {pruned_cost.macs / original_cost.macs:.4f} of the "
            f"MACs, above --flops {flops}"
        )
    files = {
        "pruned": str(save_model(pruned, outdir / "pruned.onnx", protect=[model_file])),
        "plan": str(plan.save(outdir / "plan.json")),
    }
    pruned_session = make_session(pruned.SerializeToString(), device=device, threads=threads)
    original_logits = predict(original_session, heldout.x, strategy.batch_size)
    pruned_logits = predict(pruned_session, heldout.x, strategy.batch_size)
    original_eval = accuracy_from_logits(original_logits, heldout.y)
    pruned_eval = accuracy_from_logits(pruned_logits, heldout.y, original_logits)
    labelled = heldout.y is not None

    def side(cost: Any, evaluation: Any, session: Any) -> dict[str, Any]:
        return {
            "macs": int(cost.macs),
            "flops": int(cost.flops),
            "params": int(cost.params),
            "accuracy": evaluation.top1 if labelled else evaluation.agreement,
            "eval": evaluation.to_dict(),
            "latency_ms_b1": _latency(session, 1, latency_runs) if latency_runs else None,
            "latency_ms_b32": _latency(session, 32, max(5, latency_runs // 2))
            if latency_runs
            else None,
        }

    original = side(original_cost, original_eval, original_session)
    if not labelled:
        original["accuracy"] = 100.0  # agreement of the model with itself
    pruned_side = side(pruned_cost, pruned_eval, pruned_session)
    group_rows = []
    for group in groups:
        count = kept.get(group.id, group.size)
        group_rows.append(
            {
                "id": group.id,
                "size": group.size,
                "kept": int(count),
                "keep_ratio": count / group.size,
                "tensor": next(iter(plan.tensors.get(group.id) or []), None),
            }
        )
    result = SearchResult(
        model=str(model_file),
        strategy=strategy,
        seed=seed,
        flops_target=flops,
        reward_metric=metric,
        reward_samples=len(reward_split),
        eval_samples=len(heldout),
        eval_source=eval_source,
        episodes=log,
        best_episode=best_episode,
        best_reward=best_reward,
        groups=group_rows,
        kept=dict(kept),
        original=original,
        pruned=pruned_side,
        recover=strategy.recover,
        outdir=str(outdir),
        files=files,
        seconds=time.perf_counter() - started,
        search_seconds=search_seconds,
        evaluations=env.n_evaluations,
        interrupted=interrupted,
        resumed_from=resumed_from,
        notes=notes,
        reward_indices=split_indices[0].tolist(),
        heldout_indices=None if split_indices[1] is None else split_indices[1].tolist(),
        selection=selection,
    )
    result.files.update(write_report(result, outdir))
    return result


__all__ = [
    "AGENTS",
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

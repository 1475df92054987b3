"""The records a search produces: one :class:`EpisodeRecord` per episode, the
:class:`BestPlan` so far and the :class:`SearchResult` (``report.json`` is its ``to_dict()``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from onnxprune.search.strategy import Strategy


def episode_text(episode: int) -> str:
    """``episode 7``, or ``the uniform baseline`` for the baseline plan (episode -1)."""
    return "the uniform baseline" if episode < 0 else f"episode {episode}"


@dataclass
class BestPlan:
    """The plan with the best reward so far: ``kept`` counts per group id."""

    reward: float
    episode: int
    kept: dict[int, int]

    def __str__(self) -> str:
        return f"best reward {self.reward:.4f} at {episode_text(self.episode)}"

    def to_dict(self) -> dict[str, Any]:
        return {"reward": self.reward, "episode": self.episode, "kept": dict(self.kept)}


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
    #: The input size the MACs are for (``{input: dims}``, batch 1).
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    #: What evaluated the candidates (:meth:`onnxprune.search.evaluators.Evaluator.to_dict`).
    evaluator: dict[str, Any] = field(default_factory=dict)
    #: The latency budget and its verification (``search --latency``), else None.
    latency: dict[str, Any] | None = None

    def __str__(self) -> str:
        from onnxprune.fidelity import MIN_RELIABLE_SAMPLES, format_figure

        o, p = self.original, self.pruned
        acc = ""
        metric = p.get("metric") or self.reward_metric
        interval = ((p.get("eval") or {}).get("intervals") or {}).get(metric)
        if p.get("accuracy") is not None:
            before = "" if o.get("accuracy") is None else f"{o['accuracy']:.2f} -> "
            figure = format_figure(metric, p["accuracy"], interval)
            acc = (
                f", held-out {self.reward_metric_label(metric)} {before}{figure} "
                f"(n={self.eval_samples})"
            )
        stop = " (interrupted)" if self.interrupted else ""
        warning = (
            f"\nWARNING: the held-out split has only {self.eval_samples} sample(s) "
            f"(< {MIN_RELIABLE_SAMPLES}); its figure is unreliable, read the interval"
            if self.eval_samples < MIN_RELIABLE_SAMPLES
            else ""
        )
        return (
            f"search{stop}: {self.strategy.name} ({self.strategy.agent}), seed {self.seed}, "
            f"{len(self.episodes)} episodes, best reward {self.best_reward:.4f} at "
            f"{episode_text(self.best_episode)}; MACs {o['macs']:,} -> {p['macs']:,} "
            f"({p['macs'] / max(o['macs'], 1):.3f}){acc}; wrote {self.outdir}{warning}"
        )

    def reward_metric_label(self, metric: str | None = None) -> str:
        from onnxprune.fidelity import METRIC_LABELS

        name = metric or self.reward_metric
        return METRIC_LABELS.get(name, name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "strategy": self.strategy.to_dict(),
            "seed": self.seed,
            "flops_target": self.flops_target,
            "input_shapes": self.input_shapes,
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
            "evaluator": self.evaluator,
            "latency": self.latency,
            "episodes": [e.to_dict() for e in self.episodes],
        }


@dataclass
class SearchOutcome:
    """What the episode loop hands to the final stage: the chosen plan and the log."""

    best: BestPlan
    log: list[EpisodeRecord]
    interrupted: bool
    resumed_from: int | None
    search_seconds: float
    selection: list[dict[str, Any]] = field(default_factory=list)
    evaluator: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        stop = ", interrupted" if self.interrupted else ""
        return f"{len(self.log)} episodes{stop}, {self.best} ({self.search_seconds:.1f} s)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "best": self.best.to_dict(),
            "episodes": [e.to_dict() for e in self.log],
            "interrupted": self.interrupted,
            "resumed_from": self.resumed_from,
            "search_seconds": self.search_seconds,
            "selection": self.selection,
            "evaluator": self.evaluator,
        }

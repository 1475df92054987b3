"""Search checkpoints: what ``--resume`` needs to continue exactly where a run stopped.

``OUTDIR/checkpoint.pt`` is written atomically after every episode. It holds the
fingerprint of the run (model hash, strategy, seed, budget, reward split size), the agent's
``state_dict()``, the env's plan cache, the episode log and the best plan. A resumed run
loads it and ends with the same result as an uninterrupted one.

It is read with ``torch.load(weights_only=False)``: only load checkpoints you wrote.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onnxprune.atomic import atomic_path
from onnxprune.errors import OnnxPruneError
from onnxprune.search.result import BestPlan, EpisodeRecord
from onnxprune.search.strategy import Strategy

CHECKPOINT = "checkpoint.pt"

# Strategy keys a resumed run may change: the episode count may grow (extend a finished
# run), and the evaluation budget, final recovery and held-out size do not touch the search.
_FREE_KEYS = ("episodes", "evaluations", "recover", "eval_samples", "name", "source")


def fingerprint(
    model_sha: str,
    strategy: Strategy,
    seed: int,
    flops: float,
    n_reward: int,
    free_keys: tuple[str, ...] = (),
) -> dict[str, Any]:
    """What must match for ``--resume``; ``free_keys``: further strategy keys the agent
    derives from the episode count (``Agent.resume_free_keys``), so they may change too."""
    settings = strategy.to_dict()
    for free in (*_FREE_KEYS, *free_keys):
        settings.pop(free)
    return {
        "model_sha": model_sha,
        "strategy": settings,
        "seed": seed,
        "flops": flops,
        "reward_samples": n_reward,
    }


@dataclass
class SearchState:
    """Everything a checkpoint restores: ``agent`` is the agent's ``state_dict()``, ``cache``
    the env's ``{counts: reward}`` plan cache."""

    agent: dict[str, Any]
    cache: dict[tuple[int, ...], float] = field(default_factory=dict)
    log: list[EpisodeRecord] = field(default_factory=list)
    best: BestPlan | None = None

    def __str__(self) -> str:
        best = "no plan yet" if self.best is None else str(self.best)
        return f"search state after {len(self.log)} episode(s), {len(self.cache)} plans, {best}"

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types only (what the checkpoint file stores)."""
        return {
            "agent": self.agent,
            "cache": dict(self.cache),
            "log": [asdict(e) for e in self.log],
            "best": None if self.best is None else asdict(self.best),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchState:
        best = data["best"]
        return cls(
            agent=data["agent"],
            cache=dict(data["cache"]),
            log=[EpisodeRecord(**e) for e in data["log"]],
            best=None if best is None else BestPlan(**best),
        )


class Checkpoint:
    """``path`` of this run's checkpoint and the ``fingerprint`` it must carry."""

    def __init__(self, path: Path, run_fingerprint: dict[str, Any]) -> None:
        self.path = path
        self.fingerprint = run_fingerprint

    def __str__(self) -> str:
        return f"checkpoint {self.path}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "fingerprint": self.fingerprint}

    def save(self, state: SearchState) -> None:
        """Write ``state`` atomically (temporary file + rename)."""
        import torch

        with atomic_path(self.path) as tmp:
            torch.save({"fingerprint": self.fingerprint, **state.to_dict()}, tmp)

    def load(self) -> SearchState:
        """The saved state; refuses a missing file or another run's checkpoint."""
        import torch

        if not self.path.exists():
            raise OnnxPruneError(
                f"--resume: no checkpoint '{self.path}' in the output folder; run without --resume"
            )
        data = torch.load(self.path, weights_only=False)
        if data.get("fingerprint") != self.fingerprint:
            raise OnnxPruneError(
                f"--resume: checkpoint '{self.path}' was made with another model, strategy, "
                "seed, --flops or --reward-samples; use the same arguments or a new output folder"
            )
        return SearchState.from_dict(data)

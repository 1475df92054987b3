"""Replay buffer for the DDPG agents (Stable-Baselines3 split: storage apart from algorithm).

A transition is ``(state, action, reward, next_state, done)`` where *state* is whatever compact record the
environment uses to rebuild its observation (for the DNN-Graph environment: the keep-ratio
vector and the step index, never the full graph tensors, which are rebuilt on demand), and
*action* is a float vector ``[n_actions]`` in ``[0, 1]``. The buffer is a ring of fixed
capacity (paper section 5: 2000); sampling uses its own seeded generator so a run repeats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxprune.errors import OnnxPruneError


@dataclass
class Transition:
    """One stored step: ``state`` (env-defined record), ``action [n_actions]``, ``reward``,
    ``next_state`` (record, ignored when ``done``) and ``done`` (episode ended here)."""

    state: Any
    action: np.ndarray
    reward: float
    next_state: Any = None
    done: bool = True

    def __str__(self) -> str:
        return f"Transition(action={np.round(self.action, 3).tolist()}, reward={self.reward:.4f})"

    def to_dict(self) -> dict[str, Any]:
        state = self.state.tolist() if hasattr(self.state, "tolist") else self.state
        return {
            "state": state,
            "action": self.action.tolist(),
            "reward": self.reward,
            "done": self.done,
        }


@dataclass
class ReplayBuffer:
    """Fixed-capacity ring buffer with seeded uniform sampling.

    ``capacity``: maximum transitions kept (oldest overwritten first).
    ``seed``: seeds the sampling generator; ``state_dict``/``load_state_dict`` include the
    generator state so a resumed search samples exactly what an uninterrupted one would.
    """

    capacity: int = 2000
    seed: int = 0
    _items: list[Transition] = field(default_factory=list, repr=False)
    _next: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise OnnxPruneError(f"replay buffer capacity must be >= 1, got {self.capacity}")
        self._rng = np.random.default_rng(self.seed)

    def __len__(self) -> int:
        return len(self._items)

    def __str__(self) -> str:
        return f"ReplayBuffer({len(self)}/{self.capacity} transitions)"

    def to_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "size": len(self), "seed": self.seed}

    def add(
        self,
        state: Any,
        action: np.ndarray,
        reward: float,
        next_state: Any = None,
        done: bool = True,
    ) -> None:
        """Store one transition; ``action`` is copied as float32 ``[n_actions]``."""
        action = np.asarray(action, dtype=np.float32).copy()
        item = Transition(state, action, float(reward), next_state, bool(done))
        if len(self._items) < self.capacity:
            self._items.append(item)
        else:
            self._items[self._next] = item
        self._next = (self._next + 1) % self.capacity

    def sample(self, batch_size: int) -> list[Transition]:
        """``batch_size`` transitions drawn uniformly with replacement (fewer stored is fine)."""
        if not self._items:
            raise OnnxPruneError("cannot sample from an empty replay buffer; add transitions first")
        index = self._rng.integers(0, len(self._items), size=batch_size)
        return [self._items[i] for i in index]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: items, ring position, generator state."""
        return {
            "capacity": self.capacity,
            "seed": self.seed,
            "items": [(t.state, t.action, t.reward, t.next_state, t.done) for t in self._items],
            "next": self._next,
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity = int(state["capacity"])
        self.seed = int(state["seed"])
        self._items = [
            Transition(s, np.asarray(a), float(r), s2, bool(d)) for s, a, r, s2, d in state["items"]
        ]
        self._next = int(state["next"])
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]

"""Exploration noise: truncated normal around the actor's action, exponentially decayed.

Paper 002, section 5: 30 warm-up episodes with random actions, then exploitation "with
exponentially decayed noise". Following AMC, the noisy action is drawn from a normal
distribution centred on the actor's action ``mu`` with standard deviation ``sigma``,
truncated to the action bounds ``[low, high]`` so no clipping mass piles up at the bounds.
``sigma`` is multiplied by ``decay`` after every exploitation episode (``step()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import truncnorm

from onnxprune.errors import OnnxPruneError


@dataclass
class TruncatedNormalNoise:
    """``sample(mu [n]) -> [n]`` in ``[low, high]``; seeded; ``step()`` decays sigma."""

    sigma: float = 0.5
    decay: float = 0.99
    low: float = 0.0
    high: float = 1.0
    min_sigma: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise OnnxPruneError(f"noise sigma must be > 0, got {self.sigma}")
        if not 0 < self.decay <= 1:
            raise OnnxPruneError(f"noise decay must be in (0, 1], got {self.decay}")
        if not self.low < self.high:
            raise OnnxPruneError(
                f"noise bounds must satisfy low < high, got {self.low}, {self.high}"
            )
        self.initial_sigma = self.sigma
        self._rng = np.random.default_rng(self.seed)

    def __str__(self) -> str:
        return f"TruncatedNormalNoise(sigma={self.sigma:.4f}, decay={self.decay})"

    def to_dict(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "initial_sigma": self.initial_sigma, "decay": self.decay}

    def sample(self, mu: np.ndarray) -> np.ndarray:
        """Noisy action ``[n]``: each entry ~ N(mu_i, sigma) truncated to [low, high]."""
        mu = np.clip(np.asarray(mu, dtype=np.float64), self.low, self.high)
        a = (self.low - mu) / self.sigma
        b = (self.high - mu) / self.sigma
        out = truncnorm.rvs(a, b, loc=mu, scale=self.sigma, size=mu.shape, random_state=self._rng)
        return np.clip(out, self.low, self.high).astype(np.float32)

    def uniform(self, n: int) -> np.ndarray:
        """A random warm-up action ``[n]`` uniform in ``[low, high]`` from the same generator."""
        return self._rng.uniform(self.low, self.high, size=n).astype(np.float32)

    def step(self) -> None:
        """Decay sigma once (call after each exploitation episode)."""
        self.sigma = max(self.min_sigma, self.sigma * self.decay)

    def state_dict(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sigma = float(state["sigma"])
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]

"""Settings records of the learning agents, importable without torch.

:class:`DDPGConfig` is the one DDPG configuration: the ``[ddpg]`` table of a strategy
preset is parsed straight into it, and :class:`onnxprune.rl.ddpg.DDPG` reads it.
:class:`NoiseSettings` is the ``[noise]`` table. They live here, apart from the networks,
so that loading or listing presets does not import torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

HEADS = ("per-group", "global")
CRITICS = ("joint", "per-group")


@dataclass
class DDPGConfig:
    """DDPG hyper-parameters (defaults: paper 002 section 5 and AMC's DDPG).

    ``updates_per_episode``: gradient steps :meth:`onnxprune.rl.ddpg.DDPG.train` takes
    after each exploitation episode. ``head`` is one of :data:`HEADS`, ``critic`` one of
    :data:`CRITICS`; ``id_dim`` is the learned per-action id size (0: none).
    """

    hidden: int = 300
    lr_actor: float = 1e-4
    lr_critic: float = 1e-3
    tau: float = 0.01
    gamma: float = 1.0
    batch_size: int = 64
    buffer_size: int = 2000
    updates_per_episode: int = 10
    head: str = "per-group"
    id_dim: int = 0
    critic: str = "joint"

    def __str__(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self).items())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def choices(self, key: str) -> tuple[str, ...]:
        """The allowed values of the string-valued setting ``key``."""
        return {"head": HEADS, "critic": CRITICS}[key]

    def problem(self) -> str | None:
        """Why these settings cannot be used (``None``: they can)."""
        if not 0 < self.tau <= 1:
            return f"key 'ddpg.tau' must be in (0, 1], got {self.tau}"
        return None


@dataclass
class NoiseSettings:
    """Exploration noise: initial ``sigma`` and per-episode ``decay``."""

    sigma: float = 0.5
    decay: float = 0.99

    def __str__(self) -> str:
        return f"sigma {self.sigma}, decay {self.decay}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def choices(self, key: str) -> tuple[str, ...]:
        raise KeyError(key)  # every noise setting is a number

    def problem(self) -> str | None:
        if not self.sigma > 0 or not 0 < self.decay <= 1:
            return f"noise needs sigma > 0 and 0 < decay <= 1, got {self!r}"
        return None

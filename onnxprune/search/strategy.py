"""Strategy presets: ``strategies/<name>.toml`` or a user's file, validated into a
:class:`Strategy`.

A preset may start with ``extends = "<parent>"`` (a bundled preset name, or a ``.toml`` path
relative to the file) and then lists only the keys it changes; a ``[noise]``/``[ddpg]``
table overrides its parent's table key by key. Parents resolve recursively; a cycle or an
unknown parent is an :class:`OnnxPruneError` naming the file.
"""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from onnxprune.errors import OnnxPruneError
from onnxprune.pipeline import RECOVERY_METHODS
from onnxprune.rl.agents import AGENT_REGISTRY, BUILTIN_AGENTS, agent_class
from onnxprune.rl.config import DDPGConfig, NoiseSettings

AGENTS = BUILTIN_AGENTS
SKIP_RULES = ("residual", "grouped")
REWARDS = ("auto", "top1", "agreement", "kl", "snr", "cosine", "timestep")
RECOVERY = RECOVERY_METHODS  # the final recovery: any method of pipeline.recover_model
CRITERIA = ("l1", "l2", "bn", "activation")
TABLES: dict[str, type[NoiseSettings] | type[DDPGConfig]] = {
    "noise": NoiseSettings,
    "ddpg": DDPGConfig,
}


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
    baseline: str = "uniform"
    #: candidates per round (K): proposed by one policy, evaluated together (in parallel
    #: with ``--workers``/``--ray``), then learnt from; the result depends on K, not on
    #: what evaluates them
    parallel: int = 1
    latency_steps: bool = True
    noise: NoiseSettings = field(default_factory=NoiseSettings)
    ddpg: DDPGConfig = field(default_factory=DDPGConfig)

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
    "parallel": 1,
}
_CHOICE_KEYS = {
    "criterion": CRITERIA,
    "reward": REWARDS,
    "recover": RECOVERY,
    "reward_recover": ("none", "ls"),
    "baseline": ("uniform", "none"),
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


def _table(source: str, name: str, data: Any) -> Any:
    """The ``[name]`` table validated into its settings class (:data:`TABLES`)."""
    cls = TABLES[name]
    if not isinstance(data, dict):
        raise OnnxPruneError(f"{source}: '{name}' must be a table ([{name}]), got {data!r}")
    known = {f.name for f in fields(cls)}
    defaults = cls()
    values = {}
    for key, value in data.items():
        if key not in known:
            raise OnnxPruneError(
                f"{source}: unknown key '{name}.{key}'; known keys: {', '.join(sorted(known))}"
            )
        default = getattr(defaults, key)
        if isinstance(default, str):
            choices = defaults.choices(key)
            if value not in choices:
                raise OnnxPruneError(
                    f"{source}: key '{name}.{key}' must be one of {', '.join(choices)}, "
                    f"got {value!r}"
                )
            values[key] = value
            continue
        values[key] = _check_number(source, f"{name}.{key}", value, type(default), 0)
    settings = cls(**values)
    problem = settings.problem()
    if problem is not None:
        raise OnnxPruneError(f"{source}: {problem}")
    return settings


def _value(source: str, key: str, value: Any) -> Any:
    """One top-level key's value, validated."""
    if key in _INT_KEYS:
        return _check_number(source, key, value, int, _INT_KEYS[key])
    if key == "agent":
        if value not in AGENT_REGISTRY:
            raise OnnxPruneError(
                f"{source}: key 'agent' = {value!r} is not one of {', '.join(AGENT_REGISTRY)}"
            )
        return value
    if key in _CHOICE_KEYS:
        if value not in _CHOICE_KEYS[key]:
            raise OnnxPruneError(
                f"{source}: key '{key}' = {value!r} is not one of {', '.join(_CHOICE_KEYS[key])}"
            )
        return value
    if key == "latency_steps":
        if not isinstance(value, bool):
            raise OnnxPruneError(
                f"{source}: key 'latency_steps' must be true or false, got {value!r}"
            )
        return value
    if key == "skip":
        if not isinstance(value, list) or any(v not in SKIP_RULES for v in value):
            raise OnnxPruneError(
                f"{source}: key 'skip' must be a list of structural rules from "
                f"{', '.join(SKIP_RULES)} (groups are never skipped by name), got {value!r}"
            )
        return list(value)
    return _table(source, key, value)


def parse_strategy(data: Mapping[str, Any], name: str, source: str) -> Strategy:
    """Validate a preset's TOML table (``extends`` resolved first); errors name ``source``
    and the key."""
    known = set(Strategy.__dataclass_fields__) - {"name", "source"}
    values: dict[str, Any] = {}
    for key, value in resolve_table(source, dict(data)).items():
        if key not in known:
            raise OnnxPruneError(
                f"{source}: unknown key '{key}'; known keys: {', '.join(sorted(known))}"
            )
        values[key] = _value(source, key, value)
    strategy = Strategy(name=name, source=source, **values)
    if strategy.warmup > strategy.episodes:
        raise OnnxPruneError(
            f"{source}: warmup ({strategy.warmup}) exceeds episodes ({strategy.episodes})"
        )
    return strategy


def _locate(name_or_path: str | os.PathLike[str]) -> tuple[str, str, bytes]:
    """``(source, name, raw bytes)`` of a bundled preset name or a ``.toml`` file."""
    text_name = str(name_or_path)
    path = Path(text_name)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise OnnxPruneError(f"strategy file '{path}' does not exist; check --strategy")
        return str(path), path.stem, path.read_bytes()
    names = strategy_names()
    if text_name not in names:
        raise OnnxPruneError(
            f"unknown strategy '{text_name}'; use one of {', '.join(names)} or a .toml file"
        )
    resource = resources.files("onnxprune").joinpath("strategies", f"{text_name}.toml")
    return f"strategies/{text_name}.toml", text_name, resource.read_bytes()


def _read(source: str, raw: bytes) -> dict[str, Any]:
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise OnnxPruneError(f"strategy file '{source}' is not valid TOML: {exc}") from exc


def _parent_ref(source: str, parent: Any) -> str:
    """Where ``extends = parent`` in ``source`` points: a bundled name, or a path relative
    to the extending file."""
    if not isinstance(parent, str) or not parent:
        raise OnnxPruneError(f"{source}: key 'extends' must be a preset name or a .toml path")
    if parent.endswith(".toml") and not source.startswith("strategies/"):
        return str(Path(source).parent / parent)
    if parent.endswith(".toml"):
        raise OnnxPruneError(f"{source}: a bundled preset can only extend bundled presets")
    return parent


def _identity(source: str) -> str:
    """One spelling per file (``a.toml``, ``./a.toml`` and its absolute path are one file)."""
    return source if source.startswith("strategies/") else os.path.realpath(source)


def resolve_table(source: str, data: dict[str, Any], chain: tuple[str, ...] = ()) -> dict:
    """``data`` with its ``extends`` chain merged in (parents first, tables key by key).

    ``chain``: the sources already being resolved (a repeat is a cycle).
    """
    if "extends" not in data:
        return data
    chain = (*chain, source)
    ref = _parent_ref(source, data["extends"])
    try:
        parent_source, _, raw = _locate(ref)
    except OnnxPruneError as exc:
        raise OnnxPruneError(
            f"{source}: extends unknown parent '{data['extends']}' ({exc})"
        ) from exc
    if _identity(parent_source) in {_identity(seen) for seen in chain}:
        cycle = " -> ".join([*chain, parent_source])
        raise OnnxPruneError(f"{source}: 'extends' forms a cycle ({cycle}); remove one 'extends'")
    merged = copy.deepcopy(resolve_table(parent_source, _read(parent_source, raw), chain))
    for key, value in data.items():
        if key == "extends":
            continue
        if key in TABLES and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def load_strategy(name_or_path: str | os.PathLike[str]) -> Strategy:
    """A bundled preset by name (``gnn-rl``, ``agmc``, ``amc``, ``uniform``, ``random``,
    ``fast``) or a ``.toml`` file. Unknown keys and bad values raise
    :class:`OnnxPruneError` naming the file and the key."""
    source, name, raw = _locate(name_or_path)
    return parse_strategy(_read(source, raw), name, source)


@dataclass
class StrategyOverrides:
    """Command-line values that replace a preset's (``None``: keep the preset's)."""

    episodes: int | None = None
    evaluations: int | None = None
    reward_samples: int | None = None
    eval_samples: int | None = None
    recover: str | None = None

    def __str__(self) -> str:
        given = {k: v for k, v in asdict(self).items() if v is not None}
        return "overrides: " + (", ".join(f"{k}={v}" for k, v in given.items()) or "none")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def apply(self, strategy: Strategy) -> Strategy:
        """A copy of ``strategy`` with these values, the agent's schedule applied."""
        strat = copy.deepcopy(strategy)
        if self.episodes is not None:
            if self.episodes < 1:
                raise OnnxPruneError(f"--episodes must be >= 1, got {self.episodes}")
            strat.episodes, strat.warmup = self.episodes, min(strat.warmup, self.episodes)
        if self.evaluations is not None:
            if self.evaluations < 0:
                raise OnnxPruneError(
                    f"evaluations must be >= 0 (0: no limit), got {self.evaluations}"
                )
            strat.evaluations = self.evaluations
        strat.episodes, strat.warmup = agent_class(strat.agent).schedule(
            strat.episodes, strat.warmup
        )
        if self.reward_samples is not None:
            strat.reward_samples = self.reward_samples
        if self.eval_samples is not None:
            strat.eval_samples = self.eval_samples
        if self.recover is not None:
            if self.recover not in RECOVERY:
                raise OnnxPruneError(
                    f"--recover must be one of {', '.join(RECOVERY)}, got '{self.recover}'"
                )
            strat.recover = self.recover
        return strat

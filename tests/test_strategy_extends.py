"""``extends`` in strategy files: parents resolve recursively, tables merge key by key,
cycles and unknown parents fail naming the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from onnxprune.errors import OnnxPruneError
from onnxprune.rl.config import DDPGConfig, NoiseSettings
from onnxprune.search import load_strategy


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def test_fast_resolves_to_the_former_fast_preset() -> None:
    fast, gnn = load_strategy("fast"), load_strategy("gnn-rl")
    # the values the self-contained strategies/fast.toml had before it extended gnn-rl
    expected = dataclasses.replace(
        gnn,
        name="fast",
        source="strategies/fast.toml",
        episodes=40,
        warmup=10,
        reward_samples=250,
        select_top=3,
        select_samples=250,
        encoder_dim=32,
        noise=NoiseSettings(sigma=0.5, decay=0.95),
        ddpg=DDPGConfig(
            hidden=64,
            lr_actor=1e-3,
            lr_critic=1e-3,
            tau=0.01,
            batch_size=64,
            buffer_size=2000,
            updates_per_episode=10,
            critic="per-group",
        ),
    )
    for field in dataclasses.fields(expected):
        assert getattr(fast, field.name) == getattr(expected, field.name), field.name
    assert (fast.steps_per_episode, fast.recover, fast.reward_recover) == (2, "ls", "ls")


def test_extends_a_bundled_preset_and_overrides_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, "mine", 'extends = "amc"\nepisodes = 60\n[ddpg]\nhidden = 32\n')
    mine, amc = load_strategy(path), load_strategy("amc")
    assert (mine.name, mine.source, mine.agent, mine.episodes) == ("mine", str(path), "amc", 60)
    assert mine.ddpg == dataclasses.replace(amc.ddpg, hidden=32)  # the rest of [ddpg] inherited
    assert mine.noise == amc.noise and mine.warmup == amc.warmup


def test_extends_chains_through_relative_files(tmp_path: Path) -> None:
    _write(tmp_path, "base", 'extends = "random"\nround_to = 4\n')
    _write(tmp_path, "middle", 'extends = "base.toml"\nepisodes = 9\nwarmup = 9\n')
    leaf = load_strategy(_write(tmp_path, "leaf", 'extends = "middle.toml"\nmin_channels = 4\n'))
    assert (leaf.agent, leaf.round_to, leaf.episodes, leaf.min_channels) == ("random", 4, 9, 4)
    assert leaf.reward_recover == load_strategy("random").reward_recover


def test_extends_cycle_is_refused_naming_the_files(tmp_path: Path) -> None:
    _write(tmp_path, "a", 'extends = "b.toml"\nepisodes = 3\n')
    _write(tmp_path, "b", 'extends = "a.toml"\n')
    with pytest.raises(OnnxPruneError, match=r"a\.toml.*cycle.*b\.toml -> .*a\.toml"):
        load_strategy(tmp_path / "a.toml")
    with pytest.raises(OnnxPruneError, match="cycle"):
        load_strategy(_write(tmp_path, "self", 'extends = "self.toml"\n'))


def test_extends_unknown_parent_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(OnnxPruneError, match=r"orphan\.toml: extends unknown parent 'gnn'"):
        load_strategy(_write(tmp_path, "orphan", 'extends = "gnn"\n'))
    with pytest.raises(OnnxPruneError, match=r"lost\.toml: extends unknown parent 'nope\.toml'"):
        load_strategy(_write(tmp_path, "lost", 'extends = "nope.toml"\n'))
    with pytest.raises(OnnxPruneError, match="must be a preset name"):
        load_strategy(_write(tmp_path, "bad", "extends = 3\n"))


def test_values_from_a_parent_are_still_validated(tmp_path: Path) -> None:
    _write(tmp_path, "parent", "episodes = 3\n")
    child = _write(tmp_path, "child", 'extends = "parent.toml"\nwarmup = 5\n')
    with pytest.raises(OnnxPruneError, match="child.toml: warmup \\(5\\) exceeds episodes \\(3\\)"):
        load_strategy(child)


def test_extends_cycle_through_other_spellings_of_a_path(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    _write(tmp_path, "top", 'extends = "sub/../sub/low.toml"\n')
    _write(tmp_path / "sub", "low", 'extends = "../top.toml"\n')
    with pytest.raises(OnnxPruneError, match="cycle"):
        load_strategy(tmp_path / "top.toml")

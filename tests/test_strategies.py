"""Strategy presets: every bundled preset loads; bad files fail naming the file and key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from onnxprune.errors import OnnxPruneError
from onnxprune.search import AGENTS, load_strategy, strategy_names


def test_bundled_presets_load_with_paper_settings() -> None:
    names = strategy_names()
    assert set(names) >= {"gnn-rl", "agmc", "amc", "uniform", "random", "fast"}
    presets = {name: load_strategy(name) for name in names}
    assert {p.agent for p in presets.values()} == set(AGENTS)
    gnn = presets["gnn-rl"]
    # paper 002 section 5
    assert (gnn.warmup, gnn.episodes) == (30, 180)
    assert (gnn.ddpg.tau, gnn.ddpg.batch_size, gnn.ddpg.buffer_size) == (0.01, 64, 2000)
    # the baselines get the same evaluation budget
    for name in ("agmc", "amc", "random"):
        assert presets[name].episodes == gnn.episodes
    assert presets["random"].warmup == presets["random"].episodes
    # one DDPG and noise configuration for every DDPG agent: no agent is tuned on its own;
    # the only difference is gnn-rl's critic (value decomposition over its per-group
    # embeddings), the baselines keep their papers' joint critic
    assert gnn.ddpg.critic == "per-group"
    for name in ("agmc", "amc"):
        assert presets[name].ddpg.critic == "joint"
        same = dataclasses.replace(presets[name].ddpg, critic=gnn.ddpg.critic)
        assert same == gnn.ddpg and presets[name].noise == gnn.noise
        assert presets[name].warmup == gnn.warmup
    # every searching preset rewards the LS-repaired candidate (the raw 50 % cut of a CIFAR
    # ResNet is near chance, so the raw reward cannot rank plans)
    for name in ("gnn-rl", "agmc", "amc", "random", "fast"):
        assert presets[name].reward_recover == "ls" and presets[name].recover == "ls", name
    assert presets["fast"].agent == "gnn-rl" and presets["fast"].episodes < gnn.episodes


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mine.toml"
    path.write_text(text)
    return path


def test_custom_file_loads(tmp_path: Path) -> None:
    path = _write(tmp_path, 'agent = "random"\nepisodes = 7\nwarmup = 7\nround_to = 4\n')
    strategy = load_strategy(path)
    assert (strategy.name, strategy.agent, strategy.episodes, strategy.round_to) == (
        "mine",
        "random",
        7,
        4,
    )
    assert strategy.source == str(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("episdoes = 3\n", "unknown key 'episdoes'"),
        ('agent = "ppo"\n', "key 'agent' = 'ppo' is not one of"),
        ('episodes = "many"\n', "key 'episodes' must be an integer"),
        ("round_to = 0\n", "key 'round_to' must be >= 1"),
        ('skip = ["conv1"]\n', "structural rules"),
        ("[noise]\nsigma = 0\n", "noise needs sigma > 0"),
        ("[ddpg]\nlr = 0.1\n", "unknown key 'ddpg.lr'"),
        ('[ddpg]\nhead = "attention"\n', "key 'ddpg.head' must be one of per-group, global"),
        ('[ddpg]\ncritic = "twin"\n', "key 'ddpg.critic' must be one of joint, per-group"),
        ("episodes = 3\nwarmup = 5\n", "warmup (5) exceeds episodes (3)"),
        ("episodes = [\n", "is not valid TOML"),
    ],
)
def test_bad_files_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(OnnxPruneError) as info:
        load_strategy(path)
    assert message in str(info.value)
    assert "mine.toml" in str(info.value)


def test_unknown_name_lists_presets(tmp_path: Path) -> None:
    with pytest.raises(OnnxPruneError, match="unknown strategy 'gnn'.*gnn-rl"):
        load_strategy("gnn")
    with pytest.raises(OnnxPruneError, match="does not exist"):
        load_strategy(tmp_path / "missing.toml")

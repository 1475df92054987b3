"""End-to-end search on a tiny CNN: presets, resume, splits, labels/no labels, CLI, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.cli import main
from onnxprune.cli.common import run_guarded
from onnxprune.data import Dataset
from onnxprune.errors import OnnxPruneError
from onnxprune.evaluate import make_session, predict
from onnxprune.search import load_strategy, run_search
from tests.conftest import make_tiny_cnn, tiny_cnn_macs

WIDTHS = (16, 24)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    onnx.save_model(make_tiny_cnn(WIDTHS), str(path))
    return path


@pytest.fixture(scope="module")
def tiny_data(tiny_model: Path) -> Dataset:
    """120 samples labelled by the unpruned model itself plus 20 % flipped labels."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (120, 3, 16, 16)).astype(np.float32)
    logits = predict(make_session(tiny_model, device="cpu"), x)
    y = logits.argmax(1).astype(np.int64)
    flip = rng.random(120) < 0.2
    y[flip] = rng.integers(0, 10, flip.sum())
    return Dataset(x, y, "tiny-data")


def _strategy(tmp_path: Path, agent: str = "gnn-rl", episodes: int = 6, warmup: int = 3) -> Path:
    path = tmp_path / f"{agent}-test.toml"
    path.write_text(
        f'agent = "{agent}"\nepisodes = {episodes}\nwarmup = {warmup}\nsteps_per_episode = 2\n'
        "round_to = 2\nmin_channels = 2\nskip = []\nreward_samples = 60\nbatch_size = 64\n"
        "encoder_dim = 8\n[noise]\nsigma = 0.4\ndecay = 0.9\n"
        "[ddpg]\nhidden = 16\nbatch_size = 8\nupdates_per_episode = 2\n"
    )
    return path


def _run(model: Path, data, outdir: Path, strategy, **kwargs):
    kwargs.setdefault("show_progress", False)
    kwargs.setdefault("latency_runs", 2)
    return run_search(model, data, 0.5, strategy, outdir, seed=kwargs.pop("seed", 0), **kwargs)


@pytest.mark.parametrize("agent", ["gnn-rl", "agmc", "amc", "random", "uniform"])
def test_every_agent_ends_inside_budget_and_writes_report(
    tiny_model: Path, tiny_data: Dataset, tmp_path: Path, agent: str
) -> None:
    result = _run(tiny_model, tiny_data, tmp_path / "out", _strategy(tmp_path, agent, 4, 2))
    full = tiny_cnn_macs(WIDTHS)
    assert result.original["macs"] == full
    assert result.pruned["macs"] <= 0.5 * full
    kept = (result.kept[result.groups[0]["id"]], result.kept[result.groups[1]["id"]])
    assert result.pruned["macs"] == tiny_cnn_macs(kept)
    assert len(result.episodes) == (1 if agent == "uniform" else 4)
    for name in (
        "pruned.onnx",
        "plan.json",
        "report.json",
        "report.md",
        "reward.png",
        "ratios.png",
    ):
        assert (tmp_path / "out" / name).is_file(), name
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["reward_metric"] == "top1" and report["best_reward"] == result.best_reward
    md = (tmp_path / "out" / "report.md").read_text()
    assert "-top-1 error on the reward split" in md and f"| MACs | {full:,} |" in md
    pruned = onnx.load(str(tmp_path / "out" / "pruned.onnx"))
    held_x = tiny_data.x[result.heldout_indices]
    held_y = tiny_data.y[result.heldout_indices]
    top1 = float(np.mean(predict(make_session(pruned, device="cpu"), held_x).argmax(1) == held_y))
    assert result.pruned["accuracy"] == pytest.approx(100 * top1)


def test_fast_preset_end_to_end(tiny_model: Path, tiny_data: Dataset, tmp_path: Path) -> None:
    preset = load_strategy("fast")
    preset.round_to, preset.min_channels = 2, 2
    result = _run(tiny_model, tiny_data, tmp_path, preset, episodes=5, reward_samples=40)
    assert result.strategy.agent == "gnn-rl" and len(result.episodes) == 5
    # 120 samples: 40 reward, 40 for the per-candidate least-squares fit (half of the rest),
    # 20 to re-score the final candidates (half of what is left), 20 held out -- disjoint
    assert result.reward_samples == 40 and result.eval_samples == 20
    assert not set(result.reward_indices) & set(result.heldout_indices)
    assert any("40 images disjoint from the reward and held-out splits" in n for n in result.notes)
    assert result.pruned["macs"] <= 0.5 * result.original["macs"]


def test_final_pick_rescores_top_plans_on_a_selection_split(
    tiny_model: Path, tiny_data: Dataset, tmp_path: Path
) -> None:
    path = _strategy(tmp_path, "random", 6, 6)  # no baseline: only the episodes' plans
    path.write_text(
        path.read_text().replace("encoder_dim", 'select_top = 3\nbaseline = "none"\nencoder_dim')
    )
    result = _run(tiny_model, tiny_data, tmp_path / "out", path)
    # 120 samples: 60 reward, 30 selection (half of the rest), 30 held out
    assert result.reward_samples == 60 and result.eval_samples == 30
    rows = result.selection
    assert len(rows) == 3 and sum(r["chosen"] for r in rows) == 1
    assert [r["reward"] for r in rows] == sorted((r["reward"] for r in rows), reverse=True)
    assert rows[0]["reward"] == max(e.reward for e in result.episodes)
    for row in rows:
        assert row["combined"] == pytest.approx(
            (60 * row["reward"] + 30 * row["select_reward"]) / 90
        )
    chosen = next(r for r in rows if r["chosen"])
    assert chosen["combined"] == max(r["combined"] for r in rows)
    assert {int(k): v for k, v in chosen["kept"].items()} == result.kept
    assert result.best_reward == chosen["reward"]
    assert result.episodes[result.best_episode].kept == result.kept
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["selection"] == rows
    assert "## Final pick" in (tmp_path / "out" / "report.md").read_text()


def test_evaluation_budget_stops_at_distinct_plans(
    tiny_model: Path, tiny_data: Dataset, tmp_path: Path
) -> None:
    strategy = _strategy(tmp_path, "gnn-rl", episodes=40, warmup=2)
    result = _run(tiny_model, tiny_data, tmp_path / "out", strategy, evaluations=4)
    assert result.evaluations == 4
    assert len({tuple(sorted(e.kept.items())) for e in result.episodes}) == 4
    assert len(result.episodes) < 40
    assert any("distinct plans evaluated (evaluation budget 4)" in n for n in result.notes)
    with pytest.raises(OnnxPruneError, match="evaluations must be >= 0"):
        _run(tiny_model, tiny_data, tmp_path / "bad", strategy, evaluations=-1)


def test_heldout_split_is_disjoint_from_reward_split(
    tiny_model: Path, tiny_data: Dataset, tmp_path: Path
) -> None:
    result = _run(tiny_model, tiny_data, tmp_path, _strategy(tmp_path, "random", 2, 2))
    reward, heldout = set(result.reward_indices), set(result.heldout_indices)
    assert len(reward) == 60 and len(heldout) == 60
    assert not reward & heldout and reward | heldout == set(range(120))
    # the split is a seeded shuffle, not the first rows (data is often sorted by class)
    assert reward != set(range(60))


def test_resume_after_interruption_equals_uninterrupted_run(
    tiny_model: Path, tiny_data: Dataset, tmp_path: Path
) -> None:
    strategy = _strategy(tmp_path, "gnn-rl", episodes=7, warmup=2)
    full = _run(tiny_model, tiny_data, tmp_path / "full", strategy)

    def stop_after_four(entry) -> None:
        if entry.episode == 3:
            raise KeyboardInterrupt

    cut = _run(tiny_model, tiny_data, tmp_path / "cut", strategy, on_episode=stop_after_four)
    assert cut.interrupted and len(cut.episodes) == 4
    assert (tmp_path / "cut" / "pruned.onnx").is_file()  # the best so far is still written
    resumed = _run(tiny_model, tiny_data, tmp_path / "cut", strategy, resume=True)
    assert resumed.resumed_from == 4 and not resumed.interrupted
    assert [e.reward for e in resumed.episodes] == [e.reward for e in full.episodes]
    assert [e.kept for e in resumed.episodes] == [e.kept for e in full.episodes]
    assert resumed.kept == full.kept and resumed.best_episode == full.best_episode
    assert resumed.evaluations == full.evaluations  # cached plans count after a resume too


def test_resume_can_extend_a_finished_run(
    tiny_model: Path, tiny_data: Dataset, tmp_path: Path
) -> None:
    strategy = _strategy(tmp_path, "gnn-rl", episodes=6, warmup=2)
    full = _run(tiny_model, tiny_data, tmp_path / "full", strategy)
    _run(tiny_model, tiny_data, tmp_path / "short", strategy, episodes=4)
    extended = _run(tiny_model, tiny_data, tmp_path / "short", strategy, resume=True)
    assert extended.resumed_from == 4 and len(extended.episodes) == 6
    assert [e.reward for e in extended.episodes] == [e.reward for e in full.episodes]
    assert extended.kept == full.kept


def test_resume_refuses_other_arguments(
    tiny_model: Path, tiny_data: Dataset, tmp_path: Path
) -> None:
    strategy = _strategy(tmp_path, "random", 2, 2)
    _run(tiny_model, tiny_data, tmp_path, strategy)
    with pytest.raises(OnnxPruneError, match="checkpoint .* another model, strategy, seed"):
        _run(tiny_model, tiny_data, tmp_path, strategy, seed=1, resume=True)
    with pytest.raises(OnnxPruneError, match="no checkpoint"):
        _run(tiny_model, tiny_data, tmp_path / "empty", strategy, resume=True)


def test_unlabelled_data_uses_fidelity_reward(
    tiny_model: Path, tiny_data: Dataset, tmp_path: Path
) -> None:
    unlabelled = Dataset(tiny_data.x, None, "unlabelled")
    result = _run(tiny_model, unlabelled, tmp_path, _strategy(tmp_path, "gnn-rl", 3, 2))
    assert result.reward_metric == "kl"  # the reward; held-out: agreement
    assert -1.0 <= result.best_reward <= 0.0
    assert result.original["accuracy"] == 100.0 and 0 <= result.pruned["accuracy"] <= 100
    assert "agreement with the unpruned model" in (tmp_path / "report.md").read_text()


def test_impossible_budget_fails_at_once_with_smallest_fraction(
    tiny_model: Path, tiny_data: Dataset, tmp_path: Path
) -> None:
    smallest = tiny_cnn_macs((2, 2)) / tiny_cnn_macs(WIDTHS)
    with pytest.raises(OnnxPruneError) as info:
        run_search(
            tiny_model, tiny_data, 0.001, _strategy(tmp_path), tmp_path / "out", show_progress=False
        )
    assert f"keeps {smallest:.4f} of its MACs" in str(info.value)
    assert not (tmp_path / "out").exists()  # a refused run leaves nothing behind


def test_cli_same_seed_same_plan(tiny_model: Path, tiny_data: Dataset, tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    np.savez(data, x=tiny_data.x, y=tiny_data.y)
    strategy = _strategy(tmp_path, "gnn-rl", 5, 2)
    plans = []
    for run in ("a", "b"):
        args = [
            "search",
            str(tiny_model),
            "--flops",
            "0.5",
            "--data",
            str(data),
            "--strategy",
            str(strategy),
            "--seed",
            "3",
            "--latency-runs",
            "0",
            "--json",
            "-o",
            str(tmp_path / run),
        ]
        assert run_guarded(main, args) == 0
        plans.append(json.loads((tmp_path / run / "plan.json").read_text())["groups"])
    assert plans[0] == plans[1] and plans[0]
    bad = [
        "search",
        str(tiny_model),
        "--flops",
        "1.5",
        "--data",
        str(data),
        "-o",
        str(tmp_path / "c"),
    ]
    assert run_guarded(main, bad) == 2


def test_least_squares_recovery_inside_reward_and_on_final_model(
    tiny_model: Path, tiny_data: Dataset, tmp_path: Path
) -> None:
    strategy = load_strategy(_strategy(tmp_path, "random", 3, 3))
    strategy.reward_recover, strategy.recover, strategy.recover_images = "ls", "ls", 30
    result = _run(tiny_model, tiny_data, tmp_path / "ls", strategy)
    assert result.recover == "ls"
    assert any("least-squares recovery of each candidate" in note for note in result.notes)
    # the reward of the best plan is the top-1 of its *recovered* model on the reward split
    from onnxprune.deps import analyze
    from onnxprune.importance import channel_scores, plan_from_counts
    from onnxprune.recover.lsq import reconstruct
    from onnxprune.surgery import apply_plan

    analysis = analyze(onnx.load(str(tiny_model)))
    reward_split = tiny_data.subset(result.reward_indices)
    plan = plan_from_counts(analysis, result.kept, channel_scores(analysis, "l1"))
    fitted = reconstruct(
        apply_plan(analysis, plan),
        analysis.model,
        reward_split,
        max_images=30,
        positions_per_image=16,
        seed=0,
    ).model
    logits = predict(make_session(fitted, device="cpu"), reward_split.x)
    assert result.best_reward == pytest.approx(np.mean(logits.argmax(1) == reward_split.y) - 1)


def test_unknown_recovery_is_a_clear_error(
    tiny_model: Path, tiny_data: Dataset, tmp_path: Path
) -> None:
    with pytest.raises(OnnxPruneError, match="--recover must be one of none, ls, finetune"):
        _run(tiny_model, tiny_data, tmp_path, _strategy(tmp_path), recover="magic")
    assert not (tmp_path / "checkpoint.pt").exists()  # failed before any search work


def test_uniform_baseline_is_a_candidate_and_wins_when_the_agent_misses_it(
    tiny_model: Path, tiny_data: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reward that is highest at the uniform plan and an agent that never proposes it: the
    baseline candidate is the result (episode -1) and the report says so."""
    from onnxprune.rl.agents import AGENT_REGISTRY, Proposal, RandomAgent
    from onnxprune.search import loop
    from onnxprune.search.reward import PlanEvaluator

    class FirstGroupAgent(RandomAgent):  # every episode prunes the first group hardest
        def propose(self, env, episode):
            env.reset()
            action = np.zeros(env.n_actions)
            action[0] = 1.0
            return Proposal(episode, "random", env.step(action, evaluate=False))

    monkeypatch.setitem(AGENT_REGISTRY, "first-group", FirstGroupAgent)
    target: dict[int, int] = {}
    original_prepare = loop.prepare

    def prepare(*args, **kwargs):
        setup = original_prepare(*args, **kwargs)
        target.update(setup.env.uniform_kept())
        return setup

    def reward(self, kept):  # 0 at the uniform plan, below elsewhere
        return 0.0 - sum(abs(kept[g] - target[g]) for g in kept) / 100

    monkeypatch.setattr(loop, "prepare", prepare)
    monkeypatch.setattr(PlanEvaluator, "__call__", reward)
    strategy = _strategy(tmp_path, "first-group", 2, 2)
    result = _run(tiny_model, tiny_data, tmp_path / "out", strategy)
    assert all(e.kept != target for e in result.episodes)
    assert result.kept == target and result.best_episode == -1 and result.best_reward == 0.0
    assert result.evaluations == 2  # the agent's one plan and the baseline
    beat = "the uniform plan (reward +0.0000) beat every searched plan"
    assert any(beat in n for n in result.notes)
    assert "at the uniform baseline" in (tmp_path / "out" / "report.md").read_text()
    # baseline = "none": the agent's plan, the uniform one is not evaluated
    strategy.write_text('baseline = "none"\n' + strategy.read_text())
    result = _run(tiny_model, tiny_data, tmp_path / "none", strategy)
    assert result.kept != target and result.best_episode == 0 and result.evaluations == 1


def test_a_model_without_prunable_groups_is_one_clear_error(tmp_path: Path) -> None:
    """One Conv from the input to the output: its channels are the model's input and output,
    so every group is frozen; the message says so instead of blaming the skip rules."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxprune.deps import analyze

    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "frozen",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [weight],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = tmp_path / "frozen.onnx"
    onnx.save_model(proto, str(model))
    analysis = analyze(proto)
    assert analysis.groups and not list(analysis.prunable_groups())
    x = np.random.default_rng(0).normal(0, 1, (8, 3, 8, 8)).astype(np.float32)
    with pytest.raises(OnnxPruneError) as err:
        _run(model, Dataset(x, None, "d"), tmp_path / "out", _strategy(tmp_path, "uniform", 1, 0))
    assert f"all {len(analysis.groups)} of its channel groups are frozen" in str(err.value)
    assert "onnxprune groups" in str(err.value) and not (tmp_path / "out").exists()

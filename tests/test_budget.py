"""The one budget rule: `prune --flops` and the search environment round and fit alike."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxprune import importance
from onnxprune.budget import Budget, ChannelRounding, _Group, keep_count
from onnxprune.cost import PlanCost
from onnxprune.deps import analyze
from onnxprune.env import ActionGroup, PruningEnv
from onnxprune.errors import OnnxPruneError, PlanError
from tests.conftest import make_tiny_cnn, tiny_cnn_macs
from tests.corpus.fixtures import corpus_model  # noqa: F401  (pytest fixture)
from tests.test_env import _plan_cost as _chain_cost


def _analysis_env(widths: tuple[int, int], target: float, round_to: int = 8):
    analysis = analyze(make_tiny_cnn(widths))
    plan_cost = PlanCost(analysis.model, analysis.channel_exprs(), analysis.group_sizes())
    groups = [ActionGroup(g.id, g.size, g.block_count) for g in analysis.prunable_groups()]
    make_env = lambda: PruningEnv(groups, plan_cost, lambda kept: 0.0, target, round_to=round_to)  # noqa: E731
    return analysis, plan_cost, make_env


@pytest.mark.parametrize("small", [4, 6])
def test_prune_and_search_env_agree_on_a_group_smaller_than_round_to(small):
    # A 4- or 6-channel group cannot keep a multiple of 8 below its size: both copies of the
    # rule used to disagree (prune kept it whole, the env cut it to 1 or 2 channels).
    analysis, plan_cost, make_env = _analysis_env((small, 16), 1.0)
    env = make_env()
    by_size = {g.size: g.id for g in analysis.prunable_groups()}
    prune_counts = importance.keep_counts_for_ratios(analysis, 0.75, round_to=8)
    env_counts = env.kept_dict(env.rounding.counts(np.full(env.n_actions, 0.25)))
    assert prune_counts == env_counts
    assert env_counts[by_size[small]] == small and env_counts[by_size[16]] == 8
    # one rounding, not two: keeping 0.74 * 16 = 11.84 channels at round-to 8 keeps 8 (the
    # nearest multiple) in both, where prune used to round to 12 first and then to 16
    prune_counts = importance.keep_counts_for_ratios(analysis, 0.26, round_to=8)
    assert prune_counts == env.kept_dict(env.rounding.counts(np.full(env.n_actions, 0.74)))
    assert prune_counts[by_size[16]] == 8

    smallest = tiny_cnn_macs((small, 8)) / tiny_cnn_macs((small, 16))
    assert env.min_fraction == pytest.approx(smallest, abs=1e-12)
    plan = importance.plan_for_flops(analysis, smallest, round_to=8)
    assert plan.meta["macs_fraction"] == pytest.approx(smallest, abs=1e-6)
    with pytest.raises(PlanError) as prune_error:
        importance.plan_for_flops(analysis, smallest * 0.99, round_to=8)
    _, _, too_small_env = _analysis_env((small, 16), smallest * 0.99)
    with pytest.raises(OnnxPruneError) as env_error:
        too_small_env()
    for error in (prune_error, env_error):
        assert f"keeps {smallest:.4f} of its MACs" in str(error.value)
        assert f"smallest reachable fraction is {smallest:.4f}" in str(error.value)


@pytest.mark.parametrize(
    ("size", "ratio", "round_to", "min_channels", "blocks", "kept"),
    [
        (64, 0.5, 8, 1, 1, 32),
        (16, 0.3, 8, 1, 1, 8),  # removes round(4.8)=5 -> 11 -> nearest multiple of 8
        (16, 0.2, 8, 1, 1, 16),  # 13 -> 16
        (10, 0.5, 8, 1, 1, 8),  # 5 -> 8
        (6, 0.9, 8, 1, 1, 6),  # 1 -> floor 8 -> capped at the size: nothing removed
        (64, 0.97, 8, 1, 1, 8),  # 2 -> 0 -> floor one step
        (16, 0.6, 1, 1, 4, 8),  # 6 -> multiple of the 4 blocks -> 8
        (16, 0.9, 1, 1, 4, 4),  # 2 -> 4 (one per block)
        (16, 0.5, 1, 12, 1, 12),  # min-channels floor
        (16, 0.5, 8, 12, 1, 16),  # floor 12 rounds up to 16
        (20, 0.0, 8, 1, 1, 20),  # ratio 0 keeps odd sizes untouched
        (20, 0.5, 1, 1, 1, 10),
    ],
)
def test_rounded_keep_count(size, ratio, round_to, min_channels, blocks, kept):
    assert keep_count(size, ratio, round_to, min_channels, blocks) == kept


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 80), min_size=1, max_size=5),
    blocks=st.sampled_from([1, 2, 4]),
    round_to=st.sampled_from([1, 4, 8]),
    min_channels=st.integers(1, 12),
)
def test_counts_are_legal_and_monotone(sizes, blocks, round_to, min_channels):
    groups = [_Group(i, size * blocks, blocks) for i, size in enumerate(sizes)]
    rounding = ChannelRounding(groups, round_to, min_channels)
    ratios = np.linspace(0, 1, 41)
    counts = np.stack([rounding.counts_for_prune(r) for r in ratios])
    assert np.all(np.diff(counts, axis=0) <= 0)  # more pruning never keeps more
    assert counts[0].tolist() == [g.size for g in groups]  # R = 0 keeps every group whole
    for i, group in enumerate(groups):
        step = np.lcm(round_to, blocks)
        for count in counts[:, i]:
            assert count == group.size or (count % step == 0 and count >= min_channels)
            assert count >= min(min_channels, group.size)
        scalar = [keep_count(group.size, r, round_to, min_channels, blocks) for r in ratios]
        assert scalar == counts[:, i].tolist()


def _refill(budget: Budget, counts: np.ndarray, target: float) -> np.ndarray:
    """The old quadratic fill (re-sort every round), as an oracle for the heap version."""
    counts, rounding, blocked = counts.copy(), budget.rounding, set()
    while True:
        candidates = sorted(
            (rounding.grown(i, counts[i]) / rounding.sizes[i], rounding.group_ids[i], i)
            for i in range(len(counts))
            if i not in blocked and counts[i] < rounding.sizes[i]
        )
        if not candidates:
            return counts
        i = candidates[0][2]
        trial = counts.copy()
        trial[i] = rounding.grown(i, counts[i])
        if budget.fraction(trial) <= target:
            counts = trial
        else:
            blocked.add(i)


@pytest.mark.parametrize("widths", [(16, 24, 32, 12), (40, 8, 64, 24), (8, 8, 8, 8)])
@pytest.mark.parametrize("target", [0.3, 0.55, 0.8])
def test_fill_matches_the_quadratic_reference(widths, target):
    plan_cost = _chain_cost(widths)
    rounding = ChannelRounding([_Group(i, w) for i, w in enumerate(widths)], 4, 1)
    budget = Budget(plan_cost, rounding)
    counts, u = budget.fit(np.ones(4), np.zeros(4), target)
    assert budget.fraction(counts) <= target and u > 1
    filled = budget.fill(counts, target)
    np.testing.assert_array_equal(filled, _refill(budget, counts, target))
    assert budget.fraction(filled) <= target and np.all(filled >= counts)


def test_smallest_fraction_leaves_other_groups_full():
    full = tiny_cnn_macs((8, 16))
    analysis = analyze(make_tiny_cnn((8, 16)))
    plan_cost = PlanCost(analysis.model, analysis.channel_exprs(), analysis.group_sizes())
    groups = {g.size: g for g in analysis.prunable_groups()}
    both = [groups[8], groups[16]]
    assert Budget(plan_cost, ChannelRounding(both, 1, 1)).smallest_fraction == pytest.approx(
        tiny_cnn_macs((1, 1)) / full
    )
    assert Budget(plan_cost, ChannelRounding(both, 1, 4)).smallest_fraction == pytest.approx(
        tiny_cnn_macs((4, 4)) / full
    )
    only_first = Budget(plan_cost, ChannelRounding([groups[8]], 1, 1))
    assert only_first.smallest_fraction == pytest.approx(tiny_cnn_macs((1, 16)) / full)
    with pytest.raises(PlanError, match=r"ask for --flops >= 0\.127"):
        only_first.require(0.01)


FILL_MODELS = ["resnet_b", "mobilenet_v2", "resnext", "densenet", "unet", "shufflenet_v2"]


def _fill_both(analysis, target: float, round_to: int) -> tuple[np.ndarray, np.ndarray]:
    """(incremental Budget.fill, full re-pricing oracle) from the uniform plan of --flops."""
    plan_cost = PlanCost(analysis.model, analysis.channel_exprs(), analysis.group_sizes())
    groups = analysis.prunable_groups()
    budget = Budget(plan_cost, ChannelRounding(groups, round_to, 1))
    keep = np.ones(len(groups))
    counts, _ = budget.fit(keep, np.zeros_like(keep), target)
    return budget.fill(counts, target), _refill(budget, counts, target)


@pytest.mark.parametrize("target", [0.3, 0.5, 0.75])
@pytest.mark.parametrize("round_to", [8, 1])
def test_incremental_fill_equals_full_repricing_on_resnet20(target, round_to):
    from pathlib import Path

    from onnxprune.model import load_model

    path = Path(__file__).parents[1] / "examples" / "cifar_resnet" / "resnet20.onnx"
    filled, oracle = _fill_both(analyze(load_model(path)), target, round_to)
    np.testing.assert_array_equal(filled, oracle)


@pytest.mark.parametrize("name", FILL_MODELS)
@pytest.mark.parametrize("target", [0.35, 0.6])
def test_incremental_fill_equals_full_repricing_on_corpus(name, target, corpus_model):  # noqa: F811
    from onnxprune.model import load_model

    analysis = analyze(load_model(corpus_model(name)))
    for round_to in (4, 1):
        filled, oracle = _fill_both(analysis, target, round_to)
        np.testing.assert_array_equal(filled, oracle)


def test_macs_tracker_follows_single_group_changes(corpus_model):  # noqa: F811
    from onnxprune.model import load_model

    analysis = analyze(load_model(corpus_model("resnext")))
    plan_cost = PlanCost(analysis.model, analysis.channel_exprs(), analysis.group_sizes())
    sizes = np.array([analysis.group_sizes()[g] for g in plan_cost.group_ids], dtype=np.float64)
    kept = sizes.copy()
    tracker = plan_cost.tracker(kept)
    assert tracker.macs == plan_cost.full_macs
    rng = np.random.default_rng(0)
    for _ in range(60):
        position = int(rng.integers(len(kept)))
        kept[position] = int(rng.integers(1, sizes[position] + 1))
        tracker.set(position, kept[position])
        assert tracker.macs == plan_cost.macs(kept)
    assert tracker.macs < plan_cost.full_macs

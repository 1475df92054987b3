"""Data splits of a search: seeded, disjoint, sized as documented, and the same indices as
the pre-package search for the same inputs (pure numpy, no onnxruntime)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.data import Dataset
from onnxprune.errors import OnnxPruneError
from onnxprune.search.splits import SplitSizes, make_splits, split_indices
from onnxprune.search.strategy import Strategy


def _reference(n, seed, reward, fit, select, eval_samples, n_eval):
    """The split code of the former ``onnxprune/search.py``, verbatim in its arithmetic."""
    eval_data = n_eval is not None
    n_reward = min(reward, n if eval_data else n - 1)
    order = np.random.default_rng(seed).permutation(n)
    reward_idx = np.sort(order[:n_reward])
    n_fit = 0
    if fit:
        spare = n - n_reward
        if not eval_data:
            spare //= 2
        n_fit = max(0, min(fit, spare))
    fit_idx = np.sort(order[n_reward : n_reward + n_fit]) if n_fit else None
    order = np.concatenate([order[:n_reward], order[n_reward + n_fit :]])
    n_select = 0
    if select:
        spare = len(order) - n_reward
        if not eval_data:
            spare //= 2
        n_select = max(0, min(select, spare))
    select_idx = np.sort(order[n_reward : n_reward + n_select]) if n_select else None
    order = np.concatenate([order[:n_reward], order[n_reward + n_select :]])
    heldout = pick = None
    if eval_data:
        if eval_samples and eval_samples < n_eval:
            pick = np.sort(np.random.default_rng(seed).permutation(n_eval)[:eval_samples])
    else:
        rest = order[n_reward:]
        if eval_samples:
            rest = rest[:eval_samples]
        heldout = np.sort(rest)
    return reward_idx, fit_idx, select_idx, heldout, pick


def _same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


CASES = [
    # n, seed, reward, fit, select, eval_samples, n_eval
    (120, 0, 60, 0, 0, 0, None),
    (120, 0, 40, 250, 250, 0, None),
    (120, 3, 60, 0, 1000, 0, None),
    (120, 1, 500, 250, 0, 0, None),
    (10, 0, 4, 2, 2, 1, None),
    (2, 5, 500, 250, 1000, 0, None),
    (50, 2, 20, 10, 10, 0, 30),
    (50, 2, 500, 10, 10, 7, 30),
    (1000, 7, 500, 250, 1000, 100, None),
]


@pytest.mark.parametrize("case", CASES)
def test_same_indices_as_the_former_search(case) -> None:
    n, seed, reward, fit, select, eval_samples, n_eval = case
    got = split_indices(n, SplitSizes(reward, fit, select, eval_samples), seed, n_eval)
    want = _reference(*case)
    for name, a, b in zip(
        ("reward", "fit", "select", "heldout", "eval_pick"),
        (got.reward, got.fit, got.select, got.heldout, got.eval_pick),
        want,
        strict=True,
    ):
        assert _same(a, b), name


def test_hand_checked_small_case() -> None:
    order = np.random.default_rng(0).permutation(10)  # the shuffle the splits cut
    got = split_indices(10, SplitSizes(reward=4, fit=2, select=2), seed=0)
    # reward: the first 4; fit: 2 of the 6 left (at most half: 3); select: 2 of the 4 left
    # (at most half: 2); held-out: the 2 remaining
    assert got.reward.tolist() == sorted(order[:4].tolist())
    assert got.fit.tolist() == sorted(order[4:6].tolist())
    assert got.select.tolist() == sorted(order[6:8].tolist())
    assert got.heldout.tolist() == sorted(order[8:].tolist())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_disjoint_and_covering_without_eval_data(seed: int) -> None:
    got = split_indices(300, SplitSizes(reward=100, fit=50, select=80), seed)
    parts = [set(got.reward), set(got.fit), set(got.select), set(got.heldout)]
    assert [len(p) for p in parts] == [100, 50, 75, 75]  # select: half of the 150 left
    assert sum(len(p) for p in parts) == len(set().union(*parts)) == 300
    assert got.reward.tolist() != list(range(100))  # shuffled (data is often class-sorted)
    assert all(np.all(np.diff(a) > 0) for a in (got.reward, got.fit, got.select, got.heldout))


def test_eval_data_present_or_absent() -> None:
    without = split_indices(100, SplitSizes(reward=500), seed=0)
    assert len(without.reward) == 99 and len(without.heldout) == 1  # one sample held out
    assert without.eval_pick is None
    with_eval = split_indices(100, SplitSizes(reward=500, heldout=10), seed=0, n_eval=40)
    assert len(with_eval.reward) == 100 and with_eval.heldout is None
    assert len(with_eval.eval_pick) == 10 and with_eval.eval_pick.max() < 40
    all_eval = split_indices(100, SplitSizes(reward=50, heldout=40), seed=0, n_eval=40)
    assert all_eval.eval_pick is None  # asking for all of it (or more) takes all of it
    # with eval data the middle splits may take everything the reward left
    middle = split_indices(100, SplitSizes(reward=50, fit=30, select=30), seed=0, n_eval=40)
    assert (len(middle.fit), len(middle.select)) == (30, 20)


def _strategy(**values) -> Strategy:
    return Strategy(name="t", source="t.toml", **values)


def test_select_top_one_has_no_selection_split() -> None:
    one = SplitSizes.of(_strategy(reward_samples=40, select_top=1, select_samples=30))
    more = SplitSizes.of(_strategy(reward_samples=40, select_top=3, select_samples=30))
    assert (one.select, more.select) == (0, 30)
    assert split_indices(120, one, 0).select is None
    assert len(split_indices(120, more, 0).select) == 30


def test_reward_recover_ls_adds_a_fit_split() -> None:
    none = SplitSizes.of(_strategy(reward_samples=40, reward_recover="none", recover_images=25))
    ls = SplitSizes.of(_strategy(reward_samples=40, reward_recover="ls", recover_images=25))
    assert (none.fit, ls.fit) == (0, 25)
    assert split_indices(120, none, 0).fit is None
    fitted = split_indices(120, ls, 0)
    assert len(fitted.fit) == 25 and not set(fitted.fit) & set(fitted.heldout)
    # the reward split does not depend on whether a fit split follows it
    assert np.array_equal(fitted.reward, split_indices(120, none, 0).reward)


def test_datasets_are_subsets_at_the_indices() -> None:
    x = np.arange(30, dtype=np.float32).reshape(30, 1)
    data = Dataset(x, np.arange(30) % 3, "toy")
    splits = make_splits(data, None, SplitSizes(reward=10, fit=4, select=4), seed=1)
    np.testing.assert_array_equal(splits.reward.x[:, 0], splits.indices.reward)
    np.testing.assert_array_equal(splits.fit.x[:, 0], splits.indices.fit)
    np.testing.assert_array_equal(splits.heldout.x[:, 0], splits.indices.heldout)
    assert "held-out split" in splits.eval_source
    other = Dataset(x[:12] + 100, None, "other")
    picked = make_splits(data, other, SplitSizes(reward=10, heldout=5), seed=1)
    assert picked.eval_source == "other" and len(picked.heldout) == 5
    with pytest.raises(OnnxPruneError, match="data 'tiny' has 1 sample"):
        make_splits(Dataset(x[:1], None, "tiny"), None, SplitSizes(reward=1), 0)


# -- the structural skip rule 'residual' ------------------------------------------------------
def _group_of(analysis, producer: str):
    return next(g for g in analysis.groups if any(producer in p for p in g.producers))


def test_residual_rule_skips_summed_groups_but_not_gated_ones() -> None:
    """'residual' skips channels summed across an Add (the stem + block output), while a
    squeeze-excitation group (two producers tied by a Mul gate) stays searchable."""
    from onnxprune.deps import analyze
    from onnxprune.deps.residual import summed_groups
    from onnxprune.search.prepare import select_groups
    from tests.test_deps import TINY

    res = analyze(TINY["residual"]())
    stem, inner = _group_of(res, "stem"), _group_of(res, "inner")
    assert summed_groups(res.model, list(res.prunable_groups())) == {stem.id}
    kept, notes = select_groups(res, ["residual"])
    assert [g.id for g in kept] == [g.id for g in res.prunable_groups() if g.id != stem.id]
    assert inner.id in [g.id for g in kept]
    assert notes == ["skip rule 'residual' left 1 group(s) full"]

    se = analyze(TINY["squeeze_excite"]())
    body = _group_of(se, "body")
    assert len(body.producers) == 2  # the body conv and the gate's fc2, tied by the Mul
    assert summed_groups(se.model, list(se.prunable_groups())) == set()
    kept, notes = select_groups(se, ["residual"])
    assert body.id in [g.id for g in kept] and notes == []

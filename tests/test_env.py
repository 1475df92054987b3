"""DNN-Graph environment: FLOPs wall (property test), rounding, cache, checker, errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxprune.budget import ChannelRounding
from onnxprune.cost import ChannelExpr, PlanCost, model_cost
from onnxprune.env import ActionGroup, PruningEnv, check_env
from onnxprune.errors import OnnxPruneError

WIDTHS = (16, 24, 32, 12)


def _chain(widths: tuple[int, ...] = WIDTHS) -> onnx.ModelProto:
    """Conv chain 3 -> w0 -> w1 -> ... (3x3, pad 1, 8x8 images) -> GAP -> Flatten -> Gemm(10)."""
    rng = np.random.default_rng(0)
    nodes, inits, prev, c_in = [], [], "input", 3
    for i, width in enumerate(widths):
        w = numpy_helper.from_array(
            rng.normal(0, 0.2, (width, c_in, 3, 3)).astype(np.float32), f"w{i}"
        )
        inits.append(w)
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], f"conv{i}", pads=[1] * 4))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], f"relu{i}"))
        prev, c_in = f"r{i}", width
    inits.append(numpy_helper.from_array(rng.normal(0, 0.2, (10, c_in)).astype(np.float32), "fc"))
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["gap"], "gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], "flatten"),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"], "gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model


def _plan_cost(widths: tuple[int, ...] = WIDTHS) -> PlanCost:
    exprs = {}
    for i in range(len(widths)):
        expr = ChannelExpr(1, 0, ((i, 1),))
        exprs[f"c{i}"] = exprs[f"r{i}"] = expr
    last = ChannelExpr(1, 0, ((len(widths) - 1, 1),))
    exprs["gap"] = exprs["flat"] = last
    return PlanCost(_chain(widths), exprs, dict(enumerate(widths)))


def _groups(widths: tuple[int, ...] = WIDTHS) -> list[ActionGroup]:
    return [ActionGroup(i, w) for i, w in enumerate(widths)]


def _reward(kept: dict[int, int]) -> float:
    # prefers pruning the middle groups: a smooth, known function of the counts
    weights = np.array([4.0, 1.0, 0.5, 3.0])
    lost = np.array([1 - kept[i] / w for i, w in enumerate(WIDTHS)])
    return -float(np.sum(weights * lost**2))


def _env(target: float = 0.5, steps: int = 1, round_to: int = 4, **kwargs) -> PruningEnv:
    return PruningEnv(
        _groups(),
        _plan_cost(),
        _reward,
        target,
        steps_per_episode=steps,
        round_to=round_to,
        **kwargs,
    )


@settings(max_examples=60, deadline=None)
@given(
    actions=st.lists(
        st.lists(st.floats(0, 1, allow_nan=False), min_size=4, max_size=4), min_size=3, max_size=3
    ),
    target=st.floats(0.15, 1.0),
    steps=st.integers(1, 3),
    round_to=st.sampled_from([1, 4, 8]),
)
def test_flops_wall_always_inside_budget(actions, target, steps, round_to) -> None:
    env = _env(target, steps, round_to)
    env.reset()
    for action in actions[:steps]:
        result = env.step(np.array(action))
        if result.done:
            break
    assert result.done
    assert result.macs_fraction <= target + 1e-12
    # the plan priced by the cost model is the pruned model's cost (the physically smaller chain)
    widths = tuple(result.kept[i] for i in range(4))
    assert model_cost(_chain(widths)).macs == round(result.macs_fraction * env.plan_cost.full_macs)
    for i, count in result.kept.items():
        assert count == WIDTHS[i] or count % min(round_to, WIDTHS[i]) == 0


def test_wall_uses_the_budget_fully_for_a_small_action() -> None:
    # all-zero action: the wall prunes every group in proportion until the budget is met; a
    # channel more in the groups that cost most would break the budget
    env = _env(0.5, round_to=1)
    env.reset()
    result = env.step(np.zeros(4))
    assert result.macs_fraction <= 0.5 and result.wall_u is not None and result.wall_u > 1
    full = env.plan_cost.full_macs
    assert result.macs_fraction > 0.47
    grown = [{**result.kept, i: result.kept[i] + 1} for i in range(4) if result.kept[i] < WIDTHS[i]]
    assert any(env.plan_cost.macs(k) / full > 0.5 for k in grown)


def test_overshooting_step_is_shrunk_back() -> None:
    env = _env(0.5, round_to=1)
    env.reset()
    result = env.step(np.full(4, 0.95))  # alone would keep ~0.3 % of the MACs
    assert result.wall_u is not None and result.wall_u < 1
    assert 0.45 < result.macs_fraction <= 0.5


def test_multi_step_episode_shrinks_in_equal_steps_and_updates_state() -> None:
    env = _env(0.4, steps=3, round_to=1)
    record = env.reset()
    np.testing.assert_array_equal(record, [1, 1, 1, 1, 0])
    targets = [0.8, 0.6, 0.4]  # 1 - 0.6 * t / 3
    for t, target in enumerate(targets, start=1):
        result = env.step(np.array([0.1, 0.6, 0.6, 0.1]))
        assert env.step_target(t) == pytest.approx(target)
        assert target - 0.05 < result.macs_fraction <= target
        assert result.done == (t == 3) and (result.reward == 0.0) == (t < 3)
        # the state is the rounded keep-ratio after this step, plus the step fraction
        kept = np.array([result.kept[i] / w for i, w in enumerate(WIDTHS)])
        np.testing.assert_allclose(result.record, [*kept, t / 3])
    # the action shape is respected: groups 1 and 2 lost more than groups 0 and 3
    assert kept[1] < kept[0] and kept[2] < kept[3]


def test_rounding_is_monotone_and_respects_blocks() -> None:
    groups = [ActionGroup(0, 64), ActionGroup(1, 6), ActionGroup(2, 48, block_count=3)]
    rounding = ChannelRounding(groups, round_to=8, min_channels=4)
    ratios = np.linspace(0, 1, 101)
    counts = np.stack([rounding.counts(np.full(3, r)) for r in ratios])
    assert np.all(np.diff(counts, axis=0) >= 0)
    # the 6-channel group has no multiple of 8 below its size: it stays whole, as in `prune`
    assert counts[0].tolist() == [8, 6, 24] and counts[-1].tolist() == [64, 6, 48]
    assert set(counts[:, 0]) == set(range(8, 65, 8))
    assert all(c % 24 == 0 for c in counts[:, 2])


def test_reward_cache_counts_evaluations() -> None:
    calls = []
    env = PruningEnv(_groups(), _plan_cost(), lambda k: calls.append(k) or 0.0, 0.5)
    for _ in range(3):
        env.reset()
        env.step(np.full(4, 0.4))
    assert len(calls) == 1 and env.n_evaluations == 1 and len(env.cache) == 1


def test_check_env_passes_and_catches_bad_reward() -> None:
    report = check_env(_env(0.4, steps=2))
    assert "inside the budget" in str(report)
    bad = PruningEnv(_groups(), _plan_cost(), lambda k: float("nan"), 0.5)
    with pytest.raises(OnnxPruneError, match="reward function returned nan"):
        check_env(bad)


def test_impossible_budget_names_smallest_reachable_fraction() -> None:
    cost = _plan_cost()
    lows = {i: min(8, w) for i, w in enumerate(WIDTHS)}
    smallest = cost.macs(lows) / cost.full_macs
    with pytest.raises(OnnxPruneError, match=r"keeps 0\.\d{4} of its MACs") as info:
        PruningEnv(_groups(), cost, _reward, 0.01, round_to=8)
    assert f"{smallest:.4f}" in str(info.value)


def test_bad_action_shape_is_an_error() -> None:
    env = _env()
    with pytest.raises(OnnxPruneError, match="3 ratios but the environment has 4"):
        env.step(np.zeros(3))


def test_feature_matrix_shape() -> None:
    env = _env()
    x = env.observe(env.reset())
    assert tuple(x.shape) == (4, 4)
    assert float(x[:, 0].min()) == 1.0

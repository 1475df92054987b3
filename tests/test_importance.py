"""Importance criteria against hand computations, rounding rules, ratio and FLOPs plans."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import importance
from onnxprune.cost import PlanCost
from onnxprune.deps import analyze
from onnxprune.errors import OnnxPruneError, PlanError
from onnxprune.model import load_model
from onnxprune.plan import kept_counts
from tests.corpus.fixtures import corpus_model  # noqa: F401  (pytest fixture)

RNG = np.random.default_rng(7)
W1 = RNG.standard_normal((3, 2, 1, 1)).astype(np.float32)
B1 = RNG.standard_normal(3).astype(np.float32)
GAMMA = np.array([0.5, -2.0, 1.0], np.float32)
BETA = np.array([0.1, 0.2, -0.3], np.float32)
MEAN = np.array([0.3, -0.1, 0.2], np.float32)
VAR = np.array([1.5, 0.5, 2.0], np.float32)
W2 = RNG.standard_normal((2, 3, 1, 1)).astype(np.float32)


def _tiny() -> onnx.ModelProto:
    """x[N,2,4,4] -> Conv 1x1 (3, bias) -> BN -> Relu -> Conv 1x1 (2, no bias) -> y."""
    inits = [
        numpy_helper.from_array(v, n)
        for n, v in [
            ("w1", W1),
            ("b1", B1),
            ("gamma", GAMMA),
            ("beta", BETA),
            ("mean", MEAN),
            ("var", VAR),
            ("w2", W2),
        ]
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node(
            "BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn"], name="bn"
        ),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def tiny():
    analysis = analyze(_tiny())
    (group,) = analysis.prunable_groups()
    assert group.size == 3
    return analysis, group.id


def test_l1_sums_producer_rows_bn_affine_and_consumer_columns(tiny):
    analysis, gid = tiny
    expected = (
        np.abs(W1).reshape(3, -1).sum(1)
        + np.abs(B1)
        + np.abs(GAMMA)
        + np.abs(BETA)
        + np.abs(W2[:, :, 0, 0]).sum(0)
    )
    scores = importance.channel_scores(analysis, "l1")
    np.testing.assert_allclose(scores[gid], expected, rtol=1e-6)


def test_l2_is_the_norm_of_the_same_elements(tiny):
    analysis, gid = tiny
    expected = np.sqrt(
        np.square(W1).reshape(3, -1).sum(1)
        + B1**2
        + GAMMA**2
        + BETA**2
        + np.square(W2[:, :, 0, 0]).sum(0)
    )
    np.testing.assert_allclose(importance.channel_scores(analysis, "l2")[gid], expected, rtol=1e-6)


def test_bn_is_abs_gamma(tiny):
    analysis, gid = tiny
    scores = importance.channel_scores(analysis, "bn")
    np.testing.assert_allclose(scores[gid], [0.5, 2.0, 1.0])
    assert importance.score_channels(analysis, "bn").fallbacks == []


def test_activation_is_mean_abs_over_the_group_tensors(tiny):
    analysis, gid = tiny
    x = RNG.standard_normal((5, 2, 4, 4)).astype(np.float32)
    c1 = np.einsum("oc,nchw->nohw", W1[:, :, 0, 0], x) + B1[None, :, None, None]
    bn = (c1 - MEAN[None, :, None, None]) / np.sqrt(VAR[None, :, None, None] + 1e-5)
    bn = bn * GAMMA[None, :, None, None] + BETA[None, :, None, None]
    relu = np.maximum(bn, 0)
    expected = np.mean([np.abs(t).mean(axis=(0, 2, 3)) for t in (c1, bn, relu)], axis=0)
    scores = importance.channel_scores(analysis, "activation", data=x)
    np.testing.assert_allclose(scores[gid], expected, rtol=1e-4)


def test_activation_needs_data(tiny):
    analysis, _ = tiny
    with pytest.raises(OnnxPruneError, match="needs calibration data"):
        importance.channel_scores(analysis, "activation")
    with pytest.raises(OnnxPruneError, match="unknown criterion 'l3'"):
        importance.channel_scores(analysis, "l3")


def test_bn_falls_back_to_l1_without_batchnorm(corpus_model):  # noqa: F811
    analysis = analyze(load_model(corpus_model("tf_nhwc_flatten")))
    result = importance.score_channels(analysis, "bn")
    bn, fallbacks = result.scores, result.fallbacks
    l1 = importance.channel_scores(analysis, "l1")
    # tf-style graph: BN is unfolded into Mul/Add, so no group has a BatchNormalization node
    assert sorted(fallbacks) == sorted(g.id for g in analysis.prunable_groups())
    for gid in fallbacks:
        np.testing.assert_array_equal(bn[gid], l1[gid])


def test_plan_from_ratios_keeps_the_best_channels(corpus_model):  # noqa: F811
    analysis = analyze(load_model(corpus_model("resnet_b")))
    scores = importance.channel_scores(analysis, "l2")
    plan = importance.plan_from_ratios(analysis, 0.5, criterion="l2", round_to=1)
    assert plan.meta["criterion"] == "l2"
    for group in analysis.prunable_groups():
        kept = plan.keep[group.id]
        assert len(kept) == group.size // 2
        best = np.sort(np.argsort(-scores[group.id], kind="stable")[: group.size // 2])
        assert kept == best.tolist()


def test_plan_from_ratios_respects_blocks(corpus_model):  # noqa: F811
    analysis = analyze(load_model(corpus_model("resnext")))
    plan = importance.plan_from_ratios(analysis, 0.6, round_to=1)
    for group in analysis.prunable_groups():
        if group.block_count > 1:
            block = group.size // group.block_count
            per_block = np.bincount(np.array(plan.keep[group.id]) // block)
            assert len(set(per_block.tolist())) == 1, (group.id, per_block)


def test_ratio_errors(corpus_model):  # noqa: F811
    analysis = analyze(load_model(corpus_model("resnet_b")))
    frozen = next(g for g in analysis.groups if not g.prunable)
    with pytest.raises(PlanError, match=f"group {frozen.id} is frozen"):
        importance.plan_from_ratios(analysis, {frozen.id: 0.5})
    with pytest.raises(PlanError, match=r"outside \[0, 1\)"):
        importance.plan_from_ratios(analysis, 1.0)
    one = analysis.prunable_groups()[1]
    plan = importance.plan_from_ratios(analysis, {one.id: 0.5}, round_to=1)
    assert list(plan.keep) == [one.id]


@pytest.mark.parametrize(("round_to", "target"), [(1, 0.6), (4, 0.6), (8, 0.9)])
def test_plan_for_flops_meets_the_budget(corpus_model, round_to, target):  # noqa: F811
    analysis = analyze(load_model(corpus_model("vgg")))
    plan_cost = PlanCost(analysis.model, analysis.channel_exprs(), analysis.group_sizes())
    plan = importance.plan_for_flops(analysis, target, round_to=round_to, plan_cost=plan_cost)
    fraction = plan_cost.macs_fraction(kept_counts(plan, analysis))
    assert fraction <= target
    assert plan.meta["macs_fraction"] == pytest.approx(fraction, abs=1e-6)
    # The fill leaves no group that could still grow one step within the budget.
    counts = kept_counts(plan, analysis)
    for group in analysis.prunable_groups():
        if counts[group.id] < group.size:
            grown = {**counts, group.id: min(counts[group.id] + round_to, group.size)}
            assert plan_cost.macs_fraction(grown) > target


def test_plan_for_flops_impossible_budget_names_smallest_fraction(corpus_model):  # noqa: F811
    analysis = analyze(load_model(corpus_model("vgg")))
    plan_cost = PlanCost(analysis.model, analysis.channel_exprs(), analysis.group_sizes())
    floor = {g.id: 8 for g in analysis.prunable_groups()}  # round-to 8: 8 channels minimum
    smallest = plan_cost.macs_fraction(floor)
    with pytest.raises(PlanError, match=f"smallest reachable fraction is {smallest:.4f}"):
        importance.plan_for_flops(analysis, smallest * 0.9, round_to=8)
    plan = importance.plan_for_flops(analysis, smallest, round_to=8)
    assert plan.meta["macs_fraction"] == pytest.approx(smallest, abs=1e-6)


def test_plan_for_flops_on_chosen_groups_only(corpus_model):  # noqa: F811
    analysis = analyze(load_model(corpus_model("resnet_b")))
    interior = [
        g.id for g in analysis.prunable_groups() if len(g.producers) == 1 and len(g.consumers) == 1
    ]
    assert len(interior) == 3  # the first conv of each of the 3 basic blocks
    scores = importance.channel_scores(analysis, "l1")
    plan = importance.plan_for_flops(analysis, 0.8, round_to=1, scores=scores, groups=interior)
    assert set(plan.keep) <= set(interior) and plan.keep
    assert plan.meta["criterion"] == "given scores"
    assert plan.meta["macs_fraction"] <= 0.8


def test_l1_of_grouped_conv_rows_and_columns():
    """x -> Conv A (4) -> grouped Conv G (2 groups, 4 -> 4) -> Conv C (3) -> y."""
    rng = np.random.default_rng(3)
    wa = rng.standard_normal((4, 2, 1, 1)).astype(np.float32)
    ba = rng.standard_normal(4).astype(np.float32)
    wg = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    bg = rng.standard_normal(4).astype(np.float32)
    wc = rng.standard_normal((3, 4, 1, 1)).astype(np.float32)
    inits = [
        numpy_helper.from_array(v, n)
        for n, v in [("wa", wa), ("ba", ba), ("wg", wg), ("bg", bg), ("wc", wc)]
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A"),
        helper.make_node("Conv", ["a", "wg", "bg"], ["g"], name="G", group=2, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["g", "wc"], ["y"], name="C"),
    ]
    graph = helper.make_graph(
        nodes,
        "grouped",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    analysis = analyze(model)
    groups = {g.members[0].tensor: g for g in analysis.prunable_groups()}
    assert (groups["a"].block_count, groups["g"].block_count) == (2, 2)
    scores = importance.channel_scores(analysis, "l1")
    # input channel c of G feeds the 2 output rows of block c // 2, through column c % 2
    columns = [np.abs(wg[(c // 2) * 2 : (c // 2) * 2 + 2, c % 2]).sum() for c in range(4)]
    expected_a = np.abs(wa).reshape(4, -1).sum(1) + np.abs(ba) + np.array(columns)
    np.testing.assert_allclose(scores[groups["a"].id], expected_a, rtol=1e-6)
    expected_g = np.abs(wg).reshape(4, -1).sum(1) + np.abs(bg) + np.abs(wc[:, :, 0, 0]).sum(0)
    np.testing.assert_allclose(scores[groups["g"].id], expected_g, rtol=1e-6)

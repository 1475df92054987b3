"""Hand counts for model_cost and PlanCost == cost of the physically smaller model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxprune.cost import ChannelExpr, PlanCost, model_cost, parse_input_shapes
from onnxprune.errors import OnnxPruneError
from onnxprune.model import load_model
from tests.conftest import _init, finish_model, make_tiny_cnn, tiny_cnn_macs


def _single(op: str, x_shape, w_shape, y_rank: int, bias: int | None = None, **attrs):
    rng = np.random.default_rng(0)
    inits = [_init("w", rng.normal(size=w_shape).astype(np.float32))]
    ins = ["x", "w"]
    if bias is not None:
        inits.append(_init("b", np.zeros(bias, np.float32)))
        ins.append("b")
    node = helper.make_node(op, ins, ["y"], "node", **attrs)
    return finish_model(
        [node],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * y_rank)],
        inits,
    )


# ------------------------------------------------------------------ bundled ResNets (exact)


def test_resnet20_macs_exact(resnet20_path):
    report = model_cost(load_model(resnet20_path))
    assert report.macs == 40_551_040
    # 19 convs + 1 Gemm carry all MACs
    assert sum(1 for n in report.per_node if n.macs) == 20
    assert report.input_shapes == {"input": [1, 3, 32, 32]}


def test_resnet56_macs_exact_and_batch_scales(resnet56_path):
    model = load_model(resnet56_path)
    assert model_cost(model).macs == 125_485_696
    assert model_cost(model, batch=4).macs == 4 * 125_485_696


# ------------------------------------------------------------------ hand counts per op kind


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs", "macs"),
    [
        ((1, 8, 10, 10), (16, 4, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}, 16 * 4 * 9 * 100),
        ((1, 8, 10, 10), (8, 1, 3, 3), {"group": 8, "pads": [1, 1, 1, 1]}, 8 * 9 * 100),
        ((1, 4, 12, 12), (6, 4, 3, 3), {"dilations": [2, 2]}, 6 * 4 * 9 * 64),
        ((1, 4, 11, 11), (6, 4, 3, 3), {"strides": [2, 2]}, 6 * 4 * 9 * 25),
        ((1, 4, 11, 11), (6, 4, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, 6 * 36 * 36),
        ((1, 4, 11, 11), (6, 4, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_LOWER"}, 6 * 36 * 36),
        ((1, 4, 11, 11), (6, 4, 3, 3), {"auto_pad": "VALID"}, 6 * 4 * 9 * 81),
        ((1, 4, 11, 11, 5), (6, 4, 3, 3, 1), {"pads": [1, 1, 0, 1, 1, 0]}, 6 * 4 * 9 * 121 * 5),
    ],
    ids=["grouped", "depthwise", "dilated", "strided", "same_upper", "same_lower", "valid", "3d"],
)
def test_conv_hand_counts(x_shape, w_shape, attrs, macs):
    report = model_cost(_single("Conv", x_shape, w_shape, len(x_shape), **attrs))
    assert report.macs == macs
    assert report.flops == 2 * macs
    assert report.params == int(np.prod(w_shape))


def test_conv_bias_adds_one_flop_per_output_and_params():
    report = model_cost(_single("Conv", (1, 4, 6, 6), (5, 4, 3, 3), 4, bias=5))
    macs = 5 * 4 * 9 * 16
    assert report.macs == macs
    assert report.flops == 2 * macs + 5 * 16
    assert report.params == 5 * 4 * 9 + 5


def test_conv_transpose_output_padding_and_groups():
    model = _single(
        "ConvTranspose", (1, 4, 5, 5), (4, 6, 3, 3), 4, strides=[2, 2], output_padding=[1, 1]
    )
    report = model_cost(model)
    assert report.macs == 4 * 6 * 9 * 25  # C_in * C_out * k * in_spatial
    grouped = _single("ConvTranspose", (1, 4, 5, 5), (4, 3, 3, 3), 4, group=2, strides=[2, 2])
    assert model_cost(grouped).macs == 4 * 3 * 9 * 25


def test_gemm_trans_b_and_bias():
    report = model_cost(_single("Gemm", (3, 20), (7, 20), 2, bias=7, transB=1))
    assert report.macs == 3 * 20 * 7
    assert report.flops == 2 * 420 + 21
    assert report.params == 140 + 7


def test_matmul_3d_and_batched():
    assert model_cost(_single("MatMul", (2, 5, 6), (6, 4), 3)).macs == 2 * 5 * 4 * 6
    assert model_cost(_single("MatMul", (2, 5, 6), (2, 6, 4), 3)).macs == 2 * 5 * 4 * 6


def test_tiny_cnn_full_counts():
    report = model_cost(make_tiny_cnn((8, 16)))
    assert report.macs == tiny_cnn_macs((8, 16)) == 129_184
    # conv1 2*55296 + relu 2048 + conv2 2*73728 + bias 1024 + relu 1024 + GAP 1024
    # + Gemm 2*160 + 10
    assert report.flops == 263_498
    assert report.params == 8 * 27 + 16 * 72 + 16 + 160 + 10
    by_name = {n.name: n for n in report.per_node}
    assert by_name["conv2"].macs == 73_728
    assert by_name["relu1"].flops == 2048
    assert report.uncounted_ops == []


def test_pooling_bn_and_unknown_ops():
    rng = np.random.default_rng(1)
    c = 4
    inits = [_init(n, rng.random(c).astype(np.float32) + 0.5) for n in ("s", "b", "m", "v")]
    nodes = [
        helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["bn"], "bn"),
        helper.make_node("MaxPool", ["bn"], ["mp"], "mp", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Hardmax", ["mp"], ["y"], "hm"),
    ]
    model = finish_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
        inits,
    )
    report = model_cost(model)
    assert report.macs == 0
    assert report.flops == 2 * 4 * 64 + 4 * (4 * 16)
    assert report.params == 16
    assert report.uncounted_ops == ["Hardmax"]


# ------------------------------------------------------------------ dynamic shapes


def test_dynamic_spatial_names_input_and_override_works():
    model = make_tiny_cnn((8, 16), batch="N")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param = "H"
    dims[3].dim_param = "W"
    with pytest.raises(OnnxPruneError, match=r"input 'input'.*--input-shape input:1x3xNxN"):
        model_cost(model)
    report = model_cost(model, input_shapes={"input": (1, 3, 16, 16)})
    assert report.macs == tiny_cnn_macs((8, 16))
    report32 = model_cost(model, input_shapes=parse_input_shapes(["input:1x3x32x32"]))
    assert report32.macs == tiny_cnn_macs((8, 16), image=32)
    with pytest.raises(OnnxPruneError, match="'nope', which is not a model input"):
        model_cost(model, input_shapes={"nope": (1, 3, 16, 16)})


@pytest.mark.parametrize("spec", ["input", "input:1x3xax4", ":1x2", "input:0x3"])
def test_parse_input_shapes_rejects(spec):
    with pytest.raises(OnnxPruneError, match="NAME:DxDx"):
        parse_input_shapes([spec])


# ------------------------------------------------------------------ PlanCost


def _tiny_exprs() -> dict[str, ChannelExpr]:
    g0 = ChannelExpr(1, 0, ((0, 1),))
    g1 = ChannelExpr(1, 0, ((1, 1),))
    return {"c1": g0, "r1": g0, "c2": g1, "r2": g1, "gap": g1, "flat": g1}


@pytest.mark.parametrize("kept", [(4, 16), (4, 12), (8, 1), (1, 1), (8, 16)])
def test_plan_cost_equals_physically_smaller_model(kept):
    plan_cost = PlanCost(make_tiny_cnn((8, 16)), _tiny_exprs(), {0: 8, 1: 16})
    small = model_cost(make_tiny_cnn(kept))
    assert plan_cost.macs({0: kept[0], 1: kept[1]}) == small.macs
    assert plan_cost.macs(np.array(kept)) == small.macs
    totals = plan_cost.cost({0: kept[0], 1: kept[1]})
    assert (totals.macs, totals.flops, totals.params) == (small.macs, small.flops, small.params)


def test_plan_cost_rejects_an_unknown_group():
    # the smallest reachable fraction moved to budget.Budget (tests/test_budget.py)
    plan_cost = PlanCost(make_tiny_cnn((8, 16)), _tiny_exprs(), {0: 8, 1: 16})
    with pytest.raises(OnnxPruneError, match="unknown group 7"):
        plan_cost.macs({7: 1})


def _depthwise_model(c: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        _init("w1", rng.normal(size=(c, 3, 3, 3)).astype(np.float32)),
        _init("wd", rng.normal(size=(c, 1, 3, 3)).astype(np.float32)),
        _init("w2", rng.normal(size=(16, c, 1, 1)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], "c1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "wd"], ["d"], "dw", group=c, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["d", "w2"], ["y"], "pw"),
    ]
    return finish_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
        inits,
    )


def test_plan_cost_depthwise_group_follows_kept_inputs():
    expr = ChannelExpr(1, 0, ((0, 1),))
    plan_cost = PlanCost(_depthwise_model(8), {"a": expr, "d": expr}, {0: 8})
    for kept in (8, 5, 1):
        small = model_cost(_depthwise_model(kept))
        totals = plan_cost.cost({0: kept})
        assert (totals.macs, totals.flops, totals.params) == (small.macs, small.flops, small.params)


def _concat_model(ca: int, cb: int, frozen: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    width = ca + cb + frozen
    inits = [
        _init("wa", rng.normal(size=(ca, 3, 3, 3)).astype(np.float32)),
        _init("wb", rng.normal(size=(cb, 3, 1, 1)).astype(np.float32)),
        _init("wo", rng.normal(size=(5, width, 3, 3)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], "ca", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wb"], ["b"], "cb"),
        helper.make_node(
            "Concat", ["a", "b", "x"] if frozen else ["a", "b"], ["cat"], "cat", axis=1
        ),
        helper.make_node("Relu", ["cat"], ["r"], "relu"),
        helper.make_node("Conv", ["r", "wo"], ["y"], "co"),
    ]
    return finish_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
        inits,
    )


def test_plan_cost_concat_expr_with_frozen_channels():
    cat = ChannelExpr(1, 3, ((0, 1), (1, 1)))
    exprs = {
        "a": ChannelExpr(1, 0, ((0, 1),)),
        "b": ChannelExpr(1, 0, ((1, 1),)),
        "cat": cat,
        "r": cat,
    }
    plan_cost = PlanCost(_concat_model(4, 6, frozen=3), exprs, {0: 4, 1: 6})
    assert str(cat) == "axis 1: g0 + g1 + 3"
    for kept in ((4, 6), (2, 6), (3, 1)):
        small = model_cost(_concat_model(*kept, frozen=3))
        totals = plan_cost.cost(dict(enumerate(kept)))
        assert (totals.macs, totals.flops, totals.params) == (small.macs, small.flops, small.params)


def _flatten_model(c: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        _init("w", rng.normal(size=(c, 3, 3, 3)).astype(np.float32)),
        _init("fc", rng.normal(size=(c * 16, 10)).astype(np.float32)),
        _init("fb", np.zeros(10, np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["f"], "conv", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["f"], ["flat"], "flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fb"], ["y"], "fc"),
    ]
    return finish_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 2)],
        inits,
    )


def test_plan_cost_flattened_chw_into_gemm():
    exprs = {"f": ChannelExpr(1, 0, ((0, 1),)), "flat": ChannelExpr(1, 0, ((0, 16),))}
    plan_cost = PlanCost(_flatten_model(8), exprs, {0: 8})
    for kept in (8, 3):
        small = model_cost(_flatten_model(kept))
        totals = plan_cost.cost({0: kept})
        assert (totals.macs, totals.flops, totals.params) == (small.macs, small.flops, small.params)


def test_plan_cost_rejects_expr_with_unknown_group():
    with pytest.raises(OnnxPruneError, match="tensor 'c1' uses group 3"):
        PlanCost(make_tiny_cnn(), {"c1": ChannelExpr(1, 0, ((3, 1),))}, {0: 8})


def test_plan_cost_matches_surgery_on_resnet20(resnet20_path):
    """DESIGN invariant 2 end to end: deps' exprs priced by PlanCost == cost of apply_plan."""
    deps = pytest.importorskip("onnxprune.deps")
    surgery = pytest.importorskip("onnxprune.surgery")
    plan_module = pytest.importorskip("onnxprune.plan")
    analysis = deps.analyze(load_model(resnet20_path))
    plan_cost = PlanCost(analysis.model, analysis.channel_exprs(), analysis.group_sizes())
    assert plan_cost.full_macs == 40_551_040
    rng = np.random.default_rng(0)
    for _ in range(2):
        keep = {}
        for group in analysis.prunable_groups():
            kept = int(rng.integers(1, group.size + 1))
            keep[group.id] = sorted(rng.choice(group.size, kept, replace=False).tolist())
        pruned = surgery.apply_plan(analysis, plan_module.PruningPlan.from_keep(analysis, keep))
        real = model_cost(pruned)
        priced = plan_cost.cost({g: len(k) for g, k in keep.items()})
        assert (priced.macs, priced.flops, priced.params) == (real.macs, real.flops, real.params)


# ------------------------------------------------------------------ configuration operands


def _nhwc_resize_model(c: int) -> onnx.ModelProto:
    """Conv(c) -> NHWC -> Resize(scales [1, 2, 2, 1], length == c when c == 4) -> Mul by a
    per-channel [c] gain -> Pad (constant value 0.5, float) -> Clip(0, 6) -> NCHW -> Conv(2)."""
    rng = np.random.default_rng(0)
    inits = [
        _init("w", rng.normal(size=(c, 3, 3, 3)).astype(np.float32)),
        _init("roi", np.zeros(0, np.float32)),
        _init("scales", np.array([1, 2, 2, 1], np.float32)),
        _init("gain", rng.uniform(0.5, 1.5, c).astype(np.float32)),
        _init("pads", np.array([0, 1, 1, 0, 0, 1, 1, 0], np.int64)),
        _init("pad_value", np.array(0.5, np.float32)),
        _init("lo", np.array(0.0, np.float32)),
        _init("hi", np.array(6.0, np.float32)),
        _init("w2", rng.normal(size=(2, c, 1, 1)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], "conv", pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["a"], ["a_nhwc"], "to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Resize", ["a_nhwc", "roi", "scales"], ["up"], "up", mode="nearest"),
        helper.make_node("Mul", ["up", "gain"], ["g"], "gain_mul"),
        helper.make_node("Pad", ["g", "pads", "pad_value"], ["p"], "pad"),
        helper.make_node("Clip", ["p", "lo", "hi"], ["clip"], "clip"),
        helper.make_node("Transpose", ["clip"], ["b"], "to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["b", "w2"], ["y"], "conv2"),
    ]
    return finish_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
        inits,
    )


def test_config_operands_are_not_params():
    """Resize roi/scales, Pad's pads and value and Clip's bounds configure the op: not params.
    The params are the two Conv weights and the per-channel gain."""
    report = model_cost(_nhwc_resize_model(4))
    assert report.params == 4 * 27 + 4 + 2 * 4
    by_node = {n.name: n.params for n in report.per_node}
    assert by_node["up"] == 0 and by_node["pad"] == 0 and by_node["clip"] == 0
    assert by_node["gain_mul"] == 4


def test_resize_scales_do_not_follow_the_channel_count():
    """KNOWN_FAILURES #3: scales [1,2,2,1] has as many entries as the NHWC Resize output has
    channels (4); only the Mul gain shrinks with the plan, so plan cost == pruned cost."""
    deps = pytest.importorskip("onnxprune.deps")
    surgery = pytest.importorskip("onnxprune.surgery")
    plan_module = pytest.importorskip("onnxprune.plan")
    analysis = deps.analyze(_nhwc_resize_model(4))
    (group,) = analysis.prunable_groups()
    assert group.size == 4
    plan_cost = PlanCost(analysis.model, analysis.channel_exprs(), analysis.group_sizes())
    for keep in ([0], [1, 3], [0, 1, 2]):
        plan = plan_module.PruningPlan.from_keep(analysis, {group.id: keep})
        pruned = surgery.apply_plan(analysis, plan)
        real = model_cost(pruned)
        priced = plan_cost.cost({group.id: len(keep)})
        assert (priced.macs, priced.flops, priced.params) == (real.macs, real.flops, real.params)
        assert real.params == len(keep) * 27 + len(keep) + 2 * len(keep)
        scales = {t.name: t for t in pruned.graph.initializer}["scales"]
        assert list(scales.dims) == [4]

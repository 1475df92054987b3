"""Robustness corpus: exporter idioms the analysis was not written against.

Every model is built here (``onnx.helper`` or ``onnxruntime.quantization``), analysed, pruned
with seeded random plans and compared with the masked reference under onnxruntime
(DESIGN.md invariant 1, 1e-4 relative), checked with ``onnx.checker`` (inside ``apply_plan``)
and, where shapes are static, priced: ``PlanCost`` of the plan == ``model_cost`` of the
rewritten model (invariant 2).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxprune.cost import PlanCost, model_cost
from onnxprune.deps import analyze
from onnxprune.errors import OnnxPruneError
from onnxprune.surgery import apply_plan, masked_reference
from tests.test_deps import Net, Plan, group_of, random_plan, run, sample

FLOAT = TensorProto.FLOAT


def _shape_chain_flatten(net: Net, y: str, style: str) -> str:
    """Flatten ``y`` [N, C, H, W] with a run-time shape, the way exporters write it."""
    shape = net.op("Shape", [y])
    if style == "tf2onnx":  # Gather(perm) -> Cast -> Slice[0:1] -> Concat(.., [C*H*W]) -> Cast
        nhwc = net.op("Transpose", [y], perm=[0, 2, 3, 1])
        gathered = net.op("Gather", [shape, net.const(np.array([0, 2, 3, 1]))], axis=0)
        cast = net.op("Cast", [gathered], to=TensorProto.INT32)
        batch = net.op(
            "Slice",
            [cast, net.const(np.array([0])), net.const(np.array([1])), net.const(np.array([0]))],
        )
        target = net.op("Concat", [batch, net.const(np.array([64], dtype=np.int32))], axis=0)
        target = net.op("Cast", [target], to=TensorProto.INT64)
        return net.op("Reshape", [nhwc, target], name="flat")
    if style == "paddle2onnx":  # Slice[0:1] -> Concat(.., [-1]) through int32 casts
        cast = net.op("Cast", [shape], to=TensorProto.INT32)
        batch = net.op(
            "Slice",
            [cast, net.const(np.array([0])), net.const(np.array([1])), net.const(np.array([0]))],
        )
        minus_one = net.op("Cast", [net.const(np.array([-1]))], to=TensorProto.INT32)
        target = net.op("Cast", [net.op("Concat", [batch, minus_one], axis=-1)], to=7)
        return net.op("Reshape", [y, target], name="flat")
    # torch 1.x: Gather(scalar) -> Unsqueeze -> Concat with a product of dims
    dims = [
        net.op("Gather", [net.op("Shape", [y]), net.const(np.array(k))], axis=0) for k in range(4)
    ]
    spatial = net.op("Mul", [net.op("Mul", [dims[1], dims[2]]), dims[3]])
    parts = [net.op("Unsqueeze", [d, net.const(np.array([0]))]) for d in (dims[0], spatial)]
    return net.op("Reshape", [y, net.op("Concat", parts, axis=0)], name="flat")


def _flatten_model(style: str, batch: int | str = "N") -> onnx.ModelProto:
    """conv(4) -> MaxPool(4x4) -> flatten (64 features) -> Gemm(6) -> Relu -> Gemm(5)."""
    net = Net(shape=(batch, 3, 8, 8))
    y = net.op("Relu", [net.conv("x", 3, 4, name="conv")])
    y = net.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    if style in ("tf2onnx", "paddle2onnx", "torch"):
        flat = _shape_chain_flatten(net, y, style)
    elif style == "minus_one":
        flat = net.op(
            "Reshape", [y, net.const(np.array([0 if batch == "N" else batch, -1]))], name="flat"
        )
    else:  # fully static target [1, C*H*W]
        flat = net.op(
            "Reshape", [y, net.const(np.array([-1 if batch == "N" else batch, 64]))], name="flat"
        )
    y = net.op("Relu", [net.op("Gemm", [flat, net.rand(64, 6), net.rand(6)], name="fc1")])
    return net.model(net.op("Gemm", [y, net.rand(6, 5), net.rand(5)], name="fc2"))


def check_exact(model: onnx.ModelProto, x: np.ndarray, trials: int = 3, seed: int = 0, cost=True):
    """Analyse, prune with random plans, assert invariant 1 (and 2 when ``cost``)."""
    analysis = analyze(model)
    rng = np.random.default_rng(seed)
    plan_cost = None
    if cost:
        plan_cost = PlanCost(analysis.model, analysis.channel_exprs(), analysis.group_sizes())
    for _ in range(trials):
        plan = random_plan(analysis, rng)
        pruned = apply_plan(analysis, plan)
        for got, want in zip(run(pruned, x), run(masked_reference(analysis, plan), x), strict=True):
            scale = max(float(np.abs(want).max()), 1e-6)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)
        if plan_cost is not None:
            kept = {gid: len(keep) for gid, keep in plan.keep.items()}
            assert plan_cost.macs(kept) == model_cost(pruned).macs
            assert plan_cost.cost(kept).params == model_cost(pruned).params
    return analysis


# -- dynamic-batch Flatten written with Shape chains; static batch 1 -------------------------
@pytest.mark.parametrize("style", ["tf2onnx", "paddle2onnx", "torch", "minus_one", "static"])
@pytest.mark.parametrize("batch", ["N", 1])
def test_flatten_idioms_prune_the_conv_feeding_the_dense(style, batch):
    model = _flatten_model(style, batch)
    x = sample((1 if batch == 1 else 2, 3, 8, 8))
    analysis = check_exact(model, x)
    assert sorted(g.size for g in analysis.prunable_groups()) == [4, 6]
    ops = {n.op_type for n in analysis.model.graph.node}
    assert not ops & {"Shape", "Gather", "Concat", "Slice"}  # the shape chain is gone
    conv = group_of(analysis, "conv")
    assert conv.consumers == ["fc1"]
    member = next(m for m in conv.members if m.tensor == "flat")
    layout = "interleaved" if style == "tf2onnx" else "blocks"
    assert (member.repeat, member.layout) == (16, layout)


@pytest.mark.parametrize("style", ["tf2onnx", "paddle2onnx", "torch"])
def test_cost_of_the_raw_model_resolves_runtime_reshape_targets(style):
    """model_cost on the un-normalised file: conv 3*4*9*64 + fc1 64*6 + fc2 6*5 MACs."""
    model = _flatten_model(style)
    assert model_cost(model).macs == 3 * 4 * 9 * 64 + 64 * 6 + 6 * 5
    assert model_cost(model).macs == model_cost(analyze(model).model).macs


def test_flatten_shape_chain_output_still_matches_original():
    model = _flatten_model("torch")
    x = sample()
    np.testing.assert_allclose(run(analyze(model).model, x)[0], run(model, x)[0], rtol=1e-6)


def test_shape_reading_only_the_batch_does_not_freeze():
    """Shape(x)[0:1] feeding a ConstantOfShape: the channel count is dropped, x stays prunable;
    Shape(x)[1] used as a value freezes with a reason naming the reader."""
    net = Net()
    y = net.conv("x", 3, 4, name="conv")
    batch = net.op(
        "Slice",
        [net.op("Shape", [y]), net.const(np.array([0])), net.const(np.array([1]))],
    )
    zeros = net.op("ConstantOfShape", [batch], name="zeros")
    y = net.conv(net.op("Relu", [y]), 4, 6, name="conv2")
    channels = net.op(
        "Gather", [net.op("Shape", [y], name="shape2"), net.const(np.array(1))], name="pick"
    )
    pooled = net.op("GlobalAveragePool", [y])
    flat = net.op("Flatten", [pooled])
    out = net.op("Gemm", [flat, net.rand(5, 6), net.rand(5)], transB=1)
    model = net.model(out, zeros, channels)
    for output, elem_type in zip(model.graph.output[1:], [FLOAT, TensorProto.INT64], strict=True):
        output.CopyFrom(helper.make_tensor_value_info(output.name, elem_type, None))
    analysis = analyze(model)
    assert group_of(analysis, "conv").prunable
    frozen = group_of(analysis, "conv2")
    assert "'shape2' (Shape)" in frozen.frozen_reason and "'pick'" in frozen.frozen_reason
    check_exact(model, sample(), cost=False)


def test_undetermined_runtime_shape_is_left_alone_and_frozen():
    """[N, C, H, W] -> [H, N, W, C] read from Shape with symbolic N, H, W: three unknown
    entries cannot be written as one constant, so the Reshape keeps its run-time shape and
    the group it reads freezes with a reason naming the Shape node."""
    net = Net(shape=("N", 3, "H", "W"))
    y = net.conv("x", 3, 4, name="conv")
    order = net.op(
        "Gather", [net.op("Shape", [y], name="shape"), net.const(np.array([2, 0, 3, 1]))]
    )
    y = net.op("Reshape", [y, order], name="scramble")
    model = net.model(net.op("Relu", [y]))
    analysis = analyze(model)
    assert "Reshape" in [n.op_type for n in analysis.model.graph.node]
    conv = group_of(analysis, "conv")
    assert not conv.prunable and "'shape' (Shape)" in conv.frozen_reason
    x = sample((2, 3, 4, 6))
    np.testing.assert_array_equal(run(analysis.model, x)[0], run(model, x)[0])


# -- dynamic image size ----------------------------------------------------------------------
def _dynamic_size_model() -> onnx.ModelProto:
    net = Net(shape=("N", 3, "H", "W"))
    y = net.op("Relu", [net.conv("x", 3, 8, name="conv1")])
    y = net.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = net.op("Relu", [net.conv(y, 8, 6, name="conv2")])
    y = net.op("GlobalAveragePool", [y])
    y = net.op("Reshape", [y, net.const(np.array([0, -1]))], name="flat")
    return net.model(net.op("Gemm", [y, net.rand(5, 6), net.rand(5)], transB=1, name="fc"))


def test_dynamic_image_size_analysis_surgery_and_cost():
    model = _dynamic_size_model()
    analysis = analyze(model)
    assert sorted(g.size for g in analysis.prunable_groups()) == [6, 8]
    plan = random_plan(analysis, np.random.default_rng(1))
    pruned, reference = apply_plan(analysis, plan), masked_reference(analysis, plan)
    for shape in [(2, 3, 8, 8), (1, 3, 12, 20)]:
        x = sample(shape)
        np.testing.assert_allclose(run(pruned, x)[0], run(reference, x)[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(OnnxPruneError, match="input 'x' has dynamic dimension 2"):
        model_cost(model)
    shapes = {"x": [1, 3, 16, 16]}
    plan_cost = PlanCost(
        analysis.model, analysis.channel_exprs(), analysis.group_sizes(), input_shapes=shapes
    )
    kept = {gid: len(keep) for gid, keep in plan.keep.items()}
    # conv1 3*k1*9*256 + conv2 k1*k2*9*64 + fc k2*5, by hand
    k1, k2 = kept[group_of(analysis, "conv1").id], kept[group_of(analysis, "conv2").id]
    assert model_cost(pruned, input_shapes=shapes).macs == 27 * k1 * 256 + 9 * k1 * k2 * 64 + 5 * k2
    assert plan_cost.macs(kept) == model_cost(pruned, input_shapes=shapes).macs


# -- weights in Constant nodes ---------------------------------------------------------------
def _constant(net: Net, value: np.ndarray, name: str) -> str:
    net.nodes.append(
        helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(value, name))
    )
    return name


def test_weights_in_constant_nodes():
    net = Net()
    rng = np.random.default_rng(5)
    w1 = _constant(net, rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "w1")
    b1 = _constant(net, rng.standard_normal(6).astype(np.float32), "b1")
    y = net.op("Relu", [net.op("Conv", ["x", w1, b1], name="conv1", pads=[1] * 4)])
    w2 = net.op("Identity", [_constant(net, rng.standard_normal((4, 6, 1, 1)).astype("f"), "w2")])
    y = net.op("Relu", [net.op("Conv", [y, w2], name="conv2")])
    hwio = _constant(net, rng.standard_normal((3, 3, 4, 5)).astype(np.float32), "w3_hwio")
    w3 = net.op("Transpose", [hwio], perm=[3, 2, 0, 1])
    y = net.op("Conv", [y, w3], name="conv3", pads=[1] * 4)
    y = net.op("Flatten", [net.op("GlobalAveragePool", [y])])
    model = net.model(net.op("Gemm", [y, net.rand(5, 5)], transB=1))
    analysis = check_exact(model, sample())
    assert sorted(g.size for g in analysis.prunable_groups()) == [4, 5, 6]
    assert [n.op_type for n in analysis.model.graph.node].count("Constant") == 0
    assert group_of(analysis, "conv3").producers == ["conv3"]


def test_cost_counts_constant_node_weights_as_params():
    net = Net()
    rng = np.random.default_rng(6)
    w = _constant(net, rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "w")
    b = _constant(net, rng.standard_normal(6).astype(np.float32), "b")
    y = net.op("Flatten", [net.op("GlobalAveragePool", [net.op("Conv", ["x", w, b])])])
    model = net.model(net.op("Gemm", [y, net.rand(5, 6), net.rand(5)], transB=1))
    expected = 6 * 3 * 9 + 6 + 5 * 6 + 5
    assert model_cost(model).params == expected
    assert model_cost(analyze(model).model).params == expected


# -- quantized graphs ------------------------------------------------------------------------
def _float_cnn(batch: int | str = "N") -> onnx.ModelProto:
    net = Net(shape=(batch, 3, 8, 8), seed=4)
    y = net.op("Relu", [net.conv("x", 3, 8, name="conv1")])
    y = net.op("Relu", [net.conv(y, 8, 6, name="conv2")])
    y = net.op("Flatten", [net.op("GlobalAveragePool", [y])], name="flat")
    model = net.model(net.op("Gemm", [y, net.rand(5, 6), net.rand(5)], transB=1, name="fc"))
    model.opset_import[0].version = 17
    return model


def _quantize(tmp_path, quant_format: str, per_channel: bool = True) -> onnx.ModelProto:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": sample((1, 3, 8, 8), seed=k)} for k in range(8)])

        def get_next(self):
            return next(self.batches, None)

    source, target = tmp_path / "float.onnx", tmp_path / f"{quant_format}.onnx"
    onnx.save(_float_cnn(1), source)
    quantize_static(
        str(source),
        str(target),
        Reader(),
        quant_format=getattr(QuantFormat, quant_format),
        per_channel=per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return onnx.load(target)


def _run_plain(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """onnxruntime with graph optimisations off: the QDQ graph is evaluated op by op (float
    Conv between DequantizeLinear and QuantizeLinear), the same way for pruned and reference."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("per_channel", [True, False])
def test_qdq_model_prunes_exactly(tmp_path, per_channel):
    """QDQ: weights are DequantizeLinear(int8, per-channel scale) -> Conv; activations pass
    QuantizeLinear -> DequantizeLinear with per-tensor scales. Surgery slices the int8 weights
    and the per-channel scales/zero points along the quantisation axis; the masked reference
    zeroes the removed channels after DequantizeLinear, where surgery removes them. With
    per-tensor activation scales every kept value is quantised identically, so the only
    difference is float summation order inside the Conv; a rounding tie at the next
    QuantizeLinear may flip one step, hence atol = 1 output quantisation step."""
    model = _quantize(tmp_path, "QDQ", per_channel)
    ops = [n.op_type for n in model.graph.node]
    assert "DequantizeLinear" in ops and "QuantizeLinear" in ops
    analysis = analyze(model)
    assert sorted(g.size for g in analysis.prunable_groups()) == [6, 8]
    x = sample((1, 3, 8, 8), seed=11)
    final_dq = next(
        n for n in reversed(analysis.model.graph.node) if n.op_type == "DequantizeLinear"
    )
    step = float(np.max(analysis.index.const(final_dq.input[1])))
    rng = np.random.default_rng(3)
    plan_cost = PlanCost(analysis.model, analysis.channel_exprs(), analysis.group_sizes())
    for _ in range(3):
        plan = random_plan(analysis, rng)
        pruned = apply_plan(analysis, plan)
        onnx.checker.check_model(pruned, full_check=True)
        got, want = _run_plain(pruned, x), _run_plain(masked_reference(analysis, plan), x)
        np.testing.assert_allclose(got, want, rtol=0, atol=step * 1.01)
        # invariant 2, params included: per-channel weight scales shrink with the weight rows
        kept = {gid: len(keep) for gid, keep in plan.keep.items()}
        priced, real = plan_cost.cost(kept), model_cost(pruned)
        assert (priced.macs, priced.flops, priced.params) == (real.macs, real.flops, real.params)
        # with onnxruntime's QDQ fusion (int8 QLinearConv) the pruned model runs too
        assert run(pruned, x)[0].shape == (1, 5)
    weights = [
        t for t in pruned.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 4
    ]
    assert weights, "int8 weights stay int8"


def test_qoperator_model_is_frozen_with_a_reason(tmp_path):
    model = _quantize(tmp_path, "QOperator")
    assert "QLinearConv" in [n.op_type for n in model.graph.node]
    analysis = analyze(model)
    assert analysis.prunable_groups() == []
    assert sorted(g.size for g in analysis.groups) == [6, 8]  # conv1, conv2 outputs
    for group in analysis.groups:
        assert "QOperator" in group.frozen_reason and "(QLinearConv)" in group.frozen_reason
    pruned = apply_plan(analysis, Plan({}))
    x = sample((1, 3, 8, 8))
    np.testing.assert_array_equal(run(pruned, x)[0], run(model, x)[0])


# -- other idioms ----------------------------------------------------------------------------
def _gemm_trans(trans_a: int) -> onnx.ModelProto:
    net = Net()
    y = net.op("Relu", [net.conv("x", 3, 6, name="conv")])
    y = net.op("Flatten", [net.op("GlobalAveragePool", [y])])
    if trans_a:
        y = net.op("Transpose", [y], perm=[1, 0])
    y = net.op("Gemm", [y, net.rand(6, 7)], transA=trans_a, name="fc1")
    y = net.op("Relu", [y])
    return net.model(net.op("Gemm", [y, net.rand(5, 7), net.rand(5)], transB=1, name="fc2"))


def _matmul_nlc() -> onnx.ModelProto:
    """Conv -> [N, C, HW] -> [N, HW, C] -> MatMul (tokens x features) -> MatMul."""
    net = Net()
    y = net.conv("x", 3, 6, name="conv")
    y = net.op("Reshape", [y, net.const(np.array([0, 6, 64]))])
    y = net.op("Transpose", [y], perm=[0, 2, 1])
    y = net.op("Add", [net.op("MatMul", [y, net.rand(6, 7)], name="proj"), net.rand(7)])
    y = net.op("Relu", [y])
    return net.model(net.op("MatMul", [y, net.rand(7, 4)], name="out"))


def _same_upper_sum_minmax() -> onnx.ModelProto:
    net = Net()
    a = net.op("Conv", ["x", net.rand(6, 3, 3, 3)], auto_pad="SAME_UPPER", name="a")
    b = net.op("Conv", ["x", net.rand(6, 3, 2, 2)], auto_pad="SAME_UPPER", name="b")
    c = net.op("Conv", ["x", net.rand(6, 3, 1, 1)], name="c")
    y = net.op("Sum", [a, b, c], name="sum3")
    y = net.op("Max", [y, net.op("Relu", [a])], name="max")
    y = net.op("Min", [y, net.op("Relu", [b])], name="min")
    y = net.conv(y, 6, 4, name="after")
    y = net.op("Flatten", [net.op("GlobalAveragePool", [y])])
    return net.model(net.op("Gemm", [y, net.rand(5, 4)], transB=1))


def _resize_upsample(kind: str) -> onnx.ModelProto:
    net = Net()
    y = net.op("Relu", [net.conv("x", 3, 4, name="conv")])
    if kind == "upsample9":
        y = net.op("Upsample", [y, net.const(np.array([1, 1, 2, 2], np.float32))], name="up")
    elif kind == "sizes":
        y = net.op("Resize", [y, "", "", net.const(np.array([2, 4, 16, 16]))], name="up")
    else:  # opset 18 axes
        y = net.op("Resize", [y, "", "", net.const(np.array([16, 16]))], axes=[2, 3], name="up")
    y = net.op("Flatten", [net.op("GlobalAveragePool", [net.conv(y, 4, 6, name="conv2")])])
    model = net.model(net.op("Gemm", [y, net.rand(5, 6), net.rand(5)], transB=1))
    if kind == "upsample9":
        model.opset_import[0].version = 9
        model.ir_version = 4
    return model


def _activations() -> onnx.ModelProto:
    """PRelu / LeakyRelu / Mish / Swish / Gelu written elementwise, Neg/Abs/Exp/Log/Sqrt/
    Reciprocal, Where with a broadcast per-channel constant, Expand of a per-channel bias."""
    net = Net()
    y = net.conv("x", 3, 6, name="conv")
    y = net.op("PRelu", [y, net.const(np.linspace(0.1, 0.6, 6, dtype=np.float32).reshape(6, 1, 1))])
    y = net.op("LeakyRelu", [y], alpha=0.2)
    mish = net.op("Mul", [y, net.op("Tanh", [net.op("Softplus", [y])])])
    swish = net.op("Mul", [mish, net.op("Sigmoid", [mish])])
    scaled = net.op("Div", [swish, net.const(np.float32(np.sqrt(2)))])
    erf = net.op("Add", [net.op("Erf", [scaled]), net.const(np.float32(1))])
    gelu = net.op("Mul", [net.op("Mul", [swish, net.const(np.float32(0.5))]), erf])
    y = net.op("Sqrt", [net.op("Abs", [net.op("Neg", [gelu])])])
    y = net.op("Log", [net.op("Add", [net.op("Exp", [y]), net.const(np.float32(1))])])
    y = net.op("Reciprocal", [net.op("Add", [y, net.const(np.float32(0.5))])])
    positive = net.op("Greater", [y, net.const(np.float32(0.8))])
    y = net.op("Where", [positive, y, net.rand(1, 6, 1, 1)], name="where")
    bias = net.op("Expand", [net.rand(1, 6, 1, 1), net.op("Shape", [y])], name="expand_bias")
    y = net.op("Add", [y, bias], name="add_bias")
    y = net.conv(y, 6, 4, name="conv2")
    y = net.op("Flatten", [net.op("GlobalAveragePool", [y])])
    return net.model(net.op("Gemm", [y, net.rand(5, 4)], transB=1))


def _reduce_heads(opset: int, head: str) -> onnx.ModelProto:
    """ReduceMean over H, W (axes attribute at opset 13, input at 18) or GAP -> Squeeze /
    GAP -> Flatten -> MatMul + Add; a paddle2onnx-style unfolded BN (Sub, Div, Mul, Add)."""
    net = Net()
    y = net.conv("x", 3, 6, name="conv")
    per_channel = [net.const(net.rng.random((1, 6, 1, 1)).astype(np.float32) + 0.5) for _ in "abcd"]
    for op, value in zip(["Sub", "Div", "Mul", "Add"], per_channel, strict=True):
        y = net.op(op, [y, value])
    y = net.op("Relu", [y])
    if head == "reduce":
        if opset == 13:
            y = net.op("ReduceMean", [y], axes=[2, 3], keepdims=0, name="mean")
        else:
            y = net.op("ReduceMean", [y, net.const(np.array([2, 3]))], keepdims=0, name="mean")
        out = net.op("Gemm", [y, net.rand(5, 6)], transB=1, name="fc")
    elif head == "squeeze":
        y = net.op("GlobalAveragePool", [y])
        squeeze_axes = [net.const(np.array([2, 3]))] if opset >= 13 else []
        kwargs = {} if opset >= 13 else {"axes": [2, 3]}
        y = net.op("Squeeze", [y, *squeeze_axes], **kwargs)
        out = net.op("Gemm", [y, net.rand(5, 6)], transB=1, name="fc")
    else:
        y = net.op("Flatten", [net.op("GlobalAveragePool", [y])])
        out = net.op("Add", [net.op("MatMul", [y, net.rand(6, 5)], name="fc"), net.rand(5)])
    model = net.model(out)
    model.opset_import[0].version = opset
    return model


IDIOMS = {
    "gemm_transA0": lambda: _gemm_trans(0),
    "gemm_transA1": lambda: _gemm_trans(1),
    "matmul_nlc": _matmul_nlc,
    "same_upper_sum_minmax": _same_upper_sum_minmax,
    "upsample_opset9": lambda: _resize_upsample("upsample9"),
    "resize_sizes": lambda: _resize_upsample("sizes"),
    "resize_axes": lambda: _resize_upsample("axes"),
    "activations": _activations,
    "reduce_mean_attr13": lambda: _reduce_heads(13, "reduce"),
    "reduce_mean_input18": lambda: _reduce_heads(18, "reduce"),
    "gap_squeeze_gemm": lambda: _reduce_heads(13, "squeeze"),
    "gap_flatten_matmul_add": lambda: _reduce_heads(18, "flatten"),
}

# prunable group sizes each idiom must give (every conv / hidden layer, never the logits)
EXPECTED = {
    "gemm_transA0": [6, 7],
    "gemm_transA1": [6, 7],
    "matmul_nlc": [6, 7],
    "same_upper_sum_minmax": [4, 6],
    "upsample_opset9": [4, 6],
    "resize_sizes": [4, 6],
    "resize_axes": [4, 6],
    "activations": [4, 6],
    "reduce_mean_attr13": [6],
    "reduce_mean_input18": [6],
    "gap_squeeze_gemm": [6],
    "gap_flatten_matmul_add": [6],
}


@pytest.mark.parametrize("name", sorted(IDIOMS))
def test_idiom_groups_and_exactness(name):
    model = IDIOMS[name]()
    x = sample((2, 3, 8, 8), seed=len(name))
    analysis = check_exact(model, x)
    if name == "activations":  # the Expand of a per-channel bias became a plain constant
        assert "Expand" not in [n.op_type for n in analysis.model.graph.node]
    sizes = sorted(g.size for g in analysis.prunable_groups())
    frozen = [g.frozen_reason for g in analysis.groups if not g.prunable]
    assert sizes == EXPECTED[name], f"prunable {sizes}; frozen: {frozen}"


def test_unary_handlers_cover_the_elementwise_math_ops():
    from onnxprune.deps import HANDLERS

    for op in "Neg Abs Exp Log Sqrt Reciprocal Erf Tan Atan Sinh Softplus Mish Gelu".split():
        assert op in HANDLERS, op

"""Channel dependency analysis on tiny hand-written graphs: one per handler family.

Group membership and sizes are asserted exactly, frozen reasons by content, and every
model is also pruned with random plans and compared against the masked reference.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.deps import ChannelExpr, analyze
from onnxprune.surgery import apply_plan, masked_reference

FLOAT = TensorProto.FLOAT


class Net:
    """Minimal graph builder: ``op`` appends a node, ``const`` an initializer."""

    def __init__(self, shape=("N", 3, 8, 8), seed: int = 0) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self.count = 0
        self.inputs = [helper.make_tensor_value_info("x", FLOAT, list(shape))]

    def const(self, array, name: str | None = None) -> str:
        self.count += 1
        name = name or f"c{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def rand(self, *shape) -> str:
        return self.const(self.rng.standard_normal(shape).astype(np.float32))

    def op(self, op_type: str, inputs, outputs: int = 1, name: str | None = None, **attrs):
        """Append a node; its outputs are named after the node (``name_k`` if several)."""
        self.count += 1
        base = name or f"{op_type.lower()}{self.count}"
        outs = [base] if outputs == 1 else [f"{base}_{k}" for k in range(outputs)]
        if name is not None and any(n.name == name for n in self.nodes) or not base:
            outs = [f"t{self.count}_{k}" for k in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, name=None) -> str:
        weight = self.rand(cout, cin // group, k, k)
        return self.op(
            "Conv", [x, weight, self.rand(cout)], name=name, pads=[k // 2] * 4, group=group
        )

    def model(self, *outputs: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "tiny",
            self.inputs,
            [helper.make_tensor_value_info(o, FLOAT, None) for o in outputs],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9  # onnxruntime 1.31 reads IR <= 13
        return model


def head(net: Net, x: str, channels: int, classes: int = 5) -> str:
    pooled = net.op("GlobalAveragePool", [x])
    flat = net.op("Flatten", [pooled], axis=1)
    return net.op("Gemm", [flat, net.rand(classes, channels), net.rand(classes)], transB=1)


# -- tiny models (builders shared with test_surgery) ---------------------------------------
def chain() -> onnx.ModelProto:
    net = Net()
    y = net.op("Relu", [net.conv("x", 3, 8, name="conv1")])
    y = net.op("Relu", [net.conv(y, 8, 6, name="conv2")])
    return net.model(head(net, y, 6))


def residual() -> onnx.ModelProto:
    net = Net()
    stem = net.op("Relu", [net.conv("x", 3, 8, name="stem")])
    branch = net.conv(net.op("Relu", [net.conv(stem, 8, 4, name="inner")]), 4, 8, name="outer")
    y = net.op("Relu", [net.op("Add", [stem, branch], name="add")])
    return net.model(head(net, y, 8))


def depthwise_bn() -> onnx.ModelProto:
    net = Net()
    y = net.conv("x", 3, 8, name="pw1")
    bn = [net.const(np.abs(net.rng.standard_normal(8)).astype(np.float32) + 0.5) for _ in range(4)]
    y = net.op("BatchNormalization", [y, *bn], name="bn")
    y = net.op("Clip", [y, net.const(np.float32(0)), net.const(np.float32(6))], name="relu6")
    y = net.conv(y, 8, 8, group=8, name="dw")
    y = net.op("PRelu", [y, net.const(net.rng.random((8, 1, 1)).astype(np.float32))])
    y = net.conv(y, 8, 6, k=1, name="pw2")
    return net.model(head(net, y, 6))


def grouped() -> onnx.ModelProto:
    net = Net()
    y = net.op("Relu", [net.conv("x", 3, 8, name="first")])
    y = net.op("Relu", [net.conv(y, 8, 4, group=2, name="gconv")])
    return net.model(head(net, net.conv(y, 4, 6, k=1, name="last"), 6))


def concat_split() -> onnx.ModelProto:
    net = Net()
    a = net.conv("x", 3, 4, name="ca")
    b = net.conv("x", 3, 6, name="cb")
    cat = net.op("Concat", [a, b], name="cat", axis=1)
    left, right = net.op(
        "Split", [cat, net.const(np.array([3, 7]))], outputs=2, name="split", axis=1
    )
    y = net.op("Add", [net.conv(left, 3, 5, name="cl"), net.conv(right, 7, 5, name="cr")])
    return net.model(head(net, y, 5))


def option_a() -> onnx.ModelProto:
    """ResNet option-A shortcut: strided spatial Slice + Pad of zero channels."""
    net = Net()
    x = net.op("Relu", [net.conv("x", 3, 4, name="stem")])
    sliced = net.op(
        "Slice",
        [
            x,
            net.const(np.array([0, 0])),
            net.const(np.array([2**62, 2**62])),
            net.const(np.array([2, 3])),
            net.const(np.array([2, 2])),
        ],
        name="sub",
    )
    shortcut = net.op("Pad", [sliced, net.const(np.array([0, 2, 0, 0, 0, 2, 0, 0]))], name="pad")
    body = net.op("Conv", [x, net.rand(8, 4, 3, 3)], name="down", pads=[1] * 4, strides=[2, 2])
    y = net.op("Relu", [net.op("Add", [body, shortcut], name="add")])
    return net.model(head(net, y, 8))


def flatten_nchw() -> onnx.ModelProto:
    net = Net()
    y = net.op("MaxPool", [net.conv("x", 3, 4, name="conv")], kernel_shape=[4, 4], strides=[4, 4])
    flat = net.op("Reshape", [y, net.const(np.array([-1, 16]))], name="flat")
    return net.model(net.op("Gemm", [flat, net.rand(16, 5)], name="fc"))


def flatten_nhwc() -> onnx.ModelProto:
    net = Net()
    y = net.op("MaxPool", [net.conv("x", 3, 4, name="conv")], kernel_shape=[4, 4], strides=[4, 4])
    nhwc = net.op("Transpose", [y], perm=[0, 2, 3, 1])
    flat = net.op("Reshape", [nhwc, net.const(np.array([-1, 16]))], name="flat")
    fc = net.op("MatMul", [flat, net.rand(16, 5)], name="fc")
    return net.model(net.op("Add", [fc, net.rand(5)], name="fc_bias"))


def squeeze_excite() -> onnx.ModelProto:
    net = Net()
    x = net.op("Relu", [net.conv("x", 3, 8, name="body")])
    gate = net.op("ReduceMean", [x, net.const(np.array([2, 3]))], name="squeeze", keepdims=0)
    gate = net.op("Unsqueeze", [gate, net.const(np.array([2, 3]))])
    gate = net.op("Relu", [net.conv(gate, 8, 2, k=1, name="fc1")])
    gate = net.op("HardSigmoid", [net.conv(gate, 2, 8, k=1, name="fc2")])
    y = net.op("Mul", [x, gate], name="excite")
    y = net.op("Mul", [y, net.const(net.rng.random((1, 8, 1, 1)).astype(np.float32))])
    return net.model(head(net, y, 8))


def resize_up() -> onnx.ModelProto:
    net = Net()
    y = net.op(
        "AveragePool", [net.conv("x", 3, 4, name="conv")], kernel_shape=[2, 2], strides=[2, 2]
    )
    sizes = net.const(np.array([1, 4, 8, 8]))
    y = net.op("Resize", [y, "", "", sizes], name="up", mode="nearest")
    y = net.op("Sigmoid", [net.conv(y, 4, 3, name="conv2")])
    return net.model(head(net, y, 3))


def softmax_channels() -> onnx.ModelProto:
    net = Net()
    y = net.op("Softmax", [net.conv("x", 3, 4, name="conv")], name="attn", axis=1)
    return net.model(head(net, net.conv(y, 4, 6, name="conv2"), 6))


def shuffle() -> onnx.ModelProto:
    net = Net()
    y = net.conv("x", 3, 8, name="conv")
    y = net.op("Reshape", [y, net.const(np.array([-1, 2, 4, 8, 8]))], name="shuffle_split")
    y = net.op("Transpose", [y], perm=[0, 2, 1, 3, 4])
    y = net.op("Reshape", [y, net.const(np.array([-1, 8, 8, 8]))], name="shuffle_merge")
    return net.model(head(net, net.conv(y, 8, 6, name="conv2"), 6))


def unknown_op() -> onnx.ModelProto:
    net = Net()
    y = net.op("LpNormalization", [net.conv("x", 3, 4, name="conv")], name="mystery", axis=1)
    return net.model(head(net, net.conv(y, 4, 6, name="conv2"), 6))


TINY = {
    "chain": chain,
    "residual": residual,
    "depthwise_bn": depthwise_bn,
    "grouped": grouped,
    "concat_split": concat_split,
    "option_a": option_a,
    "flatten_nchw": flatten_nchw,
    "flatten_nhwc": flatten_nhwc,
    "squeeze_excite": squeeze_excite,
    "resize_up": resize_up,
    "softmax_channels": softmax_channels,
    "shuffle": shuffle,
    "unknown_op": unknown_op,
}


# -- helpers -------------------------------------------------------------------------------
class Plan:
    def __init__(self, keep: dict[int, list[int]]) -> None:
        self.keep = keep


def random_plan(analysis, rng: np.random.Generator) -> Plan:
    """Random keep indices for every prunable group, equal counts per block."""
    keep = {}
    for group in analysis.prunable_groups():
        block = group.size // group.block_count
        count = int(rng.integers(1, block + 1))
        keep[group.id] = sorted(
            b * block + int(j)
            for b in range(group.block_count)
            for j in rng.choice(block, count, replace=False)
        )
    return Plan(keep)


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def assert_exact(analysis, plan, x: np.ndarray) -> None:
    """Invariant 1: pruned outputs equal the masked reference to 1e-4 relative."""
    pruned, reference = apply_plan(analysis, plan), masked_reference(analysis, plan)
    for got, want in zip(run(pruned, x), run(reference, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def group_of(analysis, tensor: str):
    (gid,) = analysis.tensor_groups()[tensor]
    return analysis.group(gid)


def sample(shape=(2, 3, 8, 8), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- tests ---------------------------------------------------------------------------------
def test_chain_groups_and_exprs():
    analysis = analyze(chain())
    sizes = [(g.size, g.prunable) for g in analysis.groups]
    assert sizes == [(8, True), (6, True), (5, False)]
    first = analysis.groups[0]
    assert first.producers == ["conv1"] and first.consumers == ["conv2"]
    assert "graph output" in analysis.groups[2].frozen_reason
    exprs = analysis.channel_exprs()
    assert exprs["conv1"] == ChannelExpr(1, 0, ((0, 1),))
    assert analysis.group_sizes() == {0: 8, 1: 6, 2: 5}
    assert "Group 0: 8 channels, prunable" in str(analysis)


def test_residual_add_ties_producers():
    analysis = analyze(residual())
    group = group_of(analysis, "add")
    assert group.size == 8 and set(group.producers) == {"stem", "outer"}
    assert set(group.consumers) >= {"inner"}
    assert len(analysis.prunable_groups()) == 2  # stream + inner


def test_depthwise_ties_input_and_output():
    analysis = analyze(depthwise_bn())
    group = group_of(analysis, "dw")
    assert group.producers == ["pw1"] and group.consumers == ["pw2"]
    assert {"bn", "dw"} <= set(group.params)
    assert group_of(analysis, "pw1") is group


def test_grouped_conv_block_count():
    analysis = analyze(grouped())
    assert group_of(analysis, "first").block_count == 2
    assert group_of(analysis, "gconv").block_count == 2
    assert group_of(analysis, "first").prunable


def test_concat_offsets_and_split_ranges():
    analysis = analyze(concat_split())
    sizes = sorted(g.size for g in analysis.prunable_groups())
    # cat = [ca 4 | cb 6], split at 3: ca splits into 3 + 1, cb stays whole, cl/cr tied
    assert sizes == [1, 3, 5, 6]
    exprs = analysis.channel_exprs()
    assert exprs["cat"].const == 0 and len(exprs["cat"].terms) == 3
    right = analysis.tensor_groups()["split_1"]
    assert sorted(analysis.group(g).size for g in right) == [1, 6]
    left = analysis.tensor_groups()["split_0"]
    assert [analysis.group(g).size for g in left] == [3]


def test_option_a_pad_channels_are_constant_members():
    analysis = analyze(option_a())
    stem = group_of(analysis, "stem")
    assert stem.size == 4 and set(stem.producers) == {"stem", "down"}
    pad_groups = analysis.tensor_groups()["pad"]
    assert sorted(analysis.group(g).size for g in pad_groups) == [4, 4]
    assert analysis.channel_exprs()["pad"].const == 0


@pytest.mark.parametrize(
    ("builder", "layout", "period"), [(flatten_nchw, "blocks", 0), (flatten_nhwc, "interleaved", 4)]
)
def test_flatten_feature_blocks(builder, layout, period):
    analysis = analyze(builder())
    group = group_of(analysis, "flat")
    member = next(m for m in group.members if m.tensor == "flat")
    assert (member.repeat, member.layout, member.period) == (4, layout, period)
    assert analysis.channel_exprs()["flat"] == ChannelExpr(1, 0, ((group.id, 4),))
    assert group.consumers == ["fc"]


def test_matmul_add_becomes_gemm_consumer():
    analysis = analyze(flatten_nhwc())
    ops = {n.name: n.op_type for n in analysis.model.graph.node}
    assert ops["fc"] == "Gemm" and "fc_bias" not in ops


def test_squeeze_excitation_gate_tied_to_body():
    analysis = analyze(squeeze_excite())
    body = group_of(analysis, "body")
    assert set(body.producers) == {"body", "fc2"}
    gemm = next(n.name for n in analysis.model.graph.node if n.op_type == "Gemm")
    assert set(body.consumers) == {"fc1", gemm}
    assert group_of(analysis, "fc1").size == 2


def test_resize_sizes_entry_recorded():
    analysis = analyze(resize_up())
    group = group_of(analysis, "up")
    assert group.prunable and "up" in group.params


@pytest.mark.parametrize(
    ("builder", "node", "words"),
    [
        (softmax_channels, "attn", "Softmax"),
        (shuffle, "shuffle_split", "splits or mixes the channel axis"),
        (unknown_op, "mystery", "LpNormalization"),
    ],
)
def test_frozen_reasons_name_node_and_op(builder, node, words):
    analysis = analyze(builder())
    conv = group_of(analysis, "conv")
    assert not conv.prunable
    assert f"'{node}'" in conv.frozen_reason and words in conv.frozen_reason
    assert group_of(analysis, "conv2").prunable


def test_input_model_not_modified():
    model = residual()
    before = model.SerializeToString()
    analyze(model)
    assert model.SerializeToString() == before


@pytest.mark.parametrize("name", sorted(TINY))
def test_random_plans_exact(name):
    analysis = analyze(TINY[name]())
    rng = np.random.default_rng(7)
    for trial in range(4):
        assert_exact(analysis, random_plan(analysis, rng), sample(seed=trial))


def test_group_to_dict_roundtrip_fields():
    group = analyze(chain()).groups[0]
    data = group.to_dict()
    assert data["size"] == 8 and data["prunable"] and data["producers"] == ["conv1"]
    assert data["members"][0]["tensor"] == "conv1"


# -- shared weights (KNOWN_FAILURES #2) ------------------------------------------------------
def shared_weights(shared_input_is_graph_input: bool = False) -> onnx.ModelProto:
    """stem(8) -> branch(8); one Conv weight ``shared_w`` (+ bias) applied to the stem output
    and to the branch output; both results concatenated into the head. With
    ``shared_input_is_graph_input`` the shared 3->3 Conv reads the graph input and a 3-channel
    conv output instead."""
    net = Net()
    if shared_input_is_graph_input:
        mid = net.op("Relu", [net.conv("x", 3, 3, name="mid")])
        weight, bias = net.const(net.rng.standard_normal((6, 3, 3, 3)).astype(np.float32)), None
        inputs = ("x", mid)
    else:
        stem = net.op("Relu", [net.conv("x", 3, 8, name="stem")])
        branch = net.op("Relu", [net.conv(stem, 8, 8, name="branch")])
        weight = net.const(net.rng.standard_normal((6, 8, 3, 3)).astype(np.float32), "shared_w")
        bias = net.const(net.rng.standard_normal(6).astype(np.float32), "shared_b")
        inputs = (stem, branch)
    outs = []
    for k, x in enumerate(inputs):
        ins = [x, weight] + ([bias] if bias else [])
        outs.append(net.op("Relu", [net.op("Conv", ins, name=f"apply{k}", pads=[1] * 4)]))
    y = net.op("Concat", outs, axis=1, name="cat")
    return net.model(head(net, y, 12))


def test_shared_weight_ties_outputs_and_inputs():
    """Both applications' outputs form one group, and so do their inputs (stem + branch)."""
    analysis = analyze(shared_weights())
    inputs = group_of(analysis, "stem")
    assert group_of(analysis, "branch").id == inputs.id
    assert inputs.prunable and inputs.size == 8
    assert sorted(inputs.producers) == ["branch", "stem"]
    assert sorted(inputs.consumers) == ["apply0", "apply1", "branch"]
    outputs = group_of(analysis, "apply0")
    assert group_of(analysis, "apply1").id == outputs.id
    assert outputs.prunable and outputs.size == 6
    assert sorted(outputs.producers) == ["apply0", "apply1"]
    assert len(analysis.prunable_groups()) == 2
    cat = next(m for m in outputs.members if m.tensor == "cat")
    assert (cat.repeat, cat.layout, cat.period) == (2, "interleaved", 6)


def test_shared_weight_stays_one_initializer_and_cost_is_honest():
    from onnxprune.cost import PlanCost, model_cost

    analysis = analyze(shared_weights())
    plan_cost = PlanCost(analysis.model, analysis.channel_exprs(), analysis.group_sizes())
    rng = np.random.default_rng(11)
    for trial in range(4):
        plan = random_plan(analysis, rng)
        pruned = apply_plan(analysis, plan)
        kept = {gid: len(keep) for gid, keep in plan.keep.items()}
        inits = {t.name: list(t.dims) for t in pruned.graph.initializer}
        convs = [n for n in pruned.graph.node if n.name in ("apply0", "apply1")]
        assert [n.input[1] for n in convs] == ["shared_w", "shared_w"]
        assert [n.input[2] for n in convs] == ["shared_b", "shared_b"]
        assert not [name for name in inits if name.startswith("shared_w__")]
        out_id = group_of(analysis, "apply0").id
        in_id = group_of(analysis, "stem").id
        assert inits["shared_w"] == [kept[out_id], kept[in_id], 3, 3]
        real = model_cost(pruned)
        priced = plan_cost.cost(kept)
        assert (priced.macs, priced.flops, priced.params) == (real.macs, real.flops, real.params)
        assert_exact(analysis, plan, sample(seed=trial))


def test_shared_weight_read_by_graph_input_freezes_the_other_input():
    """The shared Conv also reads the graph input, whose 3 channels cannot be removed, so the
    other input's channels (conv 'mid') cannot slice the shared weight's columns: frozen."""
    analysis = analyze(shared_weights(shared_input_is_graph_input=True))
    mid = group_of(analysis, "mid")
    assert not mid.prunable
    assert "weight 'c" in mid.frozen_reason and "'apply0' (Conv)" in mid.frozen_reason
    assert "axis 1" in mid.frozen_reason
    outputs = group_of(analysis, "apply0")
    assert outputs.prunable and group_of(analysis, "apply1").id == outputs.id
    rng = np.random.default_rng(2)
    for trial in range(2):
        plan = random_plan(analysis, rng)
        pruned = apply_plan(analysis, plan)
        weights = {n.input[1] for n in pruned.graph.node if n.name.startswith("apply")}
        assert len(weights) == 1
        assert_exact(analysis, plan, sample(seed=trial))


# -- grouped Conv with one channel per group ------------------------------------------------
def depthwise_multiplier(multiplier: int = 2, out_groups: int = 6) -> onnx.ModelProto:
    """conv(6) -> depthwise with channel multiplier (group 6, 6*m outputs) -> grouped 1x1
    Conv (group ``out_groups``, 6 outputs: one output channel per group when 6) -> head."""
    net = Net()
    y = net.op("Relu", [net.conv("x", 3, 6, name="pre")])
    y = net.op("Relu", [net.conv(y, 6, 6 * multiplier, group=6, name="dwm")])
    y = net.conv(y, 6 * multiplier, 6, k=1, group=out_groups, name="gout")
    return net.model(head(net, y, 6))


def test_one_channel_per_group_is_frozen_with_reason():
    """The input of a multiplier-2 depthwise Conv has 6 blocks of 1 channel (no channel can go
    without changing ``group``): frozen, with a reason naming the Conv. Its output (6 blocks
    of 2) stays prunable; the 6-group 1x1 Conv's output (one channel per group) is frozen."""
    analysis = analyze(depthwise_multiplier())
    pre = group_of(analysis, "pre")
    assert not pre.prunable and pre.block_count == 6
    assert pre.frozen_reason == (
        "grouped Conv 'dwm' (Conv) input 'relu4' has one channel per group (6 groups); "
        "removing any would change the group structure"
    )
    dwm = group_of(analysis, "dwm")
    assert dwm.prunable and (dwm.size, dwm.block_count) == (12, 6)
    gout = group_of(analysis, "gout")
    assert not gout.prunable and "'gout' (Conv) output" in gout.frozen_reason
    assert [g.id for g in analysis.prunable_groups()] == [dwm.id]
    rng = np.random.default_rng(1)
    for trial in range(3):
        assert_exact(analysis, random_plan(analysis, rng), sample(seed=trial))


def test_two_channels_per_group_stays_prunable():
    analysis = analyze(depthwise_multiplier(out_groups=3))
    gout = group_of(analysis, "gout")
    assert gout.prunable and (gout.size, gout.block_count) == (6, 3)
    assert not group_of(analysis, "pre").prunable

"""apply_plan / masked_reference: exactness, names, shared constants, plan validation,
honest cost, and the bundled CIFAR ResNets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.cost import PlanCost, model_cost
from onnxprune.deps import analyze
from onnxprune.errors import PlanError
from onnxprune.surgery import apply_plan, masked_reference
from tests.corpus.fixtures import corpus_model  # noqa: F401  (pytest fixture)
from tests.test_deps import (
    TINY,
    Net,
    Plan,
    assert_exact,
    depthwise_bn,
    group_of,
    grouped,
    head,
    random_plan,
    run,
    sample,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "cifar_resnet"


def _attr(node: onnx.NodeProto, name: str):
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def test_pruning_changes_model_and_keeps_names():
    analysis = analyze(TINY["residual"]())
    plan = random_plan(analysis, np.random.default_rng(0))
    pruned = apply_plan(analysis, plan)
    original = analysis.model
    assert [n.name for n in pruned.graph.node] == [n.name for n in original.graph.node]
    assert [list(n.output) for n in pruned.graph.node] == [
        list(n.output) for n in original.graph.node
    ]
    x = sample()
    want = run(masked_reference(analysis, plan), x)[0]
    assert not np.allclose(run(original, x)[0], want, rtol=1e-3)  # the plan removes something
    np.testing.assert_allclose(run(pruned, x)[0], want, rtol=1e-4, atol=1e-5)
    assert model_cost(pruned).params < model_cost(original).params


def test_depthwise_group_count_follows_kept_channels():
    analysis = analyze(depthwise_bn())
    group = group_of(analysis, "dw")
    plan = Plan({group.id: [0, 2, 5]})
    pruned = apply_plan(analysis, plan)
    dw = next(n for n in pruned.graph.node if n.name == "dw")
    assert _attr(dw, "group") == 3
    assert_exact(analysis, plan, sample())


def test_grouped_conv_keeps_group_count_and_blocks():
    analysis = analyze(grouped())
    first = group_of(analysis, "first")
    plan = Plan({first.id: [1, 3, 4, 7]})  # 2 of each block of 4
    pruned = apply_plan(analysis, plan)
    gconv = next(n for n in pruned.graph.node if n.name == "gconv")
    weight = next(t for t in pruned.graph.initializer if t.name == gconv.input[1])
    assert _attr(gconv, "group") == 2 and list(weight.dims)[:2] == [4, 2]
    assert_exact(analysis, plan, sample())
    with pytest.raises(PlanError, match="same number of channels in each of its 2 blocks"):
        apply_plan(analysis, Plan({first.id: [0, 1, 2, 4]}))


def test_plan_errors_name_group_and_tensor():
    analysis = analyze(TINY["chain"]())
    frozen = next(g for g in analysis.groups if not g.prunable)
    with pytest.raises(PlanError, match=rf"group {frozen.id} .*frozen"):
        apply_plan(analysis, Plan({frozen.id: [0]}))
    with pytest.raises(PlanError, match="group 0 \\(conv1\\) keeps no channel"):
        apply_plan(analysis, Plan({0: []}))
    with pytest.raises(PlanError, match="out of range"):
        apply_plan(analysis, Plan({0: [0, 8]}))
    with pytest.raises(PlanError, match="group 99 does not exist"):
        apply_plan(analysis, Plan({99: [0]}))


def test_shared_slice_constants_are_copied_when_sliced_differently():
    net = Net()
    starts, ends = net.const(np.array([0])), net.const(np.array([4]))
    axes = net.const(np.array([1]))
    outs = []
    for name in ("a", "b"):
        y = net.conv("x", 3, 8, name=name)
        outs.append(net.op("Slice", [y, starts, ends, axes], name=f"{name}_slice"))
    y = net.op("Concat", outs, axis=1, name="cat")
    model = net.model(head(net, net.conv(y, 8, 4, name="mix"), 4))
    analysis = analyze(model)
    a_head = next(g for g in analysis.groups if "a_slice" in [m.tensor for m in g.members])
    b_head = next(g for g in analysis.groups if "b_slice" in [m.tensor for m in g.members])
    plan = Plan({a_head.id: [0, 1, 3], b_head.id: [2]})
    pruned = apply_plan(analysis, plan)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in pruned.graph.initializer}
    slices = {n.name: n for n in pruned.graph.node if n.op_type == "Slice"}
    assert inits[slices["a_slice"].input[2]].tolist() == [3]
    assert inits[slices["b_slice"].input[2]].tolist() == [1]
    assert ends not in inits  # no user left of the original constant
    assert_exact(analysis, plan, sample())


def test_plan_cost_matches_pruned_model():
    analysis = analyze(TINY["flatten_nhwc"]())
    plan_cost = PlanCost(analysis.model, analysis.channel_exprs(), analysis.group_sizes())
    rng = np.random.default_rng(5)
    for _ in range(3):
        plan = random_plan(analysis, rng)
        kept = {g: len(v) for g, v in plan.keep.items()}
        assert plan_cost.macs(kept) == model_cost(apply_plan(analysis, plan)).macs


@pytest.fixture(scope="module")
def resnets():
    paths = {n: EXAMPLES / f"{n}.onnx" for n in ("resnet20", "resnet56")}
    if not all(p.exists() for p in paths.values()):
        pytest.skip("bundled CIFAR ResNets not exported yet")
    return {n: analyze(onnx.load(str(p))) for n, p in paths.items()}


@pytest.mark.parametrize(("name", "groups"), [("resnet20", 13), ("resnet56", 31)])
def test_bundled_resnet_groups(resnets, name, groups):
    analysis = resnets[name]
    assert len(analysis.groups) == groups
    frozen = [g for g in analysis.groups if not g.prunable]
    assert len(frozen) == 1 and frozen[0].size == 10  # the classifier output
    # groups = one interior group per basic block + 3 stream groups + the classifier.
    # Option-A shortcuts zero-pad the stream, so stage 1's 16 channels stay one group
    # with the middle channels of every later block output (stem + every block).
    blocks = groups - 4
    stream = analysis.groups[0]
    assert stream.size == 16 and len(stream.producers) == blocks + 1
    assert sorted(g.size for g in analysis.groups if len(g.producers) > 1) == [16, 16, 32]
    assert sum(1 for g in analysis.groups if len(g.producers) == 1 and g.prunable) == blocks


def test_bundled_resnet56_half_plan_exact_and_honest(resnets):
    analysis = resnets["resnet56"]
    plan = Plan({g.id: list(range(0, g.size, 2)) for g in analysis.prunable_groups()})
    pruned = apply_plan(analysis, plan)
    plan_cost = PlanCost(analysis.model, analysis.channel_exprs(), analysis.group_sizes())
    kept = {g: len(v) for g, v in plan.keep.items()}
    assert plan_cost.macs(kept) == model_cost(pruned).macs
    assert model_cost(pruned).macs * 3.9 < model_cost(analysis.model).macs
    x = sample((4, 3, 32, 32))
    want = run(masked_reference(analysis, plan), x)[0]
    np.testing.assert_allclose(run(pruned, x)[0], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_corpus_shared_weights_stay_shared(corpus_model):  # noqa: F811
    """KNOWN_FAILURES #2 on the torch-exported corpus model: one ``nn.Conv2d`` applied to two
    tensors. Random plans are exact, the two Conv nodes still read one (sliced) weight and
    one bias initializer, and PlanCost == cost of the pruned model (params included)."""
    from onnxprune.model import load_model

    analysis = analyze(load_model(corpus_model("shared_weights")))
    model = analysis.model
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            readers.setdefault(node.input[1], []).append(node.name)
    (shared,) = [w for w, nodes in readers.items() if len(nodes) == 2]
    shared_nodes = readers[shared]
    plan_cost = PlanCost(model, analysis.channel_exprs(), analysis.group_sizes())
    rng = np.random.default_rng(4)
    for trial in range(3):
        plan = random_plan(analysis, rng)
        pruned = apply_plan(analysis, plan)
        onnx.checker.check_model(pruned, full_check=True)
        convs = {n.name: n for n in pruned.graph.node if n.name in shared_nodes}
        assert {n.input[1] for n in convs.values()} == {shared}
        assert len({n.input[2] for n in convs.values()}) == 1
        assert sum(1 for t in pruned.graph.initializer if t.name.startswith(shared)) == 1
        kept = {gid: len(keep) for gid, keep in plan.keep.items()}
        real, priced = model_cost(pruned), plan_cost.cost(kept)
        assert (priced.macs, priced.flops, priced.params) == (real.macs, real.flops, real.params)
        assert_exact(analysis, plan, sample((2, 3, 16, 16), seed=trial))

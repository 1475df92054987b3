"""Surgery through onnx-graphsurgeon keeps what it does not rewrite: model-level fields,
the graph interface, value_info, node and initializer order, ``Constant`` nodes, node doc
strings/metadata, attributes graphsurgeon cannot represent, external data; and it never
writes into the input model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.deps import analyze
from onnxprune.errors import InternalError
from onnxprune.model import load_model
from onnxprune.plan import PruningPlan
from onnxprune.surgery import apply_plan, masked_reference
from tests.corpus import CORPUS
from tests.corpus.fixtures import corpus_model  # noqa: F401  (pytest fixture)
from tests.test_deps import TINY, Net, Plan, assert_exact, group_of, head, run, sample

MODEL_FIELDS = [
    "ir_version",
    "producer_name",
    "producer_version",
    "domain",
    "model_version",
    "doc_string",
]


def _every_other(analysis) -> PruningPlan:
    keep = {}
    for group in analysis.prunable_groups():
        blocks = max(int(group.block_count), 1)
        size = group.size // blocks
        keep[group.id] = [b * size + i for b in range(blocks) for i in range(0, size, 2)]
    return PruningPlan.from_keep(analysis, keep, meta={"criterion": "test"})


def _bytes(messages) -> list[bytes]:
    return [m.SerializeToString() for m in messages]


def _assert_model_level_kept(out: onnx.ModelProto, source: onnx.ModelProto) -> None:
    for name in MODEL_FIELDS:
        assert getattr(out, name) == getattr(source, name), name
    for name in ("opset_import", "metadata_props", "functions"):
        assert _bytes(getattr(out, name)) == _bytes(getattr(source, name)), name
    graph, source_graph = out.graph, source.graph
    assert (graph.name, graph.doc_string) == (source_graph.name, source_graph.doc_string)
    assert _bytes(graph.input) == _bytes(source_graph.input)
    assert _bytes(graph.output) == _bytes(source_graph.output)
    assert [v.name for v in graph.value_info] == [v.name for v in source_graph.value_info]
    source_order = {t.name: k for k, t in enumerate(source_graph.initializer)}
    positions = [source_order.get(t.name, len(source_order)) for t in graph.initializer]
    assert positions == sorted(positions), "initializers left the source order"


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_rewrite_keeps_model_interface_and_order(name, corpus_model):  # noqa: F811
    analysis = analyze(load_model(corpus_model(name)))
    source = analysis.model
    before = source.SerializeToString()
    plan = _every_other(analysis)

    pruned = apply_plan(analysis, plan)
    _assert_model_level_kept(pruned, source)
    assert [(n.name, n.op_type, list(n.output)) for n in pruned.graph.node] == [
        (n.name, n.op_type, list(n.output)) for n in source.graph.node
    ]

    reference = masked_reference(analysis, plan)
    _assert_model_level_kept(reference, source)
    assert _bytes(reference.graph.value_info) == _bytes(source.graph.value_info)
    # The source nodes in their order, each mask Mul right before the node reading it.
    nodes = list(reference.graph.node)
    assert [n.name for n in nodes if n.name in {m.name for m in source.graph.node}] == [
        n.name for n in source.graph.node
    ]
    for k, node in enumerate(nodes):
        if node.name.rsplit("__keep_mask_", 1)[0] != node.name:
            assert node.op_type == "Mul" and node.output[0] in nodes[k + 1].input
    assert source.SerializeToString() == before, "the input model was modified"


def _documented_model() -> onnx.ModelProto:
    """conv1 (prunable, with a doc string and metadata) -> Relu -> head; a ``Constant``
    node with an unnamed value tensor feeding a graph output (normalisation keeps it); an
    ``If`` whose branches read the outer initializer ``table``."""
    net = Net()
    y = net.op("Relu", [net.conv("x", 3, 8, name="conv1")], name="relu1")
    logits = head(net, net.conv(y, 8, 4, name="conv2"), 4)
    value = numpy_helper.from_array(np.arange(3, dtype=np.float32))
    value.ClearField("name")
    net.nodes.append(helper.make_node("Constant", [], ["scale"], name="scale_const", value=value))
    # An If whose branches read an outer initializer no main-graph node reads.
    table = net.const(np.arange(4, dtype=np.float32), "table")
    cond = net.const(np.array(True), "cond")
    branches = {}
    for branch in ("then", "else"):
        out = helper.make_tensor_value_info(f"{branch}_out", TensorProto.FLOAT, [4])
        body = [helper.make_node("Identity", [table], [f"{branch}_out"], name=f"{branch}_id")]
        branches[f"{branch}_branch"] = helper.make_graph(body, branch, [], [out])
    net.nodes.append(helper.make_node("If", [cond], ["picked"], name="pick", **branches))
    conv1 = next(n for n in net.nodes if n.name == "conv1")
    conv1.doc_string = "first layer"
    helper.set_metadata_props(conv1, {"origin": "test"})
    model = net.model(logits, "scale", "picked")
    model.producer_name, model.producer_version, model.model_version = "maker", "1.2", 7
    model.doc_string = "a documented model"
    helper.set_model_props(model, {"license": "BSD-2"})
    return model


def test_constant_nodes_doc_strings_and_metadata_survive():
    analysis = analyze(_documented_model())
    source = analysis.model
    assert any(n.op_type == "Constant" for n in source.graph.node)
    before = source.SerializeToString()
    plan = Plan({group_of(analysis, "conv1").id: [0, 3, 5]})
    for out in (apply_plan(analysis, plan), masked_reference(analysis, plan)):
        _assert_model_level_kept(out, source)
        nodes = {n.name: n for n in out.graph.node}
        assert nodes["conv1"].doc_string == "first layer"
        assert [(p.key, p.value) for p in nodes["conv1"].metadata_props] == [("origin", "test")]
        for name in ("scale_const", "pick"):
            source_node = next(n for n in source.graph.node if n.name == name)
            assert _bytes(nodes[name].attribute) == _bytes(source_node.attribute)
        assert "table" in {t.name for t in out.graph.initializer}
    assert source.SerializeToString() == before, "the input model was modified"
    assert_exact(analysis, plan, sample())


def _custom_op_model() -> onnx.ModelProto:
    """A prunable conv chain plus a custom-domain node with attributes graphsurgeon cannot
    import (sparse tensor, type proto), an empty list and a non-UTF-8 string."""
    net = Net()
    logits = head(net, net.conv(net.op("Relu", [net.conv("x", 3, 8, name="conv1")]), 8, 4), 4)
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([1.0], dtype=np.float32), "sparse_values"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "sparse_indices"),
        [2],
    )
    probe = helper.make_node("Probe", ["x"], ["probe"], name="probe", domain="test.custom")
    probe.attribute.extend(
        [
            helper.make_attribute("tag", b"\xff\xfe"),
            helper.make_attribute("empty", [], attr_type=onnx.AttributeProto.INTS),
            helper.make_attribute("count", 3),
            helper.make_attribute("sparse", sparse),
            helper.make_attribute("kind", helper.make_tensor_type_proto(TensorProto.FLOAT, [2])),
        ]
    )
    net.nodes.append(probe)
    model = net.model(logits, "probe")
    model.graph.output[1].CopyFrom(helper.make_tensor_value_info("probe", TensorProto.FLOAT, [2]))
    model.opset_import.append(helper.make_opsetid("test.custom", 1))
    return model


def test_attributes_graphsurgeon_cannot_carry_are_kept_in_order():
    analysis = analyze(_custom_op_model())
    before = analysis.model.SerializeToString()
    source_probe = next(n for n in analysis.model.graph.node if n.name == "probe")
    plan = Plan({group_of(analysis, "conv1").id: [1, 2, 6]})
    for out in (apply_plan(analysis, plan), masked_reference(analysis, plan)):
        probe = next(n for n in out.graph.node if n.name == "probe")
        assert _bytes(probe.attribute) == _bytes(source_probe.attribute)
        assert probe.domain == "test.custom"
    assert analysis.model.SerializeToString() == before, "the input model was modified"


def test_action_without_rewrite_is_an_internal_error():
    analysis = analyze(TINY["chain"]())
    analysis.state.actions.append(("not", "an", "action"))
    with pytest.raises(InternalError, match="no rewrite for action"):
        apply_plan(analysis, PruningPlan.full(analysis))


def test_shared_constant_original_kept_for_unchanged_reader():
    """Copy-on-write: only ``a``'s Slice changes, so it reads ``ends__a_slice``; ``b``'s
    Slice still reads the original ``ends`` with its original value."""
    net = Net()
    starts, ends = net.const(np.array([0]), "starts"), net.const(np.array([4]), "ends")
    axes = net.const(np.array([1]), "axes")
    outs = []
    for name in ("a", "b"):
        y = net.conv("x", 3, 8, name=name)
        outs.append(net.op("Slice", [y, starts, ends, axes], name=f"{name}_slice"))
    y = net.op("Concat", outs, axis=1, name="cat")
    analysis = analyze(net.model(head(net, net.conv(y, 8, 4, name="mix"), 4)))
    a_head = next(g for g in analysis.groups if "a_slice" in [m.tensor for m in g.members])
    plan = Plan({a_head.id: [0, 1, 3]})
    pruned = apply_plan(analysis, plan)
    inits = {t.name: numpy_helper.to_array(t).tolist() for t in pruned.graph.initializer}
    slices = {n.name: n for n in pruned.graph.node if n.op_type == "Slice"}
    assert slices["a_slice"].input[2] == "ends__a_slice" and inits["ends__a_slice"] == [3]
    assert slices["b_slice"].input[2] == "ends" and inits["ends"] == [4]
    assert list(slices["b_slice"].input[1:]) == ["starts", "ends", "axes"]
    assert_exact(analysis, plan, sample())


def test_external_data_model_prunes_to_inline_tensors(tmp_path):
    """A model stored with external data: load_model reads it in; the pruned model holds
    every tensor inline (nothing points at the source's data file) and is exact."""
    path = tmp_path / "residual.onnx"
    onnx.save_model(
        TINY["residual"](),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="residual.bin",
        size_threshold=0,
    )
    analysis = analyze(load_model(path))
    group = analysis.prunable_groups()[0]
    plan = Plan({group.id: list(range(0, group.size, 2))})
    pruned = apply_plan(analysis, plan)
    assert all(t.data_location == TensorProto.DEFAULT for t in pruned.graph.initializer)
    assert not any(t.external_data for t in pruned.graph.initializer)
    want = run(masked_reference(analysis, plan), sample())[0]
    np.testing.assert_allclose(run(pruned, sample())[0], want, rtol=1e-4, atol=1e-5)

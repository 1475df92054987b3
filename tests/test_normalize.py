"""normalize(): value-preserving rewrites of exporter idioms."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.normalize import normalize
from tests.test_deps import Net, run, sample


def exporter_idioms() -> onnx.ModelProto:
    """Weights behind Constant/Transpose/Cast/Identity/Reshape, MatMul+Add head, unnamed
    nodes."""
    net = Net()
    rng = np.random.default_rng(3)
    hwio = rng.standard_normal((3, 3, 3, 4)).astype(np.float64)
    net.nodes.append(
        helper.make_node("Constant", [], ["w_hwio"], value=numpy_helper.from_array(hwio, "w_hwio"))
    )
    w64 = net.op("Transpose", ["w_hwio"], perm=[3, 2, 0, 1], name="")
    w = net.op("Cast", [w64], to=TensorProto.FLOAT, name="dup")
    bias = net.op("Identity", [net.rand(1, 4)], name="")
    bias = net.op("Reshape", [bias, net.const(np.array([4]))], name="bias_reshape")
    y = net.op("Relu", [net.op("Conv", ["x", w, bias], name="conv", pads=[1] * 4)])
    y = net.op("Flatten", [net.op("GlobalAveragePool", [y])], name="")
    y = net.op("MatMul", [y, net.rand(4, 5)], name="fc")
    return net.model(net.op("Add", [y, net.rand(5)], name="fc_bias"))


def test_normalize_preserves_outputs_and_rewrites():
    model = exporter_idioms()
    before = model.SerializeToString()
    normalized = normalize(model)
    assert model.SerializeToString() == before  # input untouched
    ops = [n.op_type for n in normalized.graph.node]
    assert ops == ["Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm"]
    names = [n.name for n in normalized.graph.node]
    assert len(set(names)) == len(names) and all(names)
    assert names[0] == "conv" and names[-1] == "fc"
    assert normalized.graph.node[-1].output[0] == "fc_bias"
    weight = next(
        t for t in normalized.graph.initializer if t.name == normalized.graph.node[0].input[1]
    )
    assert list(weight.dims) == [4, 3, 3, 3] and weight.data_type == TensorProto.FLOAT
    x = sample()
    np.testing.assert_allclose(run(normalized, x)[0], run(model, x)[0], rtol=1e-5, atol=1e-5)
    onnx.checker.check_model(normalized, full_check=True)


def test_normalize_keeps_matmul_when_not_2d():
    net = Net(shape=("N", 3, 4))
    y = net.op("MatMul", ["x", net.rand(4, 5)], name="mm")
    model = net.model(net.op("Add", [y, net.rand(5)], name="add"))
    ops = [n.op_type for n in normalize(model).graph.node]
    assert ops == ["MatMul", "Add"]


def test_normalize_sorts_nodes_topologically():
    model = exporter_idioms()
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    normalized = normalize(model)
    x = sample()
    want = run(normalize(exporter_idioms()), x)[0]
    np.testing.assert_allclose(run(normalized, x)[0], want, rtol=1e-6)


def test_normalize_names_missing_and_duplicate_nodes():
    net = Net()
    y = net.op("Relu", ["x"], name="act")
    y = net.op("Relu", [y], name="act")
    y = net.op("Relu", [y], name="")
    names = [n.name for n in normalize(net.model(y)).graph.node]
    assert names[0] == "act" and len(set(names)) == 3 and all(names)

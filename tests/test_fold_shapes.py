"""Shape arithmetic folded for the input size in use (``normalize.fold_shape_arithmetic``):
the TorchScript-exported option-A ResNet becomes prunable, exactly, once its size is fixed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from onnxprune import deps
from onnxprune.cost import DynamicInputError, model_cost
from onnxprune.model import fix_input_shapes, infer_model_shapes, load_model, value_dims
from onnxprune.normalize import fold_shape_arithmetic, normalize
from tests.conftest import _init, finish_model
from tests.test_exactness import _Case, check_plan, random_keep
from tests.test_input_shapes import invoke

pytest.importorskip("torch")
from tests.corpus.torchscript_resnet import export  # noqa: E402

SIZE = (1, 3, 16, 16)
# Hand count at 16x16: stem 8*3*9*256; block 0: 2 * 8*8*9*256; block 1 (stride 2, 8x8 out):
# 16*8*9*64 + 16*16*9*64; block 2: 2 * 16*16*9*64; fc 16*10.
MACS_16 = 8 * 3 * 9 * 256 + 2 * 8 * 8 * 9 * 256 + 16 * 8 * 9 * 64 + 3 * 16 * 16 * 9 * 64 + 160


def _flatten_hw() -> onnx.ModelProto:
    """``y = Reshape(x, [0, 3, H*W])`` with ``H*W`` read by ``Shape`` at run time."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], "shape"),
        helper.make_node("Gather", ["s", "i2"], ["h"], "gh", axis=0),
        helper.make_node("Gather", ["s", "i3"], ["w"], "gw", axis=0),
        helper.make_node("Mul", ["h", "w"], ["hw"], "mul"),
        helper.make_node("Unsqueeze", ["hw", "axes"], ["hw1"], "unsq"),
        helper.make_node("Concat", ["head", "hw1"], ["target"], "concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"], "reshape"),
    ]
    inits = [
        _init("i2", np.array(2, dtype=np.int64)),
        _init("i3", np.array(3, dtype=np.int64)),
        _init("axes", np.array([0], dtype=np.int64)),
        _init("head", np.array([0, 3], dtype=np.int64)),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, None])
    return finish_model(nodes, [x], [y], inits, "flatten_hw")


def test_shape_chain_folds_only_when_its_dims_are_static():
    dynamic = infer_model_shapes(_flatten_hw())
    folded, count = fold_shape_arithmetic(dynamic)
    assert count == 0 and "Shape" in {n.op_type for n in folded.graph.node}
    fixed = fix_input_shapes(_flatten_hw(), {"x": (1, 3, 4, 5)})
    folded, count = fold_shape_arithmetic(fixed)
    assert count == 5  # Gather, Gather, Mul, Unsqueeze, Concat (the dead Shape dropped)
    assert [n.op_type for n in folded.graph.node] == ["Reshape"]
    target = {t.name: t for t in folded.graph.initializer}["target"]
    assert onnx.numpy_helper.to_array(target).tolist() == [0, 3, 20]
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    session = ort.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x.reshape(2, 3, 20))


@pytest.fixture(scope="module")
def torchscript_resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(tmp_path_factory.mktemp("ts") / "torchscript_resnet.onnx")


def test_exported_with_runtime_shape_arithmetic(torchscript_resnet: Path):
    ops = [n.op_type for n in load_model(torchscript_resnet).graph.node]
    assert ops.count("Shape") >= 4 and ops.count("Pad") == 4
    dims = value_dims(load_model(torchscript_resnet).graph.input[0], symbolic=True)
    assert dims == ("batch", 3, "height", "width")


def test_truly_dynamic_size_keeps_pads_computed_at_run_time(torchscript_resnet: Path):
    analysis = deps.analyze(load_model(torchscript_resnet))
    frozen = [g for g in analysis.groups if not g.prunable]
    pads = [g for g in frozen if "pads are computed at runtime" in (g.frozen_reason or "")]
    assert len(analysis.prunable_groups()) == 3 and len(pads) == 2
    with pytest.raises(DynamicInputError, match="input 'input' has dynamic dimension 2"):
        model_cost(analysis.model)


def test_fixed_size_folds_the_pads_and_frees_the_residual_groups(torchscript_resnet: Path):
    fixed = fix_input_shapes(load_model(torchscript_resnet), {"input": SIZE})
    analysis = deps.analyze(fixed)
    assert "Shape" not in {n.op_type for n in analysis.model.graph.node}
    assert len(analysis.prunable_groups()) == 5
    assert [g.frozen_reason for g in analysis.groups if not g.prunable] == [
        "channels reach the graph output 'logits'"
    ]
    assert model_cost(analysis.model).macs == MACS_16
    # normalisation keeps the outputs at the folded size
    x = np.random.default_rng(1).normal(size=(2, 3, 16, 16)).astype(np.float32)
    runs = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"input": x}
        )[0]
        for m in (fixed, normalize(fixed))
    ]
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def folded_case(torchscript_resnet: Path, tmp_path_factory: pytest.TempPathFactory) -> _Case:
    path = tmp_path_factory.mktemp("ts-fixed") / "fixed.onnx"
    onnx.save_model(fix_input_shapes(load_model(torchscript_resnet), {"input": SIZE}), str(path))
    return _Case("torchscript_resnet_16", path)


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_pruning_the_folded_model_is_exact(folded_case: _Case, data):
    keep = data.draw(random_keep(folded_case.analysis.prunable_groups()))
    assert check_plan(folded_case, keep) <= 1e-4


def test_cli_prune_says_the_model_is_fixed_to_the_size(torchscript_resnet: Path, tmp_path: Path):
    out = tmp_path / "pruned.onnx"
    code, stdout, err = invoke(
        "prune", torchscript_resnet, "--ratio", "0.5", "--round-to", "1",
        "--input-shape", "input:1x3x16x16", "-o", out,
    )  # fmt: skip
    assert code == 0, err
    assert "input size fixed to input[?x3x16x16]" in err and "runs at this input size" in err
    assert "5 of 5 prunable groups thinned" in stdout
    pruned = load_model(out)
    assert value_dims(pruned.graph.input[0], symbolic=True) == ("batch", 3, 16, 16)
    x = np.random.default_rng(2).normal(size=(3, 3, 16, 16)).astype(np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": x})[0].shape == (3, 10)

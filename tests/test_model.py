"""Model I/O (onnxprune.model): load errors, external data rules, atomic protected save."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.errors import OnnxPruneError
from onnxprune.model import (
    constant_value,
    load_model,
    model_info,
    save_model,
    static_shape,
    tensor_shapes,
)
from tests.conftest import make_tiny_cnn, make_tiny_cnn_onnx


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_load_missing_truncated_and_non_onnx(tmp_path):
    with pytest.raises(OnnxPruneError, match=r"'.*absent.onnx' does not exist"):
        load_model(tmp_path / "absent.onnx")
    good = make_tiny_cnn_onnx(tmp_path / "good.onnx")
    data = good.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(OnnxPruneError, match="cut.onnx"):
        load_model(cut)
    text = tmp_path / "readme.onnx"
    text.write_text("# not a model\n")
    with pytest.raises(OnnxPruneError, match="readme.onnx"):
        load_model(text)


def test_load_does_not_modify_and_infers_shapes(tmp_path):
    path = make_tiny_cnn_onnx(tmp_path / "m.onnx")
    before = _sha(path)
    model = load_model(path)
    assert _sha(path) == before
    assert {vi.name for vi in model.graph.value_info} >= {"c1", "r1", "c2", "flat"}


def test_load_folder_with_one_or_two_models(tmp_path):
    make_tiny_cnn_onnx(tmp_path / "only.onnx")
    assert len(load_model(tmp_path).graph.node) == 7
    make_tiny_cnn_onnx(tmp_path / "second.onnx")
    with pytest.raises(OnnxPruneError, match="holds 2 .onnx files"):
        load_model(tmp_path)


def _save_external(tmp_path, location: str = "weights.bin"):
    model = make_tiny_cnn()
    folder = tmp_path / "ext"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    return model, path


def test_external_data_in_same_folder(tmp_path):
    _, path = _save_external(tmp_path)
    assert (path.parent / "weights.bin").exists()
    loaded = load_model(path)
    # onnx.save_model turned the saved proto external; compare with a fresh build
    expected = numpy_helper.to_array(make_tiny_cnn().graph.initializer[1])
    np.testing.assert_array_equal(constant_value(loaded, "conv2.w"), expected)


def _point_external_to(path, location: str) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())


@pytest.mark.parametrize("location", ["../weights.bin", "/etc/passwd"])
def test_external_data_outside_folder_refused(tmp_path, location):
    _, path = _save_external(tmp_path)
    (tmp_path / "weights.bin").write_bytes((path.parent / "weights.bin").read_bytes())
    _point_external_to(path, location)
    with pytest.raises(
        OnnxPruneError, match=rf"external data '{location}' outside the model folder"
    ):
        load_model(path)


def test_external_data_missing_file_named(tmp_path):
    _, path = _save_external(tmp_path)
    (path.parent / "weights.bin").unlink()
    with pytest.raises(OnnxPruneError, match="needs external data file 'weights.bin'"):
        load_model(path)


def test_save_refuses_to_overwrite_input(tmp_path):
    path = make_tiny_cnn_onnx(tmp_path / "in.onnx")
    before = _sha(path)
    model = load_model(path)
    with pytest.raises(OnnxPruneError, match="refusing to overwrite the input model"):
        save_model(model, path, protect=[path])
    # a different spelling of the same file is refused too
    with pytest.raises(OnnxPruneError, match="refusing to overwrite"):
        save_model(model, tmp_path / "." / "in.onnx", protect=[str(path)])
    assert _sha(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]  # no temp files left


def test_save_atomic_roundtrip_and_folder_target(tmp_path):
    model = make_tiny_cnn()
    out = save_model(model, tmp_path / "sub" / "out.onnx")
    assert out.exists() and sorted(p.name for p in out.parent.iterdir()) == ["out.onnx"]
    assert onnx.load(str(out)).SerializeToString() == model.SerializeToString()
    with pytest.raises(OnnxPruneError, match="is a folder"):
        save_model(model, tmp_path / "sub")


def test_model_info_counts():
    info = model_info(make_tiny_cnn())
    assert info.op_counts == {
        "Conv": 2, "Relu": 2, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1,
    }  # fmt: skip
    assert info.params == 8 * 27 + 16 * 72 + 16 + 160 + 10
    assert [str(t) for t in info.inputs] == ["input: float32[batch, 3, 16, 16]"]
    assert info.to_dict()["opsets"] == {"": 18}


def _shape_probe_model() -> onnx.ModelProto:
    """Inputs/value_info/outputs covering every dim kind the shape reader must tell apart."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])
    mid = helper.make_tensor_value_info("mid", TensorProto.FLOAT, [1, 3, 8, 8])
    mid_again = helper.make_tensor_value_info("mid", TensorProto.FLOAT, None)  # no shape
    bad = helper.make_tensor_value_info("bad", TensorProto.FLOAT, [1, 3])
    bad.type.tensor_type.shape.dim[1].dim_value = -1  # invalid ONNX some exporters write
    norank = helper.make_tensor_value_info("norank", TensorProto.FLOAT, None)
    weight = numpy_helper.from_array(np.zeros((4, 3, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["mid"]),
        helper.make_node("Relu", ["mid"], ["bad"]),
        helper.make_node("Relu", ["bad"], ["norank"]),
        helper.make_node("Flatten", ["norank"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "probe", [x], [y], [weight], value_info=[mid, mid_again, bad, norank]
    )
    return helper.make_model(graph)


def test_tensor_shapes_one_convention_for_unknown_dims_and_ranks():
    shapes = tensor_shapes(_shape_probe_model())
    assert shapes["x"] == (None, 3, 8, 8)  # dim_param: unknown
    assert shapes["y"] == (None, 3)  # no value: unknown
    assert shapes["mid"] == (1, 3, 8, 8)  # a later declaration without shape does not erase it
    assert shapes["bad"] == (1, None)  # negative dim_value: unknown
    assert shapes["norank"] is None  # unknown rank
    assert shapes["w"] == (4, 3, 1, 1)  # initializers: stored dims
    assert "absent" not in shapes
    symbolic = tensor_shapes(_shape_probe_model(), symbolic=True)
    assert symbolic["x"] == ("batch", 3, 8, 8)
    assert symbolic["y"] == (None, 3)
    assert static_shape(shapes["mid"]) == (1, 3, 8, 8)
    assert static_shape(shapes["x"]) is None
    assert static_shape(symbolic["x"]) is None
    assert static_shape(None) is None

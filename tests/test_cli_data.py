"""Data loading shared by every command: preprocessing flags and the raw-image note."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from onnxprune.cli import main
from onnxprune.cli.common import load_cli_data
from onnxprune.data import preprocess_from_flags


def _images(path, n=12, dtype=np.uint8):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, 16, 16, 3)).astype(dtype)
    np.savez(path, x=x, y=rng.integers(0, 10, size=n))
    return x


def test_flags_override_preprocess_json(tmp_path, tiny_cnn_path):
    data = tmp_path / "d.npz"
    x = _images(data)
    (tmp_path / "preprocess.json").write_text(json.dumps({"mean": [0.5, 0.5, 0.5]}))
    spec = preprocess_from_flags(data, std="0.25,0.25,0.25")
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.25, 0.25, 0.25)
    dataset = load_cli_data(data, tiny_cnn_path, {"std": "0.25,0.25,0.25"})
    expected = ((x[0].astype(np.float32) / 255 - 0.5) / 0.25).transpose(2, 0, 1)
    np.testing.assert_allclose(dataset.x[0], expected, rtol=1e-5, atol=1e-6)


def test_raw_images_without_spec_get_a_note(tmp_path, tiny_cnn_path, capsys):
    data = tmp_path / "d.npz"
    _images(data)
    load_cli_data(data, tiny_cnn_path)
    assert "holds uint8 images and there is no preprocess.json" in capsys.readouterr().err


def test_float_arrays_get_no_note(tmp_path, tiny_cnn_path, capsys):
    data = tmp_path / "f.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.normal(size=(4, 3, 16, 16)).astype(np.float32))
    load_cli_data(data, tiny_cnn_path)
    assert "uint8" not in capsys.readouterr().err


def test_bad_mean_flag_names_the_flag(tmp_path, tiny_cnn_path):
    data = tmp_path / "d.npz"
    _images(data)
    result = CliRunner().invoke(
        main, ["eval", str(tiny_cnn_path), "--data", str(data), "--mean", "a,b"]
    )
    assert result.exit_code != 0
    assert "--mean 'a,b'" in str(result.exception) + result.output


def test_input_shapes_reach_the_loader(tmp_path, capsys):
    from onnx import TensorProto, helper
    from PIL import Image

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, "h", "w"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [value], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folder = tmp_path / "f"
    folder.mkdir()
    Image.new("RGB", (30, 10), (1, 2, 3)).save(folder / "0.png")
    Image.new("RGB", (12, 12), (1, 2, 3)).save(folder / "1.png")
    dataset = load_cli_data(folder, model, input_shapes={"x": [1, 3, 24, 40]})
    assert dataset.x.shape == (2, 3, 24, 40)
    assert "note: resized 2 of 2 images from 10x30, 12x12 to 24x40" in capsys.readouterr().err

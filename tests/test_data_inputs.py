"""Data like users have: image folders of mixed sizes and modes, fixed / dynamic / non-square
sizes, grayscale and NHWC inputs, multi-input models from one .npz, integer inputs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from PIL import Image

from onnxprune.cli.common import load_cli_data
from onnxprune.data import Dataset, Preprocess, input_specs, load_data, preprocess_from_flags
from onnxprune.errors import DataError


def _model(**inputs: tuple[list[int | str], int] | list[int | str]):
    """A model whose only job is to declare inputs: ``name=[dims]`` (float) or
    ``name=([dims], elem_type)``; each input goes through an Identity to an output."""
    values, nodes, outputs = [], [], []
    for name, spec in inputs.items():
        dims, elem = spec if isinstance(spec, tuple) else (spec, TensorProto.FLOAT)
        values.append(helper.make_tensor_value_info(name, elem, dims))
        nodes.append(helper.make_node("Identity", [name], [f"{name}_out"], f"id_{name}"))
        outputs.append(helper.make_tensor_value_info(f"{name}_out", elem, dims))
    graph = helper.make_graph(nodes, "inputs", values, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _mixed_folder(folder):
    """Five flat-colour images of five sizes and modes (flat colours survive any bilinear
    resize unchanged, so pixel values can be computed by hand)."""
    folder.mkdir()
    Image.new("RGB", (40, 30), (255, 0, 51)).save(folder / "a_rgb.png")
    Image.new("RGBA", (17, 9), (10, 20, 30, 128)).save(folder / "b_rgba.png")
    Image.new("L", (64, 64), 100).save(folder / "c_gray.png")
    palette = Image.new("P", (32, 24), 0)
    palette.putpalette([200, 0, 50] + [0, 0, 0] * 255)
    palette.save(folder / "d_palette.png")
    Image.fromarray(np.full((12, 20), 51400, np.uint16)).save(folder / "e_16bit.png")
    return folder


def test_mixed_folder_resized_to_fixed_non_square_input(tmp_path):
    folder = _mixed_folder(tmp_path / "photos")
    model = _model(x=[1, 3, 24, 32])  # fixed batch 1, H=24, W=32
    data = load_data(folder, model, Preprocess())
    assert data.x.shape == (5, 3, 24, 32) and data.y is None
    expected_rgb = [(255, 0, 51), (10, 20, 30), (100, 100, 100), (200, 0, 50), (200, 200, 200)]
    # 16-bit 51400 scales to round(51400 / 257) = 200, not Pillow's clip to 255
    for sample, rgb in zip(data.x, expected_rgb, strict=True):
        np.testing.assert_allclose(sample[:, 12, 16], np.array(rgb) / 255, rtol=1e-6)
        np.testing.assert_allclose(sample[:, 0, 0], np.array(rgb) / 255, rtol=1e-6)
    assert data.notes == [
        "resized 4 of 5 images from 9x17, 12x20, 30x40, ... to 24x32 "
        "(H x W, the fixed H x W of model input 'x')"
    ]


def test_resize_note_counts_only_changed_images(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(folder / "same.png")
    Image.new("RGB", (20, 10), (1, 2, 3)).save(folder / "wide.png")
    data = load_data(folder, _model(x=["n", 3, 16, 16]), Preprocess())
    assert data.notes == [
        "resized 1 of 2 images from 10x20 to 16x16 (H x W, the fixed H x W of model input 'x')"
    ]


def test_grayscale_model_converts_rgb_like_pillow(tmp_path):
    folder = tmp_path / "g"
    folder.mkdir()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(folder / "0.png")
    model = _model(x=["n", 1, 16, 16])
    data = load_data(folder, model, Preprocess(scale=1.0))
    luminance = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)  # 59.8 + 58.7 + 5.7 -> 124
    assert data.x.shape == (1, 1, 16, 16)
    assert data.x[0, 0, 5, 5] == luminance == 124
    # the same pixels as a uint8 RGB array take the same conversion, with a note
    np.savez(tmp_path / "rgb.npz", x=np.full((2, 16, 16, 3), (200, 100, 50), np.uint8))
    arrays = load_data(tmp_path / "rgb.npz", model, Preprocess(scale=1.0))
    np.testing.assert_array_equal(arrays.x[0], data.x[0])
    assert "converted 3-channel images" in arrays.notes[0] and "'x'" in arrays.notes[0]


def test_gray_array_replicated_for_rgb_model_and_bad_channels_error(tmp_path):
    gray = np.arange(2 * 16 * 16, dtype=np.uint32).reshape(2, 16, 16, 1) % 256
    np.savez(tmp_path / "gray.npz", x=gray.astype(np.uint8))
    data = load_data(tmp_path / "gray.npz", _model(x=["n", 3, 16, 16]), Preprocess(scale=1.0))
    np.testing.assert_array_equal(data.x[:, 0], data.x[:, 2])
    assert data.x[1, 1, 0, 3] == (256 + 3) % 256
    np.savez(tmp_path / "two.npz", x=np.zeros((2, 16, 16, 2), np.uint8))
    with pytest.raises(DataError, match=r"two.npz' holds 2-channel images but model input 'x'"):
        load_data(tmp_path / "two.npz", _model(x=["n", 3, 16, 16]), Preprocess())


def test_nhwc_model_inferred_layout(tmp_path):
    folder = tmp_path / "n"
    folder.mkdir()
    Image.new("RGB", (10, 20), (0, 51, 255)).save(folder / "0.jpg", quality=100)
    model = _model(input_1=["unk__1", 16, 24, 3])  # tf2onnx names and NHWC layout
    assert input_specs(model)[0].layout == "NHWC"
    data = load_data(folder, model, Preprocess())
    assert data.x.shape == (1, 16, 24, 3)
    np.testing.assert_allclose(data.x[0, 8, 12], np.array([0, 51, 255]) / 255, atol=2 / 255)
    assert "from 20x10 to 16x24" in data.notes[0]


def test_dynamic_size_needs_resize_and_non_square_resize(tmp_path):
    folder = _mixed_folder(tmp_path / "photos")
    model = _model(x=["n", 3, 48, "w"])  # OCR recogniser: fixed height, dynamic width
    with pytest.raises(
        DataError, match=r"photos'.*'x' \[\?, 3, 48, \?\].*--resize 48xW.*--input-shape x:"
    ):
        load_data(folder, model, Preprocess())
    spec = preprocess_from_flags(folder, resize="48x320")
    assert spec.resize == (48, 320)  # H x W
    data = load_data(folder, model, spec)
    assert data.x.shape == (5, 3, 48, 320)
    assert "to 48x320 (H x W, --resize)" in data.notes[0]


def test_dynamic_size_same_size_images_used_as_is(tmp_path):
    folder = tmp_path / "same"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (30, 20), (i, i, i)).save(folder / f"{i}.png")
    data = load_data(folder, _model(x=["n", 3, "h", "w"]), Preprocess())
    assert data.x.shape == (3, 3, 20, 30) and data.notes == []


def _detector():
    return _model(x=["n", 3, 16, 16], im_info=["n", 2])


def test_multi_input_npz_inputs_feeds_and_aligned_splits(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    im_info = np.stack([np.arange(10), np.arange(10) * 2], axis=1).astype(np.float64)
    np.savez(tmp_path / "det.npz", x=images, im_info=im_info, y=np.arange(10))
    data = load_data(tmp_path / "det.npz", _detector(), Preprocess())
    assert data.input_names == ("x", "im_info")
    assert data.inputs["x"].shape == (10, 3, 16, 16) and data.x is data.inputs["x"]
    assert data.inputs["im_info"].dtype == np.float32
    np.testing.assert_allclose(data.x[4], images[4].transpose(2, 0, 1) / 255, rtol=1e-6)
    feeds = data.feeds(2, 5)
    assert list(feeds) == ["x", "im_info"] and feeds["im_info"][:, 0].tolist() == [2, 3, 4]
    part, rest = data.split(4, 6, seed=1)
    ids = part.inputs["im_info"][:, 0].astype(int)
    np.testing.assert_array_equal(part.y, ids)  # labels, images and im_info stay together
    np.testing.assert_allclose(part.x[0], images[ids[0]].transpose(2, 0, 1) / 255, rtol=1e-6)
    assert not set(ids) & set(rest.inputs["im_info"][:, 0].astype(int))
    assert data.to_dict()["inputs"] == {"x": [3, 16, 16], "im_info": [2]}
    assert "inputs x [3, 16, 16], im_info [2]" in str(data)


def test_multi_input_errors_name_input_and_file(tmp_path):
    x = np.zeros((4, 3, 16, 16), np.float32)
    cases = {
        "missing.npz": (
            {"x": x},
            r"missing.npz' has no array for model input 'im_info'.*im_info=\.\.\.",
        ),
        "rank.npz": (
            {"x": x, "im_info": np.zeros(4)},
            r"rank.npz' has a rank-1 array .* 'im_info'",
        ),
        "dim.npz": (
            {"x": x, "im_info": np.zeros((4, 3))},
            r"dim.npz' .*\[3\] but model input 'im_info' expects \[\?, 2\]",
        ),
        "count.npz": (
            {"x": x, "im_info": np.zeros((5, 2))},
            r"count.npz' has different sample counts per input \('x' 4, 'im_info' 5\)",
        ),
    }
    for name, (arrays, pattern) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(DataError, match=pattern):
            load_data(tmp_path / name, _detector())
    folder = _mixed_folder(tmp_path / "photos")
    with pytest.raises(
        DataError, match=r"2 inputs \(x, im_info\) but '.*photos'.*one array per input"
    ):
        load_data(folder, _detector())


def test_single_input_npz_by_input_name_and_integer_inputs(tmp_path):
    tokens = np.arange(12).reshape(3, 4)
    model = _model(ids=(["n", 4], TensorProto.INT32))
    np.savez(tmp_path / "t.npz", ids=tokens)
    data = load_data(tmp_path / "t.npz", model)
    assert data.x.dtype == np.int32 and data.x.tolist() == tokens.tolist()
    np.savez(tmp_path / "f.npz", x=tokens.astype(np.float32))
    with pytest.raises(DataError, match=r"float32 values for model input 'ids'.*int32"):
        load_data(tmp_path / "f.npz", model)


def test_unnamed_dataset_feeds_the_only_input():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    data = Dataset(x, None, "mem")
    assert data.input_names == ()
    assert data.feeds(1, 3, names=["input"])["input"].tolist() == [[2, 3], [4, 5]]
    with pytest.raises(DataError, match="one unnamed array but the model has inputs a, b"):
        data.feeds(names=["a", "b"])
    assert data.subset([2]).x.tolist() == [[4, 5]]


def test_cli_loading_prints_the_resize_note(tmp_path, capsys):
    folder = tmp_path / "f"
    folder.mkdir()
    Image.new("RGB", (20, 10), (1, 2, 3)).save(folder / "0.png")
    load_cli_data(folder, _model(x=["n", 3, 16, 16]))
    assert "note: resized 1 of 1 images from 10x20 to 16x16" in capsys.readouterr().err


def test_grayscale_nhwc_input_and_raw_image_sniffing_by_input_name(tmp_path):
    from onnxprune.data import holds_raw_images

    folder = tmp_path / "g"
    folder.mkdir()
    Image.new("RGB", (8, 8), (0, 255, 0)).save(folder / "0.png")
    data = load_data(folder, _model(x=["n", 8, 8, 1]), Preprocess(scale=1.0))
    assert data.x.shape == (1, 8, 8, 1) and data.x[0, 3, 3, 0] == round(0.587 * 255)  # 150
    np.savez(tmp_path / "named.npz", image=np.zeros((1, 8, 8, 3), np.uint8), y=np.zeros(1, int))
    np.savez(tmp_path / "floats.npz", image=np.zeros((1, 3, 8, 8), np.float32))
    assert holds_raw_images(tmp_path / "named.npz")
    assert not holds_raw_images(tmp_path / "floats.npz")


def test_input_shapes_fix_dynamic_dims_for_resizing(tmp_path):
    folder = _mixed_folder(tmp_path / "photos")
    model = _model(x=["n", 3, "h", "w"])
    data = load_data(folder, model, Preprocess(), input_shapes={"x": [1, 3, 48, 320]})
    assert data.x.shape == (5, 3, 48, 320)  # batch 1 in the shape does not limit N
    assert "to 48x320 (H x W, the fixed H x W of model input 'x')" in data.notes[0]
    with pytest.raises(DataError, match=r"--input-shape x:1x1x48x320 does not fit model input 'x'"):
        load_data(folder, model, Preprocess(), input_shapes={"x": [1, 1, 48, 320]})
    with pytest.raises(
        DataError, match=r"--input-shape names 'image', which is not a model input \(x\)"
    ):
        load_data(folder, model, Preprocess(), input_shapes={"image": [1, 3, 8, 8]})

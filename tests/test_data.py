"""Data loading: npz/npy/image folders, preprocessing, errors, seeded splits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from onnxprune.data import (
    Dataset,
    Preprocess,
    holds_raw_images,
    input_spec,
    load_data,
    raw_images_note,
)
from onnxprune.errors import DataError
from tests.conftest import make_tiny_cnn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _images(n: int = 6, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _expected(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float32) / 255.0
    x = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return x.transpose(0, 3, 1, 2)


def test_npz_uint8_with_preprocess_json(tmp_path):
    images = _images()
    np.savez(tmp_path / "d.npz", x=images, y=np.arange(6))
    (tmp_path / "preprocess.json").write_text(
        json.dumps({"scale": 1 / 255, "mean": MEAN, "std": STD, "layout": "NCHW", "resize": None})
    )
    data = load_data(tmp_path / "d.npz", make_tiny_cnn())
    assert data.x.shape == (6, 3, 16, 16) and data.x.dtype == np.float32
    np.testing.assert_allclose(data.x, _expected(images), rtol=1e-6, atol=1e-6)
    assert data.y.tolist() == [0, 1, 2, 3, 4, 5]
    assert "labelled, 6 classes" in str(data)


def test_npz_float_used_as_is_and_npy_unlabelled(tmp_path):
    x = np.random.default_rng(0).normal(size=(4, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "f.npz", x=x)
    data = load_data(tmp_path / "f.npz", make_tiny_cnn())
    np.testing.assert_array_equal(data.x, x)
    assert data.y is None
    np.save(tmp_path / "f.npy", x.astype(np.float64))
    data = load_data(tmp_path / "f.npy", make_tiny_cnn())
    assert data.x.dtype == np.float32 and not data.labelled


def test_resize_to_model_size(tmp_path):
    np.savez(tmp_path / "big.npz", x=_images(2, size=32))
    data = load_data(tmp_path / "big.npz", make_tiny_cnn(), Preprocess())
    assert data.x.shape == (2, 3, 16, 16)
    assert 0.0 <= data.x.min() and data.x.max() <= 1.0


def test_shape_mismatch_names_input_and_both_shapes(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"bad.npz.*\[3, 8, 8\].*input 'input'.*\[\?, 3, 16, 16\]"):
        load_data(tmp_path / "bad.npz", make_tiny_cnn())


def test_image_folder_with_classes(tmp_path):
    images = _images(4)
    for i, name in enumerate(["b_dog", "a_cat", "b_dog", "a_cat"]):
        (tmp_path / name).mkdir(exist_ok=True)
        Image.fromarray(images[i]).save(tmp_path / name / f"{i}.png")
    data = load_data(tmp_path, make_tiny_cnn(), Preprocess(mean=MEAN, std=STD))
    assert data.classes == ["a_cat", "b_dog"]
    assert data.y.tolist() == [0, 0, 1, 1]  # sorted class folders, then sorted files
    np.testing.assert_allclose(data.x[0], _expected(images[1:2])[0], atol=1e-5)


def test_flat_folder_unlabelled_and_jpeg(tmp_path):
    for i, image in enumerate(_images(3)):
        Image.fromarray(image).save(tmp_path / f"{i}.jpg")
    data = load_data(tmp_path, make_tiny_cnn())
    assert data.x.shape == (3, 3, 16, 16) and data.y is None


def test_folder_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="holds no images"):
        load_data(tmp_path, make_tiny_cnn())
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image '.*broken.png'"):
        load_data(tmp_path, make_tiny_cnn())


def test_unknown_extension_and_missing_path(tmp_path):
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match=r"unknown extension '.csv'"):
        load_data(tmp_path / "x.csv", make_tiny_cnn())
    with pytest.raises(DataError, match="does not exist"):
        load_data(tmp_path / "nope.npz", make_tiny_cnn())


def test_preprocess_json_unknown_key(tmp_path):
    (tmp_path / "preprocess.json").write_text(json.dumps({"scale": 1, "means": [0.5]}))
    np.savez(tmp_path / "d.npz", x=_images(1))
    with pytest.raises(DataError, match="unknown key 'means'"):
        load_data(tmp_path / "d.npz", make_tiny_cnn())


def test_layout_inference_and_nhwc():
    assert input_spec(make_tiny_cnn()).layout == "NCHW"
    model = make_tiny_cnn()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[1].dim_value, dims[3].dim_value = 16, 3  # [batch, 16, 16, 3]
    assert input_spec(model).layout == "NHWC"
    dims[1].dim_value = 3  # [batch, 3, 16, 3]: ambiguous
    assert input_spec(model).layout is None


def test_ambiguous_layout_asks_for_flag(tmp_path):
    model = make_tiny_cnn()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = 3, 3
    np.savez(tmp_path / "d.npz", x=_images(1, size=3))
    with pytest.raises(DataError, match="--layout NCHW"):
        load_data(tmp_path / "d.npz", model)


def test_split_is_seeded_disjoint_and_shuffled(tmp_path):
    x = np.arange(100, dtype=np.float32).reshape(100, 1, 1, 1) * np.ones((1, 3, 16, 16), np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.repeat(np.arange(10), 10))  # sorted by class
    data = load_data(tmp_path / "d.npz", make_tiny_cnn())
    a, b = data.split(30, 0.5, seed=3)
    ids_a, ids_b = a.x[:, 0, 0, 0].astype(int), b.x[:, 0, 0, 0].astype(int)
    assert len(ids_a) == 30 and len(ids_b) == 50
    assert not set(ids_a) & set(ids_b)
    assert len(set(a.y.tolist())) > 5  # shuffled: not the first three classes only
    np.testing.assert_array_equal(a.y, ids_a // 10)  # labels stay with their samples
    again, _ = data.split(30, 0.5, seed=3)
    np.testing.assert_array_equal(again.x, a.x)
    other, _ = data.split(30, 0.5, seed=4)
    assert not np.array_equal(other.x, a.x)
    with pytest.raises(DataError, match="need 101 samples but only 100"):
        data.split(100, 1)
    assert data.subset([5, 7]).y.tolist() == [0, 0]


def test_sample_is_seeded_and_keeps_the_original_order():
    x = np.arange(20, dtype=np.float32).reshape(20, 1)
    dataset = Dataset(x, np.arange(20), "sorted")
    sample = dataset.sample(5, seed=0)
    expected = np.sort(np.random.default_rng(0).permutation(20)[:5])
    np.testing.assert_array_equal(sample.y, expected)
    np.testing.assert_array_equal(sample.x[:, 0], expected.astype(np.float32))
    assert dataset.sample(50) is dataset


def test_raw_image_sniffing_reads_headers_only(tmp_path):
    images, floats = tmp_path / "u8.npy", tmp_path / "f.npz"
    np.save(images, np.zeros((2, 4, 4, 3), np.uint8))
    np.savez(floats, x=np.zeros((2, 3, 4, 4), np.float32))
    assert holds_raw_images(images) and holds_raw_images(tmp_path)
    assert not holds_raw_images(floats) and not holds_raw_images(tmp_path / "missing.npz")
    assert "holds uint8 images" in raw_images_note(images, None)
    assert raw_images_note(images, Preprocess()) is None and raw_images_note(floats, None) is None
    (tmp_path / "preprocess.json").write_text("{}")
    assert raw_images_note(images, None) is None

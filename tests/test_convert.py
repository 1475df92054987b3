"""onnxprune.convert: path-kind detection, the missing-[tf] message, the CLI, and (opt-in,
marker ``tf``) a real Keras -> ONNX -> prune round trip."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxprune.cli import main as cli_main
from onnxprune.cli.common import run_guarded
from onnxprune.convert import SourceKind, convert, detect_source_kind, ensure_onnx
from onnxprune.errors import OnnxPruneError

FIXTURES = Path(__file__).parent / "fixtures" / "tf"


def _tiny_onnx(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), str(path))
    return path


@pytest.fixture
def no_tensorflow(monkeypatch):
    """Make ``import tensorflow`` / ``import tf2onnx`` fail as on a machine without [tf]."""
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    monkeypatch.setitem(sys.modules, "tf2onnx", None)


# --- detection ---------------------------------------------------------------------------


def test_detects_saved_model_folder(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"\x08\x01")
    (tmp_path / "variables").mkdir()
    assert detect_source_kind(tmp_path) is SourceKind.SAVED_MODEL


def test_detects_onnx_file_and_folder(tmp_path):
    model = _tiny_onnx(tmp_path / "m.onnx")
    assert detect_source_kind(model) is SourceKind.ONNX
    assert detect_source_kind(tmp_path) is SourceKind.ONNX


def test_detects_keras_zip_and_hdf5(tmp_path):
    keras_file = tmp_path / "model.keras"
    with zipfile.ZipFile(keras_file, "w") as archive:
        archive.writestr("config.json", "{}")
    assert detect_source_kind(keras_file) is SourceKind.KERAS
    # HDF5 signature wins over a misleading suffix
    h5 = tmp_path / "weights.bin"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 32)
    assert detect_source_kind(h5) is SourceKind.KERAS


def test_detects_tflite_by_magic_whatever_the_suffix(tmp_path):
    flatbuffer = tmp_path / "model.bin"
    flatbuffer.write_bytes(b"\x1c\0\0\0TFL3" + b"\0" * 32)
    assert detect_source_kind(flatbuffer) is SourceKind.TFLITE
    (tmp_path / "m.tflite").write_bytes(b"\0" * 16)
    assert detect_source_kind(tmp_path / "m.tflite") is SourceKind.TFLITE


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("frozen.pb", b"\x0a\x00", "pass the SavedModel folder"),
        ("notes.txt", b"hello", "cannot tell what"),
    ],
)
def test_unknown_paths_name_the_file_and_the_fix(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(OnnxPruneError) as err:
        detect_source_kind(path)
    assert name in str(err.value)
    assert expected in str(err.value)


def test_folder_without_model_and_missing_path(tmp_path):
    with pytest.raises(OnnxPruneError, match="neither saved_model.pb nor an .onnx"):
        detect_source_kind(tmp_path)
    with pytest.raises(OnnxPruneError, match="does not exist"):
        detect_source_kind(tmp_path / "absent.keras")


# --- conversion without TensorFlow ---------------------------------------------------------


def test_missing_tensorflow_says_which_extra(tmp_path, no_tensorflow):
    src = tmp_path / "model.tflite"
    src.write_bytes(b"\x1c\0\0\0TFL3" + b"\0" * 32)
    out = tmp_path / "out.onnx"
    with pytest.raises(OnnxPruneError) as err:
        convert(src, out)
    message = str(err.value)
    assert 'pip install "onnxprune[tf]"' in message
    assert "model.tflite" in message and "TFLite" in message
    assert not out.exists()


def test_convert_refuses_onnx_and_bad_opset(tmp_path):
    model = _tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(OnnxPruneError, match="already an ONNX model"):
        convert(model, tmp_path / "o.onnx")
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(OnnxPruneError, match="opset 30"):
        convert(tmp_path / "saved", tmp_path / "o.onnx", opset=30)


def test_ensure_onnx_passes_onnx_through(tmp_path):
    model = _tiny_onnx(tmp_path / "m.onnx")
    path, converted = ensure_onnx(model, tmp_path / "tmp")
    assert (path, converted) == (model, False)
    assert not (tmp_path / "tmp").exists()


def test_ensure_onnx_converts_tf_paths_or_explains(tmp_path, no_tensorflow):
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(OnnxPruneError, match=r"'.*sm' \(a TensorFlow SavedModel\)"):
        ensure_onnx(tmp_path / "sm", tmp_path)


# --- CLI ------------------------------------------------------------------------------------


def test_cli_help_has_an_example(capsys):
    assert run_guarded(cli_main, ["convert", "--help"]) == 0
    text = capsys.readouterr().out
    assert "onnxprune convert saved_model/ -o model.onnx" in text
    assert "--inputs-as-nchw" in text and "--opset" in text


def test_cli_without_tensorflow_exits_2_with_one_line(tmp_path, capsys, no_tensorflow):
    src = tmp_path / "model.h5"
    src.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 32)
    code = run_guarded(cli_main, ["convert", str(src), "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: converting")
    assert 'pip install "onnxprune[tf]"' in err


# --- opt-in: real TensorFlow -------------------------------------------------------------


@pytest.mark.tf
def test_keras_file_converts_and_prunes_exactly(tmp_path):
    """Keras .keras -> onnxprune convert -> analyze -> prune -> equals masked reference."""
    pytest.importorskip("tensorflow", reason="needs the [tf] extra")
    pytest.importorskip("tf2onnx", reason="needs the [tf] extra")
    import keras
    import onnxruntime as ort

    keras.utils.set_random_seed(3)
    inp = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.Conv2D(24, 1, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(5)(x))
    src = tmp_path / "tiny.keras"
    model.save(src)

    out = tmp_path / "tiny.onnx"
    assert run_guarded(cli_main, ["convert", str(src), "-o", str(out)]) == 0
    x_nhwc = np.random.default_rng(0).normal(size=(2, 12, 12, 3)).astype(np.float32)

    def run(proto_or_path, feed):
        data = (
            proto_or_path if isinstance(proto_or_path, str) else proto_or_path.SerializeToString()
        )
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: feed})[0]

    np.testing.assert_allclose(run(str(out), x_nhwc), model(x_nhwc), rtol=1e-4, atol=1e-5)

    deps = pytest.importorskip("onnxprune.deps", reason="deps stage not built yet")
    surgery = pytest.importorskip("onnxprune.surgery", reason="surgery stage not built yet")
    if not hasattr(deps, "analyze") or not hasattr(surgery, "apply_plan"):
        pytest.skip("deps.analyze / surgery.apply_plan not built yet")
    from onnxprune.model import check_model, load_model
    from onnxprune.plan import PruningPlan

    analysis = deps.analyze(load_model(out))
    prunable = analysis.prunable_groups()
    # 16 channels (conv/BN/ReLU6/depthwise tied) and the 24 pointwise channels
    assert sorted(g.size for g in prunable) == [16, 24]
    rng = np.random.default_rng(1)
    keep = {g.id: sorted(rng.choice(g.size, g.size // 2, replace=False).tolist()) for g in prunable}
    plan = PruningPlan.from_keep(analysis, keep)
    pruned = surgery.apply_plan(analysis, plan)
    check_model(pruned)
    expected = run(surgery.masked_reference(analysis, plan), x_nhwc)
    np.testing.assert_allclose(run(pruned, x_nhwc), expected, rtol=1e-4, atol=1e-5)

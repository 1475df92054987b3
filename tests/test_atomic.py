"""Atomic output: the target appears whole or not at all, and no temporary file is left."""

from __future__ import annotations

import errno
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune.model as model_module
from onnxprune.atomic import atomic_path
from onnxprune.errors import OnnxPruneError
from onnxprune.model import save_model


def test_success_replaces_target_and_keeps_suffix(tmp_path):
    target = tmp_path / "sub" / "plot.png"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == target.parent
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["plot.png"]


def test_failure_leaves_old_target_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


# Crash-safe writes (issue 15): full disk, odd targets, external data as one file set.


def test_full_disk_is_one_line_and_keeps_the_previous_output(tmp_path):
    target = tmp_path / "pruned.onnx"
    target.write_text("previous good output")
    with pytest.raises(OnnxPruneError, match="no space left on the device holding") as info:
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert "nothing written" in str(info.value) and "\n" not in str(info.value)
    assert target.read_text() == "previous good output"
    assert [p.name for p in tmp_path.iterdir()] == ["pruned.onnx"]


def test_fifo_and_read_only_targets_are_refused(tmp_path):
    fifo = tmp_path / "out.onnx"
    os.mkfifo(fifo)
    with pytest.raises(OnnxPruneError, match="not a regular file"), atomic_path(fifo) as tmp:
        tmp.write_text("x")
    assert fifo.is_fifo()
    locked = tmp_path / "locked.json"
    locked.write_text("keep me")
    locked.chmod(0o444)
    with pytest.raises(OnnxPruneError, match="read-only"), atomic_path(locked) as tmp:
        tmp.write_text("x")
    assert locked.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked.json", "out.onnx"]


def _weighted_model(value: float) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.full((64, 64), value, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _weight(path) -> np.ndarray:
    return numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0])


def test_external_data_is_one_crash_safe_file_set(tmp_path, monkeypatch):
    monkeypatch.setattr(model_module, "_EXTERNAL_DATA_THRESHOLD", 0)
    target = tmp_path / "X.onnx"
    first = _weighted_model(1.0)
    save_model(first, target)
    assert first.graph.initializer[0].raw_data  # the caller's model keeps its weights
    save_model(_weighted_model(2.0), target)  # a rerun replaces, never appends
    data_files = [p for p in tmp_path.iterdir() if p.name.endswith(".data")]
    assert len(data_files) == 1 and data_files[0].stat().st_size == 64 * 64 * 4
    assert float(_weight(target)[0, 0]) == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["X.onnx", data_files[0].name])

    def fail_on_model(staged, final):  # dies between the data file and the model
        if final.suffix == ".onnx":
            raise OSError(errno.ENOSPC, "No space left on device")
        os.replace(staged, final)

    monkeypatch.setattr(model_module, "commit_file", fail_on_model)
    with pytest.raises(OnnxPruneError, match="no space left"):
        save_model(_weighted_model(3.0), target)
    assert float(_weight(target)[0, 0]) == 2.0  # the previous set still loads whole
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["X.onnx", data_files[0].name])


def test_the_inputs_external_data_is_never_written(tmp_path, monkeypatch):
    source = tmp_path / "a.onnx"
    onnx.save_model(
        _weighted_model(5.0), str(source), save_as_external_data=True, location="X.onnx.data"
    )
    before = (tmp_path / "X.onnx.data").read_bytes()
    monkeypatch.setattr(model_module, "_EXTERNAL_DATA_THRESHOLD", 0)
    save_model(_weighted_model(6.0), tmp_path / "X.onnx", protect=[source])
    assert (tmp_path / "X.onnx.data").read_bytes() == before
    assert float(_weight(source)[0, 0]) == 5.0 and float(_weight(tmp_path / "X.onnx")[0, 0]) == 6.0
    with pytest.raises(OnnxPruneError, match="input model's external data"):
        save_model(_weighted_model(7.0), tmp_path / "X.onnx.data", protect=[source])


def test_a_model_given_as_its_folder_is_protected(tmp_path):
    folder = tmp_path / "model_dir"
    folder.mkdir()
    onnx.save_model(_weighted_model(1.0), str(folder / "model.onnx"))
    before = (folder / "model.onnx").read_bytes()
    with pytest.raises(OnnxPruneError, match="refusing to overwrite the input model"):
        save_model(_weighted_model(2.0), folder / "model.onnx", protect=[folder])
    assert (folder / "model.onnx").read_bytes() == before


def test_a_known_size_that_does_not_fit_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(OnnxPruneError, match=r"no space left .* needs 0\.0 MiB, 0\.0 MiB are free"):
        save_model(_weighted_model(1.0), tmp_path / "big.onnx")
    assert list(tmp_path.iterdir()) == []

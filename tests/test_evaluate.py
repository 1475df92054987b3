"""Sessions, predictions, accuracy/fidelity metrics and latency measurement."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnxprune.evaluate as ev
from onnxprune.data import Dataset
from onnxprune.errors import OnnxPruneError
from tests.conftest import _init, finish_model, make_tiny_cnn


def _linear(batch: int | str = "N", features: int = 4, classes: int = 6):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(classes, features)).astype(np.float32)
    b = rng.normal(size=classes).astype(np.float32)
    model = finish_model(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], "fc", transB=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])],
        [_init("w", w), _init("b", b)],
    )
    return model, w, b


def test_predict_matches_numpy_in_chunks():
    model, w, b = _linear()
    session = ev.make_session(model, device="cpu", threads=1)
    x = np.random.default_rng(1).normal(size=(7, 4)).astype(np.float32)
    logits = ev.predict(session, x, batch_size=3)
    np.testing.assert_allclose(logits, x @ w.T + b, rtol=1e-5, atol=1e-5)
    assert ev.session_provider(session) == "CPUExecutionProvider"
    assert ev.session_threads(session) == 1


def test_predict_fixed_batch_model_pads_last_chunk():
    model, w, b = _linear(batch=2)
    session = ev.make_session(model, device="cpu")
    x = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(ev.predict(session, x, 256), x @ w.T + b, rtol=1e-5, atol=1e-5)


def test_metrics_hand_counts():
    logits = np.array(
        [[5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5], [0, 9, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6]], np.float32
    )
    labels = np.array([0, 0, 1, 5])
    result = ev.accuracy_from_logits(logits, labels)
    assert result.top1 == 75.0  # rows 0, 2, 3 right
    assert result.top5 == 75.0  # row 1: label 0 has the lowest logit
    assert result.agreement is None and result.kl is None and result.labelled
    same = ev.accuracy_from_logits(logits, None, reference_logits=logits)
    assert same.agreement == 100.0 and same.kl == pytest.approx(0.0, abs=1e-12)
    assert same.top1 is None and not same.labelled and same.score == 100.0


def test_kl_and_agreement_two_samples():
    ref = np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))
    cand = np.log(np.array([[0.25, 0.75], [0.9, 0.1]]))
    result = ev.accuracy_from_logits(cand, None, reference_logits=ref)
    kl0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert result.kl == pytest.approx(kl0 / 2, rel=1e-9)
    assert result.agreement == 50.0  # row 0: ref argmax 0 (tie -> first), cand argmax 1
    with pytest.raises(OnnxPruneError, match="same task"):
        ev.accuracy_from_logits(cand, None, reference_logits=ref[:, :1])


def test_evaluate_dataset_against_reference():
    model = make_tiny_cnn()
    session = ev.make_session(model, device="cpu", threads=1)
    x = np.random.default_rng(0).normal(size=(10, 3, 16, 16)).astype(np.float32)
    logits = ev.predict(session, x)
    labels = logits.argmax(1)
    labels[:3] = (labels[:3] + 1) % 10
    result = ev.evaluate(session, Dataset(x, labels, "mem"), reference_logits=logits)
    assert result.top1 == 70.0 and result.agreement == 100.0 and result.n == 10
    assert "top-1 70.00 %" in str(result)


def test_devices_and_cuda_probe_is_silent(capfd, monkeypatch):
    with pytest.raises(OnnxPruneError, match="unknown device 'gpu'"):
        ev.make_session(make_tiny_cnn(), device="gpu")
    monkeypatch.setattr(ev, "_cuda_ok", None)
    available = ev.cuda_available()
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    if not available:
        with pytest.raises(OnnxPruneError, match="device 'cuda'.*--device cpu"):
            ev.make_session(make_tiny_cnn(), device="cuda")
    monkeypatch.setattr(ev, "_cuda_ok", False)
    session = ev.make_session(make_tiny_cnn(), device="auto")
    assert ev.session_provider(session) == "CPUExecutionProvider"


def test_make_session_bad_file_names_it(tmp_path):
    bad = tmp_path / "junk.onnx"
    bad.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(OnnxPruneError, match="junk.onnx"):
        ev.make_session(bad)


def test_measure_latency_record():
    result = ev.measure_latency(
        ev.make_session(make_tiny_cnn(), device="cpu", threads=1), runs=12, warmup=1, batch=3
    )
    assert result.runs == 12 and len(result.times_ms) == 12
    assert 0 < result.min <= result.p50 <= result.p90 <= result.p99
    assert result.input_shapes == {"input": [3, 3, 16, 16]}
    assert result.to_dict()["provider"] == "CPUExecutionProvider"
    assert "p50" in str(result)


def test_latency_dynamic_spatial_needs_input_shape():
    model = make_tiny_cnn()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    session = ev.make_session(model, device="cpu", threads=1)
    with pytest.raises(
        OnnxPruneError, match=r"input 'input' has dynamic dimension 2.*--input-shape"
    ):
        ev.measure_latency(session, runs=2)
    result = ev.measure_latency(session, input_shape=(2, 3, 8, 8), runs=2, warmup=0)
    assert result.input_shapes == {"input": [2, 3, 8, 8]}

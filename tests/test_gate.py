"""Gate decisions on tiny models, with a deterministic fake clock (no timing assertions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import onnxprune.evaluate as ev
from onnxprune.data import Dataset
from onnxprune.errors import OnnxPruneError
from onnxprune.gate import ratio_interval, run_gate
from tests.conftest import make_tiny_cnn


def _tagged(fake_ms: float, seed: int = 0):
    """A tiny CNN whose metadata tells the fake clock how long one run 'takes'."""
    model = make_tiny_cnn(seed=seed)
    entry = model.metadata_props.add()
    entry.key, entry.value = "fake_ms", str(fake_ms)
    return model


@pytest.fixture
def fake_clock(monkeypatch):
    """Replace time_run: each run takes the model's fake_ms times seeded noise (+-3 %)."""
    rng = np.random.default_rng(123)
    calls: list[float] = []

    def fake_time_run(session, feed):
        ms = float(session.get_modelmeta().custom_metadata_map["fake_ms"])
        calls.append(ms)
        return ms * (1.0 + rng.uniform(-0.03, 0.03))

    monkeypatch.setattr(ev, "time_run", fake_time_run)
    return calls


def test_ratio_interval_hand_case():
    base = [1.0, 1.1, 0.9, 1.0, 1.0]
    cand = [1.2, 1.32, 1.08, 1.2, 1.2]
    ratio, low, high = ratio_interval(base, cand, seed=0)
    assert ratio == pytest.approx(1.2)
    assert low == pytest.approx(1.2) and high == pytest.approx(1.2)  # paired, exact 1.2x
    ratio, low, high = ratio_interval(base, cand, paired=False, seed=0)
    assert low < 1.2 < high  # unpaired resampling sees the spread
    assert ratio_interval(base, cand, paired=False, seed=0) == (ratio, low, high)


def test_identical_models_pass(fake_clock):
    model = _tagged(1.0)
    result = run_gate(model, model, 1.05, runs=40, warmup=0)
    assert result.passed and result.verdict == "pass"
    assert result.ratio == pytest.approx(1.0, abs=0.02)
    assert result.ci_low <= 1.0 <= result.ci_high and result.conclusive
    assert result.rounds == 40 and len(result.base_times_ms) == 40


def test_slower_candidate_fails_and_order_alternates(fake_clock):
    result = run_gate(_tagged(1.0), _tagged(1.2, seed=1), 1.10, runs=20, warmup=0)
    assert not result.passed and result.verdict == "fail"
    assert result.ratio == pytest.approx(1.2, abs=0.03)
    assert result.ci_low > 1.10
    assert "above --max-slowdown 1.1" in result.reasons[0]
    # rounds alternate AB, BA, AB, ...
    assert fake_clock[:6] == [1.0, 1.2, 1.2, 1.0, 1.0, 1.2]


def test_close_call_times_more_rounds(fake_clock):
    result = run_gate(_tagged(1.0), _tagged(1.05, seed=1), 1.05, runs=10, warmup=0, max_rounds=30)
    assert result.rounds == 30 and not result.conclusive
    assert "close" in str(result)


def test_record_has_audit_fields(fake_clock):
    result = run_gate(_tagged(1.0), _tagged(0.8, seed=1), 1.05, runs=10, warmup=0, batch=2)
    record = json.loads(json.dumps(result.to_dict()))
    assert record["verdict"] == "pass" and record["ratio"] == pytest.approx(0.8, abs=0.03)
    assert len(record["interval"]) == 2
    assert record["base"]["median_ms"] == pytest.approx(1.0, abs=0.03)
    assert record["candidate"]["summary_ms"]["n"] == 10
    env = record["environment"]
    assert env["provider"] == "CPUExecutionProvider" and env["threads"] == 1
    assert env["onnxruntime"] and env["cpu"]
    assert record["input_shapes"] == {"input": [2, 3, 16, 16]}


def test_baseline_json_reuses_recorded_base(fake_clock, tmp_path):
    recorded = run_gate(_tagged(2.0), _tagged(2.0), 1.05, runs=10, warmup=0)
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(recorded.to_dict()))
    fake_clock.clear()
    result = run_gate(_tagged(1.0), _tagged(1.0), 1.05, runs=10, warmup=0, baseline_json=path)
    assert fake_clock == [1.0] * 10  # only the candidate was timed
    assert result.ratio == pytest.approx(0.5, abs=0.02) and result.passed
    assert result.baseline_source == str(path)
    assert any("earlier run" in c for c in result.caveats)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(OnnxPruneError, match=r"bad.json' is not a gate record"):
        run_gate(_tagged(1.0), _tagged(1.0), baseline_json=tmp_path / "bad.json", runs=5)


def test_accuracy_drop_fails_fast_candidate(fake_clock):
    base, cand = _tagged(1.0), _tagged(0.5, seed=7)
    x = np.random.default_rng(0).normal(size=(40, 3, 16, 16)).astype(np.float32)
    labels = ev.predict(ev.make_session(base, device="cpu"), x).argmax(1)
    cand_top1 = float(
        np.mean(ev.predict(ev.make_session(cand, device="cpu"), x).argmax(1) == labels) * 100
    )
    assert cand_top1 < 90  # a different random model disagrees often
    data = Dataset(x, labels, "mem")
    result = run_gate(base, cand, 1.05, runs=5, warmup=0, data=data, max_accuracy_drop=5.0)
    assert result.ratio < 1.0 and not result.passed
    assert result.accuracy_drop == pytest.approx(100.0 - cand_top1)
    assert "accuracy drops" in result.reasons[-1]
    unlabelled = run_gate(
        base, cand, 1.05, runs=5, warmup=0, data=Dataset(x, None, "mem"), max_accuracy_drop=100
    )
    assert unlabelled.passed and unlabelled.accuracy_drop == pytest.approx(100.0 - cand_top1)
    assert unlabelled.cand_accuracy.agreement == pytest.approx(cand_top1)


def test_usage_errors():
    model = make_tiny_cnn()
    with pytest.raises(OnnxPruneError, match="needs --data"):
        run_gate(model, model, max_accuracy_drop=1.0)
    with pytest.raises(OnnxPruneError, match="--runs must be >= 5"):
        run_gate(model, model, runs=2)
    with pytest.raises(OnnxPruneError, match="--max-slowdown must be > 0"):
        run_gate(model, model, max_slowdown=0)

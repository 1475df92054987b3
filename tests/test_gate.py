"""Gate decisions on tiny models, with a deterministic fake clock (no timing assertions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import onnxprune.evaluate as ev
import onnxprune.gate as gate_module
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
    monkeypatch.setattr(gate_module, "_load_per_core", lambda: 0.0)  # the real load varies
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


# A gate that knows when it cannot tell (issue 15).
def test_noise_signs_quiet_and_noisy(monkeypatch):
    monkeypatch.setattr(gate_module, "_load_per_core", lambda: 0.2)
    base = [1.0, 1.3, 0.9, 1.1, 1.0, 1.2, 0.95, 1.05]
    signs, min_ratio = gate_module.noise_signs(base, [b * 1.5 for b in base], paired=True)
    assert signs == [] and min_ratio == pytest.approx(1.5)  # drift hits both alike: quiet
    wild = [b * f for b, f in zip(base, [1.0, 3.0, 1.1, 0.6, 2.5, 1.0, 0.7, 1.9], strict=True)]
    signs, _ = gate_module.noise_signs(base, wild, paired=True)
    assert any("per-round ratios spread" in s for s in signs)
    tail = [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 1.0]  # one undisturbed run: min ratio 1.0
    signs, min_ratio = gate_module.noise_signs([1.0] * 8, tail, paired=False)
    assert min_ratio == pytest.approx(1.0)
    assert signs == ["median ratio 5.000 disagrees with the fastest-run ratio 1.000"]
    monkeypatch.setattr(gate_module, "_load_per_core", lambda: 9.0)
    assert gate_module.noise_signs(base, base, paired=True)[0] == [
        "load average 9.0 per core > 1.5"
    ]


def test_noisy_and_undecided_is_inconclusive(fake_clock, monkeypatch, tmp_path):
    monkeypatch.setattr(gate_module, "noise_signs", lambda b, c, paired: (["load 9.0"], 1.0))
    result = run_gate(_tagged(1.0), _tagged(1.2, seed=1), 1.10, runs=10, warmup=0)
    assert result.verdict == "inconclusive" and result.to_dict()["noise"] == ["load 9.0"]
    assert "too noisy to tell" in str(result)
    monkeypatch.setattr(gate_module, "noise_signs", lambda b, c, paired: (["load 9.0"], 1.19))
    result = run_gate(_tagged(1.0), _tagged(1.2, seed=1), 1.10, runs=10, warmup=0)
    assert result.verdict == "fail"  # noisy, but the fastest runs agree: still a verdict
    assert "noise: load 9.0" in str(result)


def test_cli_exit_4_when_inconclusive(fake_clock, monkeypatch, tmp_path):
    import onnx

    from onnxprune.cli import main
    from onnxprune.cli.common import EXIT_INCONCLUSIVE, run_guarded

    monkeypatch.setattr(gate_module, "noise_signs", lambda b, c, paired: (["spread"], 1.0))
    base, cand = tmp_path / "b.onnx", tmp_path / "c.onnx"
    onnx.save_model(_tagged(1.0), str(base))
    onnx.save_model(_tagged(1.2, seed=1), str(cand))
    code = run_guarded(
        main, ["gate", str(base), str(cand), "--max-slowdown", "1.1", "--runs", "10"]
    )
    assert code == EXIT_INCONCLUSIVE


def test_models_with_different_inputs_are_a_usage_error(tmp_path, capsys):
    import onnx

    from onnxprune.cli import main
    from onnxprune.cli.common import run_guarded

    base, cand = tmp_path / "b.onnx", tmp_path / "c.onnx"
    onnx.save_model(make_tiny_cnn(image=16, batch=1), str(base))
    onnx.save_model(make_tiny_cnn(image=32, batch=1), str(cand))
    assert run_guarded(main, ["gate", str(base), str(cand), "--runs", "5"]) == 2
    err = capsys.readouterr().err
    assert "input 'input' differs: baseline [1, 3, 16, 16], candidate [1, 3, 32, 32]" in err

"""End-to-end CLI: info, flops, eval, bench, gate through run_guarded (exit codes, messages)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import onnxprune.evaluate as ev
from onnxprune.cli import main
from onnxprune.cli.common import run_guarded
from tests.conftest import make_tiny_cnn, make_tiny_cnn_onnx, tiny_cnn_macs


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = run_guarded(main, [str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_info_and_flops(capsys, tiny_cnn_path):
    code, out, _ = cli(capsys, "info", tiny_cnn_path)
    assert code == 0 and "input      input: float32[batch, 3, 16, 16]" in out
    code, out, _ = cli(capsys, "info", tiny_cnn_path, "--json")
    assert code == 0 and json.loads(out)["op_counts"]["Conv"] == 2
    code, out, _ = cli(capsys, "flops", tiny_cnn_path, "--json")
    record = json.loads(out)
    assert code == 0 and record["macs"] == tiny_cnn_macs() and {"flops", "params"} <= set(record)
    code, out, _ = cli(capsys, "flops", tiny_cnn_path, "--per-node", "--batch", "2")
    assert code == 0 and "conv2" in out and f"{2 * tiny_cnn_macs():,}" in out


def test_flops_bundled_resnet20(capsys, resnet20_path):
    code, out, _ = cli(capsys, "flops", resnet20_path, "--json")
    assert code == 0 and json.loads(out)["macs"] == 40_551_040


def test_flops_dynamic_spatial_needs_input_shape(capsys, tmp_path):
    model = make_tiny_cnn()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    path = tmp_path / "dyn.onnx"
    onnx.save_model(model, str(path))
    code, _, err = cli(capsys, "flops", path)
    assert code == 2 and "input 'input'" in err and "--input-shape input:" in err
    assert len(err.strip().splitlines()) == 1
    code, out, _ = cli(capsys, "flops", path, "--input-shape", "input:1x3x16x16", "--json")
    assert code == 0 and json.loads(out)["macs"] == tiny_cnn_macs()
    code, _, err = cli(capsys, "flops", path, "--input-shape", "input:1x3")
    assert code == 2 and "rank 2" in err


def test_model_file_errors(capsys, tmp_path, tiny_cnn_path):
    code, _, err = cli(capsys, "flops", tmp_path / "missing.onnx")
    assert code == 2 and "missing.onnx' does not exist" in err
    text = tmp_path / "notes.onnx"
    text.write_text("hello, I am not a model\n" * 20)
    code, _, err = cli(capsys, "info", text)
    assert code == 2 and "notes.onnx" in err and "Traceback" not in err
    truncated = tmp_path / "cut.onnx"
    data = tiny_cnn_path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    code, _, err = cli(capsys, "bench", truncated)
    assert code == 2 and "cut.onnx" in err
    code, _, err = cli(capsys, "bench", tiny_cnn_path, "--device", "gpu")
    assert code == 2 and "'gpu' is not one of" in err


def test_eval_labelled_and_reference(capsys, tmp_path, tiny_cnn_path):
    x = np.random.default_rng(0).normal(size=(20, 3, 16, 16)).astype(np.float32)
    labels = ev.predict(ev.make_session(tiny_cnn_path, device="cpu"), x).argmax(1)
    labels[:5] = (labels[:5] + 1) % 10
    np.savez(tmp_path / "d.npz", x=x, y=labels)
    code, out, _ = cli(
        capsys, "eval", tiny_cnn_path, "--data", tmp_path / "d.npz", "--batch", "8",
        "--reference", tiny_cnn_path, "--device", "cpu", "--json",
    )  # fmt: skip
    record = json.loads(out)
    assert code == 0 and record["top1"] == 75.0 and record["agreement"] == 100.0
    assert record["data"]["n"] == 20
    code, out, _ = cli(capsys, "eval", tiny_cnn_path, "--data", tmp_path / "d.npz", "--limit", "4")
    assert code == 0 and "on 4 samples" in out


def test_eval_wrong_data_shape(capsys, tmp_path, tiny_cnn_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 3, 8, 8), np.float32))
    code, out, err = cli(capsys, "eval", tiny_cnn_path, "--data", tmp_path / "bad.npz")
    assert code == 2 and out == ""
    assert "bad.npz" in err and "input 'input'" in err and "[3, 8, 8]" in err


def test_bench_json(capsys, tiny_cnn_path):
    code, out, _ = cli(
        capsys, "bench", tiny_cnn_path, "--runs", "5", "--batch", "2", "--threads", "1", "--json"
    )
    record = json.loads(out)
    assert code == 0 and record["runs"] == 5 and record["input_shapes"] == {"input": [2, 3, 16, 16]}
    assert record["p50_ms"] <= record["p99_ms"]


def _tagged_path(tmp_path, name: str, fake_ms: float, seed: int = 0):
    model = make_tiny_cnn(seed=seed)
    entry = model.metadata_props.add()
    entry.key, entry.value = "fake_ms", str(fake_ms)
    path = tmp_path / name
    onnx.save_model(model, str(path))
    return path


@pytest.fixture
def fake_clock(monkeypatch):
    rng = np.random.default_rng(5)

    def fake_time_run(session, feed):
        return float(session.get_modelmeta().custom_metadata_map["fake_ms"]) * rng.uniform(
            0.98, 1.02
        )

    monkeypatch.setattr(ev, "time_run", fake_time_run)


def test_gate_exit_codes_and_record(capsys, tmp_path, fake_clock):
    base = _tagged_path(tmp_path, "base.onnx", 1.0)
    slow = _tagged_path(tmp_path, "slow.onnx", 1.2, seed=1)
    code, out, _ = cli(capsys, "gate", base, base, "--runs", "20", "--json", tmp_path / "ok.json")
    assert code == 0 and out.startswith("PASS")
    assert json.loads((tmp_path / "ok.json").read_text())["verdict"] == "pass"
    code, out, _ = cli(
        capsys,
        "gate",
        base,
        slow,
        "--max-slowdown",
        "1.10",
        "--runs",
        "20",
        "--json",
        tmp_path / "fail.json",
    )
    record = json.loads((tmp_path / "fail.json").read_text())
    assert code == 1 and out.startswith("FAIL") and record["verdict"] == "fail"
    assert record["ratio"] == pytest.approx(1.2, abs=0.03)
    assert record["base"]["path"] == str(base) and record["candidate"]["path"] == str(slow)
    code, out, _ = cli(
        capsys, "gate", base, slow, "--baseline-json", tmp_path / "ok.json", "--runs", "10"
    )
    assert code == 1 and "caveat: baseline timings come from an earlier run" in out


def test_gate_usage_errors_write_nothing(capsys, tmp_path, tiny_cnn_path):
    out_json = tmp_path / "never.json"
    code, _, err = cli(
        capsys, "gate", tiny_cnn_path, tiny_cnn_path, "--max-accuracy-drop", "1", "--json", out_json
    )
    assert code == 2 and "--max-accuracy-drop needs --data" in err and not out_json.exists()
    code, _, err = cli(capsys, "gate", tiny_cnn_path, tmp_path / "nope.onnx", "--json", out_json)
    assert code == 2 and "nope.onnx" in err and not out_json.exists()
    code, _, err = cli(capsys, "gate", tiny_cnn_path, tiny_cnn_path, "--runs", "2")
    assert code == 2 and "--runs" in err


@pytest.mark.parametrize("command", ["info", "flops", "eval", "bench", "gate"])
def test_help_has_example(capsys, command):
    code, out, _ = cli(capsys, command, "--help")
    assert code == 0 and "Example" in out and f"onnxprune {command}" in out


def test_console_script_one_line_error(tmp_path):
    make_tiny_cnn_onnx(tmp_path / "m.onnx")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from onnxprune.cli import entry; entry()",
            "flops",
            str(tmp_path / "x.onnx"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: model file '{tmp_path / 'x.onnx'}' does not exist; check the path"
    ]

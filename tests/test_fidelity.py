"""Fidelity for any output, honest statistics, fixed-batch and dynamic-size evaluation.

Fixtures are built here with ``onnx.helper``: a multi-output detection head, a CTC-like
sequence output ``[N, T, C]``, a fixed batch-1 classifier, a dynamic H/W model and a model
whose outputs do not depend on its prunable channels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli import main
from onnxprune.data import Dataset
from onnxprune.errors import OnnxPruneError
from onnxprune.evaluate import (
    batch_unsupported,
    fidelity_from_outputs,
    make_session,
    predict,
    predict_outputs,
)
from onnxprune.fidelity import (
    SNR_CAP_DB,
    auto_metric,
    measurable,
    output_fidelity,
    output_kind,
    snr_db,
    wilson_interval,
)
from onnxprune.pipeline import compare
from onnxprune.search import run_search
from onnxprune.search.reward import reward_from
from tests.conftest import finish_model, make_tiny_cnn


def _w(name: str, rng: np.random.Generator, shape: tuple[int, ...], scale: float = 0.3):
    return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)


def _conv(inp: str, out: str, weight: str, pad: int = 1) -> onnx.NodeProto:
    return helper.make_node("Conv", [inp, weight], [out], pads=[pad] * 4, kernel_shape=[3, 3])


def make_detector(seed: int = 0, zero_heads: bool = False) -> onnx.ModelProto:
    """Conv(3->16)+Relu -> Conv(16->16)+Relu -> heads ``score`` Sigmoid(Conv 16->1) and
    ``box`` Conv(16->4): outputs ``[N, 1, 16, 16]`` and ``[N, 4, 16, 16]``. ``zero_heads``
    zeroes the head weights (with a bias), so no output depends on the prunable channels."""
    rng = np.random.default_rng(seed)
    heads = 0.0 if zero_heads else 0.3
    inits = [
        _w("c1", rng, (16, 3, 3, 3)),
        _w("c2", rng, (16, 16, 3, 3)),
        numpy_helper.from_array(
            (rng.normal(0, 0.3, (1, 16, 1, 1)) * heads).astype(np.float32), "hs"
        ),
        numpy_helper.from_array(
            (rng.normal(0, 0.3, (4, 16, 1, 1)) * heads).astype(np.float32), "hb"
        ),
        numpy_helper.from_array(np.full(4, 0.5, np.float32), "hb_bias"),
    ]
    nodes = [
        _conv("x", "a1", "c1"),
        helper.make_node("Relu", ["a1"], ["r1"]),
        _conv("r1", "a2", "c2"),
        helper.make_node("Relu", ["a2"], ["r2"]),
        helper.make_node("Conv", ["r2", "hs"], ["s"], kernel_shape=[1, 1]),
        helper.make_node("Sigmoid", ["s"], ["score"]),
        helper.make_node("Conv", ["r2", "hb", "hb_bias"], ["box"], kernel_shape=[1, 1]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])]
    outputs = [
        helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1, 16, 16]),
        helper.make_tensor_value_info("box", TensorProto.FLOAT, ["N", 4, 16, 16]),
    ]
    return finish_model(nodes, inputs, outputs, inits, "detector")


def make_recogniser(seed: int = 0) -> onnx.ModelProto:
    """Conv(3->16)+Relu -> Conv(16->8) -> ReduceMean(H) -> Transpose -> Softmax:
    ``x [N, 3, 8, 32]`` -> ``probs [N, 32, 8]`` (T = 32 timesteps, C = 8 classes)."""
    rng = np.random.default_rng(seed)
    inits = [
        _w("c1", rng, (16, 3, 3, 3)),
        _w("c2", rng, (8, 16, 3, 3)),
        numpy_helper.from_array(np.array([2], np.int64), "axes"),
    ]
    nodes = [
        _conv("x", "a1", "c1"),
        helper.make_node("Relu", ["a1"], ["r1"]),
        _conv("r1", "a2", "c2"),
        helper.make_node("ReduceMean", ["a2", "axes"], ["m"], keepdims=0),
        helper.make_node("Transpose", ["m"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Softmax", ["t"], ["probs"], axis=2),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 32])]
    outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 32, 8])]
    return finish_model(nodes, inputs, outputs, inits, "recogniser")


def make_dynamic_hw(seed: int = 0) -> onnx.ModelProto:
    """Conv(3->8)+Relu -> Conv(8->2) on ``x [N, 3, H, W]`` -> ``maps [N, 2, H, W]``."""
    rng = np.random.default_rng(seed)
    inits = [_w("c1", rng, (8, 3, 3, 3)), _w("c2", rng, (2, 8, 3, 3))]
    nodes = [
        _conv("x", "a1", "c1"),
        helper.make_node("Relu", ["a1"], ["r1"]),
        _conv("r1", "maps", "c2"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    outputs = [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["N", 2, "H", "W"])]
    return finish_model(nodes, inputs, outputs, inits, "dynamic_hw")


def _images(n: int, shape: tuple[int, ...] = (3, 16, 16), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, *shape)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# statistics


def test_wilson_interval_of_50_in_100_is_the_textbook_value() -> None:
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    # 0 and 100 % are not zero-width (the normal approximation's failure)
    assert wilson_interval(0, 20)[1] == pytest.approx(0.1611, abs=1e-4)
    assert wilson_interval(20, 20)[0] == pytest.approx(0.8389, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_snr_of_identical_outputs_is_capped_and_of_a_known_perturbation_is_exact() -> None:
    ref = np.random.default_rng(0).normal(0, 1, (10, 4, 5)).astype(np.float32)
    assert snr_db(ref, ref) == SNR_CAP_DB
    # noise of 1/10 the amplitude everywhere: exactly 20 dB
    assert snr_db(ref, ref * 0.9) == pytest.approx(20.0, abs=1e-5)  # float32 rounding
    # hand computed: signal 1+4 = 5, noise 0.5^2 = 0.25 -> 10 log10(20) = 13.0103 dB
    assert snr_db(np.array([[1.0, 2.0]]), np.array([[1.0, 2.5]])) == pytest.approx(
        13.0103, abs=1e-4
    )
    assert math.isfinite(snr_db(np.zeros((2, 3)), np.ones((2, 3))))


def test_output_fidelity_intervals_are_seeded_and_contain_the_point() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(0, 1, (50, 6, 4)).astype(np.float32)
    out = ref + rng.normal(0, 0.3, ref.shape).astype(np.float32)
    first, again = output_fidelity("y", ref, out), output_fidelity("y", ref, out)
    assert first.snr_interval == again.snr_interval
    assert first.snr_interval[0] < first.snr_db < first.snr_interval[1]
    assert 9.0 < first.snr_db < 12.0  # 10 log10(1 / 0.09) = 10.46 dB
    assert first.kind == "sequence" and 0 < first.timestep_agreement < 100


def test_output_kinds_and_automatic_metric() -> None:
    assert output_kind(np.zeros((4, 10))) == "logits"
    assert output_kind(np.zeros((4, 25, 37))) == "sequence"
    assert output_kind(np.zeros((4, 1, 8, 8))) == "dense"
    assert output_kind(np.zeros((4, 1000, 1, 1))) == "logits"  # a 1x1-conv classifier head
    assert output_kind(np.zeros((4, 1, 1))) == "dense"
    assert auto_metric(True, [np.zeros((4, 10))]) == "top1"
    assert auto_metric(False, [np.zeros((4, 10))]) == "agreement"
    assert auto_metric(False, [np.zeros((4, 1, 8, 8)), np.zeros((4, 4, 8, 8))]) == "snr"
    assert auto_metric(True, [np.zeros((4, 25, 37))]) == "snr"
    assert measurable(False, [np.zeros((4, 25, 37))]) == ["snr", "cosine", "timestep"]
    assert measurable(True, [np.zeros((4, 10))]) == ["top1", "agreement", "kl", "snr", "cosine"]


# --------------------------------------------------------------------------------------------
# any output


def test_multi_output_detector_fidelity_is_the_worst_head() -> None:
    session = make_session(make_detector(), device="cpu")
    x = _images(30)
    ref = predict_outputs(session, x, 8)
    assert [a.shape for a in ref] == [(30, 1, 16, 16), (30, 4, 16, 16)]
    noisy = [ref[0], ref[1] + 0.1 * np.abs(ref[1]).mean()]
    result = fidelity_from_outputs(noisy, None, ref, ["score", "box"])
    assert result.metric == "snr" and result.agreement is None
    assert result.outputs[0].snr_db == SNR_CAP_DB
    assert result.snr_db == pytest.approx(result.outputs[1].snr_db) and result.snr_db < 40
    assert result.intervals["snr"][0] <= result.snr_db <= result.intervals["snr"][1]
    assert reward_from(result, "snr") == pytest.approx(result.snr_db / 100 - 1)
    text = str(result)
    assert "SNR" in text and "on 30 samples" in text


def test_sequence_output_gets_per_timestep_agreement() -> None:
    session = make_session(make_recogniser(), device="cpu")
    x = _images(20, (3, 8, 32))
    (ref,) = predict_outputs(session, x)
    swapped = ref.copy()
    swapped[:, :8] = swapped[:, :8, ::-1]  # the first 8 of 32 timesteps get another argmax
    result = fidelity_from_outputs([swapped], None, [ref], ["probs"], "timestep")
    changed = (ref[:, :8].argmax(2) != swapped[:, :8].argmax(2)).mean()
    assert result.timestep == pytest.approx(100 * (1 - changed * 8 / 32))
    assert reward_from(result, "timestep") == pytest.approx(result.timestep / 100 - 1)


def test_classifier_agreement_comes_with_a_wilson_interval() -> None:
    ref = np.eye(10, dtype=np.float32)[np.arange(100) % 10]
    out = ref.copy()
    out[:50] = np.roll(out[:50], 1, axis=1)
    result = fidelity_from_outputs([out], None, [ref])
    assert result.metric == "agreement" and result.agreement == 50.0
    low, high = result.intervals["agreement"]
    assert low == pytest.approx(40.38, abs=0.01) and high == pytest.approx(59.62, abs=0.01)
    assert json.loads(json.dumps(result.to_dict()))["intervals"]["agreement"] == [low, high]


# --------------------------------------------------------------------------------------------
# fixed batch, dynamic size, latency


def test_fixed_batch_predict_equals_per_sample_runs_and_has_no_batch_32() -> None:
    model = make_tiny_cnn((8, 16), batch=1)
    session = make_session(model, device="cpu")
    x = _images(7)
    name = session.get_inputs()[0].name
    per_sample = np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(7)])
    np.testing.assert_allclose(predict(session, x, 256), per_sample, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(predict_outputs(session, x, 4)[0], per_sample, rtol=1e-6)
    assert batch_unsupported(session, 32) == "fixed batch 1"
    assert batch_unsupported(session, 1) is None
    comparison = compare(model, model, Dataset(x, None, "x"), latency_runs=4)
    assert comparison.pruned_latency_ms[32] is None and comparison.original_latency_ms[32] is None
    assert comparison.latency_note[32] == "fixed batch 1"
    assert comparison.pruned_latency_ms[1] > 0
    ratio, low, high = comparison.latency_ratio[1]
    assert low <= ratio <= high
    record = comparison.to_dict()
    assert record["latency_ratio"]["32"] is None and record["latency_note"]["32"] == "fixed batch 1"
    assert "n/a (fixed batch 1)" in str(comparison)


def test_dynamic_size_model_is_evaluated_and_timed_at_the_size_of_its_data() -> None:
    model = make_dynamic_hw()
    x = _images(6, (3, 12, 20))
    comparison = compare(model, model, Dataset(x, None, "x"), latency_runs=3)
    assert comparison.metric == "snr" and comparison.pruned.snr_db == SNR_CAP_DB
    assert comparison.pruned.outputs[0].shape == [6, 2, 12, 20]
    assert comparison.pruned_latency_ms[1] > 0 and comparison.pruned_latency_ms[32] > 0


def test_compare_refuses_a_metric_the_outputs_cannot_give() -> None:
    model = make_detector()
    with pytest.raises(OnnxPruneError, match="agreement.*classifier output.*use snr or cosine$"):
        compare(model, model, Dataset(_images(4), None, "x"), metric="agreement")


# --------------------------------------------------------------------------------------------
# the search


def _strategy(tmp_path: Path, episodes: int = 5, warmup: int = 4, reward: str = "auto") -> Path:
    path = tmp_path / "fidelity-test.toml"
    path.write_text(
        f'agent = "gnn-rl"\nepisodes = {episodes}\nwarmup = {warmup}\nsteps_per_episode = 2\n'
        f"round_to = 2\nmin_channels = 2\nskip = []\nreward_samples = 40\nbatch_size = 64\n"
        f'encoder_dim = 8\nreward = "{reward}"\n[noise]\nsigma = 0.4\ndecay = 0.9\n'
        "[ddpg]\nhidden = 16\nbatch_size = 8\nupdates_per_episode = 2\n"
    )
    return path


def _search(model: onnx.ModelProto, tmp_path: Path, reward: str = "auto", n: int = 80):
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path))
    data = Dataset(_images(n), None, "photos")
    return run_search(
        path, data, 0.6, _strategy(tmp_path, reward=reward), tmp_path / "out", seed=0,
        show_progress=False, latency_runs=2,
    )  # fmt: skip


def test_detector_search_uses_snr_and_its_reward_varies(tmp_path: Path) -> None:
    result = _search(make_detector(), tmp_path)
    assert result.reward_metric == "snr"
    rewards = [e.reward for e in result.episodes]
    assert max(rewards) - min(rewards) > 1e-3 and all(-2 < r < 0 for r in rewards)
    assert result.pruned["metric"] == "snr" and result.original["accuracy"] is None
    md = (tmp_path / "out" / "report.md").read_text()
    assert "signal-to-noise" in md and "SNR_dB/100 - 1" in md
    assert "WARNING: fewer than 200 samples" in md and "WARNING" in str(result)
    assert "interleaved" in md and "(n=40)" in md


def test_constant_reward_stops_the_search_after_the_warm_up(tmp_path: Path) -> None:
    with pytest.raises(OnnxPruneError, match="reward 'snr' was 0 for all .* cannot steer"):
        _search(make_detector(zero_heads=True), tmp_path)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_top1_agreement_on_a_detector_is_refused_before_searching(tmp_path: Path) -> None:
    with pytest.raises(
        OnnxPruneError, match="reward 'agreement' needs a classifier.*--reward snr or --reward cos"
    ):
        _search(make_detector(), tmp_path, reward="agreement")


def test_recogniser_search_with_timestep_reward(tmp_path: Path) -> None:
    path = tmp_path / "rec.onnx"
    onnx.save_model(make_recogniser(), str(path))
    data = Dataset(_images(60, (3, 8, 32)), None, "lines")
    result = run_search(
        path, data, 0.6, _strategy(tmp_path, reward="timestep"), tmp_path / "out", seed=0,
        show_progress=False, latency_runs=0,
    )  # fmt: skip
    assert result.reward_metric == "timestep"
    assert result.pruned["eval"]["timestep_agreement"] == result.pruned["accuracy"]
    assert -1 <= result.best_reward <= 0


# --------------------------------------------------------------------------------------------
# CLI


def test_eval_cli_metric_snr_with_interval_and_small_sample_warning(tmp_path: Path) -> None:
    model, data = tmp_path / "det.onnx", tmp_path / "x.npy"
    onnx.save_model(make_detector(), str(model))
    np.save(data, _images(12))
    runner = CliRunner()
    args = ["eval", str(model), "--data", str(data), "--reference", str(model)]
    out = runner.invoke(main, [*args, "--json"])
    assert out.exit_code == 0, out.output
    record = json.loads(out.stdout)
    assert record["metric"] == "snr" and record["snr_db"] == SNR_CAP_DB and record["n"] == 12
    assert record["small_sample"] is True and len(record["outputs"]) == 2
    text = runner.invoke(main, [*args, "--metric", "cosine"])
    assert text.exit_code == 0 and "cosine 1.0000" in text.output
    assert "fewer than 200" in text.output and "cosine similarity" in text.output


def test_bench_cli_says_na_for_a_batch_the_model_cannot_run(tmp_path: Path) -> None:
    model = tmp_path / "b1.onnx"
    onnx.save_model(make_tiny_cnn((8, 16), batch=1), str(model))
    out = CliRunner().invoke(main, ["bench", str(model), "--batch", "32", "--json", "--runs", "2"])
    assert out.exit_code == 0, out.output
    record = json.loads(out.stdout)
    assert record["p50_ms"] is None and record["reason"] == "fixed batch 1"
    text = CliRunner().invoke(main, ["bench", str(model), "--batch", "32", "--runs", "2"])
    assert "n/a (fixed batch 1)" in text.output


def test_search_on_a_fixed_batch_model_reports_batch_32_as_not_applicable(tmp_path: Path) -> None:
    result = _search(make_tiny_cnn((8, 16), batch=1), tmp_path, n=60)
    assert result.reward_metric == "kl" and result.pruned["metric"] == "agreement"
    assert result.pruned["latency_ms_b32"] is None and result.original["latency_ms_b32"] is None
    assert result.pruned["latency_note"] == {"32": "fixed batch 1"}
    assert result.pruned["latency_ms_b1"] > 0
    ratio = result.pruned["latency_ratio"]["1"]
    assert ratio["low"] <= ratio["ratio"] <= ratio["high"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| latency p50, batch 32 | n/a (fixed batch 1) | n/a (fixed batch 1) | - |" in md
    record = json.loads((tmp_path / "out" / "report.json").read_text())
    assert record["pruned"]["latency_ms_b32"] is None


def test_recover_cli_names_the_fidelity_it_prints(tmp_path: Path) -> None:
    from onnxprune.deps import analyze
    from onnxprune.importance import plan_from_ratios
    from onnxprune.surgery import apply_plan

    reference = make_detector()
    analysis = analyze(reference)
    pruned = apply_plan(analysis, plan_from_ratios(analysis, 0.5))
    paths = {name: tmp_path / f"{name}.onnx" for name in ("ref", "pruned")}
    onnx.save_model(reference, str(paths["ref"]))
    onnx.save_model(pruned, str(paths["pruned"]))
    np.save(tmp_path / "x.npy", _images(40))
    args = ["recover", str(paths["pruned"]), "--reference", str(paths["ref"])]
    args += ["--data", str(tmp_path / "x.npy"), "--method", "ls", "-o", str(tmp_path / "o.onnx")]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    assert "SNR" in out.stdout and "snr: output signal-to-noise ratio" in out.stdout
    assert "fewer than 200" in out.output


def test_fixed_batch_one_time_major_output_is_stacked_per_sample(tmp_path: Path) -> None:
    # the captcha recogniser's idiom: input [1, C, H, W], output [T, 1, classes]
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "shape"], ["seq"], name="to_seq"),
            helper.make_node("Transpose", ["seq"], ["y"], name="time_major", perm=[1, 0, 2]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 1, 4])],
        [helper.make_tensor("shape", TensorProto.INT64, [3], [1, 6, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    from onnxprune.evaluate import make_session, predict_outputs

    x = np.arange(3 * 24, dtype=np.float32).reshape(3, 2, 3, 4)
    (out,) = predict_outputs(make_session(model.SerializeToString(), device="cpu"), x)
    assert out.shape == (3, 6, 1, 4)
    np.testing.assert_array_equal(out[2], x[2].reshape(1, 6, 4).transpose(1, 0, 2))

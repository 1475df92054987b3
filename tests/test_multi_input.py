"""Multi-input models end to end: prediction, eval, search, prune --criterion activation,
compare and gate feed every input by name; data that does not fit the model is one clear
error naming the input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli import main
from onnxprune.cli.common import run_guarded
from onnxprune.data import Dataset, load_data
from onnxprune.errors import DataError, OnnxPruneError
from onnxprune.evaluate import make_session, predict, predict_outputs
from onnxprune.importance import channel_scores
from onnxprune.model import fix_input_shapes, input_shapes_from
from tests.conftest import finish_model


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def image_and_mask_model(batch: int | str = "N", seed: int = 0) -> onnx.ModelProto:
    """``image [N, 3, H, W]`` -> Conv(3->8) and ``mask [N, 1, H, W]`` -> Conv(1->8, 1x1),
    added, Relu -> Conv(8->16) + Relu -> GAP -> Flatten -> Gemm -> ``logits [N, 10]``. H and
    W are symbols shared by both inputs."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("conv_i.w", rng.normal(0, 0.3, (8, 3, 3, 3))),
        _init("conv_i.b", rng.normal(0, 0.1, 8)),
        _init("conv_m.w", rng.normal(0, 0.5, (8, 1, 1, 1))),
        _init("conv2.w", rng.normal(0, 0.3, (16, 8, 3, 3))),
        _init("conv2.b", rng.normal(0, 0.1, 16)),
        _init("fc.w", rng.normal(0, 0.3, (10, 16))),
        _init("fc.b", rng.normal(0, 0.1, 10)),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv_i.w", "conv_i.b"], ["a"], "conv_i", pads=[1] * 4),
        helper.make_node("Conv", ["mask", "conv_m.w"], ["b"], "conv_m"),
        helper.make_node("Add", ["a", "b"], ["s"], "add"),
        helper.make_node("Relu", ["s"], ["r"], "relu1"),
        helper.make_node("Conv", ["r", "conv2.w", "conv2.b"], ["c"], "conv2", pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["d"], "relu2"),
        helper.make_node("GlobalAveragePool", ["d"], ["g"], "gap"),
        helper.make_node("Flatten", ["g"], ["f"], "flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], "fc", transB=1),
    ]
    inputs = [
        helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, "H", "W"]),
        helper.make_tensor_value_info("mask", TensorProto.FLOAT, [batch, 1, "H", "W"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])]
    return finish_model(nodes, inputs, outputs, inits, "image_and_mask")


def image_and_scalars_model(seed: int = 1) -> onnx.ModelProto:
    """``image [N, 3, 8, 8]`` -> Conv(3->8) + Relu -> GAP -> Flatten ``[N, 8]``, concatenated
    with ``info [N, 2]`` (two numbers per sample) -> Gemm -> ``out [N, 4]``."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("conv.w", rng.normal(0, 0.3, (8, 3, 3, 3))),
        _init("conv.b", rng.normal(0, 0.1, 8)),
        _init("fc.w", rng.normal(0, 0.3, (4, 10))),
        _init("fc.b", rng.normal(0, 0.1, 4)),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv.w", "conv.b"], ["a"], "conv", pads=[1] * 4),
        helper.make_node("Relu", ["a"], ["r"], "relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], "gap"),
        helper.make_node("Flatten", ["g"], ["f"], "flatten"),
        helper.make_node("Concat", ["f", "info"], ["joined"], "concat", axis=1),
        helper.make_node("Gemm", ["joined", "fc.w", "fc.b"], ["out"], "fc", transB=1),
    ]
    inputs = [
        helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8]),
        helper.make_tensor_value_info("info", TensorProto.FLOAT, ["N", 2]),
    ]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])]
    return finish_model(nodes, inputs, outputs, inits, "image_and_scalars")


def _mask_arrays(n: int = 7, size: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(0, 1, (n, 3, size, size)).astype(np.float32),
        "mask": (rng.random((n, 1, size, size)) > 0.5).astype(np.float32),
    }


def _scalar_arrays(n: int = 7, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(0, 1, (n, 3, 8, 8)).astype(np.float32),
        "info": rng.normal(0, 2, (n, 2)).astype(np.float32),
    }


def _by_hand(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    """All samples in one onnxruntime run (or one run per sample for a fixed batch 1)."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    if session.get_inputs()[0].shape[0] == 1:
        runs = [session.run(None, {k: v[i : i + 1] for k, v in arrays.items()}) for i in range(7)]
        return [np.concatenate(parts) for parts in zip(*runs, strict=True)]
    return session.run(None, arrays)


@pytest.mark.parametrize(
    ("make", "arrays"),
    [(image_and_mask_model, _mask_arrays), (image_and_scalars_model, _scalar_arrays)],
)
def test_predict_outputs_feeds_every_input_like_one_hand_run(make, arrays) -> None:
    model, data = make(), arrays()
    expected = _by_hand(model, data)
    # chunks of 3 over 7 samples: 3 + 3 + 1, each input sliced alike
    got = predict_outputs(
        make_session(model, device="cpu"), Dataset.from_inputs(data, None, "m"), 3
    )
    assert len(got) == 1 and got[0].shape == expected[0].shape
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-6)
    # float64 arrays are cast to the inputs' float32
    wide = Dataset.from_inputs({k: v.astype(np.float64) for k, v in data.items()}, None, "w")
    np.testing.assert_allclose(predict(make_session(model), wide, 4), expected[0], rtol=1e-5)


def test_fixed_batch_multi_input_model_runs_sample_by_sample() -> None:
    model, data = image_and_mask_model(batch=1), _mask_arrays()
    expected = _by_hand(model, data)[0]
    got = predict(make_session(model, device="cpu"), Dataset.from_inputs(data, None, "m"), 256)
    assert got.shape == (7, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _save(tmp_path: Path, model: onnx.ModelProto, arrays: dict[str, np.ndarray], **extra):
    model_path, data_path = tmp_path / "m.onnx", tmp_path / "d.npz"
    onnx.save_model(model, str(model_path))
    np.savez(data_path, **arrays, **extra)
    return model_path, data_path


def test_cli_eval_of_two_input_model_against_itself_is_100_db(tmp_path: Path, capsys) -> None:
    model, data = _save(tmp_path, image_and_mask_model(), _mask_arrays(n=9))
    args = ["eval", str(model), "--data", str(data), "--reference", str(model), "--batch", "4"]
    assert run_guarded(main, [*args, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["snr_db"] == 100.0 and record["n"] == 9
    assert record["agreement"] == 100.0
    assert record["data"]["inputs"] == {"image": [3, 16, 16], "mask": [1, 16, 16]}
    assert run_guarded(main, [*args, "--metric", "snr"]) == 0
    assert "SNR 100.00 dB [100.00, 100.00]" in capsys.readouterr().out


def _strategy(tmp_path: Path, agent: str, episodes: int, select_top: int) -> Path:
    path = tmp_path / f"{agent}.toml"
    path.write_text(
        f'agent = "{agent}"\nepisodes = {episodes}\nwarmup = {episodes}\n'
        "steps_per_episode = 1\nround_to = 2\nmin_channels = 2\nskip = []\n"
        'reward_samples = 12\nbatch_size = 5\nrecover = "none"\nreward_recover = "none"\n'
        f"select_top = {select_top}\nselect_samples = 6\n"
    )
    return path


@pytest.mark.parametrize(
    ("make", "arrays", "agent", "episodes", "select_top", "flops"),
    [
        (image_and_scalars_model, _scalar_arrays, "uniform", 1, 1, 0.8),
        (image_and_mask_model, _mask_arrays, "random", 4, 2, 0.6),
    ],
)
def test_cli_search_on_multi_input_model_writes_a_plan_in_budget(
    tmp_path: Path, capsys, make, arrays, agent, episodes, select_top, flops
) -> None:
    model_path, data_path = _save(tmp_path, make(), arrays(n=30, seed=2))
    out = tmp_path / "out"
    strategy = _strategy(tmp_path, agent, episodes, select_top)
    args = [
        "search", str(model_path), "--flops", str(flops), "--data", str(data_path),
        "--strategy", str(strategy), "--latency-runs", "2", "--json", "-o", str(out),
    ]  # fmt: skip
    assert run_guarded(main, args) == 0, capsys.readouterr().err
    plan = json.loads((out / "plan.json").read_text())
    assert plan["groups"]
    report = json.loads((out / "report.json").read_text())
    selected = 6 if select_top > 1 else 0
    assert report["reward_samples"] == 12 and report["eval_samples"] == 18 - selected
    # the random episodes found 2 distinct plans: both re-scored on the selection split
    assert len(report["selection"]) == (2 if selected else 0)
    assert report["pruned"]["macs"] <= flops * report["original"]["macs"]
    assert set(report["input_shapes"]) == set(arrays(n=1))
    # the pruned model runs on the same multi-input data, one row per sample
    dataset = load_data(data_path, onnx.load(str(model_path)))
    original = predict_outputs(make_session(model_path, device="cpu"), dataset)[0]
    pruned = predict_outputs(make_session(out / "pruned.onnx", device="cpu"), dataset)[0]
    assert pruned.shape == original.shape and original.shape[0] == 30
    assert np.isfinite(pruned).all()


def test_search_fingerprint_hashes_every_input() -> None:
    from types import SimpleNamespace

    from onnxprune.search.checkpoint import data_sha256
    from onnxprune.search.loop import _searched_data_sha

    def sha(reward: Dataset) -> str:
        splits = SimpleNamespace(reward=reward, fit=None, select=None)
        return _searched_data_sha(SimpleNamespace(splits=splits))  # type: ignore[arg-type]

    arrays = _mask_arrays()
    base = sha(Dataset.from_inputs(arrays, None, "a"))
    other_mask = sha(Dataset.from_inputs({**arrays, "mask": 1 - arrays["mask"]}, None, "b"))
    assert base != other_mask  # same images, other masks: another search
    # a single-input split hashes as before multi-input data: [x, y] per split
    x, y = arrays["image"], np.arange(7)
    single = Dataset.from_inputs({"image": x}, y, "c")
    assert sha(single) == data_sha256(x, y, None, None, None, None)


def test_activation_scores_feed_every_input_and_skip_fixed_batch_padding() -> None:
    from onnxprune.deps import analyze

    data = Dataset.from_inputs(_mask_arrays(n=5), None, "calib")
    dynamic = channel_scores(analyze(image_and_mask_model()), "activation", data)
    # batch 2 over 5 samples: the last chunk is padded with a zero sample, not counted
    fixed = channel_scores(analyze(image_and_mask_model(batch=2)), "activation", data)
    # groups: the Add's 8 channels, conv2's 16, the logits (not prunable: zeros)
    assert [dynamic[g].shape for g in sorted(dynamic)] == [(8,), (16,), (10,)]
    assert (dynamic[0] > 0).all() and (dynamic[1] >= 0).all() and dynamic[1].sum() > 0
    for group, scores in dynamic.items():
        np.testing.assert_allclose(fixed[group], scores, rtol=1e-5)
    # the mask is really fed: other masks give other scores for the group the Add joins
    flipped = Dataset.from_inputs(
        {"image": data.inputs["image"], "mask": 1 - data.inputs["mask"]}, None, "calib"
    )
    other = channel_scores(analyze(image_and_mask_model()), "activation", flipped)
    assert any(not np.allclose(other[g], dynamic[g]) for g in dynamic)


def test_cli_prune_criterion_activation_on_two_input_model(tmp_path: Path, capsys) -> None:
    model_path, data_path = _save(tmp_path, image_and_mask_model(), _mask_arrays(n=6))
    out = tmp_path / "p.onnx"
    args = ["prune", str(model_path), "--ratio", "0.5", "--criterion", "activation",
            "--data", str(data_path), "--round-to", "2", "-o", str(out), "--json"]  # fmt: skip
    assert run_guarded(main, args) == 0, capsys.readouterr().err
    record = json.loads(capsys.readouterr().out)
    assert record["channels_removed"] == 4 + 8  # half of 8 and of 16
    assert record["input_shapes"] == {"image": [1, 3, 16, 16], "mask": [1, 1, 16, 16]}
    dataset = load_data(data_path, onnx.load(str(model_path)))
    assert predict(make_session(out, device="cpu"), dataset).shape == (6, 10)


def test_compare_times_both_inputs_and_gate_scores_multi_input_data(tmp_path: Path) -> None:
    from onnxprune.gate import run_gate
    from onnxprune.pipeline import compare

    model = image_and_mask_model()
    data = Dataset.from_inputs(_mask_arrays(n=8), None, "m")
    result = compare(model, model, data, latency_runs=2)
    assert result.samples == 8 and result.pruned.snr_db == 100.0
    assert result.original_latency_ms[1] is not None and result.original_latency_ms[32] is not None
    gate = run_gate(model, model, 10.0, runs=5, warmup=0, data=data, max_accuracy_drop=0.0)
    assert gate.accuracy_drop == 0.0
    assert gate.input_shapes == {"image": [1, 3, 16, 16], "mask": [1, 1, 16, 16]}


def test_input_shapes_from_data_for_every_input_and_input_shape_wins() -> None:
    model = image_and_mask_model()
    samples = {"image": (3, 16, 16), "mask": (1, 16, 16)}
    shapes, source = input_shapes_from(model, None, samples, "the data (d.npz)")
    assert shapes == {"image": (1, 3, 16, 16), "mask": (1, 1, 16, 16)}
    assert source == "the data (d.npz)"
    given = {"image": (1, 3, 32, 32), "mask": (1, 1, 32, 32)}
    assert input_shapes_from(model, given, samples)[0] == given
    # one given input, the other from the data: the shared symbols H, W must then agree
    shapes, source = input_shapes_from(model, {"image": (1, 3, 32, 32)}, samples, "the data")
    assert shapes == {"image": (1, 3, 32, 32), "mask": (1, 1, 16, 16)}
    assert source == "--input-shape and the data"
    with pytest.raises(OnnxPruneError, match=r"symbolic dimension 'H' two sizes: 32 .*16"):
        fix_input_shapes(model, shapes, source=source)
    fixed = fix_input_shapes(model, input_shapes_from(model, None, samples)[0])
    dims = [
        [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
        for v in fixed.graph.input
    ]
    assert dims == [["N", 3, 16, 16], ["N", 1, 16, 16]]


def test_cli_eval_data_sizes_that_disagree_on_a_shared_symbol(tmp_path: Path, capsys) -> None:
    arrays = _mask_arrays()
    arrays["mask"] = arrays["mask"][:, :, :8, :8]
    model, data = _save(tmp_path, image_and_mask_model(), arrays)
    assert run_guarded(main, ["eval", str(model), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "symbolic dimension 'H' two sizes: 16 (input 'image') and 8 (input 'mask')" in err
    assert err.count("\n") == 1


# ------------------------------------------------------------------------- data vs model


def _load_error(tmp_path: Path, arrays: dict[str, np.ndarray]) -> str:
    model_path, data_path = _save(tmp_path, image_and_mask_model(), arrays)
    with pytest.raises(DataError) as info:
        load_data(data_path, onnx.load(str(model_path)))
    return str(info.value)


def _predict_error(arrays: dict[str, np.ndarray]) -> str:
    session = make_session(image_and_mask_model(), device="cpu")
    with pytest.raises(DataError) as info:
        predict_outputs(session, Dataset.from_inputs(arrays, None, "mem"))
    return str(info.value)


def test_missing_array_names_the_input_and_lists_the_arrays(tmp_path: Path) -> None:
    image = _mask_arrays()["image"]
    message = _load_error(tmp_path, {"image": image})
    assert "no array for model input 'mask'" in message and "['image']" in message
    message = _predict_error({"image": image})
    assert "no array for model input 'mask' (it has image)" in message


def test_array_for_a_name_the_model_lacks_is_refused(tmp_path: Path, capsys) -> None:
    arrays = {**_mask_arrays(), "depth": np.zeros((7, 1, 16, 16), np.float32)}
    message = _load_error(tmp_path, arrays)
    assert "array 'depth' but the model has no input of that name" in message
    assert "(its inputs: image, mask)" in message
    assert "array 'depth' but the model has no input" in _predict_error(arrays)
    # on the command line: one line, exit 2
    code = run_guarded(main, ["eval", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "array 'depth'" in err
    # labels are not an input
    model_path, data_path = _save(tmp_path, image_and_mask_model(), _mask_arrays(), y=np.arange(7))
    assert load_data(data_path, onnx.load(str(model_path))).y.tolist() == list(range(7))


def test_shape_or_rank_mismatch_names_input_expected_and_got(tmp_path: Path) -> None:
    arrays = _mask_arrays()
    two_channels = {**arrays, "mask": np.zeros((7, 2, 16, 16), np.float32)}
    for message in (_load_error(tmp_path, two_channels), _predict_error(two_channels)):
        assert "shape [2, 16, 16] but model input 'mask' expects [?, 1, ?, ?]" in message
    flat = {**arrays, "mask": np.zeros((7, 16, 16), np.float32)}
    assert "rank-3 array [7, 16, 16] for model input 'mask', which has rank 4" in _load_error(
        tmp_path, flat
    )
    assert "shape [16, 16] but model input 'mask' expects [?, 1, ?, ?]" in _predict_error(flat)


def test_dtype_that_cannot_be_cast_names_the_input(tmp_path: Path) -> None:
    arrays = {**_mask_arrays(), "mask": np.full((7, 1, 16, 16), "a")}
    assert "<U1 values for model input 'mask'" in _load_error(tmp_path, arrays)
    assert "<U1 values for model input 'mask', which takes float numbers" in _predict_error(arrays)


def test_integer_input_takes_integers_and_refuses_floats() -> None:
    nodes = [
        helper.make_node("Cast", ["ids"], ["ids_f"], "cast", to=TensorProto.FLOAT),
        helper.make_node("Add", ["ids_f", "x"], ["y"], "add"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
        helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 4]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]
    session = make_session(finish_model(nodes, inputs, outputs, []), device="cpu")
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 4
    ids = np.arange(12, dtype=np.int32).reshape(3, 4)
    got = predict(session, Dataset.from_inputs({"x": x, "ids": ids}, None, "mem"), 2)
    np.testing.assert_allclose(got, x + ids, rtol=1e-6)
    with pytest.raises(DataError, match=r"float32 values for model input 'ids', which takes int64"):
        predict(session, Dataset.from_inputs({"x": x, "ids": ids.astype(np.float32)}, None, "m"))


def test_bare_array_for_a_two_input_model_says_to_save_one_array_per_input() -> None:
    session = make_session(image_and_mask_model(), device="cpu")
    with pytest.raises(DataError, match="one unnamed array but the model has inputs image, mask"):
        predict(session, _mask_arrays()["image"])

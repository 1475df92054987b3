"""Streaming least squares: bounded activations, equal results, named inputs, one thread rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxprune.data import Dataset
from onnxprune.errors import DataError
from onnxprune.recover import reconstruct
from onnxprune.recover.batching import (
    BATCH_INPUT_BYTES,
    images_per_batch,
    recovery_thread_count,
    recovery_threads,
)
from onnxprune.recover.stream import ActivationStore
from tests.test_recover import _cnn, _images, _init, _prune, _weights

FIXTURES = Path(__file__).parent / "fixtures"
F32 = np.float32


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-12))


def _pruned_pair() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    weights = _weights(3)
    return _cnn(_prune(weights, [1, 4, 6], [2])), _cnn(weights)


# -- equal results ----------------------------------------------------------------------------


def test_streaming_equals_the_pre_streaming_implementation() -> None:
    # tests/fixtures/lsq_before_streaming.npz: the refit weights of the implementation that
    # kept every activation live (written by it: same model, data and batches, every output
    # position used, so no random sampling is involved; sampled positions now come from one
    # generator per layer, a different draw of the same distribution).
    pruned, reference = _pruned_pair()
    before = dict(np.load(FIXTURES / "lsq_before_streaming.npz"))
    for memory in (0, 2**30):  # everything spilled to disk / everything in RAM
        result = reconstruct(
            pruned, reference, _images(40, seed=5), batch_size=16, positions_per_image=64,
            activation_memory=memory,
        )  # fmt: skip
        assert [fit.node for fit in result.layers] == ["conv2", "dw", "fc"]
        after = _initializers(result.model)
        assert sorted(after) == sorted(before)
        for name, value in before.items():
            assert _relative(after[name], value) < 1e-4, name


def _ridge_solution(x: np.ndarray, y: np.ndarray, s0: np.ndarray, ridge: float) -> np.ndarray:
    """argmin ||x s - y||^2 + lam ||s - s0||^2, lam = ridge * mean diag(x^T x) (float64)."""
    gram = x.T @ x
    lam = ridge * gram.diagonal().mean()
    return np.linalg.solve(gram + lam * np.eye(len(gram)), x.T @ y + lam * s0)


def test_refit_conv_equals_the_closed_form_ridge_solution() -> None:
    # Only conv2's inputs are pruned; with every output position used (8x8 = 64 per image)
    # the fit is the ridge least-squares problem over all im2col rows.
    weights = _weights(7)
    pruned, reference = _cnn(_prune(weights, [0, 3, 5])), _cnn(weights)
    x = _images(30, seed=2)
    result = reconstruct(pruned, reference, x, batch_size=7, positions_per_image=64, ridge=1e-3)
    assert [fit.node for fit in result.layers] == ["conv2"]
    keep = [c for c in range(8) if c not in (0, 3, 5)]
    images = torch.from_numpy(x)
    conv1 = F.conv2d(images, torch.from_numpy(weights["w1"][keep]),
                     torch.from_numpy(weights["b1"][keep]), padding=1)  # fmt: skip
    target = F.conv2d(
        torch.relu(F.conv2d(images, torch.from_numpy(weights["w1"]),
                            torch.from_numpy(weights["b1"]), padding=1)),
        torch.from_numpy(weights["w2"]), torch.from_numpy(weights["b2"]), padding=1,
    )  # fmt: skip
    cols = F.unfold(torch.relu(conv1), 3, padding=1)  # [n, 5*9, 64]
    rows = cols.permute(0, 2, 1).reshape(-1, cols.shape[1]).double().numpy()
    rows = np.concatenate([rows, np.ones((len(rows), 1))], axis=1)
    y = target.flatten(2).permute(0, 2, 1).reshape(-1, 6).double().numpy()
    s0 = np.concatenate([weights["w2"][:, keep].reshape(6, -1).T, weights["b2"][None]], axis=0)
    solution = _ridge_solution(rows, y, s0.astype(np.float64), 1e-3)
    refit_w2, refit_b2 = _init(result.model, "w2"), _init(result.model, "b2")
    assert _relative(refit_w2.reshape(6, -1).T, solution[:-1]) < 1e-4
    assert _relative(refit_b2, solution[-1]) < 1e-4


# -- bounded memory ---------------------------------------------------------------------------


def test_spilled_run_holds_one_batch_and_equals_the_in_memory_run(tmp_path: Path) -> None:
    pruned, reference = _pruned_pair()
    x = _images(50, seed=9)
    spilled = reconstruct(pruned, reference, x, batch_size=8, activation_memory=0,
                          spill_dir=tmp_path)  # fmt: skip
    in_memory = reconstruct(pruned, reference, x, batch_size=8, activation_memory=2**30)
    # 50 images in batches of 8: 7 batches; spilled, only the batch in flight is in RAM
    assert spilled.peak_batches_in_memory == 1
    assert in_memory.peak_batches_in_memory == 7
    assert spilled.spilled_bytes > 0 and in_memory.spilled_bytes == 0
    assert list(tmp_path.iterdir()) == []  # the spill folder is removed afterwards
    for name, value in _initializers(in_memory.model).items():
        np.testing.assert_array_equal(_initializers(spilled.model)[name], value)
    assert [f.mse_after for f in spilled.layers] == [f.mse_after for f in in_memory.layers]


def test_activation_store_round_trips_spilled_and_resident_values(tmp_path: Path) -> None:
    store = ActivationStore(memory_bytes=16, folder=tmp_path)
    small = torch.arange(4, dtype=torch.int32)  # 16 bytes: fits the budget
    big = torch.randn(3, 5)
    shape = torch.tensor([1, 6, 2], dtype=torch.int64)
    store.put("a", 0, small)
    store.put("b", 0, big)
    store.put("b", 1, big * 2)
    store.put("s", 1, shape)
    assert store.resident_batches() == 1 and store.resident_bytes == 16
    assert store.spilled_bytes == big.numel() * 4 * 2 + 24
    torch.testing.assert_close(store.get("b", 1), big * 2, rtol=0, atol=0)
    torch.testing.assert_close(store.get("b", 0), big, rtol=0, atol=0)
    assert store.get("s", 1).tolist() == [1, 6, 2] and store.get("s", 1).dtype == torch.int64
    assert store.get("a", 0) is small
    store.drop("b")
    assert ("b", 0) not in store and store.names() == {"a", "s"}
    (folder,) = tmp_path.iterdir()
    assert len(list(folder.iterdir())) == 1  # only "s"'s file is left
    store.close()
    assert list(tmp_path.iterdir()) == [] and store.names() == set()


def test_batches_are_capped_by_input_bytes() -> None:
    cifar, imagenet = 3 * 32 * 32 * 4, 3 * 224 * 224 * 4
    assert images_per_batch(cifar, 100) == 100
    assert images_per_batch(imagenet, 100) == BATCH_INPUT_BYTES // imagenet == 6
    assert images_per_batch(10**9, 100) == 1


# -- several named inputs ---------------------------------------------------------------------


def _two_input_model(w: dict[str, np.ndarray]) -> onnx.ModelProto:
    """conv_a(x_a) + conv_b(x_b) -> Relu -> conv2 -> GAP -> Flatten -> Gemm."""
    nodes = [
        helper.make_node("Conv", ["x_a", "wa", "ba"], ["ca"], "conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x_b", "wb", "bb"], ["cb"], "conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["ca", "cb"], ["sum"], "add"),
        helper.make_node("Relu", ["sum"], ["r"], "relu"),
        helper.make_node("Conv", ["r", "w2", "b2"], ["c2"], "conv2", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c2"], ["gap"], "gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], "flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], "fc", transB=1),
    ]
    inputs = [
        helper.make_tensor_value_info("x_a", TensorProto.FLOAT, ["n", 3, 8, 8]),
        helper.make_tensor_value_info("x_b", TensorProto.FLOAT, ["n", 2, 8, 8]),
    ]
    graph = helper.make_graph(
        nodes, "two_inputs", inputs,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(v, k) for k, v in w.items()],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _two_input_weights(keep: list[int] | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    w = {
        "wa": rng.normal(0, 0.5, (8, 3, 3, 3)), "ba": rng.normal(0, 0.1, 8),
        "wb": rng.normal(0, 0.5, (8, 2, 3, 3)), "bb": rng.normal(0, 0.1, 8),
        "w2": rng.normal(0, 0.3, (6, 8, 3, 3)), "b2": rng.normal(0, 0.1, 6),
        "fc": rng.normal(0, 0.5, (4, 6)), "fcb": rng.normal(0, 0.1, 4),
    }  # fmt: skip
    if keep is not None:
        for name in ("wa", "ba", "wb", "bb"):
            w[name] = w[name][keep]
        w["w2"] = w["w2"][:, keep]
    return {k: v.astype(F32) for k, v in w.items()}


def _conv2_output(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info("c2", TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["c2"], feeds)[0]


def test_a_two_input_model_is_refit_from_a_named_dataset() -> None:
    reference = _two_input_model(_two_input_weights())
    pruned = _two_input_model(_two_input_weights(keep=[0, 2, 3, 5, 7]))
    rng = np.random.default_rng(1)
    inputs = {"x_a": rng.normal(size=(60, 3, 8, 8)).astype(F32),
              "x_b": rng.normal(size=(60, 2, 8, 8)).astype(F32)}  # fmt: skip
    dataset = Dataset.from_inputs(inputs, None, "two.npz")
    result = reconstruct(pruned, reference, dataset, batch_size=16, positions_per_image=64)
    assert [fit.node for fit in result.layers] == ["conv2"]
    fit = result.layers[0]
    assert fit.samples == 60 * 64 and fit.mse_after < 0.7 * fit.mse_before
    target = _conv2_output(reference, inputs)
    error_before = float(np.mean((_conv2_output(pruned, inputs) - target) ** 2))
    error_after = float(np.mean((_conv2_output(result.model, inputs) - target) ** 2))
    assert error_after == pytest.approx(fit.mse_after, rel=1e-3)
    assert error_before == pytest.approx(fit.mse_before, rel=1e-3)


def test_one_unnamed_array_for_a_two_input_model_names_the_inputs() -> None:
    reference = _two_input_model(_two_input_weights())
    pruned = _two_input_model(_two_input_weights(keep=[0, 2, 3, 5, 7]))
    with pytest.raises(DataError, match="x_a, x_b"):
        reconstruct(pruned, reference, np.zeros((4, 3, 8, 8), F32))


# -- threads ----------------------------------------------------------------------------------


def test_recovery_thread_rule_is_one_thread_unless_given() -> None:
    assert recovery_thread_count(None) == 1
    assert recovery_thread_count(3) == 3
    previous = torch.get_num_threads()
    with recovery_threads(None):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == previous


@pytest.mark.parametrize("threads", [None, 2])
def test_least_squares_runs_on_the_rule_s_thread_count(threads: int | None) -> None:
    pruned, reference = _pruned_pair()
    previous = torch.get_num_threads()
    seen: list[int] = []
    reconstruct(pruned, reference, _images(10), threads=threads,
                on_layer=lambda fit: seen.append(torch.get_num_threads()))  # fmt: skip
    assert seen == [recovery_thread_count(threads)] * 3
    assert torch.get_num_threads() == previous


def test_cli_recover_spills_next_to_the_output_and_cleans_up(tmp_path: Path) -> None:
    from onnxprune.cli import main

    pruned, reference = _pruned_pair()
    onnx.save(pruned, str(tmp_path / "pruned.onnx"))
    onnx.save(reference, str(tmp_path / "reference.onnx"))
    np.save(tmp_path / "calib.npy", _images(40, seed=3))
    out = tmp_path / "out"
    args = ["recover", str(tmp_path / "pruned.onnx"), "--reference",
            str(tmp_path / "reference.onnx"), "--data", str(tmp_path / "calib.npy"),
            "--ls-memory", "0", "--threads", "1", "-o", str(out / "recovered.onnx"), "--json"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["least_squares"]["spilled_bytes"] > 0
    assert record["least_squares"]["peak_batches_in_memory"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["recovered.onnx"]


@pytest.mark.parametrize("threads", [None, 2])
def test_finetune_runs_on_the_rule_s_thread_count(threads: int | None) -> None:
    from onnxprune.recover import distill

    pruned, reference = _pruned_pair()
    previous = torch.get_num_threads()
    seen: list[int] = []
    result = distill(pruned, reference, _images(16), epochs=1, batch=8, augment=False,
                     threads=threads, on_step=lambda *_: seen.append(torch.get_num_threads()))  # fmt: skip
    assert result.steps == 2
    assert seen == [recovery_thread_count(threads)] * 2
    assert torch.get_num_threads() == previous


# -- sampled patches and the reference targets a search keeps ----------------------------------


@pytest.mark.parametrize(
    ("kernel", "stride", "dilation", "padding"),
    [((3, 3), (1, 1), (1, 1), (1, 1)), ((1, 1), (2, 2), (1, 1), (0, 0)),
     ((5, 3), (2, 1), (1, 2), (2, 1)), ((3, 3), (3, 2), (2, 1), (0, 2))],
)  # fmt: skip
def test_sampled_patches_equal_unfold_at_the_sampled_positions(
    kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
    padding: tuple[int, int],
) -> None:  # fmt: skip
    from onnxprune.recover.lsq import _conv_patches

    x = torch.randn(3, 4, 13, 11)
    cols = F.unfold(x, kernel, dilation, padding, stride)  # [n, C*k, L]
    chosen = torch.randperm(cols.shape[2], generator=torch.Generator().manual_seed(0))[:7]
    got = _conv_patches(x, list(kernel), list(padding), list(stride), list(dilation), chosen)
    want = cols[:, :, chosen].permute(0, 2, 1).reshape(-1, cols.shape[1])
    assert torch.equal(got, want)
    every = _conv_patches(x, list(kernel), list(padding), list(stride), list(dilation), None)
    assert torch.equal(every, cols.permute(0, 2, 1).reshape(-1, cols.shape[1]))


def test_kept_reference_targets_give_the_one_off_result_with_one_reference_pass(
    tmp_path: Path,
) -> None:
    from onnxprune.recover.targets import ReferenceTargets

    weights = _weights(3)
    reference = _cnn(weights)
    plans = [_cnn(_prune(weights, [1, 4, 6], [2])), _cnn(_prune(weights, [0], [1, 3])),
             _cnn(_prune(weights, [2, 5]))]  # fmt: skip
    x = _images(40, seed=5)
    cache = ReferenceTargets(memory_bytes=2_000, spill_dir=tmp_path)  # most targets spilled
    for pruned in plans:
        kept = reconstruct(pruned, reference, x, batch_size=16, positions_per_image=8,
                           reference_targets=cache)  # fmt: skip
        once = reconstruct(pruned, reference, x, batch_size=16, positions_per_image=8)
        assert [f.node for f in kept.layers] == [f.node for f in once.layers]
        for name, value in _initializers(once.model).items():
            assert np.array_equal(_initializers(kept.model)[name], value), name
    assert cache.passes == 1  # the reference ran once for all three plans
    assert cache.spilled_bytes > 0 and list(tmp_path.iterdir())
    # other data (or another seed) is another calibration set: the cache starts over
    other = _images(40, seed=6)
    kept = reconstruct(plans[0], reference, other, batch_size=16, positions_per_image=8,
                       reference_targets=cache)  # fmt: skip
    once = reconstruct(plans[0], reference, other, batch_size=16, positions_per_image=8)
    assert cache.passes == 2
    for name, value in _initializers(once.model).items():
        assert np.array_equal(_initializers(kept.model)[name], value), name
    reconstruct(plans[0], reference, other, batch_size=16, positions_per_image=8, seed=1,
                reference_targets=cache)  # fmt: skip
    assert cache.passes == 3
    cache.close()
    assert not list(tmp_path.iterdir())  # the spill folder is removed


@pytest.mark.parametrize("features", [7, 400, 1000, 3500])
def test_blocked_gram_equals_the_full_product_and_is_symmetric(features: int) -> None:
    from onnxprune.recover.lsq import _gram

    f_g = torch.randn(2, 300, features, generator=torch.Generator().manual_seed(features))
    gram = _gram(f_g)
    full = torch.bmm(f_g.transpose(1, 2), f_g)
    if features >= 768:  # built from blocks (two or more): mirrored, exactly symmetric
        assert torch.equal(gram, gram.transpose(1, 2))
    assert torch.allclose(gram, full, rtol=1e-5, atol=1e-3)

"""Least-squares reconstruction and distillation fine-tuning on tiny, hand-pruned models."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from onnxprune.errors import OnnxPruneError, UnsupportedOpError
from onnxprune.recover import OnnxModule, distill, least_squares_recover, reconstruct
from onnxprune.recover.finetune import augment_batch, distillation_loss_on
from onnxprune.recover.lsq import match_dense_rows

F32 = np.float32


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.normal(0, 0.5, (8, 3, 3, 3)).astype(F32),
        "b1": rng.normal(0, 0.1, 8).astype(F32),
        "w2": rng.normal(0, 0.3, (6, 8, 3, 3)).astype(F32),
        "b2": rng.normal(0, 0.1, 6).astype(F32),
        "w3": rng.normal(0, 0.5, (6, 1, 3, 3)).astype(F32),
        "b3": rng.normal(0, 0.1, 6).astype(F32),
        "fc": rng.normal(0, 0.5, (5, 6)).astype(F32),
        "fcb": rng.normal(0, 0.1, 5).astype(F32),
    }


def _cnn(weights: dict[str, np.ndarray], extra_op: str | None = None) -> onnx.ModelProto:
    """conv1(3->8) Relu conv2(8->6) Relu depthwise(6) Relu GAP Flatten Gemm(6->5).

    The graph is sized by its weights, so slicing the weights gives a pruned model with the
    same node and tensor names (what surgery produces).
    """
    c2 = weights["w3"].shape[0]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], "conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], "relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], "dw", pads=[1, 1, 1, 1], group=c2),
        helper.make_node("Relu", ["c3"], ["r3"], "relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["gap"], "gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], "flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], "fc", transB=1),
    ]
    if extra_op:  # an op the training interpreter does not know, after the classifier
        nodes[-1].output[0] = "pre"
        nodes.append(helper.make_node(extra_op, ["pre"], ["logits"], "odd_norm", axis=1))
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 5])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def _prune(
    weights: dict[str, np.ndarray], removed1: list[int], removed2: list[int] = ()
) -> dict[str, np.ndarray]:
    """Slice conv1's outputs ``removed1`` and conv2's outputs ``removed2`` out of the weights."""
    keep1 = [c for c in range(8) if c not in removed1]
    keep2 = [c for c in range(6) if c not in removed2]
    return {
        "w1": weights["w1"][keep1],
        "b1": weights["b1"][keep1],
        "w2": weights["w2"][keep2][:, keep1],
        "b2": weights["b2"][keep2],
        "w3": weights["w3"][keep2],
        "b3": weights["b3"][keep2],
        "fc": weights["fc"][:, keep2],
        "fcb": weights["fcb"],
    }


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, 3, 8, 8)).astype(F32)


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


# -- least squares ------------------------------------------------------------------------


def test_least_squares_is_a_no_op_when_removed_inputs_were_zero() -> None:
    weights = _weights()
    weights["w1"][[2, 5]] = 0.0
    weights["b1"][[2, 5]] = -1.0  # Relu makes channels 2 and 5 exactly zero
    reference = _cnn(weights)
    pruned = _cnn(_prune(weights, [2, 5]))
    result = reconstruct(pruned, reference, _images(64))
    assert [(f.node, f.kept_inputs, f.original_inputs, f.kept_outputs) for f in result.layers] == [
        ("conv2", 6, 8, 6)
    ]
    np.testing.assert_allclose(_init(result.model, "w2"), _init(pruned, "w2"), atol=1e-5)
    np.testing.assert_allclose(_init(result.model, "b2"), _init(pruned, "b2"), atol=1e-5)
    assert result.layers[0].mse_before < 1e-10


def test_least_squares_absorbs_a_removed_duplicate_channel_exactly() -> None:
    weights = _weights()
    # Channel 6 = 2 x channel 1 before and after Relu, so conv2 can absorb it exactly.
    weights["w1"][6], weights["b1"][6] = 2 * weights["w1"][1], 2 * weights["b1"][1]
    reference = _cnn(weights)
    pruned = _cnn(_prune(weights, [6]))
    x = _images(32)
    assert np.abs(_run(pruned, x) - _run(reference, x)).max() > 1e-2
    recovered = least_squares_recover(pruned, reference, x, ridge=1e-9)
    np.testing.assert_allclose(_run(recovered, x), _run(reference, x), atol=1e-4)
    w2 = _init(recovered, "w2")
    expected = weights["w2"][:, 1] + 2 * weights["w2"][:, 6]
    np.testing.assert_allclose(w2[:, 1], expected, atol=1e-4)


def test_least_squares_lowers_output_error_on_a_random_pruned_model() -> None:
    weights = _weights(3)
    reference = _cnn(weights)
    pruned = _cnn(_prune(weights, [0, 3, 4], [1, 4]))
    calib, held_out = _images(200, seed=5), _images(100, seed=6)
    result = reconstruct(pruned, reference, calib)
    # conv2 (inputs pruned, outputs pruned), the depthwise conv (per channel) and the Gemm.
    assert [(f.node, f.kept_inputs, f.original_inputs, f.kept_outputs) for f in result.layers] == [
        ("conv2", 5, 8, 4),
        ("dw", 4, 6, 4),
        ("fc", 4, 6, 5),
    ]
    for fit in result.layers:
        assert fit.mse_after <= fit.mse_before
    assert result.layers[0].mse_after < 0.8 * result.layers[0].mse_before
    target = _run(reference, held_out)
    mse_before = float(np.mean((_run(pruned, held_out) - target) ** 2))
    mse_after = float(np.mean((_run(result.model, held_out) - target) ** 2))
    assert mse_after < 0.5 * mse_before
    onnx.checker.check_model(result.model, full_check=True)
    shapes = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert {t.name: list(t.dims) for t in result.model.graph.initializer} == shapes


@pytest.mark.parametrize("op", ["gemm", "matmul"])
def test_least_squares_on_gemm_and_matmul_consumers(op: str) -> None:
    rng = np.random.default_rng(2)
    w1 = rng.normal(0, 0.5, (4, 6)).astype(F32)  # [in, out], transB=0
    w1[:, 5] = 3 * w1[:, 2]  # feature 5 = 3 x feature 2 (Relu keeps the ratio)
    w2 = rng.normal(0, 0.5, (6, 3)).astype(F32)
    bias = rng.normal(0, 0.1, 3).astype(F32)

    def build(first: np.ndarray, second: np.ndarray) -> onnx.ModelProto:
        nodes = [
            helper.make_node("Gemm", ["x", "w1"], ["h"], "hidden"),
            helper.make_node("Relu", ["h"], ["r"], "relu"),
        ]
        if op == "gemm":
            nodes.append(
                helper.make_node("Gemm", ["r", "w2", "bias"], ["y"], "head", alpha=0.5, beta=2.0)
            )
            inits = [first, second, bias]
        else:
            nodes.append(helper.make_node("MatMul", ["r", "w2"], ["y"], "head"))
            inits = [first, second]
        graph = helper.make_graph(
            nodes,
            "mlp",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
            [
                numpy_helper.from_array(v, k)
                for k, v in zip(["w1", "w2", "bias"], inits, strict=False)
            ],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    reference = build(w1, w2)
    pruned = build(w1[:, :5], w2[:5])
    x = rng.normal(0, 1, (300, 4)).astype(F32)
    assert np.abs(_run(pruned, x) - _run(reference, x)).max() > 1e-2
    result = reconstruct(pruned, reference, x, ridge=1e-9)
    assert [(f.node, f.kept_inputs, f.original_inputs) for f in result.layers] == [("head", 5, 6)]
    np.testing.assert_allclose(_run(result.model, x), _run(reference, x), atol=1e-4)


def test_match_dense_rows_finds_sorted_slices() -> None:
    w = np.random.default_rng(0).normal(size=(7, 5, 4)).astype(F32)
    rows, cols = match_dense_rows(w, w[[1, 2, 6]][:, [0, 3, 4]])
    assert (rows, cols) == ([1, 2, 6], [0, 3, 4])


def test_least_squares_rejects_a_foreign_reference_naming_the_node() -> None:
    pruned = _cnn(_prune(_weights(0), [1]))
    with pytest.raises(OnnxPruneError, match="conv2"):
        reconstruct(pruned, _cnn(_weights(1)), _images(16))


def test_least_squares_works_where_the_interpreter_cannot_train() -> None:
    weights = _weights()
    reference = _cnn(weights, extra_op="LpNormalization")
    pruned = _cnn(_prune(weights, [2, 7]), extra_op="LpNormalization")
    with pytest.raises(UnsupportedOpError, match="odd_norm"):
        OnnxModule(pruned)
    with pytest.raises(UnsupportedOpError, match="LpNormalization"):
        distill(pruned, reference, _images(8), epochs=1)
    x = _images(100)
    recovered = least_squares_recover(pruned, reference, x)
    target = _run(reference, x)
    assert np.mean((_run(recovered, x) - target) ** 2) < np.mean((_run(pruned, x) - target) ** 2)


def test_least_squares_through_deps_surgery_pipeline() -> None:
    deps = pytest.importorskip("onnxprune.deps")
    importance = pytest.importorskip("onnxprune.importance")
    surgery = pytest.importorskip("onnxprune.surgery")
    from conftest import make_tiny_cnn

    model = make_tiny_cnn(widths=(16, 16))
    analysis = deps.analyze(model)
    plan = importance.plan_from_ratios(analysis, 0.5, round_to=1)
    pruned = surgery.apply_plan(analysis, plan)
    x = np.random.default_rng(0).normal(size=(150, 3, 16, 16)).astype(F32)
    recovered = least_squares_recover(pruned, analysis.model, x)
    target = _run(analysis.model, x)
    assert np.mean((_run(recovered, x) - target) ** 2) < 0.7 * np.mean(
        (_run(pruned, x) - target) ** 2
    )


# -- fine-tuning ----------------------------------------------------------------------------


def test_finetune_lowers_distillation_loss_and_keeps_structure() -> None:
    weights = _weights(4)
    reference = _cnn(weights)
    pruned = _cnn(_prune(weights, [0, 2, 5], [3]))
    x = _images(128, seed=9)
    before = distillation_loss_on(pruned, reference, x)
    result = distill(pruned, reference, x, epochs=3, lr=0.01, batch=32, optimizer="adam",
                     augment=False)  # fmt: skip
    after = distillation_loss_on(result.model, reference, x)
    assert result.steps == 12
    assert after < 0.7 * before
    onnx.checker.check_model(result.model, full_check=True)
    assert [(n.name, n.op_type, list(n.input)) for n in result.model.graph.node] == [
        (n.name, n.op_type, list(n.input)) for n in pruned.graph.node
    ]
    assert {t.name: list(t.dims) for t in result.model.graph.initializer} == {
        t.name: list(t.dims) for t in pruned.graph.initializer
    }


def test_finetune_with_labels_and_augmentation_runs_and_trains() -> None:
    from onnxprune.data import Dataset

    weights = _weights(4)
    reference = _cnn(weights)
    pruned = _cnn(_prune(weights, [1, 2]))
    x = _images(64, seed=2)
    labels = _run(reference, x).argmax(1).astype(np.int64)
    result = distill(pruned, reference, Dataset(x, labels, "test"), epochs=2, batch=16, lr=0.02)
    assert result.steps == 8 and len(result.epoch_losses) == 2
    changed = np.abs(_init(result.model, "w2") - _init(pruned, "w2")).max()
    assert changed > 1e-4


def test_augment_batch_flips_and_shifts_within_padding() -> None:
    x = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).reshape(2, 3, 10, 10)
    out = augment_batch(x, "NCHW", torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for sample, original in zip(out, x, strict=True):
        candidates = []
        for image in (original, original.flip(2)):
            padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
            candidates += [
                padded[:, dy : dy + 10, dx : dx + 10] for dy in range(9) for dx in range(9)
            ]
        assert any(torch.equal(sample, c) for c in candidates)
    nhwc = augment_batch(x.permute(0, 2, 3, 1), "NHWC", torch.Generator().manual_seed(0))
    assert torch.equal(nhwc.permute(0, 3, 1, 2), out)


# -- CLI ----------------------------------------------------------------------------------


def test_cli_recover_ls_reports_accuracy_before_and_after(tmp_path) -> None:
    from onnxprune.cli import main

    weights = _weights(3)
    reference, pruned = _cnn(weights), _cnn(_prune(weights, [0, 3, 4], [1, 4]))
    onnx.save(reference, tmp_path / "ref.onnx")
    onnx.save(pruned, tmp_path / "pruned.onnx")
    x = _images(200, seed=3)
    np.savez(tmp_path / "data.npz", x=x, y=_run(reference, x).argmax(1).astype(np.int64))
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(
        main,
        ["recover", str(tmp_path / "pruned.onnx"), "--reference", str(tmp_path / "ref.onnx"),
         "--data", str(tmp_path / "data.npz"), "--method", "ls", "-o", str(out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["method"] == "ls" and record["held_out"] == 40
    assert [layer["node"] for layer in record["least_squares"]["layers"]] == ["conv2", "dw", "fc"]
    assert record["after"]["agreement"] >= record["before"]["agreement"]
    assert out.exists()
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_cli_recover_refuses_to_overwrite_input_and_names_file(tmp_path) -> None:
    from onnxprune.cli import main
    from onnxprune.cli.common import run_guarded

    weights = _weights(3)
    onnx.save(_cnn(weights), tmp_path / "ref.onnx")
    onnx.save(_cnn(_prune(weights, [0])), tmp_path / "pruned.onnx")
    np.savez(tmp_path / "data.npz", x=_images(20))
    code = run_guarded(
        main,
        ["recover", str(tmp_path / "pruned.onnx"), "--reference", str(tmp_path / "ref.onnx"),
         "--data", str(tmp_path / "data.npz"), "-o", str(tmp_path / "pruned.onnx")],
    )  # fmt: skip
    assert code == 2


def test_finetune_time_budget_shortens_the_schedule() -> None:
    weights = _weights(4)
    reference, pruned = _cnn(weights), _cnn(_prune(weights, [0]))
    result = distill(pruned, reference, _images(64), epochs=200, batch=32, augment=False,
                     max_minutes=0.2 / 60)  # fmt: skip
    assert result.stopped_by_budget
    assert 6 <= result.steps < 400


try:
    from tests.corpus import CORPUS
    from tests.corpus.fixtures import corpus_model  # noqa: F401  (session fixture)
except ImportError:  # the corpus helper's package has not landed
    CORPUS = {}


# One model per structure kind (the whole corpus passes too; it costs ~3 s a model here).
LS_CORPUS = [
    name
    for name in (
        "resnet_a",
        "mobilenet_v2",
        "shufflenet_v2",
        "resnext",
        "densenet",
        "unet",
        "tf_nhwc_flatten",
        "onnx_ops",
    )  # fmt: skip
    if name in CORPUS
]


@pytest.mark.skipif(not LS_CORPUS, reason="tests/corpus has not landed yet")
@pytest.mark.parametrize("name", LS_CORPUS)
def test_least_squares_lowers_output_error_on_corpus(name: str, corpus_model) -> None:  # noqa: F811
    deps = pytest.importorskip("onnxprune.deps")
    importance = pytest.importorskip("onnxprune.importance")
    surgery = pytest.importorskip("onnxprune.surgery")
    analysis = deps.analyze(onnx.load(str(corpus_model(name))))
    if not analysis.prunable_groups():
        pytest.skip(f"{name}: nothing prunable")
    pruned = surgery.apply_plan(analysis, importance.plan_from_ratios(analysis, 0.5, round_to=1))
    dims = [d.dim_value or 24 for d in analysis.model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).normal(size=dims).astype(F32)
    result = reconstruct(pruned, analysis.model, x)
    assert result.layers, f"{name}: no layer refit"
    target = _run(analysis.model, x)
    mse_before = float(np.mean((_run(pruned, x) - target) ** 2))
    mse_after = float(np.mean((_run(result.model, x) - target) ** 2))
    assert mse_after < 0.5 * mse_before
    onnx.checker.check_model(result.model, full_check=True)


# -- models as they come: fixed batch, other exporters, Constant-node weights ----------------


class _TwoHeads(nn.Module):
    """conv1 feeds a recogniser-like 5-D head (Reshape [n, 2, 4, 4, 6] -> Transpose ->
    Reshape [n, -1] -> Linear) and a Flatten head (conv2b -> Flatten -> Linear)."""

    def __init__(self, c1: int = 8, c2b: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1)
        self.conv2a = nn.Conv2d(c1, 8, 3, padding=1)
        self.conv2b = nn.Conv2d(c1, c2b, 3, padding=1)
        self.fc_a = nn.Linear(8 * 4 * 6, 3)
        self.fc_b = nn.Linear(c2b * 4 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        y = torch.relu(self.conv1(x))
        a = torch.relu(self.conv2a(y)).reshape(n, 2, 4, 4, 6).permute(0, 2, 1, 3, 4)
        b = torch.flatten(torch.relu(self.conv2b(y)), 1)
        return torch.cat([self.fc_a(a.reshape(n, -1)), self.fc_b(b)], dim=1)


def _two_heads_pair(keep1: list[int], keep2b: list[int]) -> tuple[nn.Module, nn.Module]:
    """(reference, pruned) torch modules; the pruned one holds slices of the reference."""
    torch.manual_seed(0)
    reference = _TwoHeads().eval()
    pruned = _TwoHeads(len(keep1), len(keep2b)).eval()
    columns = [c * 24 + p for c in keep2b for p in range(24)]
    with torch.no_grad():
        pruned.conv1.weight.copy_(reference.conv1.weight[keep1])
        pruned.conv1.bias.copy_(reference.conv1.bias[keep1])
        pruned.conv2a.weight.copy_(reference.conv2a.weight[:, keep1])
        pruned.conv2a.bias.copy_(reference.conv2a.bias)
        pruned.conv2b.weight.copy_(reference.conv2b.weight[keep2b][:, keep1])
        pruned.conv2b.bias.copy_(reference.conv2b.bias[keep2b])
        pruned.fc_a.load_state_dict(reference.fc_a.state_dict())
        pruned.fc_b.weight.copy_(reference.fc_b.weight[:, columns])
        pruned.fc_b.bias.copy_(reference.fc_b.bias)
    return reference, pruned


def _export_torch(module: nn.Module, *, dynamo: bool, fixed: bool) -> onnx.ModelProto:
    example = torch.randn(1 if fixed else 2, 3, 4, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(
                module, (example,), dynamo=True, opset_version=18, input_names=["x"],
                output_names=["y"], external_data=False, verbose=False,
            )  # fmt: skip
            return program.model_proto
        buffer = io.BytesIO()
        torch.onnx.export(
            module, (example,), buffer, dynamo=False, opset_version=17, input_names=["x"],
            output_names=["y"], dynamic_axes=None if fixed else {"x": {0: "n"}, "y": {0: "n"}},
        )  # fmt: skip
        return onnx.load_from_string(buffer.getvalue())


def _run_each(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Outputs sample by sample (works for a fixed batch of 1)."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


@pytest.fixture(scope="module")
def two_heads() -> dict[str, tuple[onnx.ModelProto, onnx.ModelProto]]:
    reference, pruned = _two_heads_pair([0, 2, 3, 5, 7], [1, 2, 4, 5])
    return {
        kind: (
            _export_torch(reference, dynamo=dynamo, fixed=fixed),
            _export_torch(pruned, dynamo=dynamo, fixed=fixed),
        )
        for kind, dynamo, fixed in (
            ("dynamic", False, False),
            ("fixed", False, True),
            ("fixed_dynamo", True, True),
        )  # fmt: skip
    }


@pytest.mark.parametrize("kind", ["fixed", "fixed_dynamo"])
def test_least_squares_on_a_fixed_batch_model_equals_the_dynamic_batch_result(
    kind: str, two_heads
) -> None:
    reference, pruned = two_heads[kind]
    assert reference.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    x = np.random.default_rng(5).normal(size=(40, 3, 4, 6)).astype(F32)
    with pytest.raises(Exception, match="invalid for input of size|rejected|Got invalid"):
        _run(reference, x)  # the model really accepts a batch of 1 only
    # Every output position is used (24 per image), so no sampling differs between runs.
    fixed = reconstruct(pruned, reference, x, positions_per_image=24, ridge=1e-6)
    dynamic = reconstruct(*two_heads["dynamic"][::-1], x, positions_per_image=24, ridge=1e-6)
    assert fixed.fixed_batch == 1 and dynamic.fixed_batch is None
    assert [(f.op_type, f.kept_inputs, f.original_inputs) for f in fixed.layers] == [
        ("Conv", 5, 8), ("Conv", 5, 8), ("Gemm", 96, 144),
    ]  # fmt: skip
    assert [(f.op_type, f.kept_inputs) for f in dynamic.layers] == [
        (f.op_type, f.kept_inputs) for f in fixed.layers
    ]
    target = _run_each(reference, x)
    np.testing.assert_allclose(
        _run_each(fixed.model, x), _run_each(dynamic.model, x), rtol=1e-3, atol=1e-4
    )
    before = np.mean((_run_each(pruned, x) - target) ** 2)
    assert np.mean((_run_each(fixed.model, x) - target) ** 2) < 0.5 * before
    onnx.checker.check_model(fixed.model, full_check=True)


def test_least_squares_pairs_a_reference_exported_by_another_path(two_heads) -> None:
    # Pruned: the dynamo export; reference: the TorchScript export of the same weights (other
    # node names, other tensor names, Gemm with transB instead of MatMul + Add).
    reference_ts, _ = two_heads["fixed"]
    reference_dynamo, pruned = two_heads["fixed_dynamo"]
    assert not {n.name for n in pruned.graph.node if n.op_type == "Conv"} & {
        n.name for n in reference_ts.graph.node if n.op_type == "Conv"
    }
    x = np.random.default_rng(6).normal(size=(30, 3, 4, 6)).astype(F32)
    other = reconstruct(pruned, reference_ts, x, positions_per_image=24)
    same = reconstruct(pruned, reference_dynamo, x, positions_per_image=24)
    assert len(other.layers) == len(same.layers) == 3
    np.testing.assert_allclose(
        _run_each(other.model, x), _run_each(same.model, x), rtol=1e-4, atol=1e-5
    )


def _renamed(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every node and every internal tensor renamed (graph input/output kept)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = {v.name for v in out.graph.input} | {v.name for v in out.graph.output}
    names = {t.name: f"t{k}" for k, t in enumerate(out.graph.initializer)}
    for node in out.graph.node:
        names.update({o: f"v_{o}_x" for o in node.output if o not in keep})
    for tensor in out.graph.initializer:
        tensor.name = names[tensor.name]
    for k, node in enumerate(out.graph.node):
        node.name = f"layer{k:03d}"
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    return out


def test_least_squares_pairs_renamed_reference_layers_by_structure() -> None:
    weights = _weights(3)
    reference, pruned = _cnn(weights), _cnn(_prune(weights, [0, 3, 4], [1, 4]))
    x = _images(100, seed=3)
    by_name = reconstruct(pruned, reference, x)
    renamed = reconstruct(pruned, _renamed(reference), x)
    assert [f.node for f in renamed.layers] == [f.node for f in by_name.layers] == [
        "conv2", "dw", "fc",
    ]  # fmt: skip
    for name in ("w2", "b2", "w3", "fc", "fcb"):
        np.testing.assert_allclose(_init(renamed.model, name), _init(by_name.model, name))


def test_least_squares_refuses_a_reference_it_cannot_pair_naming_the_layer() -> None:
    weights = _weights(3)
    pruned = _cnn(_prune(weights, [0, 3]))
    reference = _cnn(weights)
    conv2 = next(n for n in reference.graph.node if n.name == "conv2")
    del conv2.attribute[:]
    conv2.attribute.append(helper.make_attribute("pads", [1, 1, 1, 1]))
    conv2.attribute.append(helper.make_attribute("strides", [2, 2]))
    with pytest.raises(OnnxPruneError, match=r"layer 'conv2' \(Conv 3x3, stride \[1, 1\]\)"):
        reconstruct(pruned, reference, _images(8))
    fewer = _cnn(weights)
    fewer.graph.node[-1].op_type = "Sum"  # the classifier is no weighted layer any more
    del fewer.graph.node[-1].attribute[:]
    with pytest.raises(OnnxPruneError, match="4 Conv/Gemm/MatMul layers .* reference 3"):
        reconstruct(pruned, fewer, _images(8))


def test_least_squares_says_so_when_nothing_was_pruned() -> None:
    reference = _cnn(_weights(3))
    result = reconstruct(reference, reference, _images(8))
    assert result.layers == [] and "no layer was pruned" in str(result)
    assert result.model.SerializeToString() == reference.SerializeToString()


def _constant_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every initializer turned into a Constant node (paddle2onnx's way)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    constants = [
        helper.make_node("Constant", [], [t.name], f"const_{t.name}", value=t)
        for t in out.graph.initializer
    ]
    del out.graph.initializer[:]
    nodes = constants + list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    onnx.checker.check_model(out, full_check=True)
    return out


def test_least_squares_refits_constant_node_weights_in_place() -> None:
    weights = _weights(3)
    reference, pruned = _cnn(weights), _cnn(_prune(weights, [0, 3, 4], [1, 4]))
    x = _images(100, seed=3)
    expected = reconstruct(pruned, reference, x)
    for pruned_side, reference_side in (
        (_constant_weights(pruned), _constant_weights(reference)),
        (pruned, _constant_weights(reference)),  # a prune output against the raw export
    ):
        result = reconstruct(pruned_side, reference_side, x)
        assert [f.node for f in result.layers] == ["conv2", "dw", "fc"]
        np.testing.assert_allclose(_run(result.model, x), _run(expected.model, x), atol=1e-5)
        assert [n.op_type for n in result.model.graph.node] == [
            n.op_type for n in pruned_side.graph.node
        ]
        onnx.checker.check_model(result.model, full_check=True)


def test_finetune_trains_constant_node_weights_of_a_fixed_batch_model() -> None:
    weights = _weights(4)
    reference = _constant_weights(_cnn(weights))
    pruned = _constant_weights(_cnn(_prune(weights, [0, 2, 5], [3])))
    for model in (reference, pruned):
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
        model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    x = _images(48, seed=9)
    before = np.mean((_run_each(pruned, x) - _run_each(reference, x)) ** 2)
    result = distill(pruned, reference, x, epochs=3, lr=0.01, batch=16, augment=False)
    after = np.mean((_run_each(result.model, x) - _run_each(reference, x)) ** 2)
    assert result.steps == 9 and after < 0.7 * before
    assert result.notes == []  # no BatchNormalization to freeze
    assert [n.op_type for n in result.model.graph.node] == [n.op_type for n in pruned.graph.node]
    onnx.checker.check_model(result.model, full_check=True)


def _fixed_batch_one(model: onnx.ModelProto) -> onnx.ModelProto:
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    return model


def test_cli_recover_says_what_was_refit_on_a_fixed_batch_model_and_when_nothing_was(
    tmp_path,
) -> None:
    from onnxprune.cli import main

    weights = _weights(3)
    onnx.save(_fixed_batch_one(_cnn(weights)), tmp_path / "ref.onnx")
    onnx.save(_fixed_batch_one(_cnn(_prune(weights, [0, 3], [1]))), tmp_path / "pruned.onnx")
    np.savez(tmp_path / "data.npz", x=_images(50, seed=3))
    args = ["--reference", str(tmp_path / "ref.onnx"), "--data", str(tmp_path / "data.npz")]
    result = CliRunner().invoke(
        main, ["recover", str(tmp_path / "pruned.onnx"), *args, "-o", str(tmp_path / "o.onnx")]
    )
    assert result.exit_code == 0, result.output
    assert "3 layers refit on 40 images in chunks of its fixed batch 1" in result.output
    same = CliRunner().invoke(
        main, ["recover", str(tmp_path / "ref.onnx"), *args, "-o", str(tmp_path / "same.onnx")]
    )
    assert same.exit_code == 0, same.output
    assert "nothing refit: no layer was pruned" in same.output


def _shared_conv2(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """_cnn with a second Conv reading conv1's output through the same weight 'w2'."""
    model = _cnn(weights)
    nodes = list(model.graph.node)
    twin = helper.make_node("Conv", ["r1", "w2", "b2"], ["c2_twin"], "conv2_twin", pads=[1] * 4)
    add = helper.make_node("Add", ["c2", "c2_twin"], ["c2_sum"], "sum")
    nodes[3].input[0] = "c2_sum"  # relu2 reads the sum
    del model.graph.node[:]
    model.graph.node.extend([*nodes[:3], twin, add, *nodes[3:]])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_least_squares_names_pruned_input_layers_it_cannot_refit() -> None:
    weights = _weights(3)
    reference, pruned = _shared_conv2(weights), _shared_conv2(_prune(weights, [0, 3]))
    result = reconstruct(pruned, reference, _images(20))
    assert result.layers == []
    assert result.skipped == [
        "conv2: its weight 'w2' is shared with another node",
        "conv2_twin: its weight 'w2' is shared with another node",
    ]
    assert "nothing refit: every layer with pruned inputs is left as it is" in str(result)
    assert "not refit: conv2_twin" in str(result)


def test_finetune_freezes_batchnorm_statistics_for_a_small_fixed_batch_only() -> None:
    from onnxprune.recover.finetune import _bn_mode

    stats = [numpy_helper.from_array(np.ones(3, F32), n) for n in ("s", "b", "m", "v")]
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], "bn")],
        "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])], stats,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert _bn_mode(model, 1, "train") == (
        "freeze", ["BatchNormalization statistics frozen: the model's batch is fixed at 1"],
    )  # fmt: skip
    assert _bn_mode(model, None, "train") == ("train", [])
    assert _bn_mode(model, 32, "train") == ("train", [])
    assert _bn_mode(_cnn(_weights()), 1, "train") == ("train", [])

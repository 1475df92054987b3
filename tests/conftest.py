"""Shared fixtures and tiny-model builders (importable: ``from tests.conftest import ...``).

Builders return ``onnx.ModelProto`` objects made with ``onnx.helper`` (opset 18, float32,
seeded random weights) so tests run in milliseconds and never depend on bundled files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples" / "cifar_resnet"

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own onnxprune cache folder (latency tables), never ~/.cache."""
    monkeypatch.setenv("ONNXPRUNE_CACHE", str(tmp_path_factory.mktemp("cache")))


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def finish_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[TensorProto],
    name: str = "tiny",
) -> onnx.ModelProto:
    """Wrap nodes into an opset-18 model (IR 8, loads in onnxruntime) and check it."""
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_tiny_cnn(
    widths: tuple[int, int] = (8, 16),
    image: int = 16,
    classes: int = 10,
    seed: int = 0,
    batch: int | str = "batch",
) -> onnx.ModelProto:
    """Conv(3->w1,3x3,pad1)+Relu -> Conv(w1->w2,3x3,stride2,pad1)+bias+Relu -> GAP -> Flatten -> Gemm.

    Input ``input: float32[batch, 3, image, image]`` (dynamic batch by default), output
    ``logits: [batch, classes]``. MACs per sample (image=16):
    ``w1*3*9*256 + w2*w1*9*64 + w2*classes``.
    """
    w1, w2 = widths
    rng = np.random.default_rng(seed)
    inits = [
        _init("conv1.w", rng.normal(0, 0.3, (w1, 3, 3, 3)).astype(np.float32)),
        _init("conv2.w", rng.normal(0, 0.3, (w2, w1, 3, 3)).astype(np.float32)),
        _init("conv2.b", rng.normal(0, 0.1, (w2,)).astype(np.float32)),
        _init("fc.w", rng.normal(0, 0.3, (classes, w2)).astype(np.float32)),
        _init("fc.b", rng.normal(0, 0.1, (classes,)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.w"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node(
            "Conv", ["r1", "conv2.w", "conv2.b"], ["c2"], "conv2", pads=[1, 1, 1, 1], strides=[2, 2]
        ),
        helper.make_node("Relu", ["c2"], ["r2"], "relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], "gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], "flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], "fc", transB=1),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, image, image])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])]
    return finish_model(nodes, inputs, outputs, inits, "tiny_cnn")


def tiny_cnn_macs(widths: tuple[int, int] = (8, 16), image: int = 16, classes: int = 10) -> int:
    """Hand count of :func:`make_tiny_cnn`'s MACs per sample."""
    w1, w2 = widths
    half = (image + 1) // 2
    return w1 * 3 * 9 * image * image + w2 * w1 * 9 * half * half + w2 * classes


def make_tiny_cnn_onnx(path: str | os.PathLike[str], **kwargs) -> Path:
    """Save :func:`make_tiny_cnn` to ``path`` and return the path."""
    path = Path(path)
    onnx.save_model(make_tiny_cnn(**kwargs), str(path))
    return path


@pytest.fixture
def tiny_cnn_path(tmp_path: Path) -> Path:
    """A saved tiny CNN (input [batch,3,16,16], 10 classes)."""
    return make_tiny_cnn_onnx(tmp_path / "tiny.onnx")


@pytest.fixture
def resnet20_path() -> Path:
    path = EXAMPLES / "resnet20.onnx"
    if not path.exists():
        pytest.skip("bundled examples/cifar_resnet/resnet20.onnx not present")
    return path


@pytest.fixture
def resnet56_path() -> Path:
    path = EXAMPLES / "resnet56.onnx"
    if not path.exists():
        pytest.skip("bundled examples/cifar_resnet/resnet56.onnx not present")
    return path

"""A graph written with ``onnx.helper`` (opset 18) covering ops the torch exporter does not
emit for the corpus models: 3-input Sum residual, PRelu with per-channel slopes, LeakyRelu,
Cast, Dropout (inference), elementwise Max, AveragePool, Identity, GlobalAveragePool,
Flatten, Gemm with ``transB=0``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from .tf_style import _GraphBuilder


def build_onnx_ops(out_dir: Path) -> Path:
    """x[N,3,8,8] -> conv1 8 -> PRelu; conv2 (LeakyRelu) and conv3 (Cast) from it; Sum of the
    three -> Max(s, Dropout(s)) -> AveragePool -> conv4 16 -> Relu -> Identity ->
    GlobalAveragePool -> Flatten -> Gemm 12 (transB=0) -> Relu -> Gemm 10."""
    g = _GraphBuilder(seed=404)
    rng = g.rng

    def conv(x: str, name: str, cin: int, cout: int, k: int, bias: bool = True) -> str:
        w = g.init(
            name + ".w",
            (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))).astype(
                np.float32
            ),
        )
        inputs = [x, w]
        if bias:
            inputs.append(g.init(name + ".b", (rng.standard_normal(cout) * 0.1).astype(np.float32)))
        pad = k // 2
        return g.node("Conv", inputs, name, pads=[pad] * 4, kernel_shape=[k, k])

    c1 = conv("x", "conv1", 3, 8, 3)
    slope = g.init("prelu.slope", rng.uniform(0.05, 0.3, (8, 1, 1)).astype(np.float32))
    p1 = g.node("PRelu", [c1, slope], "prelu1")
    l2 = g.node("LeakyRelu", [conv(p1, "conv2", 8, 8, 3)], "leaky2", alpha=0.1)
    k3 = g.node("Cast", [conv(p1, "conv3", 8, 8, 1, bias=False)], "cast3", to=TensorProto.FLOAT)
    s = g.node("Sum", [p1, l2, k3], "sum")
    d = g.node("Dropout", [s], "dropout")
    m = g.node("Max", [s, d], "max")
    ap = g.node("AveragePool", [m], "avgpool", kernel_shape=[2, 2], strides=[2, 2])
    c4 = g.node("Relu", [conv(ap, "conv4", 8, 16, 3)], "relu4")
    i4 = g.node("Identity", [c4], "identity4")
    gap = g.node("GlobalAveragePool", [i4], "gap")
    flat = g.node("Flatten", [gap], "flatten", axis=1)
    w5 = g.init("fc1.w", (rng.standard_normal((16, 12)) * 0.3).astype(np.float32))
    b5 = g.init("fc1.b", (rng.standard_normal(12) * 0.1).astype(np.float32))
    h = g.node("Relu", [g.node("Gemm", [flat, w5, b5], "fc1")], "relu5")
    w6 = g.init("fc2.w", (rng.standard_normal((12, 10)) * 0.3).astype(np.float32))
    g.node("Gemm", [h, w6], "logits")
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])
    return g.save(out_dir / "onnx_ops.onnx", inp, out, opset=18)

"""NHWC graphs written with ``onnx.helper`` the way tf2onnx writes a Keras/TF model.

What tf2onnx does and these graphs imitate: the NHWC input goes through a Transpose to NCHW
before the first Conv and back to NHWC after the last one; weights are stored HWIO and
reach the Conv through a Transpose node (or a ``Constant`` node); frozen-graph BatchNorm is
unfolded into per-channel Mul/Add constants; Relu6 is a Clip whose min/max are *shared*
initializers; 'SAME' padding is either an explicit Pad node or ``auto_pad``; the head is a
ReduceMean over H,W or a Reshape of the NHWC tensor (so the flattened feature order is
``(h * W + w) * C + c``, channels interleaved) followed by MatMul + Add.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _GraphBuilder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(
            helper.make_node(op, inputs, [output], name=output.split(":")[0], **attrs)
        )
        return output

    def hwio_weight(
        self, name: str, k: int, cin: int, cout: int, *, as_constant: bool = False
    ) -> str:
        """A conv weight stored HWIO, converted to OIHW by a Transpose (or a Constant node)."""
        std = np.sqrt(2.0 / (k * k * cin))
        hwio = (self.rng.standard_normal((k, k, cin, cout)) * std).astype(np.float32)
        if as_constant:
            oihw = np.ascontiguousarray(hwio.transpose(3, 2, 0, 1))
            self.nodes.append(
                helper.make_node(
                    "Constant",
                    [],
                    [name],
                    name=name + "_const",
                    value=numpy_helper.from_array(oihw, name),
                )
            )
            return name
        self.init(name + "/hwio", hwio)
        return self.node("Transpose", [name + "/hwio"], name, perm=[3, 2, 0, 1])

    def depthwise_weight(self, name: str, k: int, c: int) -> str:
        # TF stores depthwise kernels as [H, W, C, 1]; tf2onnx transposes to [C, 1, H, W].
        hwc1 = (self.rng.standard_normal((k, k, c, 1)) * np.sqrt(2.0 / (k * k))).astype(np.float32)
        self.init(name + "/hwc1", hwc1)
        return self.node("Transpose", [name + "/hwc1"], name, perm=[2, 3, 0, 1])

    def unfolded_bn(self, x: str, name: str, c: int, shape: tuple[int, ...]) -> str:
        scale = (self.rng.uniform(0.5, 1.5, c)).astype(np.float32).reshape(shape)
        shift = (self.rng.standard_normal(c) * 0.2).astype(np.float32).reshape(shape)
        mul = self.node("Mul", [x, self.init(name + "/scale", scale)], name + "/mul:0")
        return self.node("Add", [mul, self.init(name + "/shift", shift)], name + "/add:0")

    def dense(self, x: str, name: str, fan_in: int, fan_out: int) -> str:
        w = (self.rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (self.rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        mm = self.node("MatMul", [x, self.init(name + "/kernel", w)], name + "/MatMul:0")
        return self.node("Add", [mm, self.init(name + "/bias", b)], name + "/BiasAdd:0")

    def save(
        self, path: Path, inp: onnx.ValueInfoProto, out: onnx.ValueInfoProto, opset: int
    ) -> Path:
        graph = helper.make_graph(self.nodes, "tf2onnx", [inp], [out], initializer=self.inits)
        model = helper.make_model(
            graph, producer_name="tf2onnx", opset_imports=[helper.make_opsetid("", opset)]
        )
        model.ir_version = 8
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.checker.check_model(model, full_check=True)
        onnx.save_model(model, str(path))
        return path


def build_tf_nhwc_pool(out_dir: Path) -> Path:
    """NHWC input [N,16,16,3] -> conv8 (+BN as Mul/Add, Relu6 Clip) -> Pad + conv16 (VALID)
    -> depthwise 16 (SAME_UPPER, stride 2) -> 1x1 conv 16 -> Relu -> Transpose to NHWC ->
    ReduceMean(H, W) -> MatMul + Add -> logits [N, 10]. Opset 15."""
    g = _GraphBuilder(seed=101)
    relu6_min = g.init("Relu6/min", np.array(0.0, np.float32))
    relu6_max = g.init("Relu6/max", np.array(6.0, np.float32))
    x = g.node("Transpose", ["input_1:0"], "model/conv1/Conv2D__6:0", perm=[0, 3, 1, 2])
    w1 = g.hwio_weight("model/conv1/Conv2D/ReadVariableOp:0", 3, 3, 8)
    x = g.node("Conv", [x, w1], "model/conv1/Conv2D:0", pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    x = g.unfolded_bn(x, "model/bn1", 8, (1, 8, 1, 1))
    x = g.node("Clip", [x, relu6_min, relu6_max], "model/relu6_1/Relu6:0")
    pads = g.init("model/pad2/pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
    x = g.node("Pad", [x, pads], "model/pad2/Pad:0", mode="constant")
    w2 = g.hwio_weight("model/conv2/Conv2D/ReadVariableOp:0", 3, 8, 16, as_constant=True)
    x = g.node("Conv", [x, w2], "model/conv2/Conv2D:0", auto_pad="VALID", kernel_shape=[3, 3])
    x = g.unfolded_bn(x, "model/bn2", 16, (16, 1, 1))
    x = g.node("Clip", [x, relu6_min, relu6_max], "model/relu6_2/Relu6:0")
    w3 = g.depthwise_weight("model/dw3/depthwise/ReadVariableOp:0", 3, 16)
    b3 = g.init("model/dw3/bias", (g.rng.standard_normal(16) * 0.1).astype(np.float32))
    x = g.node(
        "Conv",
        [x, w3, b3],
        "model/dw3/depthwise:0",
        auto_pad="SAME_UPPER",
        strides=[2, 2],
        group=16,
        kernel_shape=[3, 3],
    )
    x = g.node("Clip", [x, relu6_min, relu6_max], "model/relu6_3/Relu6:0")
    w4 = g.hwio_weight("model/conv4/Conv2D/ReadVariableOp:0", 1, 16, 16)
    b4 = g.init("model/conv4/bias", (g.rng.standard_normal(16) * 0.1).astype(np.float32))
    x = g.node("Conv", [x, w4, b4], "model/conv4/BiasAdd:0", kernel_shape=[1, 1])
    x = g.node("Relu", [x], "model/conv4/Relu:0")
    x = g.node("Transpose", [x], "model/conv4/Relu__20:0", perm=[0, 2, 3, 1])
    x = g.node("ReduceMean", [x], "model/gap/Mean:0", axes=[1, 2], keepdims=0)
    x = g.dense(x, "model/dense", 16, 10)
    g.nodes.append(helper.make_node("Identity", [x], ["Identity:0"], name="Identity"))
    inp = helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["unk__1", 16, 16, 3])
    out = helper.make_tensor_value_info("Identity:0", TensorProto.FLOAT, ["unk__2", 10])
    return g.save(out_dir / "tf_nhwc_pool.onnx", inp, out, opset=15)


def build_tf_nhwc_flatten(out_dir: Path) -> Path:
    """NHWC input [N,8,8,3] -> conv8 + bias + Relu -> conv8 (SAME_UPPER, stride 2, weight in a
    Constant node, BN as Mul/Add, Relu6 Clip) -> Transpose to NHWC [N,4,4,8] -> Reshape
    [-1, 128] (interleaved order) -> MatMul+Add 16 -> Relu -> MatMul+Add 10. Opset 13."""
    g = _GraphBuilder(seed=202)
    relu6_min = g.init("Relu6/min", np.array(0.0, np.float32))
    relu6_max = g.init("Relu6/max", np.array(6.0, np.float32))
    x = g.node("Transpose", ["input_1:0"], "model/conv1/Conv2D__5:0", perm=[0, 3, 1, 2])
    w1 = g.hwio_weight("model/conv1/Conv2D/ReadVariableOp:0", 3, 3, 8)
    b1 = g.init("model/conv1/bias", (g.rng.standard_normal(8) * 0.1).astype(np.float32))
    x = g.node("Conv", [x, w1, b1], "model/conv1/BiasAdd:0", pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    x = g.node("Relu", [x], "model/conv1/Relu:0")
    w2 = g.hwio_weight("model/conv2/Conv2D/ReadVariableOp:0", 3, 8, 8, as_constant=True)
    x = g.node(
        "Conv",
        [x, w2],
        "model/conv2/Conv2D:0",
        auto_pad="SAME_UPPER",
        strides=[2, 2],
        kernel_shape=[3, 3],
    )
    x = g.unfolded_bn(x, "model/bn2", 8, (1, 8, 1, 1))
    x = g.node("Clip", [x, relu6_min, relu6_max], "model/relu6_2/Relu6:0")
    x = g.node("Transpose", [x], "model/relu6_2/Relu6__12:0", perm=[0, 2, 3, 1])
    shape = g.init("model/flatten/Const:0", np.array([-1, 128], np.int64))
    x = g.node("Reshape", [x, shape], "model/flatten/Reshape:0")
    x = g.dense(x, "model/dense1", 128, 16)
    x = g.node("Relu", [x], "model/dense1/Relu:0")
    x = g.dense(x, "model/dense2", 16, 10)
    g.nodes.append(helper.make_node("Identity", [x], ["Identity:0"], name="Identity"))
    inp = helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["unk__1", 8, 8, 3])
    out = helper.make_tensor_value_info("Identity:0", TensorProto.FLOAT, ["unk__2", 10])
    return g.save(out_dir / "tf_nhwc_flatten.onnx", inp, out, opset=13)


def build_tf_nhwc_mixed(out_dir: Path) -> Path:
    """Ops left in NHWC between Transposes, as tf2onnx does when it cannot push them out:
    Conv -> Transpose to NHWC -> Add of a [C] bias (broadcast on the last axis) -> Relu ->
    Mul by a [1,1,1,C] constant; a second branch Conv -> NHWC -> Resize (scales [1,2,2,1]) of
    a strided conv; Concat on axis 3 (NHWC channels) -> Transpose to NCHW -> 1x1 Conv -> NHWC
    -> ReduceMean(axes 1,2, keepdims=1) -> Squeeze(1,2) -> MatMul (no bias). Opset 13."""
    g = _GraphBuilder(seed=303)
    x = g.node("Transpose", ["input_1:0"], "model/in_nchw:0", perm=[0, 3, 1, 2])
    w1 = g.hwio_weight("model/conv1/kernel:0", 3, 3, 8)
    a = g.node("Conv", [x, w1], "model/conv1/Conv2D:0", pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    a = g.node("Transpose", [a], "model/conv1/Conv2D__7:0", perm=[0, 2, 3, 1])
    bias1 = g.init("model/conv1/bias:0", (g.rng.standard_normal(8) * 0.1).astype(np.float32))
    a = g.node("Add", [a, bias1], "model/conv1/BiasAdd:0")
    a = g.node("Relu", [a], "model/conv1/Relu:0")
    gain = g.init("model/gain:0", g.rng.uniform(0.5, 1.5, (1, 1, 1, 8)).astype(np.float32))
    a = g.node("Mul", [a, gain], "model/gain/mul:0")
    w2 = g.hwio_weight("model/conv2/kernel:0", 3, 3, 4)
    b = g.node(
        "Conv",
        [x, w2],
        "model/conv2/Conv2D:0",
        pads=[1, 1, 1, 1],
        strides=[2, 2],
        kernel_shape=[3, 3],
    )
    b = g.node("Relu", [b], "model/conv2/Relu:0")
    b = g.node("Transpose", [b], "model/conv2/Relu__9:0", perm=[0, 2, 3, 1])
    roi = g.init("model/up/roi:0", np.zeros(0, np.float32))
    scales = g.init("model/up/scales:0", np.array([1, 2, 2, 1], np.float32))
    b = g.node("Resize", [b, roi, scales], "model/up/resize:0", mode="nearest")
    c = g.node("Concat", [a, b], "model/concat:0", axis=3)
    c = g.node("Transpose", [c], "model/concat__12:0", perm=[0, 3, 1, 2])
    w3 = g.hwio_weight("model/conv3/kernel:0", 1, 12, 16)
    c = g.node("Conv", [c, w3], "model/conv3/Conv2D:0", kernel_shape=[1, 1])
    c = g.node("Relu", [c], "model/conv3/Relu:0")
    c = g.node("Transpose", [c], "model/conv3/Relu__15:0", perm=[0, 2, 3, 1])
    c = g.node("ReduceMean", [c], "model/gap/Mean:0", axes=[1, 2], keepdims=1)
    axes = g.init("model/gap/squeeze_axes:0", np.array([1, 2], np.int64))
    c = g.node("Squeeze", [c, axes], "model/gap/Squeeze:0")
    w4 = g.init("model/dense/kernel:0", (g.rng.standard_normal((16, 10)) * 0.3).astype(np.float32))
    c = g.node("MatMul", [c, w4], "model/dense/MatMul:0")
    g.nodes.append(helper.make_node("Identity", [c], ["Identity:0"], name="Identity"))
    inp = helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["unk__1", 16, 16, 3])
    out = helper.make_tensor_value_info("Identity:0", TensorProto.FLOAT, ["unk__2", 10])
    return g.save(out_dir / "tf_nhwc_mixed.onnx", inp, out, opset=13)

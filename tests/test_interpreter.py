"""The ONNX -> torch interpreter reproduces onnxruntime and trains every weight."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from onnxprune.errors import OnnxPruneError, UnsupportedOpError
from onnxprune.recover.interpreter import OnnxModule, write_back

RNG = np.random.default_rng(0)


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _export(module: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    module.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        )
    return onnx.load_from_string(buffer.getvalue())


def _assert_matches_ort(model: onnx.ModelProto, x: np.ndarray, atol: float = 1e-4) -> None:
    expected = _ort(model, {model.graph.input[0].name: x})
    module = OnnxModule(model).eval()
    with torch.no_grad():
        got = module(torch.from_numpy(x))
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g.numpy(), e, atol=atol, rtol=1e-4)


# -- tiny torch models -------------------------------------------------------------------


class OptionABlock(nn.Module):
    """ResNet basic block with the CIFAR option-A (subsample + zero-pad) shortcut."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + short)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.block = OptionABlock(8, 16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(F.relu(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DepthwiseSE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 12, 1)
        self.dw = nn.Conv2d(12, 12, 3, 1, 1, groups=12)
        self.se1 = nn.Conv2d(12, 4, 1)
        self.se2 = nn.Conv2d(4, 12, 1)
        self.project = nn.Conv2d(12, 6, 1)
        self.prelu = nn.PReLU(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.hardswish(self.expand(x))
        x = F.relu6(self.dw(x))
        scale = F.hardsigmoid(self.se2(F.relu(self.se1(x.mean((2, 3), keepdim=True)))))
        x = self.prelu(self.project(x * scale))
        return torch.sigmoid(F.max_pool2d(x, 2)) - torch.tanh(F.avg_pool2d(x, 2))


class ConcatSplit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(6, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), F.leaky_relu(self.b(x), 0.1)], 1)
        left, right = torch.split(y, [6, 4], dim=1)
        return torch.cat([self.head(left), self.c(right)], 1)


class NhwcHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.weight = nn.Parameter(torch.randn(4, 7) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).permute(0, 2, 3, 1)  # NHWC
        y = torch.matmul(y, self.weight)
        return torch.softmax(y.reshape(y.shape[0], -1, 7).mean(1), -1)


class UpDown(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 6, 3, 2, 1)
        self.up = nn.ConvTranspose2d(6, 4, 3, 2, 1, output_padding=1)
        self.up2 = nn.ConvTranspose2d(4, 2, 3, 1, 1, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(x)
        near = F.interpolate(y, scale_factor=2, mode="nearest")
        lin = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
        corners = F.interpolate(y, size=(5, 7), mode="bilinear", align_corners=True)
        z = self.up2(F.elu(self.up(y)))
        return (
            near.mean(1, keepdim=True)
            + lin.mean(1, keepdim=True)
            + z.sum(1, keepdim=True)
            + corners.mean()
        )


TORCH_MODELS = {
    "resnet_option_a": (TinyResNet, (2, 3, 16, 16)),
    "depthwise_se": (DepthwiseSE, (2, 3, 12, 12)),
    "concat_split": (ConcatSplit, (2, 3, 9, 9)),
    "nhwc_matmul_head": (NhwcHead, (3, 3, 11, 11)),
    "resize_convtranspose": (UpDown, (2, 3, 12, 12)),
}


def _randomize_bn(module: nn.Module) -> None:
    for sub in module.modules():
        if isinstance(sub, nn.BatchNorm2d):
            sub.running_mean.uniform_(-0.5, 0.5)
            sub.running_var.uniform_(0.5, 2.0)
            sub.weight.data.uniform_(0.5, 1.5)
            sub.bias.data.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("name", sorted(TORCH_MODELS))
def test_matches_onnxruntime_on_torch_exports(name: str) -> None:
    torch.manual_seed(0)
    cls, shape = TORCH_MODELS[name]
    module = cls()
    _randomize_bn(module)
    model = _export(module, torch.randn(*shape))
    x = RNG.standard_normal(shape).astype(np.float32)
    _assert_matches_ort(model, x)
    # Independent of ORT: the interpreter agrees with the torch module itself.
    with torch.no_grad():
        np.testing.assert_allclose(
            OnnxModule(model).eval()(torch.from_numpy(x)).numpy(),
            module(torch.from_numpy(x)).numpy(),
            atol=1e-4,
            rtol=1e-4,
        )


# -- onnx.helper models for ops torch does not emit in this form -----------------------


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _helper_model(nodes, inits, in_shape, opset=17, out_rank=4) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *in_shape[1:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"o{k}" for k in range(out_rank)])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def _misc_model() -> onnx.ModelProto:
    f = np.float32
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[0, 1, 1, 0], strides=[1, 1]),
        helper.make_node("BatchNormalization", ["c0", "g", "b", "m", "v"], ["bn"], epsilon=1e-3),
        helper.make_node("Clip", ["bn", "lo", "hi"], ["clip"]),
        helper.make_node("Pad", ["clip", "pads"], ["pad"], mode="reflect"),
        helper.make_node("InstanceNormalization", ["pad", "ig", "ib"], ["inorm"]),
        helper.make_node("MaxPool", ["inorm"], ["mp"], kernel_shape=[3, 3], pads=[1, 0, 0, 1]),
        helper.make_node(
            "AveragePool", ["mp"], ["ap"], kernel_shape=[2, 2], pads=[0, 0, 1, 1], strides=[2, 2]
        ),
        helper.make_node("Pow", ["ap", "two"], ["sq"]),
        helper.make_node("Add", ["sq", "one"], ["sq1"]),
        helper.make_node("Sqrt", ["sq1"], ["rt"]),
        helper.make_node("Div", ["ap", "rt"], ["dv"]),
        helper.make_node("Sub", ["dv", "shift"], ["sb"]),
        helper.make_node("GlobalMaxPool", ["sb"], ["gmp"]),
        helper.make_node("Squeeze", ["gmp", "axes23"], ["sqz"]),
        helper.make_node("Unsqueeze", ["sqz", "axes2"], ["usq"]),
        helper.make_node("ReduceSum", ["sb", "axes23"], ["rs"], keepdims=0),
        helper.make_node("Identity", ["rs"], ["idn"]),
        helper.make_node("Dropout", ["idn"], ["drop"]),
        helper.make_node("Cast", ["drop"], ["cast"], to=TensorProto.FLOAT),
        helper.make_node("Shape", ["cast"], ["shp"]),
        helper.make_node("Gather", ["shp", "zero"], ["n0"]),
        helper.make_node("Constant", [], ["minus1"], value_ints=[-1]),
        helper.make_node("Concat", ["n0_1d", "minus1"], ["newshape"], axis=0),
        helper.make_node("Unsqueeze", ["n0", "axes0"], ["n0_1d"]),
        helper.make_node("Flatten", ["usq"], ["flat"]),
        helper.make_node("Concat", ["flat", "cast"], ["cat"], axis=1),
        helper.make_node("Reshape", ["cat", "newshape"], ["rsh"]),
        helper.make_node("Gemm", ["rsh", "gw", "gb"], ["gemm"], transB=1, alpha=0.7, beta=1.3),
        helper.make_node("Softmax", ["gemm"], ["y"], axis=1),
    ]
    # Unsqueeze must come before its consumer: keep the list topological.
    nodes.insert(21, nodes.pop(23))
    inits = [
        _init("w0", RNG.standard_normal((4, 3, 2, 2)).astype(f)),
        _init("g", RNG.uniform(0.5, 1.5, 4).astype(f)),
        _init("b", RNG.uniform(-0.3, 0.3, 4).astype(f)),
        _init("m", RNG.uniform(-0.3, 0.3, 4).astype(f)),
        _init("v", RNG.uniform(0.5, 2, 4).astype(f)),
        _init("lo", np.array(-1.0, f)),
        _init("hi", np.array(1.5, f)),
        _init("pads", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)),
        _init("ig", RNG.uniform(0.5, 1.5, 4).astype(f)),
        _init("ib", RNG.uniform(-0.3, 0.3, 4).astype(f)),
        _init("two", np.array(2.0, f)),
        _init("one", np.array(1.0, f)),
        _init("shift", RNG.uniform(-0.1, 0.1, (1, 4, 1, 1)).astype(f)),
        _init("axes23", np.array([2, 3], np.int64)),
        _init("axes2", np.array([2], np.int64)),
        _init("axes0", np.array([0], np.int64)),
        _init("zero", np.array(0, np.int64)),
        _init("gw", RNG.standard_normal((6, 8)).astype(f)),
        _init("gb", RNG.standard_normal(6).astype(f)),
    ]
    return _helper_model(nodes, inits, (2, 3, 10, 10), out_rank=2)


def test_matches_onnxruntime_on_helper_ops() -> None:
    model = _misc_model()
    _assert_matches_ort(model, RNG.standard_normal((3, 3, 10, 10)).astype(np.float32))


def test_split_attribute_and_input_forms_and_slice_steps() -> None:
    nodes = [
        helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1),
        helper.make_node("Split", ["x"], ["c", "d", "e"], axis=2, num_outputs=3),
        helper.make_node("Slice", ["a", "st", "en", "ax", "sp"], ["s1"]),
        helper.make_node("Slice", ["b", "st2", "en2", "ax"], ["s2"]),
        helper.make_node("ReduceMean", ["c", "ax"], ["m1"], keepdims=1),
        helper.make_node("ReduceMean", ["d"], ["m2"], keepdims=1),
        helper.make_node("Mul", ["e", "m2"], ["e2"]),
        helper.make_node("Concat", ["s1", "s2"], ["cat"], axis=1),
        helper.make_node("Add", ["cat", "m1"], ["sum"]),
        helper.make_node("HardSigmoid", ["e2"], ["hs"], alpha=0.3),
        helper.make_node("ReduceSum", ["hs", "ax"], ["hs2"], keepdims=1),
        helper.make_node("Mul", ["sum", "hs2"], ["y"]),
    ]
    inits = [
        _init("sizes", np.array([2, 3], np.int64)),
        _init("st", np.array([-1, 1], np.int64)),
        _init("en", np.array([-100, 6], np.int64)),
        _init("ax", np.array([2, 3], np.int64)),
        _init("sp", np.array([-2, 2], np.int64)),
        _init("st2", np.array([4, 0], np.int64)),
        _init("en2", np.array([100, 3], np.int64)),
    ]
    model = _helper_model(nodes, inits, (2, 5, 9, 7), opset=18)
    _assert_matches_ort(model, RNG.standard_normal((2, 5, 9, 7)).astype(np.float32))


def test_resize_nearest_modes_match_onnxruntime() -> None:
    nodes = [
        helper.make_node(
            "Resize", ["x", "", "sc"], ["a"], mode="nearest",
            coordinate_transformation_mode="asymmetric", nearest_mode="floor",
        ),
        helper.make_node(
            "Resize", ["x", "", "", "sz"], ["b"], mode="nearest",
            coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor",
        ),
        helper.make_node(
            "Resize", ["x", "", "", "sz"], ["c"], mode="linear",
            coordinate_transformation_mode="pytorch_half_pixel",
        ),
        helper.make_node("ReduceMean", ["a"], ["am"], keepdims=1),
        helper.make_node("Add", ["b", "am"], ["bc"]),
        helper.make_node("Add", ["bc", "c"], ["y"]),
    ]  # fmt: skip
    inits = [
        _init("sc", np.array([1, 1, 2, 3], np.float32)),
        _init("sz", np.array([2, 3, 7, 5], np.int64)),
    ]
    model = _helper_model(nodes, inits, (2, 3, 4, 3), opset=18)
    _assert_matches_ort(model, RNG.standard_normal((2, 3, 4, 3)).astype(np.float32))


try:
    from tests.corpus import CORPUS
    from tests.corpus.fixtures import corpus_model  # noqa: F401  (session fixture)
except ImportError:  # the corpus helper's package has not landed
    CORPUS = {}


@pytest.mark.skipif(not CORPUS, reason="tests/corpus has not landed yet")
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_matches_onnxruntime_on_corpus(name: str, corpus_model) -> None:  # noqa: F811
    model = onnx.load(str(corpus_model(name)))
    feeds = {}
    init_names = {t.name for t in model.graph.initializer}
    for graph_input in model.graph.input:
        if graph_input.name in init_names:
            continue
        dims = [d.dim_value or 2 for d in graph_input.type.tensor_type.shape.dim]
        feeds[graph_input.name] = RNG.standard_normal(dims).astype(np.float32)
    module = OnnxModule(model).eval()  # every corpus op must be supported
    expected = _ort(model, feeds)
    with torch.no_grad():
        got = module(*[torch.from_numpy(v) for v in feeds.values()])
    got = got if isinstance(got, tuple) else (got,)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g.numpy(), e, atol=1e-4, rtol=1e-4)


# -- training behaviour ------------------------------------------------------------------


def test_gradients_reach_every_trainable_initializer() -> None:
    torch.manual_seed(0)
    model = _export(DepthwiseSE(), torch.randn(2, 3, 12, 12))
    helper_model = _misc_model()
    for onnx_model, shape in ((model, (2, 3, 12, 12)), (helper_model, (2, 3, 10, 10))):
        module = OnnxModule(onnx_model).train()
        out = module(torch.randn(*shape))
        (out * torch.randn_like(out)).sum().backward()
        params = dict(module.params.items())
        assert params, "no trainable initializers found"
        for onnx_name in module.initializer_names("param"):
            grad = module.tensor(onnx_name).grad
            assert grad is not None and float(grad.abs().sum()) > 0, onnx_name
    # BN running statistics and shape constants are buffers, not parameters.
    misc = OnnxModule(helper_model)
    assert set(misc.initializer_names("param")) == {
        "w0", "g", "b", "ig", "ib", "one", "shift", "gw", "gb"
    }  # fmt: skip
    assert {"m", "v", "pads", "axes23", "lo", "hi", "two"} <= set(misc.initializer_names("buffer"))


def test_batchnorm_train_mode_updates_running_stats_like_torch() -> None:
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.1))
    _randomize_bn(reference)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            reference, (torch.randn(2, 3, 8, 8),), buffer, dynamo=False,
            training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
            input_names=["x"], dynamic_axes={"x": {0: "n"}},
        )  # fmt: skip
    model = onnx.load_from_string(buffer.getvalue())
    assert any(n.op_type == "BatchNormalization" for n in model.graph.node)
    bn_node = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    with torch.no_grad():  # exporting ran a training-mode forward: restore the stored stats
        reference[1].running_mean.copy_(torch.from_numpy(stored[bn_node.input[3]].copy()))
        reference[1].running_var.copy_(torch.from_numpy(stored[bn_node.input[4]].copy()))
    frozen = OnnxModule(model, train_bn=False).train()
    x = torch.randn(6, 3, 8, 8)
    reference.eval()
    # Frozen BN ignores the batch statistics even in train() mode.
    np.testing.assert_allclose(frozen(x).detach().numpy(), reference(x).detach().numpy(), atol=1e-4)
    module = OnnxModule(model, train_bn=True).train()
    reference.train()
    np.testing.assert_allclose(module(x).detach().numpy(), reference(x).detach().numpy(), atol=1e-4)
    np.testing.assert_allclose(
        module.tensor(bn_node.input[3]).numpy(), reference[1].running_mean.numpy(), atol=1e-5
    )
    np.testing.assert_allclose(
        module.tensor(bn_node.input[4]).numpy(), reference[1].running_var.numpy(), atol=1e-5
    )


def test_write_back_keeps_structure_and_values() -> None:
    torch.manual_seed(0)
    model = _export(TinyResNet(), torch.randn(2, 3, 16, 16))
    module = OnnxModule(model)
    first = module.initializer_names("param")[0]
    module.set_initializer(first, module.tensor(first).detach() * 2.0)
    written = write_back(module, model)
    onnx.checker.check_model(written, full_check=True)
    assert [(n.name, n.op_type, list(n.input), list(n.output)) for n in written.graph.node] == [
        (n.name, n.op_type, list(n.input), list(n.output)) for n in model.graph.node
    ]
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in written.graph.initializer}
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert after[name].shape == value.shape and after[name].dtype == value.dtype
        factor = 2.0 if name == first else 1.0
        np.testing.assert_allclose(after[name], value * factor, rtol=1e-6)
    # The written-back model runs in onnxruntime exactly like the module.
    x = RNG.standard_normal((2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(
            _ort(written, {"x": x})[0], module.eval()(torch.from_numpy(x)).numpy(), atol=1e-4
        )


def test_unsupported_op_error_names_node_and_op() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="stem_conv"),
        helper.make_node("LpNormalization", ["c"], ["y"], name="weird_norm"),
    ]
    model = _helper_model(nodes, [_init("w", np.ones((2, 3, 1, 1), np.float32))], (1, 3, 4, 4))
    with pytest.raises(UnsupportedOpError) as info:
        OnnxModule(model)
    message = str(info.value)
    assert "weird_norm" in message and "LpNormalization" in message
    assert "least-squares" in message


@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_resize_on_nhwc_axes_matches_onnxruntime(mode: str) -> None:
    nodes = [
        helper.make_node(
            "Resize", ["x", "", "sc"], ["y"], mode=mode,
            coordinate_transformation_mode="half_pixel",
        )
    ]  # fmt: skip
    inits = [_init("sc", np.array([1, 2, 1.5, 1], np.float32))]
    model = _helper_model(nodes, inits, (2, 4, 6, 3), opset=18)
    _assert_matches_ort(model, RNG.standard_normal((2, 4, 6, 3)).astype(np.float32))


def test_a_node_failing_on_a_baked_in_batch_names_the_node_and_the_shapes() -> None:
    # A fixed-batch export's head: Reshape to the constant [1, 40] (what torch writes for
    # x.view(x.size(0), -1) at batch 1); a batch of 4 cannot run through it.
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], "head/Reshape")],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 40])],
        [numpy_helper.from_array(np.array([1, 40], dtype=np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    module = OnnxModule(model).eval()
    assert module(torch.zeros(1, 10, 4)).shape == (1, 40)
    with pytest.raises(OnnxPruneError, match=r"node 'head/Reshape' \(Reshape\) .* \[4, 10, 4\]"):
        module(torch.zeros(4, 10, 4))

"""Hierarchical computational graph: level 0, motifs, levels, determinism, PyG export."""

from __future__ import annotations

import io
import random
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from onnxprune.errors import OnnxPruneError
from onnxprune.hgraph import EDGE_DIM, NODE_DIM, NODE_FEATURES, OP_VOCAB, build_hierarchy
from onnxprune.model import load_model
from tests.conftest import EXAMPLES

# ---- tiny torch models (exported with the TorchScript exporter: fast and deterministic) -------


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.body = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        out = self.body(x)
        return x + out if self.use_res else out


class TinyMobileNetV2(nn.Module):
    """Stem + 9 inverted-residual blocks (7 with a residual Add, 2 strided without)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6()
        )
        cfg = [(8, 8, 1)] * 3 + [(8, 16, 2)] + [(16, 16, 1)] * 2 + [(16, 24, 2)] + [(24, 24, 1)] * 2
        self.blocks = nn.Sequential(*[InvertedResidual(a, b, s) for a, b, s in cfg])
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(),
            nn.Conv2d(cin, 2 * growth, 1, bias=False),
            nn.BatchNorm2d(2 * growth),
            nn.ReLU(),
            nn.Conv2d(2 * growth, growth, 3, 1, 1, bias=False),
        )

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class TinyDenseNet(nn.Module):
    """Two dense blocks of 3 layers (BN-ReLU-Conv1x1-BN-ReLU-Conv3x3, concat) + transition."""

    def __init__(self, growth: int = 4, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, 8, 3, 1, 1, bias=False)]
        channels = 8
        for block in range(2):
            for _ in range(layers):
                mods.append(DenseLayer(channels, growth))
                channels += growth
            if block == 0:
                mods += [
                    nn.BatchNorm2d(channels),
                    nn.ReLU(),
                    nn.Conv2d(channels, channels // 2, 1, bias=False),
                    nn.AvgPool2d(2),
                ]
                channels //= 2
        self.features = nn.Sequential(*mods)
        self.head = nn.Linear(channels, 10)

    def forward(self, x):
        return self.head(torch.relu(self.features(x)).mean((2, 3)))


def export_torch(module: nn.Module, image: int = 16) -> onnx.ModelProto:
    module.eval()
    torch.manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.randn(1, 3, image, image),),
            buf,
            dynamo=False,
            opset_version=18,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}},
        )
    return onnx.shape_inference.infer_shapes(onnx.load_from_string(buf.getvalue()))


def relabel_and_shuffle(model: onnx.ModelProto, seed: int = 3) -> onnx.ModelProto:
    """Rename every tensor and node, and permute the node order of the file."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    names: dict[str, str] = {}
    rng = random.Random(seed)
    pool = list(range(100000))
    rng.shuffle(pool)

    def new(name: str) -> str:
        if not name:
            return name
        if name not in names:
            names[name] = f"t{pool[len(names)]}"
        return names[name]

    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        vi.name = new(vi.name)
    for init in graph.initializer:
        init.name = new(init.name)
    for node in graph.node:
        node.name = f"n{rng.randrange(10**9)}"
        for i, t in enumerate(node.input):
            node.input[i] = new(t)
        for i, t in enumerate(node.output):
            node.output[i] = new(t)
    nodes = list(graph.node)
    rng.shuffle(nodes)
    del graph.node[:]
    graph.node.extend(nodes)
    return out


@pytest.fixture(scope="module")
def resnet56() -> onnx.ModelProto:
    path = EXAMPLES / "resnet56.onnx"
    if not path.exists():
        pytest.skip("examples/cifar_resnet/resnet56.onnx not exported yet")
    return load_model(path)


@pytest.fixture(scope="module")
def resnet20() -> onnx.ModelProto:
    path = EXAMPLES / "resnet20.onnx"
    if not path.exists():
        pytest.skip("examples/cifar_resnet/resnet20.onnx not exported yet")
    return load_model(path)


# ---- ResNet-56 -------------------------------------------------------------------------------


def test_resnet56_level1_finds_the_27_residual_blocks(resnet56):
    hierarchy = build_hierarchy(resnet56)
    level0 = hierarchy.levels[0]
    # 55 Conv(+BN) + 55 Relu + 27 Add + 4 Slice + 2 Pad + ReduceMean + Reshape + Gemm = 146 ops,
    # one extra edge per residual Add: 173 edges between 147 feature maps.
    assert (level0.number_of_nodes(), level0.number_of_edges()) == (147, 173)
    assert len(hierarchy.ops) == 146
    motifs = hierarchy.motifs_at(1)
    assert sum(len(m.instances) for m in motifs) == 27
    assert sorted(len(m.instances) for m in motifs) == [2, 25]
    plain = next(m for m in motifs if len(m.instances) == 25)
    assert plain.ops == ("Conv", "Relu", "Conv", "Add")
    down = next(m for m in motifs if len(m.instances) == 2)
    assert sorted(down.ops) == sorted(["Slice", "Slice", "Pad", "Conv", "Relu", "Conv", "Add"])
    level1 = hierarchy.levels[1]
    assert all(d <= 1 for _, d in level1.in_degree()) and all(
        d <= 1 for _, d in level1.out_degree()
    )
    # 27 motif edges + stem Conv/Relu + 27 Relu + ReduceMean/Reshape/Gemm = 59 edges
    assert level1.number_of_edges() == 59
    # the higher levels group runs of blocks into stages
    assert hierarchy.to_dict()["levels"][0] == {
        "level": 0,
        "nodes": 147,
        "edges": 173,
        "motifs": [],
    }
    text = str(hierarchy)
    assert "M0 x25" in text and "level 1: 60 nodes, 59 edges (chain)" in text


def test_max_region_caps_candidates_and_says_so(resnet56):
    hierarchy = build_hierarchy(resnet56, max_region_ops=4)
    assert [len(m.instances) for m in hierarchy.motifs_at(1)] == [25]
    assert any("larger than 4 ops" in note for note in hierarchy.notes)
    with pytest.raises(OnnxPruneError, match="max_region_ops"):
        build_hierarchy(resnet56, max_region_ops=1)


# ---- other architectures ---------------------------------------------------------------------


def test_mobilenetv2_blocks_are_found():
    hierarchy = build_hierarchy(export_torch(TinyMobileNetV2()))
    level1 = hierarchy.motifs_at(1)
    assert len(level1) == 1
    assert level1[0].ops == ("Conv", "Clip", "DepthwiseConv", "Clip", "Conv", "Add")
    assert len(level1[0].instances) == 7  # the residual blocks
    # the two strided blocks (no residual) are found as part of a repeated run one level up
    level2 = hierarchy.motifs_at(2)
    assert len(level2) == 1 and len(level2[0].instances) == 2
    assert level2[0].ops.count("DepthwiseConv") == 1 and level2[0].ops.count("M0") == 2


def test_densenet_layers_are_found():
    hierarchy = build_hierarchy(export_torch(TinyDenseNet()))
    level1 = hierarchy.motifs_at(1)
    assert len(level1) == 1
    assert level1[0].ops == ("BN", "Relu", "Conv", "Relu", "Conv", "Concat")
    assert len(level1[0].instances) == 6
    assert [len(m.instances) for m in hierarchy.motifs_at(2)] == [2]  # the two dense blocks


def _plain_model() -> onnx.ModelProto:
    """input -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm (nothing repeats)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(5, 4)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return onnx.shape_inference.infer_shapes(model)


def test_model_without_repetition_has_one_level():
    hierarchy = build_hierarchy(_plain_model())
    assert len(hierarchy.levels) == 1 and hierarchy.motifs == []
    assert hierarchy.to_dict() == {"levels": [{"level": 0, "nodes": 6, "edges": 5, "motifs": []}]}
    assert any("single level" in note for note in hierarchy.notes)
    tensors = hierarchy.to_pyg()
    assert len(tensors) == 1 and tuple(tensors[0].edge_index.shape) == (2, 5)


def test_level0_coarsening_and_constant_subgraphs():
    """Conv+Mul+Add fuse into one Conv edge; a standalone Mul/Add chain is one BN edge;
    Identity is transparent; Shape/Constant subgraphs disappear."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "w"),
        numpy_helper.from_array(np.ones((1, 4, 1, 1), np.float32), "scale"),
        numpy_helper.from_array(np.zeros((1, 4, 1, 1), np.float32), "shift"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Mul", ["c", "scale"], ["m"]),
        helper.make_node("Add", ["m", "shift"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Identity", ["r"], ["i"]),
        helper.make_node("Mul", ["scale", "i"], ["m2"]),  # constant operand first
        helper.make_node("Add", ["m2", "shift"], ["a2"]),
        helper.make_node("Add", ["a2", "r"], ["s"]),  # residual: two activations, not affine
        helper.make_node("Shape", ["s"], ["shape"]),
        helper.make_node("Reshape", ["s", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "coarse",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        inits,
    )
    model = onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    )
    hierarchy = build_hierarchy(model)
    categories = [op.category for op in hierarchy.ops]
    assert categories == ["Conv", "Relu", "BN", "Add", "Reshape/Flatten"]
    conv = hierarchy.ops[0]
    assert conv.onnx_ops == ("Conv", "Mul", "Add")
    assert conv.macs == 4 * 3 * 16 and conv.params == 12 + 4 + 4
    assert sorted(hierarchy.levels[0].nodes) == ["a", "a2", "r", "s", "x", "y"]


# ---- determinism and PyG export --------------------------------------------------------------


def test_relabel_and_reorder_give_the_same_hierarchy(resnet20):
    first = build_hierarchy(resnet20)
    second = build_hierarchy(relabel_and_shuffle(resnet20))
    assert first.to_dict() == second.to_dict()
    assert [m.ops for m in first.motifs] == [m.ops for m in second.motifs]
    for a, b in zip(first.to_pyg(), second.to_pyg(), strict=True):
        assert torch.equal(a.x, b.x)
        assert torch.equal(a.edge_index, b.edge_index)
        assert torch.equal(a.edge_attr, b.edge_attr)
        assert torch.equal(a.edge_motif, b.edge_motif)
        assert torch.equal(a.inst_edge_index, b.inst_edge_index)


def test_to_pyg_shapes_and_keep_ratio_update(resnet20):
    from onnxprune.deps import analyze

    analysis = analyze(resnet20)
    hierarchy = build_hierarchy(resnet20, analysis)
    levels = hierarchy.to_pyg()
    level0 = levels[0]
    assert level0.x.shape == (level0.num_nodes, NODE_DIM)
    assert level0.edge_attr.shape == (level0.num_edges, EDGE_DIM)
    # every primitive edge has exactly one op category; MACs shares add up to 1
    one_hot = level0.edge_attr[:, : len(OP_VOCAB)]
    per_op = {int(op): one_hot[j] for j, op in enumerate(level0.edge_op)}
    assert all(float(v.sum()) == 1.0 for v in per_op.values())
    macs_col = len(OP_VOCAB) + 3
    macs = {int(op): float(level0.edge_attr[j, macs_col]) for j, op in enumerate(level0.edge_op)}
    assert sum(macs.values()) == pytest.approx(1.0, abs=1e-5)

    group = hierarchy.prunable_group_ids[0]
    updated = hierarchy.to_pyg({group: 0.25})
    keep = NODE_FEATURES.index("keep_ratio")
    names = level0.node_names
    in_group = [i for i, n in enumerate(names) if hierarchy.tensor_groups.get(n) == [group]]
    assert in_group, "the first prunable group has feature maps in level 0"
    assert torch.all(updated[0].x[in_group, keep] == 0.25)
    others = [
        i for i in range(len(names)) if group not in hierarchy.tensor_groups.get(names[i], [])
    ]
    assert torch.equal(updated[0].x[others], level0.x[others])
    assert torch.equal(updated[0].edge_index, level0.edge_index)
    with pytest.raises(OnnxPruneError, match="group 9999"):
        hierarchy.to_pyg({9999: 0.5})
    with pytest.raises(OnnxPruneError, match="prunable groups"):
        hierarchy.to_pyg(np.ones(len(hierarchy.prunable_group_ids) + 1))
    # without an analysis, group features are -1 / 0
    plain = build_hierarchy(resnet20).to_pyg()[0]
    assert torch.all(plain.x[:, keep] == -1.0)

"""m-GNN (eq. 4, 5, multi-stage) and the AGMC GCN encoder."""

from __future__ import annotations

import onnx
import pytest
import torch

from onnxprune.hgraph import build_hierarchy
from onnxprune.model import load_model
from onnxprune.rl import AttentionPooling, GCNEncoder, MGNNConv, MultiStageGNN
from tests.conftest import EXAMPLES, make_tiny_cnn
from tests.test_hgraph import relabel_and_shuffle


@pytest.fixture(scope="module")
def resnet20() -> onnx.ModelProto:
    path = EXAMPLES / "resnet20.onnx"
    if not path.exists():
        pytest.skip("examples/cifar_resnet/resnet20.onnx not exported yet")
    return load_model(path)


@pytest.fixture(scope="module")
def resnet20_analysed(resnet20):
    from onnxprune.deps import analyze

    analysis = analyze(resnet20)
    return analysis, build_hierarchy(resnet20, analysis)


def test_mgnnconv_is_equation_4_by_hand():
    torch.manual_seed(0)
    conv = MGNNConv(4)
    x = torch.randn(3, 4)
    edge_index = torch.tensor([[0, 1, 0], [2, 2, 1]])
    e = torch.randn(3, 4)
    out = conv(x, edge_index, e)
    weight, bias = conv.lin.weight.detach().clone(), conv.lin.bias.detach().clone()
    expected_2 = weight @ ((x[0] * e[0] + x[1] * e[1]) / 2) + bias  # c_2 = 2 incoming edges
    expected_1 = weight @ (x[0] * e[2]) + bias  # c_1 = 1
    torch.testing.assert_close(out[2], expected_2)
    torch.testing.assert_close(out[1], expected_1)
    torch.testing.assert_close(out[0], bias)  # no incoming edge
    conv.reset_parameters()
    assert not torch.equal(conv.lin.weight, weight)


def test_attention_pooling_is_a_convex_combination_per_graph():
    torch.manual_seed(0)
    pool = AttentionPooling(3)
    h = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    batch = torch.tensor([0, 0, 1, 1])
    out = pool(h, batch, 2)
    torch.testing.assert_close(out[0], torch.tensor([1.0, 2.0, 3.0]))  # identical nodes
    assert float(out[1].sum().detach()) == pytest.approx(5.0, abs=1e-5)  # weights sum to 1
    assert 0.0 < float(out[1, 0].detach()) < 5.0


def test_same_embedding_after_relabel_and_reorder(resnet20):
    first = MultiStageGNN(build_hierarchy(resnet20), seed=1)
    second = MultiStageGNN(build_hierarchy(relabel_and_shuffle(resnet20)), seed=1)
    g1, _ = first()
    g2, _ = second()
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=0)


def test_group_embeddings_after_relabel_and_reorder(resnet20, resnet20_analysed):
    from onnxprune.deps import analyze

    analysis, hierarchy = resnet20_analysed
    other = relabel_and_shuffle(resnet20)
    other_h = build_hierarchy(other, analyze(other))
    assert len(other_h.prunable_group_ids) == len(hierarchy.prunable_group_ids)

    # group ids depend on the analysis; identify groups by their first canonical feature map
    def ratios_and_keys(h):
        keys = [min(nodes) for nodes in h.group_level0_nodes()]
        return {g: 0.3 + 0.01 * k for g, k in zip(h.prunable_group_ids, keys, strict=True)}, keys

    ratios1, keys1 = ratios_and_keys(hierarchy)
    ratios2, keys2 = ratios_and_keys(other_h)
    assert sorted(keys1) == sorted(keys2)
    g1, e1 = MultiStageGNN(hierarchy, seed=2)(ratios1)
    g2, e2 = MultiStageGNN(other_h, seed=2)(ratios2)
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=0)
    e2_by_key = {k: e2[i] for i, k in enumerate(keys2)}
    for i, k in enumerate(keys1):
        torch.testing.assert_close(e1[i], e2_by_key[k], atol=1e-6, rtol=0)


def test_isomorphic_motif_instances_get_identical_embeddings():
    path = EXAMPLES / "resnet56.onnx"
    if not path.exists():
        pytest.skip("examples/cifar_resnet/resnet56.onnx not exported yet")
    hierarchy = build_hierarchy(load_model(path))
    out = MultiStageGNN(hierarchy, seed=0).embed()
    block = next(m for m in hierarchy.motifs_at(1) if len(m.instances) == 25)
    embeddings = out.instance_emb[[inst.index for inst in block.instances]].detach()
    distinct = torch.unique(torch.round(embeddings, decimals=5), dim=0)
    # identical structure and features within a stage, different widths across the 3 stages
    assert distinct.shape[0] == 3
    assert out.g.shape == (64,) and out.node_emb.shape == (147, 64)


def test_gradients_reach_every_parameter(resnet20_analysed):
    _, hierarchy = resnet20_analysed
    encoder = MultiStageGNN(hierarchy, hidden=16, seed=0)
    g, group_emb = encoder({hierarchy.prunable_group_ids[0]: 0.5})
    (g.sum() + group_emb.pow(2).sum()).backward()
    for name, param in encoder.named_parameters():
        assert param.grad is not None, name
        assert float(param.grad.abs().sum()) > 0.0, name


def test_seed_controls_the_parameters(resnet20_analysed):
    _, hierarchy = resnet20_analysed
    state = torch.random.get_rng_state()
    a = MultiStageGNN(hierarchy, seed=5)()
    b = MultiStageGNN(hierarchy, seed=5)()
    c = MultiStageGNN(hierarchy, seed=6)()
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.allclose(a[0], c[0])


def test_keep_ratios_change_the_embedding(resnet20_analysed):
    analysis, hierarchy = resnet20_analysed
    encoder = MultiStageGNN(hierarchy, seed=0)
    g_full, groups_full = encoder()
    assert groups_full.shape == (len(analysis.prunable_groups()), 64)
    g_half, _ = encoder({hierarchy.prunable_group_ids[1]: 0.5})
    assert not torch.allclose(g_full, g_half)


def test_gcn_layer_graph_by_hand():
    model = onnx.shape_inference.infer_shapes(make_tiny_cnn())
    hierarchy = build_hierarchy(model)
    encoder = GCNEncoder(hierarchy, hidden=8, seed=0)
    # conv1 -> conv2 -> gemm through Relu / pooling / flatten only
    assert len(encoder.layer_ops) == 3
    assert encoder.layer_edges == [(0, 1), (1, 2)]
    g, group_emb = encoder()
    assert g.shape == (8,) and group_emb.shape == (0, 8)
    g.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())


def test_gcn_encoder_groups_and_seed(resnet20_analysed):
    analysis, hierarchy = resnet20_analysed
    encoder = GCNEncoder(hierarchy, seed=3)
    g, group_emb = encoder()
    assert len(encoder.layer_ops) == 20  # 19 convs + the classifier
    assert group_emb.shape == (len(analysis.prunable_groups()), 64)
    assert float(group_emb.detach().abs().sum(dim=1).min()) > 0.0  # every group touches a layer
    again, _ = GCNEncoder(hierarchy, seed=3)()
    assert torch.equal(g, again)
    changed, _ = encoder({hierarchy.prunable_group_ids[0]: 0.25})
    assert not torch.allclose(g, changed)


def test_batched_embedding_equals_one_state_at_a_time(resnet20_analysed):
    # A DDPG update embeds its whole batch in one call (embed_many): the same values as
    # embedding each state alone, and gradients through both paths agree.
    analysis, hierarchy = resnet20_analysed
    gnn = MultiStageGNN(hierarchy, hidden=16, seed=0)
    groups = hierarchy.prunable_group_ids
    generator = torch.Generator().manual_seed(0)
    states = [torch.rand(len(groups), generator=generator) for _ in range(5)]
    many = gnn.embed_many(states)
    assert many.g.shape == (5, 16) and many.group_emb.shape == (5, len(groups), 16)
    for i, state in enumerate(states):
        one = gnn.embed(state)
        for field in ("g", "group_emb", "node_emb", "instance_emb"):
            torch.testing.assert_close(getattr(many, field)[i], getattr(one, field))
    # the states differ, so their embeddings do (the batch is not one state repeated)
    assert not torch.allclose(many.g[0], many.g[1])
    loss_many = gnn.embed_many(states).g.sum()
    grads_many = torch.autograd.grad(loss_many, list(gnn.parameters()), allow_unused=True)
    loss_one = sum(gnn.embed(state).g.sum() for state in states)
    grads_one = torch.autograd.grad(loss_one, list(gnn.parameters()), allow_unused=True)
    for a, b in zip(grads_many, grads_one, strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

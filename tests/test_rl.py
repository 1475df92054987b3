"""DDPG, replay buffer and noise: seeded determinism and a toy problem with a known optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onnxprune.errors import OnnxPruneError
from onnxprune.rl.buffer import ReplayBuffer
from onnxprune.rl.ddpg import DDPG, DDPGConfig, FlatEncoder, MLPEncoder
from onnxprune.rl.noise import TruncatedNormalNoise

TARGET = np.array([0.2, 0.7, 0.5, 0.9], dtype=np.float32)


def _group_features(record: np.ndarray) -> torch.Tensor:
    # 4 groups, each with a one-hot identity plus the shared record: [4, 5]
    eye = torch.eye(4)
    return torch.cat([eye, torch.as_tensor(record, dtype=torch.float32).expand(4, 1)], dim=1)


def _train_toy(
    encoder: str, seed: int, episodes: int = 200, updates: int = 5, critic: str = "joint"
) -> tuple[DDPG, np.ndarray]:
    config = DDPGConfig(
        hidden=64, lr_actor=1e-3, lr_critic=3e-3, batch_size=64, tau=0.05, critic=critic
    )
    if encoder == "mlp":
        factory, observe = (lambda: MLPEncoder(5, 16)), _group_features
    else:
        factory = FlatEncoder
        observe = lambda record: torch.as_tensor(record, dtype=torch.float32)  # noqa: E731
    record = np.array([1.0], dtype=np.float32)
    agent = DDPG(factory, observe, record, n_actions=4, config=config, seed=seed)
    noise = TruncatedNormalNoise(sigma=0.5, decay=0.99, seed=seed)
    for episode in range(episodes):
        if episode < 30:
            action = noise.uniform(4)
        else:
            action = noise.sample(agent.act(record))
            noise.step()
        reward = -float(np.sum((action - TARGET) ** 2))
        agent.remember(record, action, reward, None, True)
        if episode >= 30:
            for _ in range(updates):
                agent.update()
    return agent, agent.act(record)


@pytest.mark.parametrize("encoder", ["mlp", "flat"])
def test_ddpg_learns_known_optimum(encoder: str) -> None:
    _, action = _train_toy(encoder, seed=0, episodes=250)
    # sigmoid heads approach 0.9 slowly; a uniform random policy scores about -0.33
    np.testing.assert_allclose(action, TARGET, atol=0.12)
    assert -float(np.sum((action - TARGET) ** 2)) > -0.02


def test_per_group_critic_learns_known_optimum() -> None:
    agent, action = _train_toy("mlp", seed=0, episodes=250, critic="per-group")
    assert agent.critic.per_group
    np.testing.assert_allclose(action, TARGET, atol=0.12)


def test_per_group_critic_is_a_mean_of_group_terms() -> None:
    config = DDPGConfig(hidden=16, critic="per-group")
    record = np.array([1.0], dtype=np.float32)
    agent = DDPG(lambda: MLPEncoder(5, 8), _group_features, record, 4, config, seed=0)
    emb = agent.critic.embed(_group_features(record))
    assert emb.shape == (4, 16)  # [g, group_emb_i] per group
    action = torch.tensor([0.1, 0.2, 0.3, 0.4])
    terms = agent.critic.head(torch.cat([emb, action.unsqueeze(-1)], dim=-1)).squeeze(-1)
    q = agent.critic(_group_features(record), action)
    assert float(q) == pytest.approx(float(terms.mean()), rel=1e-6)
    # a flat encoder has no per-group embeddings: the critic falls back to the joint MLP
    flat = DDPG(FlatEncoder, lambda r: torch.as_tensor(r), record, 4, config, seed=0)
    assert not flat.critic.per_group


def test_ddpg_same_seed_same_policy() -> None:
    _, first = _train_toy("mlp", seed=3, episodes=60)
    _, second = _train_toy("mlp", seed=3, episodes=60)
    _, other = _train_toy("mlp", seed=4, episodes=60)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_ddpg_state_dict_roundtrip_continues_identically() -> None:
    agent, _ = _train_toy("mlp", seed=1, episodes=40)
    clone, _ = _train_toy("mlp", seed=99, episodes=31)
    clone.load_state_dict(agent.state_dict())
    for _ in range(5):
        a, b = agent.update(), clone.update()
        assert a == b
    np.testing.assert_array_equal(agent.act(np.ones(1)), clone.act(np.ones(1)))


def test_ddpg_bootstraps_non_terminal_transitions() -> None:
    config = DDPGConfig(hidden=16, batch_size=4)
    agent = DDPG(FlatEncoder, lambda r: torch.as_tensor(r), np.zeros(2), 1, config, seed=0)
    agent.remember(np.zeros(2), np.array([0.5]), 0.0, np.ones(2), False)
    losses = agent.update()
    assert np.isfinite(losses["critic_loss"]) and agent.n_updates == 1


def test_ddpg_rejects_zero_actions() -> None:
    with pytest.raises(OnnxPruneError, match="prunable group"):
        DDPG(FlatEncoder, torch.as_tensor, np.zeros(2), 0)


def test_buffer_ring_and_seeded_sampling() -> None:
    buffer = ReplayBuffer(capacity=3, seed=7)
    for i in range(5):
        buffer.add(np.array([i]), np.array([i / 10]), float(i))
    assert len(buffer) == 3
    assert sorted(t.reward for t in buffer._items) == [2.0, 3.0, 4.0]
    other = ReplayBuffer(capacity=3, seed=7)
    other.load_state_dict(buffer.state_dict())
    assert [t.reward for t in buffer.sample(10)] == [t.reward for t in other.sample(10)]
    with pytest.raises(OnnxPruneError, match="empty"):
        ReplayBuffer(2).sample(1)


def test_noise_bounds_decay_and_seed() -> None:
    noise = TruncatedNormalNoise(sigma=0.5, decay=0.9, seed=1)
    samples = np.stack([noise.sample(np.array([0.0, 0.5, 1.0])) for _ in range(500)])
    assert samples.min() >= 0.0 and samples.max() <= 1.0
    # truncated at mu=0 -> mean of a half-normal: sigma * sqrt(2/pi) ~ 0.4 before truncation at 1
    assert 0.25 < samples[:, 0].mean() < 0.45
    assert abs(samples[:, 1].mean() - 0.5) < 0.05
    noise.step()
    noise.step()
    assert noise.sigma == pytest.approx(0.5 * 0.81)
    a = TruncatedNormalNoise(sigma=0.3, seed=5)
    b = TruncatedNormalNoise(sigma=0.3, seed=5)
    np.testing.assert_array_equal(a.sample(np.full(6, 0.4)), b.sample(np.full(6, 0.4)))
    with pytest.raises(OnnxPruneError, match="sigma"):
        TruncatedNormalNoise(sigma=0.0)


def test_amc_layer_state_features_and_rollout() -> None:
    from onnxprune.rl.amc import STATE_FEATURES, AMCState, layer_shapes, make_amc_agent, propose
    from tests.conftest import make_tiny_cnn

    model = make_tiny_cnn((8, 16), image=16)
    shapes = layer_shapes(model, [["conv1"], ["conv2"]], [8, 16])
    # conv1: 8 x 3, 3x3 stride 1 -> 16x16; conv2: 16 x 8, 3x3 stride 2 -> 8x8
    assert [(s.n, s.c, s.h, s.w, s.stride, s.k) for s in shapes] == [
        (8, 3, 16, 16, 1, 3),
        (16, 8, 8, 8, 2, 3),
    ]
    state = AMCState(shapes, np.array([0.4, 0.6]))
    first, second = state.vector(0, []), state.vector(1, [0.5])
    assert first.shape == (STATE_FEATURES,) and np.all((first >= 0) & (first <= 1))
    # [t, n, c, h, w, stride, k, FLOPs, reduced, rest, a_{t-1}], static part divided by max
    np.testing.assert_allclose(first, [0, 0.5, 3 / 8, 1, 1, 0.5, 1, 0.4 / 0.6, 0, 0.6, 0])
    np.testing.assert_allclose(second[7:], [1.0, 0.5 * 0.4, 0.0, 0.5])
    agent = make_amc_agent(state, seed=0)
    noise = TruncatedNormalNoise(sigma=0.3, seed=0)
    states, actions = propose(agent, state, noise, warmup=False)
    assert len(states) == 2 and actions.shape == (2,) and np.all((actions >= 0) & (actions <= 1))
    _, greedy = propose(agent, state, None, warmup=False)
    np.testing.assert_allclose(greedy[0], agent.act(state.vector(0, [])), rtol=1e-6)


def _twin_features(record: np.ndarray) -> torch.Tensor:
    # 4 groups with *identical* features (isomorphic subgraphs): [4, 2]
    return torch.as_tensor(np.tile(record, (4, 2)), dtype=torch.float32)


@pytest.mark.parametrize(
    ("head", "id_dim", "distinct"),
    [("per-group", 0, 1), ("per-group", 8, 4), ("global", 0, 4)],
)
def test_actor_head_separates_isomorphic_groups(head: str, id_dim: int, distinct: int) -> None:
    config = DDPGConfig(hidden=32, head=head, id_dim=id_dim)
    record = np.array([1.0], dtype=np.float32)
    agent = DDPG(lambda: MLPEncoder(2, 8), _twin_features, record, 4, config, seed=0)
    action = agent.act(record)
    assert action.shape == (4,)
    assert len(np.unique(np.round(action, 7))) == distinct
    assert agent.actor.per_group == (head == "per-group")


def test_global_head_learns_distinct_ratios_for_isomorphic_groups() -> None:
    # the per-group head without ids cannot give twins different ratios; eq. 7 (global) can
    config = DDPGConfig(hidden=64, lr_actor=1e-3, lr_critic=3e-3, tau=0.05, head="global")
    record = np.array([1.0], dtype=np.float32)
    agent = DDPG(lambda: MLPEncoder(2, 16), _twin_features, record, 4, config, seed=0)
    noise = TruncatedNormalNoise(sigma=0.5, decay=0.99, seed=0)
    for episode in range(250):
        action = noise.uniform(4) if episode < 30 else noise.sample(agent.act(record))
        if episode >= 30:
            noise.step()
        agent.remember(record, action, -float(np.sum((action - TARGET) ** 2)), None, True)
        if episode >= 30:
            for _ in range(5):
                agent.update()
    np.testing.assert_allclose(agent.act(record), TARGET, atol=0.12)


def test_unknown_actor_head_is_refused() -> None:
    with pytest.raises(OnnxPruneError, match="actor head must be one of per-group, global"):
        DDPG(
            lambda: MLPEncoder(2, 8),
            _twin_features,
            np.array([1.0]),
            4,
            DDPGConfig(head="attention"),
        )

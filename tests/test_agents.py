"""The agent protocol and registry on a real PruningEnv with a fake reward (no onnxruntime).

The fake evaluator scores a plan by how close its keep-ratios are to 0.6 (deterministic),
so every agent kind can be driven episode by episode in milliseconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from onnxprune.cost import PlanCost
from onnxprune.deps import analyze
from onnxprune.env import ActionGroup, PruningEnv
from onnxprune.errors import InternalError, OnnxPruneError
from onnxprune.rl.agents import (
    AGENT_REGISTRY,
    BASELINE_MOMENTUM,
    BUILTIN_AGENTS,
    Agent,
    AgentSetup,
    EpisodeOutcome,
    Proposal,
    agent_class,
    register_agent,
)
from onnxprune.rl.config import DDPGConfig, NoiseSettings
from onnxprune.search.strategy import parse_strategy
from tests.conftest import make_tiny_cnn

WIDTHS = (16, 24)
SIZES = dict(enumerate(WIDTHS))


@pytest.fixture(scope="module")
def analysis() -> Any:
    return analyze(make_tiny_cnn(WIDTHS))


def _fake_reward(kept: dict[int, int]) -> float:
    return -float(sum((count / SIZES[gid] - 0.6) ** 2 for gid, count in kept.items()))


def _env(analysis: Any, steps: int = 1) -> PruningEnv:
    groups = list(analysis.prunable_groups())
    cost = PlanCost(analysis.model, analysis.channel_exprs(), analysis.group_sizes())
    return PruningEnv(
        [ActionGroup(g.id, g.size, g.block_count) for g in groups],
        cost,
        _fake_reward,
        0.5,
        steps_per_episode=steps,
        round_to=2,
        min_channels=2,
    )


def _agent(name: str, analysis: Any, seed: int = 0, warmup: int = 2) -> tuple[Agent, PruningEnv]:
    kind = agent_class(name)
    env = _env(analysis, kind.env_steps(2))
    setup = AgentSetup(
        env,
        analysis,
        list(analysis.prunable_groups()),
        seed=seed,
        warmup=warmup,
        noise=NoiseSettings(sigma=0.4, decay=0.9),
        ddpg=DDPGConfig(hidden=16, batch_size=8, updates_per_episode=3),
        encoder_dim=8,
    )
    return kind.build(setup), env


def test_registry_names_the_builtin_agents() -> None:
    assert BUILTIN_AGENTS == ("gnn-rl", "agmc", "amc", "uniform", "random")
    assert all(AGENT_REGISTRY[name].name == name for name in BUILTIN_AGENTS)
    with pytest.raises(OnnxPruneError, match="unknown agent 'ppo'.*gnn-rl"):
        agent_class("ppo")
    with pytest.raises(InternalError, match="registered twice"):
        register_agent("random")(agent_class("uniform"))


def test_agent_hooks_replace_the_kind_switches() -> None:
    assert agent_class("uniform").schedule(40, 10) == (1, 0)
    assert agent_class("random").schedule(40, 10) == (40, 40)
    assert agent_class("gnn-rl").schedule(40, 10) == (40, 10)
    assert [agent_class(n).env_steps(3) for n in BUILTIN_AGENTS] == [3, 3, 1, 1, 1]
    assert [agent_class(n).warmup_phase for n in BUILTIN_AGENTS] == [True] * 3 + [False] * 2
    assert agent_class("random").resume_free_keys == ("warmup",)
    assert agent_class("amc").resume_free_keys == ()


@pytest.mark.parametrize("name", ["gnn-rl", "agmc", "amc"])
def test_ddpg_agents_warm_up_then_learn_with_decaying_noise(analysis: Any, name: str) -> None:
    agent, env = _agent(name, analysis, warmup=2)
    rewards, phases = [], []
    for episode in range(4):
        outcome = agent.run_episode(env, episode)
        assert isinstance(outcome, EpisodeOutcome) and outcome.result.done
        assert outcome.result.macs_fraction <= 0.5
        assert outcome.result.reward == _fake_reward(outcome.result.kept)
        rewards.append(outcome.result.reward)
        phases.append(outcome.phase)
    assert phases == ["warm-up", "warm-up", "explore", "explore"]
    ddpg = agent.ddpg
    assert ddpg.n_updates == 2 * 3  # updates_per_episode after each exploitation episode
    assert agent.noise.sigma == pytest.approx(0.4 * 0.9**2)  # decayed once per exploitation
    baseline = rewards[0]
    for reward in rewards[1:]:
        baseline = BASELINE_MOMENTUM * baseline + (1 - BASELINE_MOMENTUM) * reward
    assert agent.baseline == pytest.approx(baseline)
    # every step of an episode is stored as a terminal transition (at least one per episode)
    assert len(ddpg.buffer) >= 4
    assert all(t.done for t in ddpg.buffer.sample(len(ddpg.buffer)))


def test_random_and_uniform_agents(analysis: Any) -> None:
    uniform, env = _agent("uniform", analysis)
    first, second = uniform.run_episode(env, 0), uniform.run_episode(env, 1)
    assert first.phase == "uniform" and first.result.kept == second.result.kept
    assert second.result.cached and uniform.state_dict() == {}
    random_agent, env = _agent("random", analysis)
    plans = [random_agent.run_episode(env, e) for e in range(5)]
    assert {p.phase for p in plans} == {"random"}
    assert len({tuple(p.result.kept.values()) for p in plans}) > 1
    assert all(p.result.macs_fraction <= 0.5 for p in plans)


@pytest.mark.parametrize("name", ["gnn-rl", "agmc", "amc", "random"])
def test_state_dict_round_trip_gives_identical_next_proposals(analysis: Any, name: str) -> None:
    original, env = _agent(name, analysis, seed=3)
    for episode in range(3):
        original.run_episode(env, episode)
    state = original.state_dict()
    restored, fresh_env = _agent(name, analysis, seed=4)  # other seed: state must override it
    restored.load_state_dict(state)
    for episode in range(3, 6):
        a = original.run_episode(env, episode).result
        b = restored.run_episode(fresh_env, episode).result
        assert a.kept == b.kept and a.reward == b.reward


class GreedyConstant(Agent):
    """The smallest agent: always the same prune ratio for every group, never learns."""

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio

    @classmethod
    def build(cls, setup: AgentSetup) -> Agent:
        return cls(0.3)

    def propose(self, env: Any, episode: int) -> Proposal:
        env.reset()
        return Proposal(episode, "constant", env.step(np.full(env.n_actions, self.ratio), False))


@pytest.fixture
def greedy_constant() -> Any:
    register_agent("greedy-constant")(GreedyConstant)
    yield GreedyConstant
    del AGENT_REGISTRY["greedy-constant"]


def test_adding_an_agent_is_one_class_and_one_registry_line(
    analysis: Any, greedy_constant: Any
) -> None:
    strategy = parse_strategy(
        {"agent": "greedy-constant", "episodes": 3, "warmup": 0}, "g", "g.toml"
    )
    kind = agent_class(strategy.agent)
    assert kind is greedy_constant and kind.name == "greedy-constant"
    env = _env(analysis, kind.env_steps(strategy.steps_per_episode))
    agent = kind.build(AgentSetup(env, analysis, list(analysis.prunable_groups())))
    outcomes = [agent.run_episode(env, e) for e in range(strategy.episodes)]
    assert [o.result.cached for o in outcomes] == [False, True, True]
    assert outcomes[0].result.macs_fraction <= 0.5
    assert outcomes[0].result.reward == _fake_reward(outcomes[0].result.kept)
    assert "greedy-constant" not in BUILTIN_AGENTS


@pytest.mark.parametrize("name", ["gnn-rl", "amc"])
def test_a_round_proposes_from_one_actor_then_learns_in_proposal_order(
    analysis: Any, name: str
) -> None:
    agent, env = _agent(name, analysis, warmup=0)
    before = agent.ddpg.actor.state_dict()
    proposals = [agent.propose(env, episode) for episode in range(4)]
    # proposing leaves the policy alone; only the noise moves on (once per exploitation)
    assert agent.ddpg.n_updates == 0 and len(agent.ddpg.buffer) == 0
    after = agent.ddpg.actor.state_dict()
    assert all(bool((before[k] == after[k]).all()) for k in before)
    assert agent.noise.sigma == pytest.approx(0.4 * 0.9**4)
    assert all(np.isnan(p.result.reward) and p.result.done for p in proposals)
    assert [p.episode for p in proposals] == [0, 1, 2, 3]
    assert len({tuple(p.result.kept.values()) for p in proposals}) > 1  # independent draws
    rewards = [_fake_reward(p.result.kept) for p in proposals]
    agent.learn(proposals, rewards)
    assert agent.ddpg.n_updates == 4 * 3  # updates_per_episode for each of the 4
    baseline = rewards[0]
    for reward in rewards[1:]:
        baseline = BASELINE_MOMENTUM * baseline + (1 - BASELINE_MOMENTUM) * reward
    assert agent.baseline == pytest.approx(baseline)
    assert len(agent.ddpg.buffer) == sum(len(p.transitions) for p in proposals)


def test_round_sizes_per_kind() -> None:
    assert [agent_class(n).round_size(4) for n in BUILTIN_AGENTS] == [4, 4, 4, 1, 4]


@pytest.mark.parametrize("name", ["gnn-rl", "agmc"])
def test_actor_and_critic_of_a_batch_equal_one_state_at_a_time(analysis: Any, name: str) -> None:
    # DDPG updates encode a batch of states in one call where the encoder can (the m-GNN);
    # the actions and critic embeddings are those of encoding each state alone.
    agent, env = _agent(name, analysis, warmup=2)
    ddpg = agent.ddpg
    records = []
    for episode in range(3):
        records += [record for record, _ in agent.propose(env, episode).transitions]
    observations = [ddpg.observe(record) for record in records]
    with torch.no_grad():
        actions = ddpg.actor.forward_many(observations)
        embeddings = ddpg.critic.embed_many(observations)
        for i, obs in enumerate(observations):
            torch.testing.assert_close(actions[i], ddpg.actor(obs))
            torch.testing.assert_close(embeddings[i], ddpg.critic.embed(obs))
    assert actions.shape == (len(records), env.n_actions)

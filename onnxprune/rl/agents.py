"""Search agents behind one episode protocol, and the registry that names them.

The search loop reads ``for round: propose K candidates, evaluate them, learn`` and never
asks which agent it drives (after Stable-Baselines3's ``collect_rollouts`` + ``train``:
our reward arrives once, at the end of an episode, so a rollout is one proposal).

Contract of :class:`Agent`
--------------------------
A search runs in *rounds*: the agent proposes up to ``K`` candidates (the strategy's
``parallel``), all are evaluated (anywhere: in-process, a process pool, a Ray cluster),
then the agent learns from all of them in proposal order.

``propose(env, episode) -> Proposal``
    Calls ``env.reset()``, then ``env.step(action, evaluate=False)`` until a step says
    ``done``, and returns that last :class:`~onnxprune.env.StepResult` (reward not known
    yet) with a phase label and what the agent needs to learn from it. Proposing never
    changes what the agent has learned: the proposals of one round come from the same
    policy; only the exploration noise (drawn in proposal order from the seeded generator)
    moves on. ``episode`` is the 0-based index of the candidate in the search.
``learn(proposals, rewards)``
    Learns from a finished round (replay buffer, gradient steps), in proposal order.
``run_episode(env, episode) -> EpisodeOutcome``
    A round of one: ``propose``, ``env.evaluate``, ``learn``.
``state_dict() -> dict`` / ``load_state_dict(state)``
    Everything that decides future proposals (networks, optimisers, replay buffer, noise
    sigma and generator, reward baseline) as a deep copy: an agent restored from
    ``state_dict()`` proposes exactly what the original would have proposed next.
Class hooks (so that neither the loop, the checkpoint nor the report branch on the kind)
    ``build(setup)`` makes the agent from an :class:`AgentSetup`; ``schedule(episodes,
    warmup)`` fixes the episode schedule the kind needs; ``env_steps(steps)`` the pruning
    steps per episode it can use; ``round_size(parallel)`` the candidates per round it can
    propose; ``warmup_phase`` says whether the first ``warmup``
    episodes are random actions before a policy acts (the report shades them);
    ``resume_free_keys`` names strategy keys that ``schedule`` derives from the free
    episode count, so ``--resume`` may see them change.

Adding an agent is one class and one ``@register_agent("name")`` line; the name is then
valid as ``agent = "name"`` in a strategy file.

The DDPG agents (``gnn-rl``, ``agmc``, ``amc``) share one training protocol
(:class:`DDPGAgent`): ``warmup`` episodes of uniform random actions, then the actor's
action with truncated-normal noise whose sigma decays once per exploitation episode (paper
002, section 5). Every step of an episode is stored with the episode's final reward minus a
moving-average baseline (AMC, momentum :data:`BASELINE_MOMENTUM`) as a terminal transition,
so the critic regresses the Monte-Carlo return, and ``ddpg.updates_per_episode`` gradient
steps follow each exploitation episode. In a round of ``K`` the ``K`` rollouts come from the
same actor with independent noise draws; sigma still decays once per exploitation episode
(between the proposals), so the noise schedule is a function of the episode number; the
transitions are stored and the ``K * updates_per_episode`` gradient steps run after the
round, as Ape-X/distributed DDPG collect with a fixed policy between learner updates.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from onnxprune.errors import InternalError, OnnxPruneError
from onnxprune.rl.config import DDPGConfig, NoiseSettings

BASELINE_MOMENTUM = 0.95


@dataclass
class AgentSetup:
    """What an agent may be built from.

    ``env``: the :class:`~onnxprune.env.PruningEnv` it will act in; ``analysis``: the
    model's channel analysis (graph agents build the hierarchy from it, AMC its layer
    shapes); ``groups``: the ``ChannelGroup`` of each action, in action order.
    """

    env: Any
    analysis: Any
    groups: Sequence[Any]
    seed: int = 0
    warmup: int = 0
    noise: NoiseSettings = field(default_factory=NoiseSettings)
    ddpg: DDPGConfig = field(default_factory=DDPGConfig)
    encoder_dim: int = 64

    def __str__(self) -> str:
        return (
            f"agent setup: {len(self.groups)} groups, seed {self.seed}, {self.warmup} warm-up, "
            f"noise {self.noise}, encoder_dim {self.encoder_dim}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": [g.id for g in self.groups],
            "seed": self.seed,
            "warmup": self.warmup,
            "noise": self.noise.to_dict(),
            "ddpg": self.ddpg.to_dict(),
            "encoder_dim": self.encoder_dim,
        }


@dataclass
class EpisodeOutcome:
    """The last step of an episode (``result``) and how its actions were chosen (``phase``)."""

    result: Any
    phase: str

    def __str__(self) -> str:
        return f"{self.phase}: reward {self.result.reward:.4f}, kept {self.result.kept}"

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "result": self.result.to_dict()}


@dataclass
class Proposal:
    """One candidate of a round: the done step (``result``, its reward not yet evaluated),
    how its actions were chosen (``phase``) and the ``(state_record, action)`` pairs the
    agent remembers once the reward is known."""

    episode: int
    phase: str
    result: Any
    transitions: list[tuple[Any, np.ndarray]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"candidate {self.episode} ({self.phase}): kept {self.result.kept}"

    def to_dict(self) -> dict[str, Any]:
        return {"episode": self.episode, "phase": self.phase, "kept": dict(self.result.kept)}


class Agent(ABC):
    """The round protocol every search agent follows (see the module docstring)."""

    name: ClassVar[str] = ""
    warmup_phase: ClassVar[bool] = False
    resume_free_keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    @abstractmethod
    def build(cls, setup: AgentSetup) -> Agent:
        """A fresh, seeded agent for ``setup.env``."""

    @classmethod
    def schedule(cls, episodes: int, warmup: int) -> tuple[int, int]:
        """``(episodes, warmup)`` this kind runs when a strategy asks for these."""
        return episodes, warmup

    @classmethod
    def env_steps(cls, steps_per_episode: int) -> int:
        """Pruning steps per episode the environment should offer this kind."""
        return 1

    @classmethod
    def round_size(cls, parallel: int) -> int:
        """Candidates per round this kind proposes when a strategy asks for ``parallel``."""
        return parallel

    @abstractmethod
    def propose(self, env: Any, episode: int) -> Proposal:
        """Roll out one candidate without evaluating it (see the module docstring)."""

    def learn(self, proposals: Sequence[Proposal], rewards: Sequence[float]) -> None:
        """Learn from a finished round; an agent that never learns ignores it."""
        del proposals, rewards

    def run_episode(self, env: Any, episode: int) -> EpisodeOutcome:
        """Propose, evaluate (cached) and learn from one episode; returns its last step."""
        proposal = self.propose(env, episode)
        reward, cached = env.evaluate(proposal.result.kept)
        self.learn([proposal], [reward])
        return EpisodeOutcome(
            replace(proposal.result, reward=reward, cached=cached), proposal.phase
        )

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state  # a stateless agent has nothing to restore

    def __str__(self) -> str:
        return f"{type(self).__name__} ('{self.name}')"

    def to_dict(self) -> dict[str, Any]:
        return {"agent": self.name}


AGENT_REGISTRY: dict[str, type[Agent]] = {}


def register_agent(name: str) -> Callable[[type[Agent]], type[Agent]]:
    """Class decorator: make ``name`` a valid ``agent`` in strategy files."""

    def register(cls: type[Agent]) -> type[Agent]:
        if name in AGENT_REGISTRY and AGENT_REGISTRY[name] is not cls:
            raise InternalError(f"agent '{name}' is registered twice")
        cls.name = name
        AGENT_REGISTRY[name] = cls
        return cls

    return register


def agent_class(name: str) -> type[Agent]:
    """The registered agent class called ``name``."""
    if name not in AGENT_REGISTRY:
        raise OnnxPruneError(
            f"unknown agent '{name}'; use one of {', '.join(AGENT_REGISTRY)} in the strategy file"
        )
    return AGENT_REGISTRY[name]


def _noise(setup: AgentSetup) -> Any:
    from onnxprune.rl.noise import TruncatedNormalNoise

    return TruncatedNormalNoise(setup.noise.sigma, setup.noise.decay, seed=setup.seed)


class DDPGAgent(Agent):
    """The shared DDPG training protocol; subclasses only say how an episode is rolled out.

    ``_rollout(env, warm) -> (transitions, last_step)`` with ``transitions`` the
    ``(state_record, action)`` pairs to remember.
    """

    warmup_phase = True

    def __init__(self, ddpg: Any, noise: Any, warmup: int) -> None:
        self.ddpg = ddpg
        self.noise = noise
        self.warmup = warmup
        self.baseline: float | None = None

    @abstractmethod
    def _rollout(self, env: Any, warm: bool) -> tuple[list[tuple[Any, np.ndarray]], Any]: ...

    def propose(self, env: Any, episode: int) -> Proposal:
        warm = episode < self.warmup
        transitions, result = self._rollout(env, warm)
        if not warm:
            self.noise.step()  # once per exploitation episode, also inside a round
        return Proposal(episode, "warm-up" if warm else "explore", result, transitions)

    def learn(self, proposals: Sequence[Proposal], rewards: Sequence[float]) -> None:
        for proposal, reward in zip(proposals, rewards, strict=True):
            self.baseline = (
                reward
                if self.baseline is None
                else (BASELINE_MOMENTUM * self.baseline + (1 - BASELINE_MOMENTUM) * reward)
            )
            for record, action in proposal.transitions:
                self.ddpg.remember(record, action, reward - self.baseline, None, True)
        for proposal in proposals:
            if proposal.phase != "warm-up":
                self.ddpg.train()

    def state_dict(self) -> dict[str, Any]:
        return {
            "ddpg": self.ddpg.state_dict(),
            "noise": copy.deepcopy(self.noise.state_dict()),
            "baseline": self.baseline,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ddpg.load_state_dict(state["ddpg"])
        self.noise.load_state_dict(copy.deepcopy(state["noise"]))
        self.baseline = state["baseline"]


class GraphDDPGAgent(DDPGAgent):
    """DDPG whose actor and critic read the model graph through ``encoder_class()``; all
    ratios of a step come at once, and the env may split the budget into several steps."""

    @staticmethod
    @abstractmethod
    def encoder_class() -> type: ...

    @classmethod
    def env_steps(cls, steps_per_episode: int) -> int:
        return steps_per_episode

    @classmethod
    def build(cls, setup: AgentSetup) -> Agent:
        from onnxprune.hgraph import build_hierarchy

        hierarchy = build_hierarchy(setup.analysis.model, setup.analysis)
        ddpg = _graph_ddpg(cls.encoder_class(), hierarchy, setup)
        return cls(ddpg, _noise(setup), setup.warmup)

    def _rollout(self, env: Any, warm: bool) -> tuple[list[tuple[Any, np.ndarray]], Any]:
        record = env.reset()
        transitions = []
        while True:
            if warm:
                action = self.noise.uniform(env.n_actions)
            else:
                action = self.noise.sample(self.ddpg.act(record))
            transitions.append((record, action))
            result = env.step(action, evaluate=False)
            record = result.record
            if result.done:
                return transitions, result


def _graph_ddpg(encoder_cls: type, hierarchy: Any, setup: AgentSetup) -> Any:
    """DDPG over ``encoder_cls(hierarchy)``, whose rows are reordered to the action groups."""
    import torch

    from onnxprune.rl.ddpg import DDPG

    env = setup.env
    rows_of = {g: i for i, g in enumerate(hierarchy.prunable_group_ids)}
    missing = [g for g in env.group_ids if g not in rows_of]
    if missing:
        raise InternalError(
            f"the hierarchical graph does not know channel group(s) {missing[:5]}; "
            "cannot build the graph agent"
        )
    rows = torch.tensor([rows_of[g] for g in env.group_ids], dtype=torch.long)
    made = [0]  # actor and critic encoders get different, seeded initialisations

    class ActionGroupEncoder(torch.nn.Module):
        """``forward(keep_ratios) -> (g [D], group_emb [n_actions, D])`` in action order."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = encoder_cls(
                hierarchy, hidden=setup.encoder_dim, seed=setup.seed * 2 + made[0]
            )
            made[0] += 1

        def forward(self, keep_ratios: Any) -> tuple[Any, Any]:
            g, group_emb = self.inner(keep_ratios)
            return g, group_emb[rows]

        def forward_many(self, keep_ratios: list[Any]) -> tuple[Any, Any]:
            """Several states at once, when the encoder can (:meth:`MultiStageGNN.forward_many`)."""
            if not hasattr(self.inner, "forward_many"):
                pairs = [self.inner(ratios) for ratios in keep_ratios]
                return (torch.stack([g for g, _ in pairs]),
                        torch.stack([emb for _, emb in pairs])[:, rows])  # fmt: skip
            g, group_emb = self.inner.forward_many(keep_ratios)
            return g, group_emb[:, rows]

    config = copy.deepcopy(setup.ddpg)
    return DDPG(ActionGroupEncoder, env.keep_ratios, env.reset(), env.n_actions, config, setup.seed)


@register_agent("gnn-rl")
class GNNRLAgent(GraphDDPGAgent):
    """GNN-RL (paper 002): :class:`~onnxprune.rl.mgnn.MultiStageGNN` over every level of
    the hierarchical computational graph."""

    @staticmethod
    def encoder_class() -> type:
        from onnxprune.rl.mgnn import MultiStageGNN

        return MultiStageGNN


@register_agent("agmc")
class AGMCAgent(GraphDDPGAgent):
    """AGMC (papers 000/001): :class:`~onnxprune.rl.gcn.GCNEncoder` over the layer graph."""

    @staticmethod
    def encoder_class() -> type:
        from onnxprune.rl.gcn import GCNEncoder

        return GCNEncoder


@register_agent("amc")
class AMCAgent(DDPGAgent):
    """AMC (He et al. 2018): one group per step of a DDPG rollout over the 11-feature layer
    state (:mod:`onnxprune.rl.amc`); the ratios go to the env as one action."""

    def __init__(self, ddpg: Any, noise: Any, warmup: int, layer_state: Any) -> None:
        super().__init__(ddpg, noise, warmup)
        self.layer_state = layer_state

    @classmethod
    def build(cls, setup: AgentSetup) -> Agent:
        from onnxprune.rl.amc import AMCState, layer_shapes, make_amc_agent

        groups = setup.groups
        shapes = layer_shapes(
            setup.analysis.model, [g.producers for g in groups], [g.size for g in groups]
        )
        layer_state = AMCState(shapes, setup.env.removable_macs)
        ddpg = make_amc_agent(layer_state, copy.deepcopy(setup.ddpg), seed=setup.seed)
        return cls(ddpg, _noise(setup), setup.warmup, layer_state)

    def _rollout(self, env: Any, warm: bool) -> tuple[list[tuple[Any, np.ndarray]], Any]:
        from onnxprune.rl.amc import propose

        env.reset()
        states, actions = propose(self.ddpg, self.layer_state, self.noise, warm)
        result = env.step(actions, evaluate=False)
        return list(zip(states, [np.array([a]) for a in actions], strict=True)), result


@register_agent("uniform")
class UniformAgent(Agent):
    """One prune ratio for every group: a zero action, which the FLOPs wall scales to the
    largest uniform ratio that meets the budget. One deterministic plan, so one episode."""

    @classmethod
    def build(cls, setup: AgentSetup) -> Agent:
        return cls()

    @classmethod
    def schedule(cls, episodes: int, warmup: int) -> tuple[int, int]:
        return 1, 0  # more episodes would repeat the same plan

    @classmethod
    def round_size(cls, parallel: int) -> int:
        return 1  # one deterministic plan

    def propose(self, env: Any, episode: int) -> Proposal:
        env.reset()
        return Proposal(episode, "uniform", env.step(np.zeros(env.n_actions), evaluate=False))


@register_agent("random")
class RandomAgent(Agent):
    """Uniformly random ratio vectors through the FLOPs wall; every episode is a draw."""

    resume_free_keys = ("warmup",)

    def __init__(self, noise: Any) -> None:
        self.noise = noise  # only its seeded generator: the same stream as a warm-up

    @classmethod
    def build(cls, setup: AgentSetup) -> Agent:
        return cls(_noise(setup))

    @classmethod
    def schedule(cls, episodes: int, warmup: int) -> tuple[int, int]:
        return episodes, episodes

    def propose(self, env: Any, episode: int) -> Proposal:
        env.reset()
        action = self.noise.uniform(env.n_actions)
        return Proposal(episode, "random", env.step(action, evaluate=False))

    def state_dict(self) -> dict[str, Any]:
        return {"noise": copy.deepcopy(self.noise.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.noise.load_state_dict(copy.deepcopy(state["noise"]))


# The agents that ship with onnxprune (agents registered later, e.g. by tests, are not in it).
BUILTIN_AGENTS = tuple(AGENT_REGISTRY)

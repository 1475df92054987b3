"""DDPG agent with a pluggable graph encoder (paper 002, section 3.2.2; Lillicrap et al. 2016).

Split after Stable-Baselines3: this module holds the policy networks (:class:`Actor`,
:class:`Critic`) and the algorithm (:class:`DDPG`); the replay buffer and the exploration
noise live in :mod:`onnxprune.rl.buffer` and :mod:`onnxprune.rl.noise`.

Encoder contract: any ``torch.nn.Module`` whose ``forward(obs)`` returns ``(g, group_emb)``
with ``g: [D]`` (graph embedding, eq. 6) and ``group_emb: [n_groups, E]`` or ``None``.
``MultiStageGNN`` (GNN-RL), ``GCNEncoder`` (AGMC) and the small :class:`MLPEncoder` /
:class:`FlatEncoder` below all fit. The actor and the critic each own an encoder (made by
``encoder_factory``), as in SB3's off-policy default of unshared feature extractors.

Actor (eq. 7): when the encoder gives one embedding per action (``group_emb`` with
``n_actions`` rows), a shared MLP maps ``[g, group_emb_i]`` to the ratio of group ``i``
(``[n_actions]``), so the policy reads each group's own topology; otherwise an MLP maps
``g`` to all ``n_actions`` ratios. The output layer is a sigmoid: actions lie in (0, 1).
Critic: an MLP on ``[g, action]`` -> scalar Q.
Targets: soft update ``theta' <- tau * theta + (1 - tau) * theta'`` with ``tau = 0.01``
(paper section 5). TD target ``y = r + gamma * (1 - done) * Q'(s', mu'(s'))``.

Observations: the agent never stores encoder inputs. It stores the environment's compact
*state record* (a numpy vector) and calls ``observe(record) -> encoder input`` when it needs
one; identical records in a batch are encoded once.

:class:`DDPGConfig` is defined in the torch-free :mod:`onnxprune.rl.config` (strategy presets
load without torch) and re-exported here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from onnxprune.errors import OnnxPruneError
from onnxprune.rl.buffer import ReplayBuffer, Transition
from onnxprune.rl.config import CRITICS, HEADS, DDPGConfig


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, out_dim),
    )


class MLPEncoder(nn.Module):
    """Tiny encoder for per-group feature matrices.

    ``forward(x: [n_groups, F]) -> (g: [D], group_emb: [n_groups, D])`` with
    ``h = relu(W x + b)`` per group and ``g = mean_i h_i``.
    """

    def __init__(self, in_features: int, dim: int = 32) -> None:
        super().__init__()
        self.lin = nn.Linear(in_features, dim)

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.lin(x))
        return h.mean(dim=0), h


class FlatEncoder(nn.Module):
    """Encoder for a flat state vector (AMC's layer state).

    ``forward(x: [F]) -> (g: [F], None)``: the identity; the actor/critic MLPs do the work.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x.reshape(-1).float(), None


def _embedding_dims(encoder: nn.Module, sample_obs: Any, n_actions: int) -> tuple[int, int | None]:
    """``(D, E)``: graph embedding size and per-action embedding size (``None`` when the
    encoder gives no embedding per action)."""
    with torch.no_grad():
        g, group_emb = encoder(sample_obs)
    if group_emb is None or group_emb.shape[0] != n_actions:
        return int(g.shape[-1]), None
    return int(g.shape[-1]), int(group_emb.shape[-1])


class Actor(nn.Module):
    """``forward(obs) -> action [n_actions]`` in (0, 1) (sigmoid output, eq. 7).

    ``head="global"`` is eq. 7 literally: ``A = MLP(g)``, one output unit per action, so
    every group has its own output weights. ``head="per-group"`` applies one shared MLP to
    ``[g, group_emb_i, id_i]`` (when the encoder gives one embedding per action); ``id_i`` is
    a learned ``id_dim``-vector per action (0: none). Without ids, groups whose subgraphs are
    isomorphic get equal embeddings and therefore equal ratios.
    """

    def __init__(
        self,
        encoder: nn.Module,
        sample_obs: Any,
        n_actions: int,
        hidden: int,
        head: str = "per-group",
        id_dim: int = 0,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise OnnxPruneError(f"actor head must be one of {', '.join(HEADS)}, got '{head}'")
        self.encoder = encoder
        self.n_actions = n_actions
        g_dim, emb_dim = _embedding_dims(encoder, sample_obs, n_actions)
        self.per_group = head == "per-group" and emb_dim is not None
        self.ids = None
        if self.per_group:
            if id_dim > 0:
                self.ids = nn.Parameter(torch.randn(n_actions, id_dim))
            self.head = _mlp(g_dim + int(emb_dim or 0) + max(0, id_dim), hidden, 1)
        else:
            self.head = _mlp(g_dim, hidden, n_actions)

    def forward(self, obs: Any) -> torch.Tensor:
        g, group_emb = self.encoder(obs)
        return self._act(g, group_emb)

    def forward_many(self, observations: list[Any]) -> torch.Tensor:
        """``[B, n_actions]``: :meth:`forward` of several observations, encoded in one call
        when the encoder has ``forward_many`` (the m-GNN), else one by one."""
        many = getattr(self.encoder, "forward_many", None)
        if many is None:
            return torch.stack([self(obs) for obs in observations])
        g, group_emb = many(observations)
        return self._act(g, group_emb)

    def _act(self, g: torch.Tensor, group_emb: torch.Tensor) -> torch.Tensor:
        # g: [..., D], group_emb: [..., n, E] (leading dims: a batch of states)
        if self.per_group:
            parts = [g.unsqueeze(-2).expand(*group_emb.shape[:-1], g.shape[-1]), group_emb]
            if self.ids is not None:
                parts.append(self.ids.expand(*group_emb.shape[:-1], self.ids.shape[-1]))
            return torch.sigmoid(self.head(torch.cat(parts, dim=-1)).squeeze(-1))
        return torch.sigmoid(self.head(g))


class Critic(nn.Module):
    """``forward(obs, action [n_actions]) -> Q`` (scalar tensor).

    ``kind="joint"``: an MLP on ``[g, action]`` (paper 002). ``kind="per-group"``: a value
    decomposition ``Q = mean_i q([g, group_emb_i, a_i])`` with one shared MLP ``q``, so each
    episode's reward trains the MLP on every group's (embedding, ratio) pair at once; it needs
    an encoder with one embedding per action and falls back to ``joint`` otherwise.
    """

    def __init__(
        self,
        encoder: nn.Module,
        sample_obs: Any,
        n_actions: int,
        hidden: int,
        kind: str = "joint",
    ) -> None:
        super().__init__()
        if kind not in CRITICS:
            raise OnnxPruneError(f"critic must be one of {', '.join(CRITICS)}, got '{kind}'")
        self.encoder = encoder
        g_dim, emb_dim = _embedding_dims(encoder, sample_obs, n_actions)
        self.per_group = kind == "per-group" and emb_dim is not None
        if self.per_group:
            self.head = _mlp(g_dim + int(emb_dim or 0) + 1, hidden, 1)
        else:
            self.head = _mlp(g_dim + n_actions, hidden, 1)

    def embed(self, obs: Any) -> torch.Tensor:
        """``[D]`` (joint) or ``[n_actions, D + E]`` (per-group) state embedding."""
        g, group_emb = self.encoder(obs)
        return self._joined(g, group_emb)

    def embed_many(self, observations: list[Any]) -> torch.Tensor:
        """``[B, ...]``: :meth:`embed` of several observations (one encoder call when the
        encoder has ``forward_many``)."""
        many = getattr(self.encoder, "forward_many", None)
        if many is None:
            return torch.stack([self.embed(obs) for obs in observations])
        g, group_emb = many(observations)
        return self._joined(g, group_emb)

    def _joined(self, g: torch.Tensor, group_emb: torch.Tensor) -> torch.Tensor:
        if self.per_group:
            return torch.cat(
                [g.unsqueeze(-2).expand(*group_emb.shape[:-1], g.shape[-1]), group_emb], dim=-1
            )
        return g

    def q(self, g: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``g: [B, D]`` (or ``[B, n, D + E]``), ``action: [B, n_actions]`` -> ``[B]``."""
        if self.per_group:
            joint = torch.cat([g, action.unsqueeze(-1)], dim=-1)
            return self.head(joint).squeeze(-1).mean(dim=-1)
        return self.head(torch.cat([g, action], dim=-1)).squeeze(-1)

    def forward(self, obs: Any, action: torch.Tensor) -> torch.Tensor:
        return self.q(self.embed(obs).unsqueeze(0), action.unsqueeze(0))[0]


def _record_key(record: Any) -> bytes:
    return np.asarray(record, dtype=np.float64).tobytes()


class DDPG:
    """Deep deterministic policy gradient over state records.

    Parameters
    ----------
    encoder_factory: ``() -> nn.Module`` returning a fresh encoder (called twice: actor, critic).
    observe: ``(record) -> encoder input``; ``record`` is the env's state vector.
    sample_record: one state record (used to size the heads).
    n_actions: number of ratios per action (prunable groups, or 1 for AMC).
    config: :class:`DDPGConfig`; ``seed`` seeds network init and the buffer's sampling.
    """

    def __init__(
        self,
        encoder_factory: Callable[[], nn.Module],
        observe: Callable[[Any], Any],
        sample_record: Any,
        n_actions: int,
        config: DDPGConfig | None = None,
        seed: int = 0,
    ) -> None:
        if n_actions < 1:
            raise OnnxPruneError(
                "the agent needs at least one prunable group; the model has none "
                "(run `onnxprune groups MODEL` to see why each group is frozen)"
            )
        self.config = config or DDPGConfig()
        self.observe = observe
        self.n_actions = n_actions
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sample_obs = observe(sample_record)
            self.actor = Actor(
                encoder_factory(),
                sample_obs,
                n_actions,
                self.config.hidden,
                self.config.head,
                self.config.id_dim,
            )
            self.critic = Critic(
                encoder_factory(), sample_obs, n_actions, self.config.hidden, self.config.critic
            )
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        for net in (self.actor_target, self.critic_target):
            net.requires_grad_(False)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=self.config.lr_actor)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=self.config.lr_critic)
        self.buffer = ReplayBuffer(self.config.buffer_size, seed=seed)
        self.n_updates = 0

    def __str__(self) -> str:
        head = "per-group" if self.actor.per_group else "global"
        return (
            f"DDPG({self.n_actions} actions, {head} head, {type(self.actor.encoder).__name__} "
            f"encoder, {self.buffer}, {self.n_updates} updates)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_actions": self.n_actions,
            "per_group_head": self.actor.per_group,
            "encoder": type(self.actor.encoder).__name__,
            "config": self.config.to_dict(),
            "buffer": self.buffer.to_dict(),
            "n_updates": self.n_updates,
        }

    @torch.no_grad()
    def act(self, record: Any) -> np.ndarray:
        """Deterministic action ``[n_actions]`` in (0, 1) for one state record."""
        self.actor.eval()
        action = self.actor(self.observe(record))
        self.actor.train()
        return action.reshape(-1).numpy().astype(np.float32)

    def remember(
        self, record: Any, action: np.ndarray, reward: float, next_record: Any, done: bool
    ) -> None:
        self.buffer.add(record, action, reward, next_record, done)

    def _embed_batch(
        self, embed_many: Callable[[list[Any]], torch.Tensor], records: Sequence[Any]
    ) -> torch.Tensor:
        """Encode each distinct record once (all of them in one ``embed_many`` call);
        returns ``[B, ...]`` in batch order."""
        slot: dict[bytes, int] = {}
        distinct: list[Any] = []
        order = []
        for record in records:
            key = _record_key(record)
            if key not in slot:
                slot[key] = len(distinct)
                distinct.append(self.observe(record))
            order.append(slot[key])
        return embed_many(distinct)[torch.tensor(order, dtype=torch.long)]

    def update(self) -> dict[str, float]:
        """One gradient step on critic and actor from a sampled batch, then soft targets.

        Returns ``{"critic_loss", "actor_loss"}``. No-op (empty dict) on an empty buffer.
        """
        if len(self.buffer) == 0:
            return {}
        batch: list[Transition] = self.buffer.sample(self.config.batch_size)
        actions = torch.as_tensor(np.stack([t.action for t in batch]), dtype=torch.float32)
        rewards = torch.tensor([t.reward for t in batch], dtype=torch.float32)
        done = torch.tensor([t.done for t in batch], dtype=torch.float32)

        with torch.no_grad():
            target = rewards.clone()
            live = [i for i, t in enumerate(batch) if not t.done]
            if live and self.config.gamma > 0:
                next_records = [batch[i].next_state for i in live]
                next_actions = self._embed_batch(self.actor_target.forward_many, next_records)
                next_g = self._embed_batch(self.critic_target.embed_many, next_records)
                next_q = self.critic_target.q(next_g, next_actions)
                target[live] += self.config.gamma * (1 - done[live]) * next_q

        records = [t.state for t in batch]
        critic_g = self._embed_batch(self.critic.embed_many, records)
        q = self.critic.q(critic_g, actions)
        critic_loss = nn.functional.mse_loss(q, target)
        self.critic_optim.zero_grad()
        critic_loss.backward()
        self.critic_optim.step()

        policy_actions = self._embed_batch(self.actor.forward_many, records)
        self.critic.requires_grad_(False)
        # The actor loss reuses the critic's state embedding of this batch, detached: the
        # actor's gradient flows through the action only, and re-encoding every graph after
        # the critic step would cost a third of an update (the encoders dominate its time).
        actor_loss = -self.critic.q(critic_g.detach(), policy_actions).mean()
        self.actor_optim.zero_grad()
        actor_loss.backward()
        self.actor_optim.step()
        self.critic.requires_grad_(True)

        self._soft_update(self.actor_target, self.actor)
        self._soft_update(self.critic_target, self.critic)
        self.n_updates += 1
        return {"critic_loss": critic_loss.item(), "actor_loss": actor_loss.item()}

    def train(self, gradient_steps: int | None = None) -> dict[str, float]:
        """``gradient_steps`` :meth:`update` calls (default ``config.updates_per_episode``);
        returns the losses of the last one (empty when nothing was updated)."""
        steps = self.config.updates_per_episode if gradient_steps is None else gradient_steps
        losses: dict[str, float] = {}
        for _ in range(steps):
            losses = self.update()
        return losses

    @torch.no_grad()
    def _soft_update(self, target: nn.Module, source: nn.Module) -> None:
        tau = self.config.tau
        for target_param, param in zip(target.parameters(), source.parameters(), strict=True):
            target_param.mul_(1 - tau).add_(param, alpha=tau)
        for target_buffer, buffer in zip(target.buffers(), source.buffers(), strict=True):
            target_buffer.copy_(buffer)

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimisers, buffer (incl. its generator) and update count (a deep copy)."""
        state = {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "actor_target": self.actor_target.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_optim": self.actor_optim.state_dict(),
            "critic_optim": self.critic_optim.state_dict(),
            "buffer": self.buffer.state_dict(),
            "n_updates": self.n_updates,
        }
        # Optimiser state dicts alias live tensors; a checkpoint must not change afterwards.
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = copy.deepcopy(state)
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.actor_target.load_state_dict(state["actor_target"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.actor_optim.load_state_dict(state["actor_optim"])
        self.critic_optim.load_state_dict(state["critic_optim"])
        self.buffer.load_state_dict(state["buffer"])
        self.n_updates = int(state["n_updates"])

"""Rounds of candidates: propose K, evaluate them together, learn from all K.

A round is a run of consecutive episodes on a fixed grid: rounds of ``parallel`` (K)
episodes from episode 0, restarting at the warm-up boundary (a round never mixes random
warm-up candidates with policy ones) and cut at the last episode. The agent proposes the
round's candidates one after the other from one policy (:meth:`Agent.propose`); the plans
not in the cache go to the evaluator (:mod:`onnxprune.search.evaluators`) together; then
the agent learns from the round in proposal order and the checkpoint is written. So a
search's result depends on its seed and K, not on what evaluates the candidates, and a
checkpoint always sits on a round boundary of the uninterrupted run.

Episodes are logged (and ``on_episode`` called) in proposal order as soon as every earlier
candidate of the round is known; the round's last episode only after the checkpoint, so an
interruption there resumes after the whole round. The evaluation budget (``evaluations``)
ends a round early, at the candidate that would exceed it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from onnxprune.search.result import BestPlan, EpisodeRecord


def round_end(start: int, parallel: int, warmup: int, episodes: int, warmup_phase: bool) -> int:
    """The episode after the round that contains ``start`` (see the module docstring)."""
    if warmup_phase and start < warmup:
        base, limit = 0, warmup
    else:
        base, limit = (warmup if warmup_phase else 0), episodes
    end = base + ((start - base) // parallel + 1) * parallel
    return min(end, limit, episodes)


@dataclass
class _Slot:
    """One proposal of the round and what is known about it."""

    proposal: Any
    key: tuple[int, ...]
    propose_seconds: float
    reward: float | None = None
    cached: bool = True
    eval_seconds: float = 0.0


@dataclass
class RoundRunner:
    """Runs rounds into ``state`` (a :class:`~onnxprune.search.checkpoint.SearchState`)."""

    setup: Any
    state: Any
    checkpoint: Any
    evaluator: Any
    bar: Any
    on_episode: Callable[[EpisodeRecord], None] | None
    after_round: Callable[[int], None]
    started: float = field(default_factory=time.perf_counter)
    evaluated: int = 0

    def __str__(self) -> str:
        return f"rounds of {self.setup.strategy.parallel} with the {self.evaluator}"

    def to_dict(self) -> dict[str, Any]:
        return {"parallel": self.setup.strategy.parallel, "evaluator": self.evaluator.to_dict()}

    def run(self, budget_spent: Callable[[int], bool]) -> None:
        """All remaining rounds (``budget_spent(episode)`` stops before a round)."""
        strat, agent = self.setup.strategy, self.setup.agent
        parallel = type(agent).round_size(strat.parallel)
        episode = len(self.state.log)
        while episode < strat.episodes:
            if budget_spent(episode):
                return
            end = round_end(
                episode, parallel, strat.warmup, strat.episodes, type(agent).warmup_phase
            )
            slots = self._propose(episode, end)
            self._evaluate(slots)
            agent.learn([s.proposal for s in slots], [s.reward for s in slots])
            last = self._log(slots[-1])  # in the checkpoint, announced after it
            self.state.agent, self.state.cache = agent.state_dict(), self.setup.env.cache
            self.checkpoint.save(self.state)
            self._announce(last)
            episode += len(slots)
            self.after_round(episode - 1)

    def _propose(self, start: int, end: int) -> list[_Slot]:
        """The round's proposals, cut where the evaluation budget would be exceeded."""
        env, budget = self.setup.env, self.setup.strategy.evaluations
        slots: list[_Slot] = []
        new: set[tuple[int, ...]] = set()
        for episode in range(start, end):
            if slots and budget and env.n_evaluations + len(new) >= budget:
                break
            t0 = time.perf_counter()
            proposal = self.setup.agent.propose(env, episode)
            key = env.plan_key(proposal.result.kept)
            slot = _Slot(proposal, key, time.perf_counter() - t0)
            if key in env.cache:
                slot.reward = env.cache[key]
            elif key not in new:
                new.add(key)
                slot.cached = False
            slots.append(slot)
        return slots

    def _evaluate(self, slots: list[_Slot]) -> None:
        """Evaluate the round's new plans; episodes are logged as their prefix completes."""
        env = self.setup.env
        firsts = [s for s in slots if not s.cached]
        emitted = [0]

        def flush() -> None:  # every known episode of the prefix but the round's last
            while emitted[0] < len(slots) - 1 and slots[emitted[0]].reward is not None:
                self._emit(slots[emitted[0]])
                emitted[0] += 1

        def on_result(index: int, result: Any) -> None:
            first = firsts[index]
            env.record(first.proposal.result.kept, result.reward)
            first.eval_seconds = result.seconds
            for slot in slots:
                if slot.key == first.key:
                    slot.reward = env.cache[first.key]
            self.evaluated += 1
            self._status()
            flush()

        flush()  # cached plans at the head of the round are known already
        if firsts:
            self.evaluator.run([s.proposal.result.kept for s in firsts], on_result)
        flush()

    def _emit(self, slot: _Slot) -> None:
        """Log one finished episode and announce it."""
        self._announce(self._log(slot))

    def _log(self, slot: _Slot) -> EpisodeRecord:
        """Append one finished episode to the log; update the best plan."""
        state, result = self.state, slot.proposal.result
        episode, reward = slot.proposal.episode, float(slot.reward)  # type: ignore[arg-type]
        if state.best is None or reward > state.best.reward:
            state.best = BestPlan(reward, episode, dict(result.kept))
        entry = EpisodeRecord(
            episode, slot.proposal.phase, reward, result.macs_fraction, dict(result.kept),
            slot.cached, slot.propose_seconds + slot.eval_seconds,
        )  # fmt: skip
        state.log.append(entry)
        return entry

    def _announce(self, entry: EpisodeRecord) -> None:
        """Progress bar and ``on_episode`` (which may raise ``KeyboardInterrupt``)."""
        self.bar.advance(1, status=self._status_text(entry.macs_fraction))
        if self.on_episode is not None:
            self.on_episode(entry)

    def _status_text(self, macs: float | None = None) -> str:
        best = self.state.best
        parts = [] if best is None else [f"best {best.reward:+.4f} (ep {best.episode})"]
        if macs is not None:
            parts.append(f"MACs {macs:.3f}")
        minutes = (time.perf_counter() - self.started) / 60
        rate = self.evaluated / minutes if minutes > 0 else 0.0
        ev = self.evaluator
        parts.append(f"{ev.busy} in flight, {ev.alive}/{ev.workers} workers, {rate:.1f} cand/min")
        return ", ".join(parts)

    def _status(self) -> None:
        self.bar.advance(0, status=self._status_text())

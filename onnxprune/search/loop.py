"""The search loop: ``for episode: agent.run_episode(env, episode)``, checkpointed.

``run_search(model, data, flops, strategy, outdir, seed)`` prepares the search
(:mod:`onnxprune.search.prepare`), runs the strategy's agent (:mod:`onnxprune.rl.agents`)
for ``episodes`` episodes, writing ``OUTDIR/checkpoint.pt`` after each
(:mod:`onnxprune.search.checkpoint`; ``resume=True`` continues from it and ends with the
same result as an uninterrupted run), picks the final plan (:func:`select_final`) and
hands it to :func:`onnxprune.search.finalize.finalize`. Ctrl-C (``KeyboardInterrupt``)
stops the loop and keeps the best plan so far.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onnxprune.errors import InternalError, OnnxPruneError
from onnxprune.search.checkpoint import (
    CHECKPOINT,
    Checkpoint,
    SearchState,
    data_sha256,
    fingerprint,
)
from onnxprune.search.finalize import finalize
from onnxprune.search.outdir import OutputLock, check_output_folder
from onnxprune.search.prepare import SearchSetup, prepare
from onnxprune.search.result import BestPlan, EpisodeRecord, SearchOutcome, SearchResult
from onnxprune.search.reward import select_final
from onnxprune.search.strategy import Strategy, StrategyOverrides, load_strategy

OnEpisode = Callable[[EpisodeRecord], None]
CONSTANT_REWARD_PLANS = 3  # distinct warm-up plans with one reward that stop the search


def run_search(
    model_path: str | os.PathLike[str],
    data: Any,
    flops: float | None,
    strategy: str | os.PathLike[str] | Strategy = "gnn-rl",
    outdir: str | os.PathLike[str] = "onnxprune-out",
    seed: int = 0,
    *,
    episodes: int | None = None,
    evaluations: int | None = None,
    reward_samples: int | None = None,
    eval_samples: int | None = None,
    eval_data: Any = None,
    device: str = "cpu",
    recover: str | None = None,
    resume: bool = False,
    show_progress: bool = True,
    latency_runs: int = 20,
    threads: int | None = None,
    on_episode: OnEpisode | None = None,
    input_shapes: Any = None,
    latency: float | None = None,
    batch: int = 1,
    latency_timing: Any = None,
) -> SearchResult:
    """Search per-group prune ratios that keep ``flops`` of the MACs (see module docstring).

    ``data``/``eval_data``: a path (``.npz``, ``.npy``, image folder) or a
    :class:`onnxprune.data.Dataset`. ``episodes``, ``evaluations``, ``reward_samples``,
    ``eval_samples``, ``recover`` override the strategy. ``evaluations`` (> 0) stops the
    search once that many distinct plans have been evaluated (repeats hit the cache and are
    free), so agents can be compared at an equal evaluation budget. ``on_episode`` is called
    after each episode (it may raise ``KeyboardInterrupt`` to stop, as Ctrl-C does).
    ``input_shapes`` (``{input: dims}``, :func:`onnxprune.model.fix_input_shapes`) is the
    input size the MACs are priced at; default: one sample of ``data``. ``latency`` keeps at
    most that fraction of the original's latency at ``batch`` (predicted by the latency
    table during the search, measured after it; ``flops`` may then be None);
    ``latency_timing`` (a :class:`~onnxprune.search.prepare.LatencyRequest` without target)
    replaces the timing in tests.
    Returns :class:`SearchResult`; raises :class:`OnnxPruneError` for bad input and
    impossible budgets.
    """
    started = time.perf_counter()
    preset = strategy if isinstance(strategy, Strategy) else load_strategy(strategy)
    overrides = StrategyOverrides(episodes, evaluations, reward_samples, eval_samples, recover)
    strat = overrides.apply(preset)
    request = _latency_request(latency, batch, show_progress, latency_timing)
    if flops is None and request is None:
        raise OnnxPruneError(
            "give a budget: --flops F (fraction of the MACs), --latency F (fraction of the "
            "measured latency), or both"
        )
    flops = 1.0 if flops is None else flops
    if not 0 < flops <= 1:
        raise OnnxPruneError(f"--flops must be a fraction of the MACs in (0, 1], got {flops}")
    out = Path(outdir)
    model_bytes = Path(model_path).stat().st_size if Path(model_path).is_file() else 0
    check_output_folder(out, resume, model_bytes)  # before any work: nothing else is touched
    setup = prepare(
        Path(model_path), data, eval_data, flops, strat, out, seed, device, threads, started,
        input_shapes=input_shapes, latency=request,
    )  # fmt: skip
    if setup.latency_budget is not None:
        from onnxprune.search.latency import gate_measure

        setup.latency_budget.measure = (request.measure if request else None) or gate_measure(setup)
    with OutputLock(out):
        state, resumed_from, checkpoint = _start(setup, resume)
        search_start = time.perf_counter()
        interrupted = _run_episodes(setup, state, checkpoint, show_progress, on_episode)
        if state.best is None:
            raise InternalError("the search ended without a single finished episode")
        best, selection = _final_pick(setup, state.best, state.log, interrupted)
        if setup.latency_budget is not None:
            from onnxprune.search.latency import verify_latency

            best = verify_latency(setup, best, state.log)
        seconds = time.perf_counter() - search_start
        outcome = SearchOutcome(best, state.log, interrupted, resumed_from, seconds, selection)
        return finalize(setup, outcome, latency_runs)


def _latency_request(latency: float | None, batch: int, show_progress: bool, timing: Any) -> Any:
    """The :class:`LatencyRequest` of ``--latency`` (None without one), checked."""
    from onnxprune.search.prepare import LatencyRequest

    if latency is None:
        return None
    if not 0 < latency <= 1:
        raise OnnxPruneError(
            f"--latency must be a fraction of the original's latency in (0, 1], got {latency}"
        )
    if batch < 1:
        raise OnnxPruneError(f"--batch must be >= 1, got {batch}")
    lut_timer = getattr(timing, "lut_timer", None)
    measure = getattr(timing, "measure", None)
    return LatencyRequest(latency, batch, show_progress, lut_timer, measure)


def _start(setup: SearchSetup, resume: bool) -> tuple[SearchState, int | None, Checkpoint]:
    """The state to start from (the checkpoint's with ``resume``) and where to save it."""
    from onnxprune.plan import model_sha256

    strat = setup.strategy
    run_fingerprint = fingerprint(
        model_sha256(setup.analysis.model),
        strat,
        setup.seed,
        setup.flops,
        len(setup.splits.reward),
        type(setup.agent).resume_free_keys,
        _searched_data_sha(setup),
        _latency_fingerprint(setup),
    )
    checkpoint = Checkpoint(setup.outdir / CHECKPOINT, run_fingerprint)
    # Created only now, after every input check: a refused run leaves nothing behind.
    setup.outdir.mkdir(parents=True, exist_ok=True)
    if not resume:
        return SearchState(agent={}), None, checkpoint  # filled after the first episode
    state = checkpoint.load()
    setup.agent.load_state_dict(state.agent)
    setup.env.cache.update(state.cache)
    return state, len(state.log), checkpoint


def _latency_fingerprint(setup: SearchSetup) -> dict[str, Any] | None:
    """What of the latency budget must match for ``--resume`` (None without one)."""
    budget = setup.latency_budget
    if budget is None:
        return None
    return {"target": budget.target, "batch": budget.batch, "table": budget.table.key}


def _searched_data_sha(setup: SearchSetup) -> str:
    """Hash of the splits that decide the plan (reward, LS fit, selection); the held-out
    split only grades the result, so ``--eval-data`` may change on resume."""
    splits = setup.splits
    arrays = []
    for split in (splits.reward, splits.fit, splits.select):
        arrays += [None, None] if split is None else [split.x, split.y]
    return data_sha256(*arrays)


def _budget_spent(setup: SearchSetup, episode: int) -> bool:
    budget, spent = setup.strategy.evaluations, setup.env.n_evaluations
    if budget and spent >= budget:
        setup.notes.append(
            f"stopped at episode {episode}: {spent} distinct plans evaluated "
            f"(evaluation budget {budget})"
        )
        return True
    return False


def _run_episodes(
    setup: SearchSetup,
    state: SearchState,
    checkpoint: Checkpoint,
    show_progress: bool,
    on_episode: OnEpisode | None,
) -> bool:
    """Run the remaining episodes into ``state``; returns whether Ctrl-C stopped them."""
    from onnxprune.progress import progress
    from onnxprune.recover.batching import one_torch_thread  # imports torch: only when run

    strat, env, agent = setup.strategy, setup.env, setup.agent
    start = len(state.log)
    bar_context = progress(f"search {strat.name}", strat.episodes, enabled=show_progress)
    # The agent's networks are tiny: one torch thread is fastest, and a second one only
    # busy-waits for cycles the onnxruntime reward sessions need.
    with one_torch_thread(), bar_context as bar:
        if start:
            bar.advance(start, status="resumed")
        try:
            for episode in range(start, strat.episodes):
                if _budget_spent(setup, episode):
                    break
                t0 = time.perf_counter()
                outcome = agent.run_episode(env, episode)
                step = outcome.result
                if state.best is None or step.reward > state.best.reward:
                    state.best = BestPlan(step.reward, episode, dict(step.kept))
                seconds = time.perf_counter() - t0
                entry = EpisodeRecord(
                    episode, outcome.phase, step.reward, step.macs_fraction, dict(step.kept),
                    step.cached, seconds,
                )  # fmt: skip
                state.log.append(entry)
                state.agent, state.cache = agent.state_dict(), env.cache
                checkpoint.save(state)
                best = state.best
                status = (
                    f"best {best.reward:+.4f} (ep {best.episode}), MACs {step.macs_fraction:.3f}"
                )
                bar.advance(1, status=status)
                if on_episode is not None:
                    on_episode(entry)
                if episode == strat.warmup - 1:
                    _stop_if_reward_is_constant(setup, state.log, checkpoint)
        except KeyboardInterrupt:
            setup.notes.append(
                f"interrupted after {len(state.log)} episode(s); kept the best plan so far"
            )
            if state.best is None:
                raise
            return True
    return False


def _stop_if_reward_is_constant(
    setup: SearchSetup, log: list[EpisodeRecord], checkpoint: Checkpoint
) -> None:
    """After the warm-up: a reward equal for every distinct plan cannot steer the agent.

    Exploiting it would be a random search reported as an optimised one, so the search stops
    with :class:`OnnxPruneError` saying what the reward was and what to do. Nothing is left
    half-written: the checkpoint is removed (and the output folder, when the search created
    it and that leaves it empty: :class:`~onnxprune.search.outdir.OutputLock`), as for a run
    refused before its first episode. Agents without a warm-up phase
    (``uniform``, ``random``) never exploit, so they are not stopped. It takes at least
    :data:`CONSTANT_REWARD_PLANS` distinct plans: two plans can tie by chance on a coarse
    proportion (two plans with 1 of 60 correct), all of three or more rarely do.
    """
    strat = setup.strategy
    if not type(setup.agent).warmup_phase or strat.warmup < 2 or strat.episodes <= strat.warmup:
        return
    plans = {tuple(sorted(e.kept.items())) for e in log}
    rewards = [e.reward for e in log]
    if len(plans) < CONSTANT_REWARD_PLANS or max(rewards) - min(rewards) > 1e-12:
        return
    checkpoint.path.unlink(missing_ok=True)  # the lock then removes the folder it made
    if setup.metric in ("top1", "agreement", "kl"):
        advice = (
            "it only looks at the arg-max/class scores of the first output; for a model whose "
            "outputs are not class scores use --reward snr (output signal-to-noise ratio) or "
            "--reward cosine"
        )
    else:
        advice = (
            "the model's outputs do not change when these channels are pruned; check with "
            "`onnxprune groups` which groups feed the outputs, or try --reward cosine"
        )
    raise OnnxPruneError(
        f"the reward '{setup.metric}' was {rewards[0]:.6g} for all {len(plans)} distinct plans "
        f"of the {len(log)} warm-up episodes, so it cannot steer the search (exploiting it "
        f"would be a random search); {advice}"
    )


def _final_pick(
    setup: SearchSetup, best: BestPlan, log: list[EpisodeRecord], interrupted: bool
) -> tuple[BestPlan, list[dict[str, Any]]]:
    """The plan to materialise: re-scored on the selection split when there is one."""
    strat, select_split, n_reward = setup.strategy, setup.splits.select, len(setup.splits.reward)
    if select_split is not None and len(setup.env.cache) > 1 and not interrupted:
        scorer = setup.evaluator.on_split(select_split, setup.original_session)
        best, selection = select_final(setup.env, scorer, n_reward, best, log, strat.select_top)
        setup.notes.append(
            f"final plan: the best of the top {len(selection)} plans by reward, re-scored on "
            f"{len(select_split)} more images disjoint from the reward and held-out splits "
            f"(weighted with the reward split: {n_reward} + {len(select_split)} images)"
        )
        return best, selection
    if strat.select_top > 1:
        why = "interrupted" if interrupted else "no data left for a selection split, or one plan"
        setup.notes.append(f"final plan: the top reward ({why})")
    return best, []

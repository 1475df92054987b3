"""The search loop: rounds of ``parallel`` candidates, checkpointed.

``run_search(model, data, flops, strategy, outdir, seed)`` prepares the search
(:mod:`onnxprune.search.prepare`), runs the strategy's agent (:mod:`onnxprune.rl.agents`)
for ``episodes`` episodes in rounds (:mod:`onnxprune.search.rounds`: K proposals, evaluated
together by an evaluator of :mod:`onnxprune.search.evaluators`, then learnt from), writing
``OUTDIR/checkpoint.pt`` after each round (:mod:`onnxprune.search.checkpoint`;
``resume=True`` continues from it and ends with the same result as an uninterrupted run),
picks the final plan (:func:`select_final`) and hands it to
:func:`onnxprune.search.finalize.finalize`. Ctrl-C (``KeyboardInterrupt``) stops the loop,
cancels the candidates in flight and keeps the best plan so far.
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
from onnxprune.search.evaluators import Evaluator, Execution
from onnxprune.search.finalize import finalize
from onnxprune.search.outdir import OutputLock, check_output_folder
from onnxprune.search.prepare import SearchSetup, prepare
from onnxprune.search.result import BestPlan, EpisodeRecord, SearchOutcome, SearchResult
from onnxprune.search.reward import select_final
from onnxprune.search.strategy import Strategy, StrategyOverrides, load_strategy

OnEpisode = Callable[[EpisodeRecord], None]
BASELINE_EPISODE = -1  # the episode number of the uniform baseline plan (not an episode)
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
    workers: int = 0,
    ray: bool | str = False,
    ray_gpus_per_worker: float = 0.0,
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
    input size the MACs are priced at; default: one sample of ``data``.
    ``workers`` (> 0): evaluate the candidates of a round on that many local processes;
    ``ray``: on Ray actors instead (``True``: a local cluster of ``workers`` CPUs, default
    all; a string: the address of a running cluster), each asking for
    ``ray_gpus_per_worker`` GPUs. Every evaluator gives the same result
    (:mod:`onnxprune.search.evaluators`); ``threads`` (default 1) is the onnxruntime and
    torch thread count each candidate is evaluated with. ``latency`` keeps at
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
    address = ray if isinstance(ray, str) and ray else None
    execution = Execution(workers, bool(ray), address, ray_gpus_per_worker)
    execution.check(device)
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
        with execution.build(setup.evaluator, threads or 1) as evaluator:
            interrupted = _run_episodes(
                setup, state, checkpoint, evaluator, show_progress, on_episode
            )
            if state.best is None:
                raise InternalError("the search ended without a single finished episode")
            if not interrupted:
                _uniform_baseline(setup, state, evaluator)
        best, selection = _final_pick(setup, state.best, state.log, interrupted)
        if setup.latency_budget is not None:
            from onnxprune.search.latency import verify_latency

            best = verify_latency(setup, best, state.log)
        seconds = time.perf_counter() - search_start
        outcome = SearchOutcome(
            best, state.log, interrupted, resumed_from, seconds, selection, evaluator.to_dict()
        )
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
    """Hash of the splits that decide the plan (reward, LS fit, selection): every input's
    array and the labels; the held-out split only grades the result, so ``--eval-data`` may
    change on resume. A single-input split hashes as ``[x, y]``, as before multi-input data."""
    splits = setup.splits
    arrays = []
    for split in (splits.reward, splits.fit, splits.select):
        if split is None:
            arrays += [None, None]
            continue
        inputs = list(split.inputs.values()) if split.inputs else [split.x]
        arrays += [*inputs, split.y]
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
    evaluator: Evaluator,
    show_progress: bool,
    on_episode: OnEpisode | None,
) -> bool:
    """Run the remaining rounds into ``state``; returns whether Ctrl-C stopped them."""
    from onnxprune.progress import progress
    from onnxprune.recover.batching import one_torch_thread  # imports torch: only when run
    from onnxprune.search.rounds import RoundRunner

    strat = setup.strategy
    start = len(state.log)
    bar_context = progress(f"search {strat.name}", strat.episodes, enabled=show_progress)

    def after_round(last_episode: int) -> None:
        if last_episode == strat.warmup - 1:
            _stop_if_reward_is_constant(setup, state.log, checkpoint)

    # The agent's networks are tiny: one torch thread is fastest, and a second one only
    # busy-waits for cycles the onnxruntime reward sessions need.
    with one_torch_thread(), bar_context as bar:
        if start:
            bar.advance(start, status="resumed")
        runner = RoundRunner(setup, state, checkpoint, evaluator, bar, on_episode, after_round)
        try:
            runner.run(lambda episode: _budget_spent(setup, episode))
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


def _uniform_baseline(setup: SearchSetup, state: SearchState, evaluator: Any) -> None:
    """Strategy ``baseline = "uniform"``: the uniform plan at the same budget is one more
    candidate (one evaluation, free when an episode already tried it; within the evaluation
    budget when there is one). A search should never
    return a plan its own reward rates below pruning every group alike; when the uniform plan
    wins it is the result (episode :data:`BASELINE_EPISODE`) and the report says so. It is
    evaluated by the search's ``evaluator`` (its workers and device), like every candidate."""
    env, budget = setup.env, setup.strategy.evaluations
    if setup.strategy.baseline != "uniform":
        return
    kept = env.uniform_kept()
    key = env.plan_key(kept)
    if key not in env.cache:
        if budget and env.n_evaluations >= budget:
            return  # an evaluation budget is a hard cap: the baseline only runs within it
        evaluator.run([kept], lambda _index, result: env.record(kept, result.reward))
    reward = env.cache[key]
    assert state.best is not None
    if reward > state.best.reward:
        setup.notes.append(
            f"the uniform plan (reward {reward:+.4f}) beat every searched plan (best "
            f"{state.best.reward:+.4f}); it is the result unless the final pick re-scores "
            "another plan higher"
        )
        state.best = BestPlan(reward, BASELINE_EPISODE, kept)


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

"""Rounds of candidates and the evaluators behind them (issue 16): the same seed and K give
the same plan in-process, on a process pool and on Ray; dead workers, Ctrl-C and --resume."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxprune.data import Dataset
from onnxprune.errors import OnnxPruneError
from onnxprune.evaluate import make_session, predict
from onnxprune.search import PlanEvaluator, run_search
from onnxprune.search.evaluators import (
    PID_FILE_ENV,
    Execution,
    ProcessPoolEvaluator,
    RewardJob,
    ray_actor_options,
)
from onnxprune.search.rounds import RoundRunner, round_end
from tests.conftest import make_tiny_cnn
from tests.test_input_shapes import invoke

WIDTHS = (16, 24)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    onnx.save_model(make_tiny_cnn(WIDTHS), str(path))
    return path


@pytest.fixture(scope="module")
def tiny_data(tiny_model: Path) -> Dataset:
    """120 samples labelled by the unpruned model itself, 30 % of the labels flipped."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (120, 3, 16, 16)).astype(np.float32)
    y = predict(make_session(tiny_model, device="cpu"), x).argmax(1).astype(np.int64)
    flip = rng.random(120) < 0.3
    y[flip] = rng.integers(0, 10, flip.sum())
    return Dataset(x, y, "tiny-data")


def _strategy(
    folder: Path, episodes: int = 8, recover: str = "ls", parallel: int = 4, warmup: int = 3
) -> Path:
    """gnn-rl, ``warmup`` warm-up episodes, rounds of ``parallel``; a small LS fit per candidate;
    channels rounded to 1 so that most candidates are distinct plans."""
    path = folder / f"rounds-{recover}-{episodes}-{parallel}-{warmup}.toml"
    path.write_text(
        f'agent = "gnn-rl"\nepisodes = {episodes}\nwarmup = {warmup}\nsteps_per_episode = 2\n'
        f'parallel = {parallel}\nreward_recover = "{recover}"\nrecover_images = 30\n'
        'recover = "none"\nreward = "kl"\nround_to = 1\nmin_channels = 2\nskip = []\n'
        "reward_samples = 60\nbatch_size = 64\nencoder_dim = 8\n[noise]\nsigma = 0.4\n"
        "decay = 0.9\n[ddpg]\nhidden = 16\nbatch_size = 8\nupdates_per_episode = 2\n"
    )
    return path


def _run(model: Path, data: Dataset, outdir: Path, strategy: Path, **kwargs: Any) -> Any:
    kwargs.setdefault("show_progress", False)
    kwargs.setdefault("latency_runs", 0)
    return run_search(model, data, 0.5, strategy, outdir, seed=0, **kwargs)


def _trace(result: Any) -> list[tuple[int, str, float, dict, bool]]:
    return [(e.episode, e.phase, e.reward, e.kept, e.cached) for e in result.episodes]


@pytest.fixture(scope="module")
def reference(
    tiny_model: Path, tiny_data: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, str]:
    """The in-process run every evaluator must reproduce: (result, plan.json text)."""
    folder = tmp_path_factory.mktemp("reference")
    result = _run(tiny_model, tiny_data, folder / "out", _strategy(folder))
    return result, (folder / "out" / "plan.json").read_text()


def _children() -> list[Any]:
    import psutil

    return psutil.Process().children(recursive=True)


def _freeze_then_kill(pid_file: Path, killed: list[int]) -> threading.Timer:
    """Stop a worker now (SIGSTOP) and kill it (SIGKILL) a second later.

    Called before a round: the round gives every worker a candidate at once, so the
    frozen worker certainly dies with a candidate in flight.
    """
    pid = int(pid_file.read_text().split()[0])  # ``PID ready`` lines (``PID_FILE_ENV``)
    os.kill(pid, signal.SIGSTOP)
    killed.append(pid)
    timer = threading.Timer(1.0, os.kill, (pid, signal.SIGKILL))
    timer.start()
    return timer


def test_round_grid_restarts_at_the_warm_up_boundary() -> None:
    # K = 4, 3 warm-up episodes, 8 episodes: [0, 3) [3, 7) [7, 8)
    ends = [round_end(s, 4, 3, 8, True) for s in (0, 1, 3, 5, 7)]
    assert ends == [3, 3, 7, 7, 8]
    assert [round_end(s, 4, 8, 8, False) for s in (0, 4, 6)] == [4, 8, 8]  # random agent
    assert [round_end(s, 1, 3, 8, True) for s in range(4)] == [1, 2, 3, 4]


def test_in_process_rounds_log_every_candidate_in_proposal_order(reference: Any) -> None:
    result, _ = reference
    assert [e.episode for e in result.episodes] == list(range(8))
    assert [e.phase for e in result.episodes] == ["warm-up"] * 3 + ["explore"] * 5
    distinct = {tuple(sorted(e.kept.items())) for e in result.episodes}
    assert result.evaluations == len(distinct) == sum(not e.cached for e in result.episodes)
    assert result.evaluator["kind"] == "in-process"
    assert result.evaluator["evaluated"] == result.evaluations
    assert result.evaluator["providers"] == ["CPUExecutionProvider"]
    assert result.strategy.parallel == 4


@pytest.mark.parametrize("workers", [1, 2])
def test_process_pool_gives_the_in_process_plan(
    tiny_model: Path, tiny_data: Dataset, tmp_path: Path, reference: Any, workers: int
) -> None:
    expected, plan = reference
    result = _run(tiny_model, tiny_data, tmp_path / "out", _strategy(tmp_path), workers=workers)
    assert (tmp_path / "out" / "plan.json").read_text() == plan
    assert _trace(result) == _trace(expected)  # rewards bit-identical, not approximately
    assert result.evaluator["kind"] == "process-pool"
    assert result.evaluator["workers"] == workers
    assert result.evaluator["evaluated"] == expected.evaluations
    assert multiprocessing.active_children() == []


def test_cli_workers_records_the_evaluator(
    tiny_model: Path, tiny_data: Dataset, tmp_path: Path, reference: Any
) -> None:
    expected, plan = reference
    np.savez(tmp_path / "data.npz", x=tiny_data.x, y=tiny_data.y)
    code, out, err = invoke(
        "search", tiny_model, "--flops", "0.5", "--data", tmp_path / "data.npz",
        "--strategy", _strategy(tmp_path), "-o", tmp_path / "out", "--workers", "2",
        "--latency-runs", "0", "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["evaluator"]["kind"] == "process-pool" and report["evaluator"]["workers"] == 2
    assert (tmp_path / "out" / "plan.json").read_text() == plan
    md = (tmp_path / "out" / "report.md").read_text()
    assert "candidates evaluated by: process-pool, 2 worker(s) x 1 thread(s)" in md


def test_a_killed_worker_is_replaced_and_the_plan_is_unchanged(
    tiny_model: Path,
    tiny_data: Dataset,
    tmp_path: Path,
    reference: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected, plan = reference
    pid_file = tmp_path / "pids"
    monkeypatch.setenv(PID_FILE_ENV, str(pid_file))
    killed: list[int] = []
    timers: list[threading.Timer] = []

    def kill_a_worker(entry: Any) -> None:
        if entry.episode == 2:  # the warm-up round [0, 3) is over, the next one starts
            timers.append(_freeze_then_kill(pid_file, killed))

    result = _run(
        tiny_model, tiny_data, tmp_path / "out", _strategy(tmp_path), workers=2,
        on_episode=kill_a_worker,
    )  # fmt: skip
    timers[0].join()
    assert len(killed) == 1
    assert result.evaluator["worker_restarts"] == 1
    assert result.evaluator["retried_candidates"] == 1
    assert _trace(result) == _trace(expected)
    assert (tmp_path / "out" / "plan.json").read_text() == plan
    assert multiprocessing.active_children() == []


def test_ctrl_c_with_candidates_in_flight_then_resume(
    tiny_model: Path, tiny_data: Dataset, tmp_path: Path, reference: Any
) -> None:
    expected, plan = reference
    alive_at_interrupt: list[int] = []

    def interrupt(entry: Any) -> None:
        if entry.episode == 4:  # inside the round [3, 7): its other candidates are running
            alive_at_interrupt.append(len(multiprocessing.active_children()))
            raise KeyboardInterrupt

    strategy = _strategy(tmp_path)
    cut = _run(tiny_model, tiny_data, tmp_path / "out", strategy, workers=2, on_episode=interrupt)
    assert cut.interrupted and [e.episode for e in cut.episodes] == [0, 1, 2, 3, 4]
    assert alive_at_interrupt == [2] and multiprocessing.active_children() == []
    best = max(cut.episodes, key=lambda e: e.reward)
    assert cut.best_reward == best.reward and cut.kept == best.kept
    assert (tmp_path / "out" / "pruned.onnx").is_file()  # the best plan so far is written
    resumed = _run(tiny_model, tiny_data, tmp_path / "out", strategy, workers=2, resume=True)
    assert resumed.resumed_from == 3  # the checkpoint sits on the last round boundary
    assert _trace(resumed) == _trace(expected)
    assert (tmp_path / "out" / "plan.json").read_text() == plan


def test_ray_local_cluster_survives_a_killed_actor_and_gives_the_same_plan(
    tiny_model: Path,
    tiny_data: Dataset,
    tmp_path: Path,
    reference: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
    expected, plan = reference
    pid_file = tmp_path / "pids"
    monkeypatch.setenv(PID_FILE_ENV, str(pid_file))
    killed: list[int] = []
    timers: list[threading.Timer] = []

    def kill_actor(entry: Any) -> None:
        if entry.episode == 2:  # the warm-up round [0, 3) is over, the next one starts
            timers.append(_freeze_then_kill(pid_file, killed))

    try:
        result = _run(
            tiny_model, tiny_data, tmp_path / "out", _strategy(tmp_path), ray=True, workers=2,
            on_episode=kill_actor,
        )  # fmt: skip
    finally:
        for timer in timers:
            timer.join()
        if ray.is_initialized():  # a failed test must not leak a cluster into the others
            ray.shutdown()
    assert killed and result.evaluator["kind"] == "ray"
    assert result.evaluator["address"] == "local" and result.evaluator["workers"] == 2
    assert result.evaluator["worker_restarts"] == result.evaluator["retried_candidates"] == 1
    assert _trace(result) == _trace(expected)
    assert (tmp_path / "out" / "plan.json").read_text() == plan
    assert not ray.is_initialized()
    assert [p for p in _children() if "ray" in " ".join(p.cmdline()).lower()] == []


def test_evaluation_budget_cuts_a_round(
    tiny_model: Path, tiny_data: Dataset, tmp_path: Path
) -> None:
    strategy = _strategy(tmp_path, episodes=20, recover="none")
    result = _run(tiny_model, tiny_data, tmp_path / "out", strategy, evaluations=5)
    assert result.evaluations == 5
    assert len({tuple(sorted(e.kept.items())) for e in result.episodes}) == 5
    assert not result.episodes[-1].cached  # the round stopped at the fifth distinct plan
    assert any("(evaluation budget 5)" in note for note in result.notes)


def test_constant_reward_stop_after_the_warm_up_round(
    tiny_model: Path, tiny_data: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PlanEvaluator, "__call__", lambda self, kept: -0.5)
    # rounds [0, 4) [4, 6) [6, 8): the check runs after the round that ends the warm-up
    strategy = _strategy(tmp_path, recover="none", warmup=6)
    with pytest.raises(
        OnnxPruneError, match=r"was -0.5 for all \d distinct plans of the 6 warm-up"
    ):
        _run(tiny_model, tiny_data, tmp_path / "out", strategy)
    assert not (tmp_path / "out").exists()


class _FakeCudaSession:
    """A CPU session that says it runs on CUDA when CUDA was asked for (no GPU here)."""

    real = ort.InferenceSession

    def __init__(self, payload: Any, options: Any, providers: list[str]) -> None:
        self.requested = list(providers)
        self.inner = self.real(payload, options, providers=["CPUExecutionProvider"])

    def get_providers(self) -> list[str]:
        return self.requested if self.fake_cuda else ["CPUExecutionProvider"]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("runs_on_cuda", [True, False])
def test_device_cuda_reports_the_provider_that_ran(
    tiny_model: Path,
    tiny_data: Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    runs_on_cuda: bool,
) -> None:
    import onnxprune.evaluate as evaluate

    monkeypatch.setattr(evaluate, "cuda_available", lambda: True)
    monkeypatch.setattr(_FakeCudaSession, "fake_cuda", runs_on_cuda, raising=False)
    monkeypatch.setattr(ort, "InferenceSession", _FakeCudaSession)
    strategy = _strategy(tmp_path, episodes=2, recover="none", warmup=2)
    result = _run(tiny_model, tiny_data, tmp_path / "out", strategy, device="cuda")
    # CUDA was requested for every candidate; the report says what really ran them
    want = "CUDAExecutionProvider" if runs_on_cuda else "CPUExecutionProvider"
    assert result.evaluator["providers"] == [want]


def test_device_cuda_without_a_working_provider_is_refused(
    tiny_model: Path, tiny_data: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxprune.evaluate as evaluate

    monkeypatch.setattr(evaluate, "cuda_available", lambda: False)
    with pytest.raises(OnnxPruneError, match="CUDAExecutionProvider does not initialise"):
        _run(tiny_model, tiny_data, tmp_path / "out", _strategy(tmp_path), device="cuda")


def test_ray_options_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ray_actor_options(1, 0.0) == {"num_cpus": 1, "max_restarts": 0}
    assert ray_actor_options(2, 0.5) == {"num_cpus": 2, "max_restarts": 0, "num_gpus": 0.5}
    with pytest.raises(OnnxPruneError, match="--ray-gpus-per-worker needs --ray"):
        Execution(workers=2, gpus_per_worker=1).check("cuda")
    with pytest.raises(OnnxPruneError, match="--device is cpu; use --device cuda"):
        Execution(ray=True, gpus_per_worker=1).check("cpu")
    with pytest.raises(OnnxPruneError, match="--workers must be >= 0"):
        Execution(workers=-1).check("cpu")
    import builtins

    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(OnnxPruneError, match=r"pip install 'onnxprune\[ray\]'"):
        Execution(ray=True).check("cpu")


class _Bar:
    def __init__(self) -> None:
        self.status = ""

    def advance(self, n: int = 1, status: str = "") -> None:
        self.status = status


def test_progress_status_shows_in_flight_workers_and_throughput() -> None:
    class Setup:
        class strategy:  # noqa: N801 - a stand-in for the strategy record
            parallel = 4

    class Pool:
        busy, alive, workers = 2, 1, 2

    runner = RoundRunner(Setup(), None, None, Pool(), _Bar(), None, print)
    runner.started -= 120.0  # two minutes ago
    runner.evaluated = 30
    runner.state = type("S", (), {"best": None})()
    text = runner._status_text(0.5)
    assert text == "MACs 0.500, 2 in flight, 1/2 workers, 15.0 cand/min"


def test_a_worker_that_cannot_start_is_one_clear_error(tiny_data: Dataset) -> None:
    job = RewardJob(
        model_bytes=b"not an onnx model", groups=[(0, 16)], scores={}, split=tiny_data,
        fit_split=None, metric="top1", reference=None, device="cpu", batch_size=64,
        threads=1, recover_images=None,
    )  # fmt: skip
    with ProcessPoolEvaluator(job, 1) as pool:
        with pytest.raises(OnnxPruneError, match="a search worker could not start: DecodeError"):
            pool.run([{0: 8}], lambda index, result: None)
    assert multiprocessing.active_children() == []


def test_the_reward_evaluator_and_its_copies_share_one_reference_pass(
    tiny_model: Path, tiny_data: Dataset
) -> None:
    # The in-process evaluator scores candidates with a pinned() copy and the final pick
    # re-scores with an on_split() copy: all fit against the same reference and fit split,
    # so the reference side of least squares is computed once for all of them.
    from onnxprune.deps import analyze
    from onnxprune.importance import channel_scores

    analysis = analyze(onnx.load(str(tiny_model)))
    reward, fit, select = tiny_data.subset(range(40)), tiny_data.subset(range(40, 80)), \
        tiny_data.subset(range(80, 120))  # fmt: skip
    evaluator = PlanEvaluator(analysis, channel_scores(analysis, "l1"), reward, "top1", None,
                              "cpu", 64, 1, recover_images=40, fit_split=fit)  # fmt: skip
    pinned = evaluator.pinned(1)
    scorer = evaluator.on_split(select, make_session(tiny_model, device="cpu"))
    assert pinned.reference_targets is evaluator.reference_targets
    assert scorer.reference_targets is evaluator.reference_targets
    for kept in ({0: 8, 1: 12}, {0: 12, 1: 16}):
        pinned(kept)
        scorer(kept)
    assert evaluator.reference_targets.passes == 1

"""Search scale-out benchmark: one search, evaluated in-process / by N workers / on Ray.

ResNet-56 (``examples/cifar_resnet``) at ``--flops 0.5`` with the gnn-rl preset (rounds of
``parallel = 4`` candidates, each repaired by least squares before its reward), the same
seed and K for every configuration, run back to back in one process:

* ``w1``: ``--workers 1`` (a process pool of one: the one-core baseline),
* ``w2``: ``--workers 2``,
* ``ray``: ``--ray`` on a local cluster started with ``num_cpus=2`` (2 actors),
* ``inproc`` (optional): the in-process evaluator.

Every configuration must end with the same plan (``plan_sha256`` in the JSON); the table
gives the search wall time (the loop only: the final stage is made cheap with
``select_top = 1``, ``recover = "none"`` and no latency timing) and the speed-up over
``w1``. Targets (issue 16): >= 1.7x at 2 workers, Ray within 10 % of the process pool.

``--overheads`` measures what scale-out adds per search and per candidate on the local Ray
cluster instead: ``ray.init``, ``ray.put`` of the reward job (model bytes + data splits),
an actor's start with the job (object-store fetch + reward build), the task round-trip of
a trivial actor call, and the per-candidate cost in-process (one thread) for comparison.

Full run (about 15-30 minutes on 2 cores with the default 60 episodes, depending on load)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/search_scaling.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/search_scaling.py --overheads

Writes ``benchmarks/results/search_scaling.json`` (``search_scaling_overheads.json``) and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxprune.data import Preprocess, load_data  # noqa: E402

CONFIGS = {
    "inproc": {},
    "w1": {"workers": 1},
    "w2": {"workers": 2},
    "ray": {"ray": True, "workers": 2},
}


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="w1,w2,ray", help=f"from {','.join(CONFIGS)}")
    parser.add_argument("--episodes", type=int, default=60, help="episodes per search")
    parser.add_argument("--warmup", type=int, default=None, help="default: the preset's, capped")
    parser.add_argument("--strategy", default="gnn-rl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flops", type=float, default=0.5)
    parser.add_argument("--reward-samples", type=int, default=500)
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument(
        "--model", default=str(ROOT / "examples" / "cifar_resnet" / "resnet56.onnx")
    )
    parser.add_argument("--data", default="/work/shared/data/cifar10/calib.npz")
    parser.add_argument("--overheads", action="store_true", help="measure Ray overheads only")
    parser.add_argument("--round-trips", type=int, default=200, help="--overheads: calls timed")
    parser.add_argument("--candidates", type=int, default=3, help="--overheads: timed in-process")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/<name>.json")
    return parser.parse_args()


def _data(args: argparse.Namespace) -> Any:
    data_path = Path(args.data)
    if not data_path.is_file():  # the bundled calibration set when the shared one is absent
        data_path = Path(args.model).parent / "data" / "calib.npz"
    preprocess = Preprocess.from_json(Path(args.model).parent / "data" / "preprocess.json")
    return load_data(data_path, Path(args.model), preprocess)


def _strategy(args: argparse.Namespace) -> Any:
    from onnxprune.search import load_strategy

    preset = load_strategy(args.strategy)
    warmup = preset.warmup if args.warmup is None else args.warmup
    return dataclasses.replace(
        preset,
        episodes=args.episodes,
        warmup=min(warmup, args.episodes),
        select_top=1,
        recover="none",
    )


def _machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "load_avg": os.getloadavg(),
    }


def _write(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def run_configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One search per configuration, back to back; a row per search."""
    from onnxprune.search import run_search

    data, strategy = _data(args), _strategy(args)
    rows = []
    for name in args.configs.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"unknown config '{name}'; use {', '.join(CONFIGS)}")
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            result = run_search(
                args.model, data, args.flops, strategy, Path(tmp) / "out", args.seed,
                reward_samples=args.reward_samples, eval_samples=args.eval_samples,
                show_progress=False, latency_runs=0, **CONFIGS[name],
            )  # fmt: skip
            wall = time.perf_counter() - t0
            plan = (Path(tmp) / "out" / "plan.json").read_bytes()
        row = {
            "config": name,
            "episodes": len(result.episodes),
            "parallel": result.strategy.parallel,
            "evaluations": result.evaluations,
            "search_seconds": result.search_seconds,
            "total_seconds": wall,
            "candidates_per_minute": 60 * result.evaluations / max(result.search_seconds, 1e-9),
            "plan_sha256": hashlib.sha256(plan).hexdigest(),
            "best_reward": result.best_reward,
            "evaluator": result.evaluator,
        }
        rows.append(row)
        print(
            f"{name:6s}: search {row['search_seconds']:.1f} s, total {wall:.1f} s, "
            f"{row['evaluations']} distinct plans, plan {row['plan_sha256'][:12]}",
            flush=True,
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    base = next((r["search_seconds"] for r in rows if r["config"] == "w1"), None)
    lines = [
        "| evaluator | episodes (K) | distinct plans | search wall | speed-up vs w1 "
        "| candidates/min | same plan |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    first = rows[0]["plan_sha256"] if rows else ""
    for row in rows:
        speed = f"{base / row['search_seconds']:.2f}x" if base else "-"
        lines.append(
            f"| {row['config']} | {row['episodes']} ({row['parallel']}) | {row['evaluations']} "
            f"| {row['search_seconds']:.1f} s | {speed} | {row['candidates_per_minute']:.1f} "
            f"| {'yes' if row['plan_sha256'] == first else 'NO'} |"
        )
    return "\n".join(lines)


class _Echo:
    """A trivial actor: holds the job it was started with, answers calls at once."""

    def __init__(self, job: Any) -> None:
        self.job_bytes = len(job.model_bytes) + job.split.x.nbytes

    def size(self) -> int:
        return self.job_bytes

    def echo(self, kept: dict[int, int]) -> int:
        return len(kept)


def _reward_job(args: argparse.Namespace) -> tuple[Any, Any]:
    """The search's reward job and its in-process reward function (no search run)."""
    from onnxprune.search.evaluators import RewardJob
    from onnxprune.search.prepare import prepare

    strategy = _strategy(args)
    strategy.reward_samples = args.reward_samples
    strategy.eval_samples = args.eval_samples
    with tempfile.TemporaryDirectory() as tmp:
        setup = prepare(
            Path(args.model), _data(args), None, args.flops, strategy, Path(tmp), args.seed,
            "cpu", None, time.perf_counter(),
        )  # fmt: skip
    return RewardJob.of(setup.evaluator, 1), setup


def overheads(args: argparse.Namespace) -> dict[str, Any]:
    """Ray start, object-store transfer of the job, actor start, task round-trip, and the
    in-process per-candidate cost."""
    import ray

    from onnxprune.search.evaluators import RayWorker, evaluate_candidate

    job, setup = _reward_job(args)
    job_bytes = len(pickle.dumps(job))  # what crosses to the object store
    reward_fn = setup.evaluator.pinned(1)
    rng = np.random.default_rng(0)
    costs = []
    for _ in range(args.candidates):
        setup.env.reset()
        kept = setup.env.step(rng.uniform(0, 1, setup.env.n_actions), evaluate=False).kept
        costs.append(evaluate_candidate(reward_fn, kept).seconds)
    agent_seconds = _agent_round(setup, costs)
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # fmt: skip
    init_seconds = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        ref = ray.put(job)
        put_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        echo = ray.remote(num_cpus=1)(_Echo).remote(ref)
        ray.get(echo.size.remote())
        echo_start = time.perf_counter() - t0
        t0 = time.perf_counter()
        worker = ray.remote(num_cpus=1)(RayWorker).remote(ref)
        ray.get(worker.evaluate.remote(kept))
        worker_start = time.perf_counter() - t0
        trips = []
        for _ in range(args.round_trips):
            t0 = time.perf_counter()
            ray.get(echo.echo.remote(kept))
            trips.append(time.perf_counter() - t0)
    finally:
        ray.shutdown()
    return {
        "job_bytes": job_bytes,
        "ray_init_seconds": init_seconds,
        "ray_put_seconds": put_seconds,
        "actor_start_with_job_seconds": echo_start,
        "reward_actor_first_candidate_seconds": worker_start,
        "round_trip_ms_p50": 1000 * statistics.median(trips),
        "round_trip_ms_mean": 1000 * statistics.fmean(trips),
        "candidate_seconds_in_process": costs,
        "candidate_seconds_median": statistics.median(costs),
        "agent_round_seconds": agent_seconds,
        "parallel": setup.strategy.parallel,
    }


def _agent_round(setup: Any, costs: list[float]) -> float:
    """Driver time of one exploitation round: K proposals + learning (fake rewards), with
    a replay buffer filled as after the warm-up."""
    from onnxprune.recover.batching import one_torch_thread

    agent, env, k = setup.agent, setup.env, setup.strategy.parallel
    warm = setup.strategy.warmup
    with one_torch_thread():
        filler = [agent.propose(env, episode) for episode in range(min(warm, 30))]
        agent.learn(filler, [-0.5] * len(filler))
        t0 = time.perf_counter()
        proposals = [agent.propose(env, warm + i) for i in range(k)]
        agent.learn(proposals, [-0.5 + 0.01 * i for i in range(k)])
        return time.perf_counter() - t0


def main() -> int:
    args = _parse()
    started = time.time()
    name = "search_scaling_overheads" if args.overheads else "search_scaling"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{name}.json"
    payload: dict[str, Any] = {"benchmark": name, "args": vars(args), "machine": _machine()}
    if args.overheads:
        payload["overheads"] = found = overheads(args)
        for key, value in found.items():
            print(f"{key}: {value}")
    else:
        payload["rows"] = rows = run_configs(args)
        print(table(rows))
    payload["wall_seconds"] = time.time() - started
    _write(out, payload)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

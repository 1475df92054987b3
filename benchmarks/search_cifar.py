"""Search benchmark: every strategy on CIFAR-10 ResNet-20/56 at --flops 0.5.

Reward split: ``reward_samples`` images of ``calib.npz`` (a seeded shuffle of the
training-split calibration set); accuracy: the whole ``test.npz`` (10,000 images, never seen
by the reward). Every searching strategy gets the same number of episodes; the table also
counts the *distinct* plans each run evaluated (repeats hit the reward cache). ``uniform``
evaluates one plan. The presets repair every candidate by least squares before its reward
(``reward_recover = "ls"``) and the final model too (``recover = "ls"``); the script scores
the searched plan both as a raw cut and after that final LS (fit on the same reward split).

``--evaluations N`` gives every strategy the same number of *distinct evaluated plans*
(RL agents repeat plans; repeats hit the cache and cost no evaluation), with ``3 N``
episodes as a cap.

Full matrix (180 episodes = the presets; several hours on 2 idle cores; run per model and
seed with ``--append`` to split it)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/search_cifar.py \\
        --models 20,56 --strategies gnn-rl,agmc,amc,random,uniform --seeds 0,1,2

Writes ``benchmarks/results/search_cifar.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxprune.data import Preprocess, load_data  # noqa: E402
from onnxprune.evaluate import accuracy_from_logits, make_session, predict  # noqa: E402

UNPRUNED = {"20": 81.03, "56": 83.20}


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="20,56", help="ResNet depths, e.g. 20,56")
    parser.add_argument("--strategies", default="gnn-rl,agmc,amc,random,uniform")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--episodes", type=int, default=None, help="default: the preset's (180)")
    parser.add_argument(
        "--evaluations",
        type=int,
        default=0,
        help="equal evaluation budget: stop each search after this many distinct plans "
        "(episodes default to 3x this as a cap); 0: episodes only",
    )
    parser.add_argument("--flops", type=float, default=0.5)
    parser.add_argument("--reward-samples", type=int, default=500)
    parser.add_argument("--test-samples", type=int, default=0, help="0: the full test.npz")
    parser.add_argument("--recover", choices=["none", "ls"], default="none")
    parser.add_argument("--data-dir", default="/work/shared/data/cifar10")
    parser.add_argument("--model-dir", default=str(ROOT / "examples" / "cifar_resnet"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search_cifar.json"))
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep the rows already in --out (same model/strategy/seed/episodes are replaced)",
    )
    return parser.parse_args()


def _test_top1(model, dataset) -> float:
    session = make_session(model.SerializeToString(), device="cpu")
    return float(accuracy_from_logits(predict(session, dataset.x, 500), dataset.y).top1)


def main() -> int:
    args = _parse()
    from onnxprune.deps import analyze
    from onnxprune.model import load_model
    from onnxprune.search import run_search

    model_dir = Path(args.model_dir)
    preprocess = Preprocess.from_json(model_dir / "data" / "preprocess.json")
    rows: list[dict] = []
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if args.append and out_path.exists():
        rows = json.loads(out_path.read_text())["rows"]
    started = time.time()
    episodes = args.episodes
    if args.evaluations and episodes is None:
        episodes = 3 * args.evaluations
    for depth in args.models.split(","):
        model_path = model_dir / f"resnet{depth}.onnx"
        calib = load_data(Path(args.data_dir) / "calib.npz", model_path, preprocess)
        test = load_data(Path(args.data_dir) / "test.npz", model_path, preprocess)
        if args.test_samples:
            test = test.split(args.test_samples, seed=0)[0]
        analysis = analyze(load_model(model_path))
        reference = analysis.model
        unpruned = _test_top1(reference, test)
        print(f"resnet{depth}: unpruned top-1 {unpruned:.2f} % on {len(test)} test images")
        for strategy in args.strategies.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    result = run_search(
                        model_path,
                        calib,
                        args.flops,
                        strategy,
                        tmp,
                        seed,
                        episodes=episodes,  # an agent with a fixed schedule (uniform) keeps it
                        evaluations=args.evaluations,
                        reward_samples=args.reward_samples,
                        eval_data=test,
                        show_progress=False,
                        latency_runs=20,
                    )
                    elapsed = time.perf_counter() - t0
                    row = {
                        "model": f"resnet{depth}",
                        "strategy": Path(strategy).stem if strategy.endswith(".toml") else strategy,
                        "seed": seed,
                        "episodes": len(result.episodes),
                        "evaluation_budget": args.evaluations or None,
                        "evaluations": result.evaluations,
                        "reward_recover": result.strategy.reward_recover,
                        "macs_fraction": result.pruned["macs"] / result.original["macs"],
                        "best_reward": result.best_reward,
                        "reward_top1": 100 * (1 + result.best_reward),
                        "test_top1": result.pruned["accuracy"],
                        "unpruned_test_top1": unpruned,
                        "latency_b1_ratio": _ratio(result, "latency_ms_b1"),
                        "latency_b32_ratio": _ratio(result, "latency_ms_b32"),
                        "search_seconds": result.search_seconds,
                        "seconds": elapsed,
                        "kept": {str(k): v for k, v in result.kept.items()},
                        # does the agent learn? mean reward-split top-1 of the warm-up
                        # episodes vs the last 30 (random: both are random draws)
                        "warmup_mean_top1": _mean_top1(result.episodes[: result.strategy.warmup]),
                        "last30_mean_top1": _mean_top1(result.episodes[-30:]),
                    }
                    if result.recover == "ls":
                        # the strategy already recovered the final model: also score the raw cut
                        from onnxprune.plan import PruningPlan
                        from onnxprune.surgery import apply_plan

                        row["test_top1_ls"] = row["test_top1"]
                        plan = PruningPlan.load(Path(tmp) / "plan.json", analysis)
                        row["test_top1"] = _test_top1(apply_plan(analysis, plan), test)
                    elif args.recover == "ls":
                        from onnxprune.recover.lsq import least_squares_recover

                        pruned = load_model(Path(tmp) / "pruned.onnx")
                        reward_split = calib.subset(result.reward_indices)
                        recovered = least_squares_recover(pruned, reference, reward_split)
                        row["test_top1_ls"] = _test_top1(recovered, test)
                rows = [r for r in rows if _key(r) != _key(row)] + [row]
                print(
                    f"  {strategy:8s} seed {seed}: test top-1 {row['test_top1']:.2f} %"
                    + (f" (ls {row['test_top1_ls']:.2f} %)" if "test_top1_ls" in row else "")
                    + f", reward-split top-1 {row['reward_top1']:.1f} %, MACs "
                    f"{row['macs_fraction']:.3f}, {row['evaluations']} plans, "
                    f"search {row['search_seconds']:.0f} s",
                    flush=True,
                )
                _write(out_path, args, rows, started)
    print(table(rows))
    return 0


def _mean_top1(episodes: list) -> float | None:
    return 100 * (1 + float(np.mean([e.reward for e in episodes]))) if episodes else None


def _key(row: dict) -> tuple:
    budget = row.get("evaluation_budget")
    return (row["model"], row["strategy"], row["seed"], budget or row["episodes"])


def _ratio(result, key: str) -> float | None:
    a, b = result.pruned.get(key), result.original.get(key)
    return None if a is None or not b else a / b


def _write(path: Path, args: argparse.Namespace, rows: list[dict], started: float) -> None:
    payload = {
        "benchmark": "search_cifar",
        "args": vars(args),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg": os.getloadavg(),
        },
        "wall_seconds": time.time() - started,
        "rows": rows,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def table(rows: list[dict]) -> str:
    """Markdown summary: mean (min-max) over seeds per model and strategy."""
    lines = [
        "| model | strategy | seeds | episodes | distinct plans/run | MACs kept "
        "| reward-split top-1 | last-30 mean reward top-1 | test top-1 (raw cut) "
        "| test top-1 after LS | search time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = sorted({(r["model"], r["strategy"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for model, strategy in keys:
        group = [r for r in rows if r["model"] == model and r["strategy"] == strategy]

        def stat(field: str, fmt: str = "{:.2f}", group: list[dict] = group) -> str:
            values = [r[field] for r in group if r.get(field) is not None]
            if not values:
                return "-"
            if len(values) == 1:
                return fmt.format(values[0])
            return f"{fmt.format(np.mean(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"

        lines.append(
            f"| {model} | {strategy} | {len(group)} | {stat('episodes', '{:.0f}')} "
            f"| {stat('evaluations', '{:.0f}')} "
            f"| {stat('macs_fraction', '{:.3f}')} | {stat('reward_top1', '{:.1f}')} "
            f"| {stat('last30_mean_top1', '{:.1f}')} "
            f"| {stat('test_top1')} | {stat('test_top1_ls')} | {stat('search_seconds', '{:.0f}')} s |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

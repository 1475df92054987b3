"""Realised onnxruntime CPU latency of ResNet-56 pruned to 50 % MACs, by channel rounding.

For ``--round-to`` 1, 4, 8 and 16, a uniform plan (``importance.plan_for_flops``, L1 channel
choice, budget fill on) is built for two scopes: ``all`` prunable groups, and ``interior``
groups only (groups with exactly one producer and one consumer: the channels inside a
residual block, found from the dependency analysis, not from names). Each pruned model and
the original are timed *interleaved* (one run of each per round, shuffled order) at batch 32
and batch 1; the latency ratio is median(pruned) / median(original). Top-1 on the first
``--eval`` images of ``test.npz`` is reported too (no recovery: uniform L1 pruning hurts).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/prune_latency.py [--threads 1] [--rounds32 15]

Prints a table and writes ``benchmarks/results/prune_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxprune import importance
from onnxprune.budget import Budget, ChannelRounding
from onnxprune.cost import PlanCost, model_cost
from onnxprune.data import load_data
from onnxprune.deps import analyze
from onnxprune.errors import PlanError
from onnxprune.evaluate import evaluate, make_session
from onnxprune.model import load_model
from onnxprune.plan import kept_counts
from onnxprune.surgery import apply_plan

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "cifar_resnet"


def time_interleaved(
    sessions: dict[str, ort.InferenceSession], x: np.ndarray, rounds: int, warmup: int, seed: int
) -> dict[str, list[float]]:
    """Milliseconds per ``session.run`` for every session, timed round-robin."""
    feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
    for _ in range(warmup):
        for name, session in sessions.items():
            session.run(None, feeds[name])
    order = list(sessions)
    rng = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            sessions[name].run(None, feeds[name])
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def _uniform_plan(analysis, plan_cost, scores, flops, round_to, groups):
    """``(plan, note)``: the uniform plan at ``flops``, or at the smallest reachable fraction
    (with a note) when the budget is out of reach with this rounding."""
    try:
        plan = importance.plan_for_flops(
            analysis, flops, round_to=round_to, scores=scores, plan_cost=plan_cost, groups=groups
        )
        return plan, None
    except PlanError as exc:
        targets = set(groups) if groups is not None else {g.id for g in analysis.prunable_groups()}
        chosen = [g for g in analysis.prunable_groups() if g.id in targets]
        reachable = Budget(plan_cost, ChannelRounding(chosen, round_to)).smallest_fraction
        plan = importance.plan_for_flops(
            analysis, reachable, round_to=round_to, scores=scores, plan_cost=plan_cost,
            groups=groups,
        )  # fmt: skip
        return plan, f"target unreachable ({exc}); timed at {reachable:.4f}"


def _print_table(record: dict, base_macs: int, flops: float, threads: int) -> None:
    print(
        f"{record['model']}: {base_macs:,} MACs, target {flops}, {threads} thread(s), {record['machine']}"
    )
    header = f"{'variant':18s} {'MACs':>6s} {'b32 ms':>8s} {'ratio':>6s} {'b1 ms':>7s} {'ratio':>6s} {'top1':>6s}  widths"
    print(header)
    for name, v in record["variants"].items():
        top1 = f"{v['top1']:.1f}" if v.get("top1") is not None else "-"
        print(
            f"{name:18s} {v['macs_fraction']:6.3f} {v['ms_b32']:8.2f} {v['ratio_b32']:6.3f} "
            f"{v['ms_b1']:7.3f} {v['ratio_b1']:6.3f} {top1:>6s}  {v.get('widths', '')}"
        )
        if "note" in v:
            print(f"{'':18s} ^ {v['note']}")
    print(f"wrote {record['out']} in {record['seconds']} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=EXAMPLE / "resnet56.onnx")
    parser.add_argument("--flops", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds32", type=int, default=15)
    parser.add_argument("--rounds1", type=int, default=100)
    parser.add_argument("--eval", type=int, default=1000, help="test images for top-1 (0: skip)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "prune_latency.json"
    )
    args = parser.parse_args()

    started = time.perf_counter()
    model = load_model(args.model)
    analysis = analyze(model)
    plan_cost = PlanCost(analysis.model, analysis.channel_exprs(), analysis.group_sizes())
    scores = importance.channel_scores(analysis, "l1")
    interior = [
        g.id for g in analysis.prunable_groups() if len(g.producers) == 1 and len(g.consumers) == 1
    ]
    base_macs = model_cost(analysis.model).macs

    variants: dict[str, dict] = {}
    models = {"original": analysis.model}
    for scope, groups in (("all", None), ("interior", interior)):
        for round_to in (1, 4, 8, 16):
            name = f"{scope}/round{round_to}"
            plan, note = _uniform_plan(analysis, plan_cost, scores, args.flops, round_to, groups)
            if note:
                variants[name] = {"note": note}
            pruned = apply_plan(analysis, plan)
            counts = kept_counts(plan, analysis)
            widths = sorted({counts[g.id] for g in analysis.prunable_groups()})
            variants.setdefault(name, {}).update(
                {
                    "scope": scope,
                    "round_to": round_to,
                    "macs_fraction": model_cost(pruned).macs / base_macs,
                    "groups_thinned": sum(
                        1 for g in analysis.prunable_groups() if counts[g.id] < g.size
                    ),
                    "widths": widths,
                }
            )
            models[name] = pruned

    sessions = {
        name: make_session(m, device="cpu", threads=args.threads) for name, m in models.items()
    }
    rng = np.random.default_rng(0)
    for batch, rounds in ((32, args.rounds32), (1, args.rounds1)):
        x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
        times = time_interleaved(sessions, x, rounds, warmup=3, seed=batch)
        base = statistics.median(times["original"])
        for name in models:
            median = statistics.median(times[name])
            entry = variants.setdefault(
                name, {"scope": "-", "round_to": None, "macs_fraction": 1.0}
            )
            entry[f"ms_b{batch}"] = round(median, 3)
            entry[f"ratio_b{batch}"] = round(median / base, 4)

    if args.eval:
        test = load_data(EXAMPLE / "data" / "test.npz", args.model)
        subset = test.subset(np.arange(min(args.eval, len(test.x))))
        for name, session in sessions.items():
            variants[name]["top1"] = evaluate(session, subset).top1

    record = {
        "model": str(
            args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model
        ),
        "flops_target": args.flops,
        "criterion": "l1",
        "threads": args.threads,
        "onnxruntime": ort.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
        "rounds": {"batch32": args.rounds32, "batch1": args.rounds1},
        "eval_images": args.eval,
        "interior_groups": len(interior),
        "prunable_groups": len(analysis.prunable_groups()),
        "note": "shared machine: other jobs were running; ratios from interleaved medians",
        "seconds": round(time.perf_counter() - started, 1),
        "variants": variants,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")

    _print_table({**record, "out": args.out}, base_macs, args.flops, args.threads)


if __name__ == "__main__":
    main()

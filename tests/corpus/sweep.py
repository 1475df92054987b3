"""Heavier exactness sweep than the test suite: many random plans per corpus model.

    OMP_NUM_THREADS=1 python -m tests.corpus.sweep --plans 300 [--models resnet_a unet]

Each plan thins a random ~60 % of the prunable groups to random keep sets (equal counts per
``block_count`` block) and runs ``tests.test_exactness.check_plan`` (outputs vs masked
reference, onnx.checker full check, PlanCost vs model_cost). Prints the worst relative error
per model and every failing plan; exit code 1 if any plan fails.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

from tests import test_exactness as exactness
from tests.corpus import CORPUS


def random_keep(groups, rng: random.Random) -> dict[int, list[int]]:
    keep: dict[int, list[int]] = {}
    for group in groups:
        if rng.random() >= 0.6:
            continue
        blocks = max(group.block_count, 1)
        block_size = group.size // blocks
        per_block = rng.randint(1, block_size)
        indices: list[int] = []
        for block in range(blocks):
            indices += [block * block_size + i for i in rng.sample(range(block_size), per_block)]
        keep[group.id] = sorted(indices)
    return keep


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=int, default=100, help="random plans per model")
    parser.add_argument("--models", nargs="*", default=sorted(CORPUS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    started = time.perf_counter()
    failures: list[tuple[str, dict, str]] = []
    tried, worst_overall = 0, 0.0
    with tempfile.TemporaryDirectory() as folder:

        def build(name: str) -> Path:
            return CORPUS[name](Path(folder))

        for position, name in enumerate(args.models):
            case = exactness._case(name, build)
            groups = case.analysis.prunable_groups()
            rng = random.Random(args.seed * 1000 + position)
            worst = 0.0
            for _ in range(args.plans if groups else 0):
                keep = random_keep(groups, rng)
                if not keep:
                    continue
                tried += 1
                try:
                    worst = max(worst, exactness.check_plan(case, keep))
                except AssertionError as exc:
                    failures.append((name, keep, str(exc).splitlines()[0][:300]))
            worst_overall = max(worst_overall, worst)
            print(f"{name:18s} {len(groups):3d} prunable groups, worst relative error {worst:.2e}")
    print(
        f"{tried} plans on {len(args.models)} models, worst relative error {worst_overall:.2e}, "
        f"{len(failures)} failing, {time.perf_counter() - started:.0f} s"
    )
    for name, keep, message in failures:
        print(f"FAIL {name} keep={keep}: {message}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

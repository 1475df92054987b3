"""Long fuzz profile: mutated models through ``flops``, ``groups`` and ``prune --ratio 0.3``.

    python benchmarks/fuzz.py --examples 5000            # the bundled ResNet-20 and a tiny CNN
    python benchmarks/fuzz.py --examples 300 --model tiny

Each example picks a mutation (byte flips, truncation, or a structural edit through the onnx
API: huge dims, nodes without inputs/outputs, wrong dtypes, bad attributes, odd opsets, short
data, dangling inputs, cycles; see ``tests/fuzzing.py``), a seed and a command, runs the
command in-process and judges the outcome: exit 0 only on a model ``onnx.checker`` accepts,
otherwise exit 2 with one line; never an internal error, a traceback, a hang (a per-example
time limit), a modified input or a half-written output. Prints a summary and the failures,
and writes ``benchmarks/results/fuzz.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.conftest import make_tiny_cnn  # noqa: E402
from tests.fuzzing import COMMANDS, STRUCTURAL, Case, mutate, run_case  # noqa: E402

RESULTS = HERE / "results" / "fuzz.json"
KINDS = ["flip", "truncate", *STRUCTURAL]


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Timeout


def _models(which: str) -> dict[str, bytes]:
    models = {}
    if which in ("all", "tiny"):
        models["tiny_cnn"] = make_tiny_cnn().SerializeToString()
    if which in ("all", "resnet20"):
        models["resnet20"] = (HERE.parent / "examples/cifar_resnet/resnet20.onnx").read_bytes()
    return models


def _one(raw: bytes, command: str, kind: str, seed: int, folder: Path, limit: int) -> Case:
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit)
    try:
        return run_case(raw, command, kind, seed, folder)
    except _Timeout:
        return Case(command, kind, seed, -2, f"hang: no answer within {limit} s", False)
    finally:
        signal.alarm(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=600)
    parser.add_argument("--model", choices=["all", "tiny", "resnet20"], default="all")
    parser.add_argument("--limit", type=int, default=60, help="seconds per example")
    args = parser.parse_args()
    commands = sorted(COMMANDS)
    rows = []
    failures: list[dict[str, object]] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, raw in _models(args.model).items():
            outcomes: Counter[str] = Counter()
            for example in range(args.examples):
                kind = KINDS[example % len(KINDS)]
                command = commands[(example // len(KINDS)) % len(commands)]
                case = _one(
                    mutate(raw, kind, example), command, kind, example, Path(tmp), args.limit
                )
                problem = case.verdict() if case.code != -2 else case.stderr
                outcomes["exit 0" if case.code == 0 else f"exit {case.code}"] += 1
                if problem is not None:
                    failures.append({"model": name, "command": command, "kind": kind,
                                     "seed": example, "problem": problem})  # fmt: skip
            rows.append({"model": name, "examples": args.examples, "outcomes": dict(outcomes)})
            print(f"{name}: {args.examples} examples, {dict(outcomes)}")
    seconds = time.perf_counter() - start
    print(f"{len(failures)} failure(s) in {seconds:.0f} s")
    for failure in failures[:40]:
        print(f"  {failure}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {platform.python_version()}",
                "seconds": seconds,
                "rows": rows,
                "failures": failures,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

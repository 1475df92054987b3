"""Crash test: SIGKILL a search at random points, resume it, compare with an uninterrupted run.

    python benchmarks/crash_resume.py --kills 20

A tiny CNN (``tests/conftest.make_tiny_cnn``) and 160 synthetic labelled samples are written
to a temporary folder; a 12-episode gnn-rl search with per-candidate least squares and a
final pick runs once uninterrupted (the reference plan), then ``--kills`` times it is
started, killed with SIGKILL after a random delay inside its run time (import, analysis,
episodes, checkpoint writes, final pick, materialisation, report), inspected (every output
file present must be whole: plan and report parse, the model loads and passes the checker,
the checkpoint loads), and resumed (``--resume`` when a checkpoint exists, else a fresh run
into the same folder) to the end. Each resumed run must give the reference plan and leave
no temporaries behind. Prints a summary and writes ``benchmarks/results/crash_resume.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.conftest import make_tiny_cnn  # noqa: E402

RESULTS = HERE / "results" / "crash_resume.json"
STRATEGY = """agent = "gnn-rl"
episodes = 12
warmup = 4
steps_per_episode = 2
round_to = 2
min_channels = 2
skip = []
reward_samples = 60
batch_size = 64
encoder_dim = 8
reward_recover = "ls"
recover_images = 40
recover = "ls"
select_top = 3
select_samples = 30
[noise]
sigma = 0.4
decay = 0.9
[ddpg]
hidden = 16
batch_size = 8
updates_per_episode = 2
"""


def _command(folder: Path, out: Path, resume: bool) -> list[str]:
    args = [sys.executable, "-c", "from onnxprune.cli import entry; entry()", "search"]
    args += [str(folder / "tiny.onnx"), "--flops", "0.5", "--data", str(folder / "data.npz")]
    args += ["--strategy", str(folder / "crash.toml"), "--seed", "3", "-o", str(out)]
    return args + (["--resume"] if resume else [])


def _prepare(folder: Path) -> None:
    onnx.save_model(make_tiny_cnn((16, 24)), str(folder / "tiny.onnx"))
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (160, 3, 16, 16)).astype(np.float32)
    np.savez(folder / "data.npz", x=x, y=rng.integers(0, 10, 160).astype(np.int64))
    (folder / "crash.toml").write_text(STRATEGY)


def _keep(out: Path) -> dict[str, list[int]]:
    plan = json.loads((out / "plan.json").read_text())
    return {str(g["id"]): g["keep"] for g in plan["groups"]}


def _whole(out: Path) -> list[str]:
    """Output files present after a kill that are not whole (they must all be)."""
    from onnxprune.search.checkpoint import CHECKPOINT, Checkpoint

    broken = []
    checks = {
        "plan.json": lambda p: json.loads(p.read_text()),
        "report.json": lambda p: json.loads(p.read_text()),
        "pruned.onnx": lambda p: onnx.checker.check_model(onnx.load(str(p))),
        CHECKPOINT: lambda p: Checkpoint(p, {})._read(),
    }
    for name, check in checks.items():
        path = out / name
        if path.exists():
            try:
                check(path)
            except Exception as exc:  # any failure to read is a half-written output
                broken.append(f"{name}: {type(exc).__name__}: {exc}"[:200])
    return broken


def _wait_for(path: Path, process: subprocess.Popen) -> float:
    """Time when ``path`` appears (or the process ends)."""
    while not path.exists() and process.poll() is None:
        time.sleep(0.05)
    return time.perf_counter()


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=900)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    chooser = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _prepare(folder)
        start = time.perf_counter()
        reference_out = folder / "reference"
        process = subprocess.Popen(_command(folder, reference_out, False),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        first_checkpoint = _wait_for(reference_out / "checkpoint.pt", process)
        first_checkpoint -= start
        _, stderr = process.communicate()
        reference = subprocess.CompletedProcess(process.args, process.returncode, "", stderr)
        duration = time.perf_counter() - start
        if reference.returncode != 0:
            raise SystemExit(f"the uninterrupted search failed: {reference.stderr}")
        expected = _keep(folder / "reference")
        print(f"uninterrupted search: {duration:.1f} s (first checkpoint after "
              f"{first_checkpoint:.1f} s), plan {expected}")  # fmt: skip
        for kill in range(args.kills):
            out = folder / f"kill{kill}"
            process = subprocess.Popen(_command(folder, out, False), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)  # fmt: skip
            # a third of the kills anywhere (start-up, analysis ...), the rest once the search
            # is checkpointing: episodes, final pick, materialisation and report
            begun = time.perf_counter()
            if kill % 3:
                _wait_for(out / "checkpoint.pt", process)
                time.sleep(chooser.uniform(0.0, max(duration - first_checkpoint, 0.5)))
            else:
                time.sleep(chooser.uniform(0.2, duration))
            delay = time.perf_counter() - begun
            process.send_signal(signal.SIGKILL)
            process.wait()
            broken = _whole(out) if out.exists() else []
            resume = (out / "checkpoint.pt").exists()
            finished = _run(_command(folder, out, resume))
            leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith(".")) if out.exists() else []  # fmt: skip
            same = finished.returncode == 0 and _keep(out) == expected
            rows.append({"kill": kill, "after_s": round(delay, 2), "resumed": resume,
                         "exit": finished.returncode, "same_plan": same, "half_written": broken,
                         "leftovers": leftovers,
                         "stderr": finished.stderr.strip().splitlines()[-1:] if finished.returncode else []})  # fmt: skip
            print(f"kill {kill:2d} after {delay:5.1f} s: resume={resume} exit={finished.returncode} "
                  f"same plan={same} half-written={broken or 'none'} leftovers={leftovers or 'none'}")  # fmt: skip
    same = sum(r["same_plan"] for r in rows)
    half = sum(bool(r["half_written"]) for r in rows)
    print(
        f"{same}/{len(rows)} resumed with the uninterrupted plan; {half} kill(s) left a half-written output"
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": f"{platform.machine()}, Python {platform.python_version()}",
                                   "uninterrupted_s": duration, "same_plan": same,
                                   "half_written": half, "rows": rows}, indent=1) + "\n")  # fmt: skip
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

"""Per-candidate cost of a search on an ImageNet-size model, and the two fixes it needs.

Part 1 -- one candidate of an ImageNet-size search. A ResNet-50-like model is defined here
in torch (bottleneck blocks 3-4-6-3, widths 64..2048, 224x224 input, random weights, BN
folded by the exporter), exported with ``torch.onnx.export(dynamo=False)``. One candidate at
0.5 of the MACs (the uniform-ratio L1 plan of ``prune --flops 0.5``) costs

    surgery   plan_from_counts + apply_plan (the analysis is shared by all candidates and
              timed once, as ``analysis``)
    ls        least squares on 250 images (``reconstruct``, 16 positions per image, as the
              search's per-candidate fit does), torch on 1 thread; the first candidate runs
              the reference pass, a later one (0.55 of the MACs, another plan) reuses its
              sampled targets (``ReferenceTargets``, as a search's evaluator does)
    reward    an onnxruntime session (1 thread) and one pass over 250 images

Each stage reports CPU seconds (user + system of the process and its children,
``resource.getrusage``) and its peak resident memory (``VmHWM`` of ``/proc/self/status``,
reset before the stage through ``/proc/self/clear_refs``). Least squares also runs alone at
64 and at 250 images, each in a fresh process, to show that its memory does not grow with
the number of images. Targets (issue 16): the candidate under 30 CPU-s and 1.5 GB.

Part 2 -- before/after on the CIFAR examples (``--before-tree DIR``: a checkout of the code
before this change, run through the same CLI with ``PYTHONPATH=DIR``):

    recover   ``onnxprune recover --method ls`` on examples/cifar_resnet/resnet20.onnx pruned
              at ``--flops 0.5`` (800 calibration images)
    prune     ``onnxprune prune --flops 0.5`` on a CIFAR ResNet-1202 (random weights)

Run (about 5 CPU-minutes)::

    .venv/bin/python benchmarks/candidate_cost.py --before-tree ../main

Writes ``benchmarks/results/candidate_cost.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "cifar_resnet"
RESULTS = Path(__file__).resolve().parent / "results" / "candidate_cost.json"


# -- measuring ---------------------------------------------------------------------------------


def _cpu_seconds() -> float:
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak() -> None:
    # Linux: writing 5 resets the peak resident set size (VmHWM) to the current one.
    Path("/proc/self/clear_refs").write_text("5")


def _stage(label: str, record: dict[str, Any], work) -> Any:
    _reset_peak()
    cpu, wall = _cpu_seconds(), time.perf_counter()
    result = work()
    record[label] = {
        "cpu_s": round(_cpu_seconds() - cpu, 2),
        "wall_s": round(time.perf_counter() - wall, 2),
        "peak_rss_mib": round(_status_mib("VmHWM"), 1),
    }
    print(f"  {label:10s} {record[label]}", flush=True)
    return result


# -- the model --------------------------------------------------------------------------------


def build_resnet50_like(path: Path) -> None:
    """A ResNet-50-like classifier (bottlenecks 3-4-6-3, 64..2048 wide) at 224x224."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, mid: int, stride: int) -> None:
            super().__init__()
            cout = 4 * mid
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
            )  # fmt: skip
            self.shortcut = (
                nn.Identity() if stride == 1 and cin == cout
                else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            )  # fmt: skip

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.body(x) + self.shortcut(x))

    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                               nn.ReLU(), nn.MaxPool2d(3, 2, 1)]  # fmt: skip
    cin = 64
    for mid, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for block in range(blocks):
            layers.append(Bottleneck(cin, mid, stride if block == 0 else 1))
            cin = 4 * mid
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))
    torch.manual_seed(0)
    for module in model.modules():  # random but not degenerate BN statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.0)
    model.eval()
    torch.onnx.export(
        model, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False, opset_version=17,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )  # fmt: skip


def _images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (count, 3, 224, 224)).astype(np.float32)


# -- workers (each a fresh process) -------------------------------------------------------------


def _worker_candidate(model_path: Path, images: int) -> dict[str, Any]:
    """Analysis once, then two candidates as a search runs them: surgery, least squares
    (sharing one ReferenceTargets, as a search's evaluator does), reward pass. The first
    candidate pays for the reference pass; the second (another plan) reuses its targets."""
    from onnxprune import importance
    from onnxprune.deps import analyze
    from onnxprune.evaluate import make_session, predict
    from onnxprune.model import load_model
    from onnxprune.recover.lsq import reconstruct
    from onnxprune.recover.stream import release_free_memory
    from onnxprune.recover.targets import ReferenceTargets
    from onnxprune.surgery import apply_plan

    record: dict[str, Any] = {"images": images}
    model = load_model(model_path)
    fit_split, reward_split = _images(images, 1), _images(images, 2)
    record["rss_before_mib"] = round(_status_mib("VmRSS"), 1)
    analysis = _stage("analysis", record, lambda: analyze(model))
    scores = importance.channel_scores(analysis, "l1")
    cache = ReferenceTargets()
    for label, fraction in (("first", 0.5), ("later", 0.55)):
        plan = importance.plan_for_flops(analysis, fraction)
        counts = {g: len(keep) for g, keep in plan.keep.items()}
        part: dict[str, Any] = {"macs_fraction": plan.meta.get("macs_fraction")}

        def surgery(counts: dict[int, int] = counts) -> Any:
            return apply_plan(analysis, importance.plan_from_counts(analysis, counts, scores))

        pruned = _stage("surgery", part, surgery)
        fit = _stage("ls", part, lambda pruned=pruned: reconstruct(
            pruned, model, fit_split, max_images=images, positions_per_image=16, seed=0,
            reference_targets=cache,
        ))  # fmt: skip
        part["ls"].update(_ls_info(fit))
        part["ls"]["reference_passes_so_far"] = cache.passes

        def reward(fit: Any = fit) -> float:
            data = fit.model.SerializeToString()
            session = make_session(data, device="cpu", threads=1, spin=False)
            return float(predict(session, reward_split, 32).mean())

        _stage("reward", part, reward)
        part["candidate"] = {
            "cpu_s": round(sum(part[s]["cpu_s"] for s in ("surgery", "ls", "reward")), 2),
            "peak_rss_mib": max(part[s]["peak_rss_mib"] for s in ("surgery", "ls", "reward")),
        }
        record[label] = part
        print(f"  {label} candidate ({part['macs_fraction']:.3f} MACs): {part['candidate']}",
              file=sys.stderr, flush=True)  # fmt: skip
        # a search keeps nothing of a candidate but its reward: free it before the next
        del fit, pruned
        gc.collect()
        release_free_memory()
    record["reference_targets_spilled_mib"] = round(cache.spilled_bytes / 2**20, 1)
    cache.close()
    return record


def _ls_info(fit: Any) -> dict[str, Any]:
    return {
        "layers": len(fit.layers),
        "images": fit.images,
        "peak_batches_in_memory": fit.peak_batches_in_memory,
        "peak_activation_mib": round(fit.peak_activation_bytes / 2**20, 1),
        "spilled_mib": round(fit.spilled_bytes / 2**20, 1),
    }


def _worker_ls(model_path: Path, images: int) -> dict[str, Any]:
    """Least squares alone on ``images`` images (the memory-independence figure)."""
    from onnxprune import importance
    from onnxprune.deps import analyze
    from onnxprune.model import load_model
    from onnxprune.recover.lsq import reconstruct
    from onnxprune.surgery import apply_plan

    model = load_model(model_path)
    analysis = analyze(model)
    pruned = apply_plan(analysis, importance.plan_for_flops(analysis, 0.5))
    data = _images(images, 1)
    record: dict[str, Any] = {"images": images, "rss_before_mib": round(_status_mib("VmRSS"), 1)}
    fit = _stage("ls", record, lambda: reconstruct(pruned, model, data, max_images=images,
                                                   positions_per_image=16, seed=0))  # fmt: skip
    record["ls"].update(_ls_info(fit))
    return record


def _spawn(kind: str, model_path: Path, images: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", kind, "--model", str(model_path),
         "--images", str(images)],
        check=True, capture_output=True, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    sys.stderr.write(out.stderr[-2000:] if out.returncode else "")
    print(out.stdout.rsplit("\n", 2)[0], flush=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- part 2: before / after through the CLI -----------------------------------------------------


def _cli(tree: Path, args: list[str]) -> dict[str, Any]:
    """Wall and CPU seconds and peak RSS of ``onnxprune ARGS`` run from the code in ``tree``."""
    code = (
        # VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork + exec.
        "import atexit, pathlib, sys; from onnxprune.cli import entry; "
        "hwm = lambda: [l for l in pathlib.Path('/proc/self/status').read_text().splitlines() "
        "if l.startswith('VmHWM')][0].split()[1]; "
        "atexit.register(lambda: sys.stderr.write(f'\\nMAXRSS {hwm()}\\n')); "
        "sys.argv[0] = 'onnxprune'; entry()"
    )
    env = dict(os.environ, PYTHONPATH=str(tree))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, cwd=tree)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"onnxprune {' '.join(args)} failed: {done.stderr[-1500:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "wall_s": round(time.perf_counter() - start, 2),
        "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
        "peak_rss_mib": round(int(done.stderr.rsplit("MAXRSS", 1)[1].split()[0]) / 1024.0, 1),
        "stdout": done.stdout,
    }


def build_resnet1202(path: Path) -> None:
    """The CIFAR ResNet-1202 of examples/cifar_resnet (random weights), dynamic batch."""
    import torch

    sys.path.insert(0, str(EXAMPLES))
    from resnet_cifar import CifarResNet

    torch.manual_seed(0)
    model = CifarResNet(1202).eval()
    torch.onnx.export(
        model, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )  # fmt: skip


def _before_after(trees: dict[str, Path], work: Path, repeats: int) -> dict[str, Any]:
    pruned20 = work / "resnet20_p50.onnx"
    _cli(ROOT, ["prune", str(EXAMPLES / "resnet20.onnx"), "--flops", "0.5", "-o", str(pruned20)])
    deep = work / "resnet1202.onnx"
    build_resnet1202(deep)
    commands = {
        "recover_ls_resnet20": lambda label: [
            "recover", str(pruned20), "--reference", str(EXAMPLES / "resnet20.onnx"),
            "--data", str(EXAMPLES / "data" / "calib.npz"), "--method", "ls",
            "-o", str(work / f"r20_{label}.onnx"), "--json",
        ],
        "prune_flops_resnet1202": lambda label: [
            "prune", str(deep), "--flops", "0.5", "-o", str(work / f"r1202_{label}.onnx"), "--json",
        ],
    }  # fmt: skip
    results: dict[str, Any] = {}
    for name, make_args in commands.items():
        results[name] = {label: [] for label in trees}
        for _ in range(repeats):  # interleaved, so both sides see the same machine load
            for label, tree in trees.items():
                run = _cli(tree, make_args(label))
                if name.startswith("recover"):
                    ls = json.loads(run["stdout"])["least_squares"]
                    run["ls_seconds"] = round(ls["seconds"], 2)
                    run["top1_after"] = json.loads(run["stdout"])["after"]["top1"]
                run.pop("stdout")
                results[name][label].append(run)
                print(f"  {name} {label}: {run}", flush=True)
    return results


def _commit(tree: Path) -> str:
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)  # fmt: skip
    return f"{tree} @ {done.stdout.strip() or 'unknown'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", choices=["candidate", "ls"])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--images", type=int, default=250)
    parser.add_argument("--before-tree", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-candidate", action="store_true")
    args = parser.parse_args()
    if args.worker:
        work = _worker_candidate if args.worker == "candidate" else _worker_ls
        print(json.dumps(work(args.model, args.images)))
        return
    record: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), {platform.platform()}",
        "load_average_start": os.getloadavg(),
    }
    if args.skip_candidate and RESULTS.exists():  # keep the last run's candidate figures
        previous = json.loads(RESULTS.read_text())
        record.update({k: previous[k] for k in ("candidate", "ls_alone") if k in previous})
    with tempfile.TemporaryDirectory(prefix="candidate-cost-") as folder:
        work = Path(folder)
        if not args.skip_candidate:
            model_path = work / "resnet50_like.onnx"
            build_resnet50_like(model_path)
            print("ResNet-50-like, a first and a later candidate:", flush=True)
            record["candidate"] = _spawn("candidate", model_path, args.images)
            record["ls_alone"] = {n: _spawn("ls", model_path, n) for n in (64, args.images)}
        trees = {"after": ROOT}
        if args.before_tree is not None:
            trees = {"before": args.before_tree.resolve(), **trees}
        print("CIFAR before/after:", flush=True)
        record["before_after"] = _before_after(trees, work, args.repeats)
        record["trees"] = {label: _commit(tree) for label, tree in trees.items()}
    record["load_average_end"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

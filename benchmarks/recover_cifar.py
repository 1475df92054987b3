"""Accuracy recovery on the bundled CIFAR-10 ResNets pruned to a MACs budget.

For each model: prune with the uniform-ratio L1 plan (``importance.plan_for_flops``) or a
given plan file, then measure top-1 on ``test.npz`` for

    none         the pruned model as is
    ls           least-squares reconstruction (onnxprune.recover.reconstruct)
    finetune     distillation fine-tuning from the pruned model
    ls+finetune  least squares, then fine-tuning

(each through ``onnxprune.pipeline.recover_model``, the dispatch ``onnxprune recover`` uses).

Each method runs in a forked child process, so its wall time and peak resident memory
(``ru_maxrss`` of the child, which counts the parent's pages once the child touches them;
the parent's peak at fork time is ``rss_at_fork_mib``) are its own. Results go to ``benchmarks/results/recover_cifar.json``.

Full run for the issue's target (about 35-40 CPU-minutes on an idle 2-core machine)::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/recover_cifar.py --models resnet56 \\
        --methods none,ls,ls+finetune --minutes 30 --epochs 60
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "cifar_resnet"
DATA = Path(os.environ.get("ONNXPRUNE_DATA", ROOT.parent / "shared" / "data")) / "cifar10"
RESULTS = Path(__file__).resolve().parent / "results" / "recover_cifar.json"
UNPRUNED_REFERENCE = {"resnet20": 81.03, "resnet56": 83.20}  # ../shared/data READMEs


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _run_method(method: str, pruned, reference, calib, args, queue) -> None:
    from onnxprune.pipeline import recover_model

    start = time.perf_counter()
    result = recover_model(
        pruned, reference, calib, method, ls_images=args.ls_images, epochs=args.epochs,
        lr=args.lr, batch=args.batch, minutes=args.minutes, seed=args.seed,
    )  # fmt: skip
    info: dict[str, Any] = {}
    if result.least_squares is not None:
        fit = result.least_squares
        info["ls_seconds"] = round(fit.seconds, 2)
        info["ls_layers"] = len(fit.layers)
        info["ls_images"] = fit.images
        info["ls_peak_activation_mib"] = round(fit.peak_activation_bytes / 2**20, 1)
    if result.finetune is not None:
        info["finetune"] = result.finetune.to_dict()
    info["seconds"] = round(time.perf_counter() - start, 2)
    info["peak_rss_mib"] = round(_rss_mib(), 1)
    queue.put((result.model.SerializeToString(), info))


def _in_child(method: str, pruned, reference, calib, args) -> tuple[Any, dict[str, Any]]:
    import onnx

    context = mp.get_context("fork")
    queue = context.Queue()
    rss_at_fork = _rss_mib()
    child = context.Process(
        target=_run_method, args=(method, pruned, reference, calib, args, queue)
    )
    child.start()
    payload, info = queue.get()
    child.join()
    info["rss_at_fork_mib"] = round(rss_at_fork, 1)
    return onnx.load_from_string(payload), info


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from onnxprune.cost import model_cost
    from onnxprune.data import Preprocess, load_data
    from onnxprune.deps import analyze
    from onnxprune.evaluate import evaluate, make_session
    from onnxprune.importance import plan_for_flops
    from onnxprune.model import load_model
    from onnxprune.plan import PruningPlan
    from onnxprune.surgery import apply_plan

    reference_raw = load_model(EXAMPLES / f"{name}.onnx")
    analysis = analyze(reference_raw)
    reference = analysis.model
    plan_file = dict(item.split("=", 1) for item in args.plan).get(name)
    if plan_file:
        plan = PruningPlan.load(plan_file, analysis)
        plan_label = f"searched ({plan_file})"
    else:
        plan = plan_for_flops(analysis, args.flops)
        plan_label = f"uniform L1, --flops {args.flops}"
    pruned = apply_plan(analysis, plan)
    macs_fraction = model_cost(pruned).macs / model_cost(reference).macs
    preprocess = Preprocess.from_json(EXAMPLES / "data" / "preprocess.json")
    calib = load_data(DATA / "calib.npz", reference, preprocess)
    test = load_data(DATA / "test.npz", reference, preprocess)
    if args.test_limit and args.test_limit < len(test):
        (test,) = test.split(args.test_limit, seed=0)

    def accuracy(model) -> float:
        return round(evaluate(make_session(model, device="cpu"), test).top1, 2)

    record: dict[str, Any] = {
        "model": name, "plan": plan_label, "macs_fraction": round(macs_fraction, 4),
        "unpruned_top1": accuracy(reference), "test_images": len(test),
        "recovery_images": len(calib), "methods": {},
    }  # fmt: skip
    print(
        f"{name}: unpruned {record['unpruned_top1']} %, MACs kept {macs_fraction:.3f}", flush=True
    )
    for method in args.methods.split(","):
        if method == "none":
            model, info = pruned, {"seconds": 0.0}
        else:
            model, info = _in_child(method, pruned, reference, calib, args)
        info["top1"] = accuracy(model)
        info["run"] = {
            "epochs": args.epochs, "minutes": args.minutes, "lr": args.lr, "batch": args.batch,
            "ls_images": args.ls_images, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        }  # fmt: skip
        record["methods"][method] = info
        print(f"  {method:12s} top-1 {info['top1']:6.2f} %  {json.dumps(info)}", flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet20,resnet56")
    parser.add_argument("--methods", default="none,ls,finetune,ls+finetune")
    parser.add_argument("--flops", type=float, default=0.5, help="fraction of MACs kept")
    parser.add_argument(
        "--plan",
        action="append",
        default=[],
        metavar="MODEL=plan.json",
        help="use a (searched) plan file for MODEL instead of uniform",
    )
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--minutes", type=float, default=None, help="fine-tune budget per run")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--ls-images", type=int, default=1000)
    parser.add_argument("--test-limit", type=int, default=0, help="0 = the full 10,000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="", help="label of this run's records (e.g. 'long')")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep other (model, tag, method) results already in --out",
    )
    args = parser.parse_args(argv)

    import onnxruntime
    import torch

    started = time.time()
    records = [bench_model(name, args) for name in args.models.split(",")]
    for record in records:
        record["tag"] = args.tag
        record["settings"] = {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        }
    if args.merge and args.out.exists():
        previous = json.loads(args.out.read_text())["results"]
        for old in previous:
            new = next(
                (
                    r
                    for r in records
                    if (r["model"], r["tag"]) == (old["model"], old.get("tag", ""))
                ),
                None,
            )
            if new is None:
                records.append(old)
            else:  # keep methods this run did not repeat
                new["methods"] = {**old["methods"], **new["methods"]}
    out = {
        "benchmark": "recover_cifar",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "note": "shared machine, other jobs running: timings are noisy",
        },
        "wall_seconds": round(time.time() - started, 1),
        "results": records,
        "unpruned_readme_top1": UNPRUNED_REFERENCE,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

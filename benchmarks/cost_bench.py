"""How fast is pricing a plan? PlanCost.macs on the bundled ResNet-20/56 (target <= 50 us).

Channel expressions come from the real dependency analysis (``onnxprune.deps.analyze``).
Prints a table and writes ``benchmarks/results/cost_bench.json``. Timings are wall-clock
medians of repeated batches of calls; on a shared machine they are noisy upward.

    .venv/bin/python benchmarks/cost_bench.py
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxprune.cost import PlanCost, model_cost  # noqa: E402
from onnxprune.deps import analyze  # noqa: E402
from onnxprune.evaluate import cpu_model  # noqa: E402
from onnxprune.model import load_model  # noqa: E402

MODELS = ("resnet20", "resnet56")
CALLS = 2000
REPEATS = 7


def _per_call_us(func, args_list) -> float:
    """Median over REPEATS of the mean time per call (us) across ``args_list``."""
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for args in args_list:
            func(args)
        samples.append((time.perf_counter() - start) / len(args_list) * 1e6)
    return float(np.median(samples))


def bench(name: str) -> dict:
    path = ROOT / "examples" / "cifar_resnet" / f"{name}.onnx"
    model = load_model(path)
    start = time.perf_counter()
    report = model_cost(model)
    model_cost_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    analysis = analyze(model)
    analyze_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    plan_cost = PlanCost(analysis.model, analysis.channel_exprs(), analysis.group_sizes())
    build_ms = (time.perf_counter() - start) * 1e3
    assert plan_cost.full_macs == report.macs, (plan_cost.full_macs, report.macs)

    rng = np.random.default_rng(0)
    sizes = np.array([plan_cost.group_sizes[g] for g in plan_cost.group_ids])
    vectors = [rng.integers(1, sizes + 1) for _ in range(CALLS)]
    dicts = [dict(zip(plan_cost.group_ids, v.tolist(), strict=True)) for v in vectors]
    macs_vec_us = _per_call_us(plan_cost.macs, vectors)
    macs_dict_us = _per_call_us(plan_cost.macs, dicts)
    cost_vec_us = _per_call_us(plan_cost.cost, vectors)
    return {
        "model": name,
        "macs": report.macs,
        "groups": len(plan_cost.group_ids),
        "terms": len(plan_cost._compiled.coefs),
        "model_cost_ms": round(model_cost_ms, 2),
        "analyze_ms": round(analyze_ms, 2),
        "plan_cost_build_ms": round(build_ms, 2),
        "macs_numpy_vector_us": round(macs_vec_us, 2),
        "macs_dict_us": round(macs_dict_us, 2),
        "cost_numpy_vector_us": round(cost_vec_us, 2),
        "target_us": 50,
        "meets_target": macs_vec_us <= 50 and macs_dict_us <= 50,
    }


def main() -> None:
    rows = [bench(name) for name in MODELS]
    header = f"{'model':<10}{'groups':>7}{'terms':>7}{'build ms':>10}{'macs(vec) us':>14}{'macs(dict) us':>15}{'cost(vec) us':>14}"
    print(header)
    for row in rows:
        print(
            f"{row['model']:<10}{row['groups']:>7}{row['terms']:>7}{row['plan_cost_build_ms']:>10.2f}"
            f"{row['macs_numpy_vector_us']:>14.2f}{row['macs_dict_us']:>15.2f}{row['cost_numpy_vector_us']:>14.2f}"
        )
    out = ROOT / "benchmarks" / "results" / "cost_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "rows": rows,
        "calls_per_repeat": CALLS,
        "repeats": REPEATS,
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "note": "shared 2-core machine with other jobs running: timings are noisy upward",
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

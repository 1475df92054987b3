"""Calibrate the CI latency gate's error rates on real timings.

- 20 gate runs of a model against itself at ``--max-slowdown 1.05``: must pass >= 19.
- 20 gate runs of a candidate that really computes 20 % more MACs (the same CNN with its
  first layer widened 80 -> 96 channels; both widths are multiples of 16 so onnxruntime's
  blocked convolution kernels do not hide the difference) at ``--max-slowdown 1.10``:
  must fail >= 19.

Each gate run times 200 interleaved rounds (batch 4, 1 thread), a fraction of a second to a
few seconds. Prints a summary and writes ``benchmarks/results/gate_calibration.json``.
Run on a shared machine: the spread of ratios includes other people's load.

``--burn N`` starts N CPU-burning processes beside the gate for the whole calibration (a
loaded CI runner) and writes ``gate_calibration_burn<N>.json``: under load a verdict may be
"inconclusive" (exit 4) instead of pass/fail; a *wrong* verdict (identical models failing,
the slower candidate passing) is what must not happen.

    .venv/bin/python benchmarks/gate_calibration.py
    .venv/bin/python benchmarks/gate_calibration.py --burn 4
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxprune.cost import model_cost  # noqa: E402
from onnxprune.evaluate import cpu_model  # noqa: E402
from onnxprune.gate import run_gate  # noqa: E402
from tests.conftest import make_tiny_cnn  # noqa: E402

TRIALS = 20
RUNS = 200
BATCH = 4
BASE_WIDTHS = (80, 64)
WIDE_WIDTHS = (96, 64)


def _trials(base, cand, max_slowdown: float) -> list[dict]:
    rows = []
    for seed in range(TRIALS):
        start = time.perf_counter()
        result = run_gate(base, cand, max_slowdown, batch=BATCH, runs=RUNS, threads=1, seed=seed)
        rows.append(
            {
                "verdict": result.verdict,
                "noise": result.noise,
                "min_ratio": round(result.min_ratio or 0.0, 4),
                "passed": result.passed,
                "ratio": round(result.ratio, 4),
                "interval": [round(result.ci_low, 4), round(result.ci_high, 4)],
                "conclusive": result.conclusive,
                "rounds": result.rounds,
                "base_median_ms": round(result.base_median_ms, 4),
                "cand_median_ms": round(result.cand_median_ms, 4),
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
        print(
            f"  {result.verdict} ratio {result.ratio:.3f} "
            f"[{result.ci_low:.3f}, {result.ci_high:.3f}] rounds {result.rounds} "
            f"base {result.base_median_ms:.3f} ms"
        )
    return rows


def _burn() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burn", type=int, default=0, help="CPU-burning processes beside it")
    args = parser.parse_args()
    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(args.burn)]
    for burner in burners:
        burner.start()
    try:
        _calibrate(args.burn)
    finally:
        for burner in burners:
            burner.terminate()


def _calibrate(burn: int) -> None:
    base = make_tiny_cnn(BASE_WIDTHS, image=32)
    wide = make_tiny_cnn(WIDE_WIDTHS, image=32, seed=1)
    macs_ratio = model_cost(wide).macs / model_cost(base).macs
    print(f"candidate MACs ratio {macs_ratio:.4f}")
    start = time.perf_counter()
    print("identical models, --max-slowdown 1.05")
    identical = _trials(base, base, 1.05)
    print("+20 % MACs candidate, --max-slowdown 1.10")
    slower = _trials(base, wide, 1.10)
    total_s = time.perf_counter() - start
    passes = sum(r["verdict"] == "pass" for r in identical)
    fails = sum(r["verdict"] == "fail" for r in slower)
    load = os.getloadavg()[0]
    summary = {
        "burners": burn,
        "load_average_at_end": round(load, 2),
        "identical_wrong_verdicts": sum(r["verdict"] == "fail" for r in identical),
        "identical_inconclusive": sum(r["verdict"] == "inconclusive" for r in identical),
        "slower_wrong_verdicts": sum(r["verdict"] == "pass" for r in slower),
        "slower_inconclusive": sum(r["verdict"] == "inconclusive" for r in slower),
        "identical_pass": f"{passes}/{TRIALS}",
        "identical_target_met": passes >= 19,
        "slower_fail": f"{fails}/{TRIALS}",
        "slower_target_met": fails >= 19,
        "candidate_macs_ratio": round(macs_ratio, 4),
        "identical_ratio_range": [
            min(r["ratio"] for r in identical),
            max(r["ratio"] for r in identical),
        ],
        "slower_ratio_range": [min(r["ratio"] for r in slower), max(r["ratio"] for r in slower)],
        "total_seconds": round(total_s, 1),
    }
    print(json.dumps(summary, indent=2))
    record = {
        "summary": summary,
        "settings": {
            "trials": TRIALS,
            "rounds_per_gate": RUNS,
            "batch": BATCH,
            "threads": 1,
            "base_widths": BASE_WIDTHS,
            "candidate_widths": WIDE_WIDTHS,
            "image": 32,
        },
        "identical": identical,
        "slower": slower,
        "environment": {
            "onnxruntime": ort.__version__,
            "cpu": cpu_model(),
            "numpy": np.__version__,
        },
        "note": f"shared 2-core machine with other jobs running, {burn} CPU burner(s) beside",
    }
    name = f"gate_calibration_burn{burn}.json" if burn else "gate_calibration.json"
    out = ROOT / "benchmarks" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

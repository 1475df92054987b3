"""Time dependency analysis + surgery on ResNet-56 and on a generated 1,000-node model.

Targets (issue 5): ResNet-56 < 1 s, 1,000-node model < 5 s (analysis + one surgery).
``masked_reference`` (the exactness reference, same import/export path) is timed alongside,
outside the target.
Prints a table and writes ``benchmarks/results/deps_surgery_bench.json``. Timings are the
median of ``--repeats`` runs on CPU; on a shared machine they are noisy.

    python benchmarks/deps_surgery_bench.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
# Time the checkout this file lives in, not whichever onnxprune the environment installed
# (a script's folder, not the working directory, starts sys.path).
sys.path.insert(0, str(ROOT))

from onnxprune.deps import analyze  # noqa: E402
from onnxprune.surgery import apply_plan, masked_reference  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "deps_surgery_bench.json"


class _Plan:
    def __init__(self, keep):
        self.keep = keep


def generated_model(target_nodes: int = 1000, width: int = 32, seed: int = 0) -> onnx.ModelProto:
    """Residual stack with BN, depthwise convs, SE-like gates and concat/split, built with
    ``onnx.helper`` until it holds at least ``target_nodes`` nodes."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}{counter[0]}"

    def const(array) -> str:
        n = name("w")
        inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), n))
        return n

    def op(op_type, inputs, **attrs) -> str:
        out = name(op_type.lower())
        nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def conv(x, cin, cout, k=3, group=1):
        w = const(rng.standard_normal((cout, cin // group, k, k)) * 0.1)
        return op("Conv", [x, w, const(np.zeros(cout))], pads=[k // 2] * 4, group=group)

    def bn(x, c):
        return op(
            "BatchNormalization",
            [x, const(np.ones(c)), const(np.zeros(c)), const(np.zeros(c)), const(np.ones(c))],
        )

    y = op("Relu", [bn(conv("x", 3, width), width)])
    while len(nodes) < target_nodes - 4:
        a = op("Relu", [bn(conv(y, width, width // 2, k=1), width // 2)])
        b = op("Relu", [bn(conv(y, width, width // 2, k=1), width // 2)])
        cat = op("Concat", [a, b], axis=1)
        d = op("Relu", [bn(conv(cat, width, width, group=width), width)])
        gate = op("Sigmoid", [conv(op("GlobalAveragePool", [d]), width, width, k=1)])
        y = op("Add", [y, bn(conv(op("Mul", [d, gate]), width, width, k=1), width)])
    flat = op("Flatten", [op("GlobalAveragePool", [y])], axis=1)
    out = op("Gemm", [flat, const(rng.standard_normal((10, width))), const(np.zeros(10))], transB=1)
    graph = helper.make_graph(
        nodes,
        "generated",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def time_model(label: str, model: onnx.ModelProto, repeats: int) -> dict:
    analysis_times, surgery_times, reference_times = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        analysis = analyze(model)
        analysis_times.append(time.perf_counter() - start)
        plan = _Plan({g.id: list(range(0, g.size, 2)) for g in analysis.prunable_groups()})
        start = time.perf_counter()
        apply_plan(analysis, plan)
        surgery_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        masked_reference(analysis, plan)
        reference_times.append(time.perf_counter() - start)
    row = {
        "model": label,
        "nodes": len(model.graph.node),
        "groups": len(analysis.groups),
        "prunable": len(analysis.prunable_groups()),
        "analysis_s": statistics.median(analysis_times),
        "surgery_s": statistics.median(surgery_times),
        "reference_s": statistics.median(reference_times),
    }
    row["total_s"] = row["analysis_s"] + row["surgery_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    resnet56 = ROOT / "examples" / "cifar_resnet" / "resnet56.onnx"
    if resnet56.exists():
        rows.append(time_model("resnet56", onnx.load(str(resnet56)), args.repeats))
    rows.append(time_model("generated-1000", generated_model(1000), args.repeats))
    targets = {"resnet56": 1.0, "generated-1000": 5.0}
    print(
        f"{'model':16} {'nodes':>6} {'groups':>7} {'analysis':>9} {'surgery':>8} {'total':>7}"
        f"  target       {'reference':>9}"
    )
    for row in rows:
        row["target_s"] = targets[row["model"]]
        row["meets_target"] = row["total_s"] < row["target_s"]
        print(
            f"{row['model']:16} {row['nodes']:6d} {row['groups']:4d}/{row['prunable']:<3d}"
            f"{row['analysis_s']:8.3f}s {row['surgery_s']:7.3f}s {row['total_s']:6.3f}s"
            f"  < {row['target_s']:.0f} s {'ok' if row['meets_target'] else 'MISSED':6}"
            f" {row['reference_s']:8.3f}s"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "deps_surgery_bench",
        "repeats": args.repeats,
        "onnx": onnx.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "note": "median wall time; shared 2-core machine, noisy",
        "rows": rows,
    }
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

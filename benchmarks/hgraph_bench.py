"""Benchmark: hierarchy + motif extraction and one m-GNN forward pass (CPU, 1 thread).

Targets (issue 6): ResNet-110-sized graph < 2 s, generated 1,000-node graph < 10 s,
m-GNN forward on ResNet-56 < 20 ms. Prints a table and writes
``benchmarks/results/hgraph_bench.json``. Run: ``.venv/bin/python benchmarks/hgraph_bench.py``.
"""

from __future__ import annotations

import io
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from onnxprune.hgraph import build_hierarchy
from onnxprune.model import load_model
from onnxprune.rl import MultiStageGNN

ROOT = Path(__file__).resolve().parent.parent


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if stride != 1 else None

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.pad is not None:
            x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + x)


class _CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2) with option-A shortcuts (n=18 -> ResNet-110)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for stage, cout in enumerate((16, 32, 64)):
            for b in range(n):
                blocks.append(_Block(cin, cout, 2 if b == 0 and stage else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(x.mean((2, 3)))


def resnet110() -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _CifarResNet(18).eval(),
            (torch.randn(1, 3, 32, 32),),
            buf,
            dynamo=False,
            opset_version=18,
            input_names=["x"],
            dynamic_axes={"x": {0: "n"}},
        )
    return onnx.shape_inference.infer_shapes(onnx.load_from_string(buf.getvalue()))


def generated(target_nodes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """A random sequence of 4 block templates (residual, two-branch concat, plain, pooled)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current, count, channels = "x", 1, 8

    def weight(cout: int, cin: int) -> str:
        name = f"w{len(inits)}"
        inits.append(
            numpy_helper.from_array(rng.normal(size=(cout, cin, 3, 3)).astype(np.float32), name)
        )
        return name

    def add(op: str, inputs: list[str], **attrs) -> str:
        nonlocal count
        out = f"t{count}"
        count += 1
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    while count < target_nodes:
        kind = int(rng.integers(0, 4))
        pads = [1, 1, 1, 1]
        if kind == 0:  # residual
            a = add("Relu", [add("Conv", [current, weight(channels, channels)], pads=pads)])
            b = add("Conv", [a, weight(channels, channels)], pads=pads)
            current = add("Relu", [add("Add", [b, current])])
        elif kind == 1:  # two branches, concat, 1x1 back
            a = add("Relu", [add("Conv", [current, weight(channels, channels)], pads=pads)])
            b = add("Sigmoid", [add("Conv", [current, weight(channels, channels)], pads=pads)])
            c = add("Concat", [a, b], axis=1)
            current = add("Conv", [c, weight(channels, 2 * channels)], pads=pads)
        elif kind == 2:  # plain
            current = add("Relu", [add("Conv", [current, weight(channels, channels)], pads=pads)])
        else:  # pooled, keeps size
            current = add("MaxPool", [current], kernel_shape=[3, 3], pads=pads)
    graph = helper.make_graph(
        nodes,
        "generated",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 16, 16])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return onnx.shape_inference.infer_shapes(model)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    torch.set_num_threads(1)
    results: dict[str, object] = {
        "machine": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": 1,
        "note": "2 shared CPU cores, other jobs running: timings are noisy",
    }
    r110 = resnet110()
    t, h = timed(lambda: build_hierarchy(r110), 5)
    results["resnet110_hierarchy_s"] = round(t, 4)
    results["resnet110_levels"] = h.to_dict()["levels"]
    print(
        f"ResNet-110 ({h.levels[0].number_of_nodes()} nodes): hierarchy {t * 1e3:.1f} ms (target < 2 s)"
    )

    gen = generated()
    t, h = timed(lambda: build_hierarchy(gen), 3)
    results["generated_1000_hierarchy_s"] = round(t, 4)
    results["generated_1000_nodes"] = h.levels[0].number_of_nodes()
    results["generated_1000_levels"] = [
        {"level": k, "nodes": g.number_of_nodes(), "edges": g.number_of_edges()}
        for k, g in enumerate(h.levels)
    ]
    print(
        f"generated ({h.levels[0].number_of_nodes()} nodes, {len(h.levels)} levels, "
        f"{len(h.motifs)} motifs): hierarchy {t * 1e3:.1f} ms (target < 10 s)"
    )

    path = ROOT / "examples" / "cifar_resnet" / "resnet56.onnx"
    r56 = load_model(path)
    from onnxprune.deps import analyze

    analysis = analyze(r56)
    h56 = build_hierarchy(r56, analysis)
    encoder = MultiStageGNN(h56, seed=0)
    ratios = {g: 0.5 for g in h56.prunable_group_ids}
    with torch.no_grad():
        for _ in range(10):
            encoder(ratios)
        t_fwd, _ = timed(lambda: encoder(ratios), 200)
    t_grad, _ = timed(lambda: encoder(ratios)[0].sum().backward(), 50)
    t_pyg, _ = timed(lambda: h56.to_pyg(ratios), 200)
    results["resnet56_mgnn_forward_ms"] = round(t_fwd * 1e3, 3)
    results["resnet56_mgnn_forward_backward_ms"] = round(t_grad * 1e3, 3)
    results["resnet56_to_pyg_ms"] = round(t_pyg * 1e3, 3)
    results["resnet56_groups"] = len(h56.prunable_group_ids)
    print(
        f"ResNet-56 m-GNN forward (incl. to_pyg, {len(h56.prunable_group_ids)} groups): "
        f"{t_fwd * 1e3:.2f} ms (target < 20 ms); forward+backward {t_grad * 1e3:.2f} ms; "
        f"to_pyg {t_pyg * 1e3:.3f} ms"
    )
    out = ROOT / "benchmarks" / "results" / "hgraph_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

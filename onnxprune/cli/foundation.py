"""Foundation commands: ``info``, ``flops``, ``eval``, ``bench``, ``gate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from onnxprune.atomic import atomic_path
from onnxprune.cli.common import (
    EXIT_FAIL,
    EXIT_INCONCLUSIVE,
    EXIT_OK,
    cli_input_shapes,
    echo_json,
    guard_outputs,
    input_shape_option,
    load_cli_data,
    preprocess_options,
    progress,
)
from onnxprune.errors import OnnxPruneError
from onnxprune.fidelity import METRICS

_DEVICE = click.Choice(["auto", "cpu", "cuda"])


def _model_arg(name: str) -> Any:
    return click.argument(name, type=click.Path(path_type=Path))


_input_shape_option = input_shape_option


def _shapes(specs: tuple[str, ...]):
    return cli_input_shapes(specs)[0]


def _write_json_atomic(obj: Any, path: Path) -> None:
    from onnxprune.cli.common import _json_default

    if path.exists() and path.is_dir():
        raise OnnxPruneError(f"--json path '{path}' is a folder; give a file name")
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, default=_json_default)


# ----------------------------------------------------------------------------------- commands


@click.command(
    "info",
    epilog="\b\nExample:\n  onnxprune info examples/cifar_resnet/resnet20.onnx\n  onnxprune info model.onnx --json",
)
@_model_arg("model")
@_input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def info_cmd(model: Path, input_shapes: tuple[str, ...], as_json: bool) -> int:
    """Show a model's producer, opset, inputs/outputs, op counts and parameters.

    With --input-shape, the inputs and outputs are shown at that size.
    """
    from onnxprune.model import fix_input_shapes, load_model, model_info

    result = model_info(fix_input_shapes(load_model(model), _shapes(input_shapes)))
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(str(result))
    return EXIT_OK


@click.command(
    "flops",
    epilog=(
        "\b\nExamples:\n  onnxprune flops examples/cifar_resnet/resnet20.onnx\n"
        "  onnxprune flops model.onnx --per-node --json\n"
        "  onnxprune flops detector.onnx --input-shape images:1x3x640x640"
    ),
)
@_model_arg("model")
@click.option("--per-node", is_flag=True, help="List every node's MACs/FLOPs/params.")
@click.option(
    "--batch", default=1, show_default=True, type=click.IntRange(min=1), help="Batch size."
)
@_input_shape_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print a JSON object (macs, flops, params, ...)."
)
def flops_cmd(
    model: Path, per_node: bool, batch: int, input_shapes: tuple[str, ...], as_json: bool
) -> int:
    """Count MACs (Conv/ConvTranspose/Gemm/MatMul), FLOPs and parameters.

    MACs and FLOPs are for the given batch (default 1: per sample); see onnxprune.cost for the
    per-op FLOP weights.
    """
    from onnxprune.cost import model_cost
    from onnxprune.model import load_model

    report = model_cost(load_model(model), batch=batch, input_shapes=_shapes(input_shapes))
    if as_json:
        echo_json(report.to_dict(per_node=per_node))
        return EXIT_OK
    if per_node:
        width = max([len(n.name) for n in report.per_node] + [4])
        click.echo(f"{'node':<{width}}  {'op':<20} {'MACs':>14} {'FLOPs':>14} {'params':>10}")
        for node in report.per_node:
            click.echo(
                f"{node.name:<{width}}  {node.op_type:<20} {node.macs:>14,} {node.flops:>14,} "
                f"{node.params:>10,}"
            )
        click.echo("")
    click.echo(str(report))
    return EXIT_OK


@click.command(
    "eval",
    epilog=(
        "\b\nExamples:\n"
        "  onnxprune eval examples/cifar_resnet/resnet20.onnx --data examples/cifar_resnet/data/test.npz\n"
        "  onnxprune eval pruned.onnx --data images/ --reference model.onnx --json\n"
        "  onnxprune eval pruned_det.onnx --data photos/ --reference det.onnx --metric snr"
    ),
)
@_model_arg("model")
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(path_type=Path),
    help=".npz, .npy or image folder.",
)
@click.option(
    "--reference",
    type=click.Path(path_type=Path),
    help="Reference model for agreement/KL (label-free).",
)
@click.option(
    "--metric",
    type=click.Choice(("auto", *METRICS)),
    default="auto",
    show_default=True,
    help="Headline figure: auto = top1 with labels, agreement for a classifier, snr for any "
    "other outputs (needs --reference for the fidelity ones).",
)
@click.option(
    "--batch",
    default=256,
    show_default=True,
    type=click.IntRange(min=1),
    help="Inference batch size.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="Evaluate a seeded random subset of this many samples.",
)
@click.option("--device", type=_DEVICE, default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads (default: ORT's).")
@preprocess_options
@_input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def eval_cmd(
    model,
    data_path,
    reference,
    metric,
    batch,
    limit,
    device,
    threads,
    scale,
    mean,
    std,
    layout,
    resize,
    input_shapes,
    as_json,
) -> int:
    """Accuracy (top-1/top-5 with labels) and fidelity to a reference model: agreement and
    KL for a classifier; for any output SNR (dB), cosine and, for [N, T, C] outputs,
    per-timestep agreement. Every figure has its sample count and a 95 % interval.

    Preprocessing comes from the flags, else from preprocess.json next to the data.
    """
    from onnxprune.evaluate import fidelity_from_outputs, make_session, predict_outputs
    from onnxprune.fidelity import METRIC_TEXT, MIN_RELIABLE_SAMPLES, measurable, metric_problem
    from onnxprune.model import fix_input_shapes, load_model

    onnx_model = load_model(model, infer_shapes=False)
    dataset = load_cli_data(
        data_path,
        onnx_model,
        {"scale": scale, "mean": mean, "std": std, "layout": layout, "resize": resize},
        _shapes(input_shapes),
    )
    shapes, source = cli_input_shapes(input_shapes, onnx_model, dataset)
    onnx_model = fix_input_shapes(onnx_model, shapes, source=source)
    if limit is not None and limit < len(dataset):
        (dataset,) = dataset.split(limit, seed=0)
    sessions = [("model", make_session(onnx_model, device=device, threads=threads))]
    if reference is not None:
        sessions.append(("reference", make_session(reference, device=device, threads=threads)))
    chunks = [(start, min(start + batch, len(dataset))) for start in range(0, len(dataset), batch)]
    parts: dict[str, list[list[np.ndarray]]] = {name: [] for name, _ in sessions}
    with progress("evaluating", len(chunks) * len(sessions), enabled=not as_json) as task:
        for name, session in sessions:
            for start, stop in chunks:
                parts[name].append(predict_outputs(session, dataset.rows(start, stop), batch))
                task.advance()
    outputs = {
        name: [np.concatenate(o) for o in zip(*chunked, strict=True)]
        for name, chunked in parts.items()
    }
    reference_outputs = outputs.get("reference")
    chosen = None if metric == "auto" else metric
    problem = chosen and metric_problem(chosen, dataset.y is not None, outputs["model"])
    if chosen and chosen != "top1" and reference is None:
        problem = "needs --reference (the unpruned model)"
    if problem:
        usable = ", ".join(measurable(dataset.y is not None, outputs["model"]))
        raise OnnxPruneError(f"--metric {metric} {problem}; use --metric auto or one of: {usable}")
    names = [o.name for o in sessions[0][1].get_outputs()]
    result = fidelity_from_outputs(outputs["model"], dataset.y, reference_outputs, names, chosen)
    if as_json:
        echo_json({**result.to_dict(), "data": dataset.to_dict(), "model": str(model)})
        return EXIT_OK
    click.echo(f"{model}: {result}")
    if result.metric is not None and result.value(result.metric) is not None:
        click.echo(f"{result.figure(result.metric)}: {METRIC_TEXT[result.metric]}")
    if result.n < MIN_RELIABLE_SAMPLES:
        click.echo(
            f"WARNING: only {result.n} samples (fewer than {MIN_RELIABLE_SAMPLES}); the "
            "figures are unreliable, read the intervals",
            err=True,
        )
    return EXIT_OK


@click.command(
    "bench",
    epilog=(
        "\b\nExamples:\n  onnxprune bench examples/cifar_resnet/resnet20.onnx --batch 1 --runs 200\n"
        "  onnxprune bench model.onnx --threads 1 --json"
    ),
)
@_model_arg("model")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--runs", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(min=0))
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads (default: ORT's).")
@click.option("--device", type=_DEVICE, default="auto", show_default=True)
@_input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.option(
    "--latency-table",
    "latency_table",
    is_flag=True,
    help="Print the latency table instead: the model time each prunable group saves at each "
    "kept width (timed in context at --batch, --threads (default 1), cached; what "
    "`prune --latency` and `search --latency` predict with).",
)
@click.option(
    "--round-to", type=click.IntRange(min=1), default=8, show_default=True,
    help="With --latency-table: the widths timed are multiples of N (as prune --round-to).",
)  # fmt: skip
@click.option(
    "--min-channels", type=click.IntRange(min=1), default=1, show_default=True,
    help="With --latency-table: the smallest width timed (as prune --min-channels).",
)  # fmt: skip
@click.option(
    "--plot", type=click.Path(path_type=Path), help="With --latency-table: also save a PNG plot."
)
def bench_cmd(
    model, batch, runs, warmup, threads, device, input_shapes, as_json, latency_table,
    round_to, min_channels, plot,
) -> int:  # fmt: skip
    """Latency of one inference (p50/p90/p99 ms) on random input of the model's shape;
    with --latency-table, where the time goes per prunable group and width."""
    from onnxprune.evaluate import batch_unsupported, make_session, measure_latency
    from onnxprune.model import fix_input_shapes, load_model, named_input_shapes

    shapes = _shapes(input_shapes)
    if latency_table:
        return _bench_table(
            model, batch, threads, device, shapes, as_json, round_to, min_channels, plot
        )
    # checked against the model's own dims first: a size it cannot run is one clear error
    onnx_model = fix_input_shapes(load_model(model, infer_shapes=False), shapes)
    shapes = named_input_shapes(onnx_model, shapes, "--input-shape") if shapes else None
    session = make_session(onnx_model, device=device, threads=threads)
    reason = batch_unsupported(session, batch) if shapes is None else None
    if reason is not None:  # timing another batch would silently time the fixed one
        if as_json:
            echo_json({"p50_ms": None, "batch": batch, "reason": reason, "model": str(model)})
        else:
            click.echo(f"{model}: latency at batch {batch}: n/a ({reason})")
        return EXIT_OK
    with progress("timing", runs, enabled=not as_json) as task:
        result = measure_latency(
            session, shapes, runs=runs, warmup=warmup, batch=batch, progress=task
        )
    if as_json:
        echo_json({**result.to_dict(), "model": str(model)})
    else:
        click.echo(f"{model}: {result}")
    return EXIT_OK


def _bench_table(
    model: Path, batch: int, threads: int | None, device: str, shapes: Any, as_json: bool,
    round_to: int, min_channels: int, plot: Path | None,
) -> int:  # fmt: skip
    """``bench --latency-table``: build (or reuse) and print the latency table."""
    from onnxprune.latency.cache import model_latency_table

    table = model_latency_table(
        model, batch=batch, device=device, threads=threads or 1, input_shapes=shapes,
        round_to=round_to, min_channels=min_channels, show_progress=not as_json,
    )  # fmt: skip
    if plot is not None:
        from onnxprune.latency.plot import plot_table

        plot_table(table, plot)
    if as_json:
        echo_json({**table.to_dict(), "model": str(model)})
    else:
        click.echo(str(table))
    return EXIT_OK


@click.command(
    "gate",
    epilog=(
        "\b\nExamples:\n"
        "  onnxprune gate base.onnx pruned.onnx --max-slowdown 1.05 --json gate.json\n"
        "  onnxprune gate base.onnx pruned.onnx --data calib.npz --max-accuracy-drop 1.0\n"
        "  onnxprune gate base.onnx pruned.onnx --baseline-json gate.json\n"
        "\b\nExit codes: 0 pass, 1 fail, 2 usage/input error (e.g. models with different\n"
        'inputs), 4 inconclusive (the machine is too noisy to tell; see "noise" in the JSON).'
    ),
)
@_model_arg("base")
@_model_arg("cand")
@click.option(
    "--max-slowdown",
    default=1.05,
    show_default=True,
    type=float,
    help="Fail above this median latency ratio.",
)
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--runs",
    default=200,
    show_default=True,
    type=click.IntRange(min=5),
    help="Interleaved rounds (more when the call is close).",
)
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--threads",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Intra-op threads per session.",
)
@click.option("--device", type=_DEVICE, default="cpu", show_default=True)
@_input_shape_option
@click.option(
    "--json", "json_out", type=click.Path(path_type=Path), help="Write the JSON record here."
)
@click.option(
    "--baseline-json",
    type=click.Path(path_type=Path),
    help="Reuse a recorded baseline instead of timing BASE (noisier).",
)
@click.option(
    "--data",
    "data_path",
    type=click.Path(path_type=Path),
    help="Also compare accuracy on this data.",
)
@click.option(
    "--max-accuracy-drop",
    type=float,
    metavar="PTS",
    help="Fail if top-1 (or agreement) drops more.",
)
@click.option("--seed", default=0, show_default=True, type=int)
def gate_cmd(
    base,
    cand,
    max_slowdown,
    batch,
    runs,
    warmup,
    threads,
    device,
    input_shapes,
    json_out,
    baseline_json,
    data_path,
    max_accuracy_drop,
    seed,
) -> int:
    """CI latency gate: fail when CAND is slower than MAX_SLOWDOWN x BASE.

    Both models run in this process, timed interleaved (AB/BA alternating rounds); the
    decision is on the ratio of medians, reported with a bootstrap 95 % interval. With
    --data, a dynamic input size that --input-shape does not give is timed at the size of
    the data's samples (every input of a multi-input model is fed from its own array).
    """
    from onnxprune.gate import run_gate
    from onnxprune.model import load_model, named_input_shapes

    if max_accuracy_drop is not None and data_path is None:
        raise OnnxPruneError("--max-accuracy-drop needs --data to measure accuracy on")
    base_model = load_model(base, infer_shapes=False)
    cand_model = load_model(cand, infer_shapes=False)
    shapes = _shapes(input_shapes)
    guard_outputs(
        {"BASE": base, "CAND": cand, "--data": data_path, "--baseline-json": baseline_json},
        {"--json": json_out},
    )
    dataset = None
    if data_path is not None:
        dataset = load_cli_data(data_path, base_model, input_shapes=shapes)
    with progress("gate", runs, enabled=True) as task:
        result = run_gate(
            base_model,
            cand_model,
            max_slowdown,
            batch=batch,
            runs=runs,
            warmup=warmup,
            threads=threads,
            device=device,
            input_shape=named_input_shapes(base_model, shapes, "--input-shape") if shapes else None,
            baseline_json=baseline_json,
            data=dataset,
            max_accuracy_drop=max_accuracy_drop,
            seed=seed,
            progress=task,
        )
    result.base_path, result.cand_path = str(base), str(cand)
    if json_out is not None:
        _write_json_atomic(result.to_dict(), json_out)
    click.echo(str(result))
    if result.inconclusive:
        return EXIT_INCONCLUSIVE
    return EXIT_OK if result.passed else EXIT_FAIL


def register(main: click.Group) -> None:
    """Add the foundation commands to the ``onnxprune`` group."""
    for command in (info_cmd, flops_cmd, eval_cmd, bench_cmd, gate_cmd):
        main.add_command(command)

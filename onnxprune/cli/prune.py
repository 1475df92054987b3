"""``onnxprune groups`` (channel groups of a model) and ``onnxprune prune`` (uniform or
plan-file pruning with exact surgery)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from onnxprune.cli.common import (
    cli_input_shapes,
    echo_fixed_note,
    echo_json,
    guard_outputs,
    input_shape_option,
    load_cli_data,
    preprocess_options,
    resolve_model_path,
)

# Width of the member columns in the `groups` table before abbreviation.
_COLUMN = 44


def _abbreviate(names: list[str], width: int = _COLUMN) -> str:
    """``a, b (+3)`` within ``width`` characters."""
    if not names:
        return "-"
    text = names[0] if len(names[0]) <= width else names[0][: width - 1] + "~"
    shown = 1
    for name in names[1:]:
        rest = len(names) - shown - 1
        suffix = f" (+{rest})" if rest else ""
        if len(text) + 2 + len(name) + len(suffix) > width:
            break
        text += ", " + name
        shown += 1
    if shown < len(names):
        text += f" (+{len(names) - shown})"
    return text


def groups_table(analysis: Any, prunable_only: bool = False) -> str:
    """Aligned text table of the analysis' groups: id, channels, status, producers,
    consumers, tensors (abbreviated), with frozen reasons on the status column."""
    rows = [("id", "ch", "blocks", "status", "producers", "consumers", "tensors")]
    for group in analysis.groups:
        if prunable_only and not group.prunable:
            continue
        tensors = []
        for member in group.members:
            if member.tensor not in tensors:
                tensors.append(member.tensor)
        status = "prunable" if group.prunable else f"frozen: {group.frozen_reason}"
        rows.append(
            (
                str(group.id),
                str(group.size),
                str(group.block_count) if group.block_count > 1 else "",
                status,
                _abbreviate(group.producers, 28),
                _abbreviate(group.consumers, 28),
                _abbreviate(tensors, 36),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    widths[3] = min(widths[3], 60)
    lines = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row[:-1]):
            if i == 3 and len(cell) > widths[3]:
                cell = cell[: widths[3] - 1] + "~"
            cells.append(cell.rjust(widths[i]) if i < 3 else cell.ljust(widths[i]))
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    frozen = len(analysis.groups) - len(analysis.prunable_groups())
    lines.append(
        f"{len(analysis.groups)} groups: {len(analysis.prunable_groups())} prunable, {frozen} frozen"
    )
    return "\n".join(lines)


def _analyze(model_path: Path, specs: tuple[str, ...] = ()):
    from onnxprune.deps import analyze
    from onnxprune.model import fix_input_shapes, load_model

    model = load_model(model_path)
    shapes, source = cli_input_shapes(specs)
    fixed = fix_input_shapes(model, shapes, source=source)
    echo_fixed_note(model, fixed)
    return fixed, analyze(fixed)


def register(main: click.Group) -> None:
    """Add the ``groups`` and ``prune`` commands to the CLI group."""
    main.add_command(groups_cmd)
    main.add_command(prune_cmd)


@click.command(
    "groups",
    epilog=(
        "\b\nExamples:\n  onnxprune groups examples/cifar_resnet/resnet20.onnx\n"
        "  onnxprune groups detector.onnx --input-shape x:1x3x640x640 --prunable --json"
    ),
)
@click.argument("model", type=click.Path(path_type=Path))
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON.")
@click.option("--prunable", "prunable_only", is_flag=True, help="List prunable groups only.")
def groups_cmd(
    model: Path, input_shapes: tuple[str, ...], as_json: bool, prunable_only: bool
) -> None:
    """Show MODEL's channel groups: channels removed together, and why some are frozen.

    \b
    Each group lists the nodes whose output rows (producers) and input columns
    (consumers) lose a removed channel and the tensors that carry it.
    """
    fixed, analysis = _analyze(resolve_model_path(model), input_shapes)
    if as_json:
        from onnxprune.model import input_shapes as declared_shapes

        groups = [g.to_dict() for g in analysis.groups if g.prunable or not prunable_only]
        echo_json(
            {
                "model": str(model),
                "input_shapes": declared_shapes(fixed),
                "groups": groups,
                "prunable": len(analysis.prunable_groups()),
                "frozen": len(analysis.groups) - len(analysis.prunable_groups()),
            }
        )
    else:
        click.echo(groups_table(analysis, prunable_only))


@click.command(
    "prune",
    epilog=(
        "\b\nExamples:\n"
        "  onnxprune prune examples/cifar_resnet/resnet20.onnx --ratio 0.3 -o pruned.onnx\n"
        "  onnxprune prune detector.onnx --flops 0.5 --input-shape x:1x3x640x640 -o small.onnx\n"
        "  onnxprune prune model.onnx --plan plan.json -o pruned.onnx --json"
    ),
)
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--ratio",
    type=float,
    help="Uniform prune ratio: every prunable group keeps (1-R)*C channels, rounded to --round-to.",
)
@click.option(
    "--flops",
    type=float,
    help="Keep at most this fraction of the MACs (uniform ratio + budget fill).",
)
@click.option(
    "--latency",
    type=float,
    help="Keep at most this fraction of the original's measured latency (at --batch, "
    "--threads, --device), predicted by a latency table timed in context and cached; "
    "combinable with --flops.",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Batch size the latency is for (--latency, and the plan-scope choice).",
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=1, show_default=True,
    help="onnxruntime intra-op threads the latency is timed with.",
)  # fmt: skip
@click.option(
    "--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
    help="Execution provider the latency is timed on.",
)  # fmt: skip
@click.option(
    "--plan-scope",
    type=click.Choice(["auto", "all", "interiors"]),
    default="auto",
    show_default=True,
    help="Groups --flops/--latency prune: all, block interiors only (groups not tied across "
    "a residual Add), or auto: the one the latency table predicts faster (the table of "
    "--latency, or one cached by `bench --latency-table`; without a table: all).",
)
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(path_type=Path),
    help="Apply a plan JSON (from --save-plan, possibly edited).",
)
@click.option(
    "--criterion",
    type=click.Choice(["l1", "l2", "bn", "activation"]),
    default="l1",
    show_default=True,
    help="Channel importance used to choose which channels survive.",
)
@click.option(
    "--round-to",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Keep channel counts multiples of N (8: fast kernels; 1: exact ratios).",
)
@click.option(
    "--min-channels",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Floor per group.",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="Calibration data (.npz/.npy/image folder) for --criterion activation.",
)
@click.option(
    "--calib-samples",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Samples of --data used for activation statistics.",
)
@click.option("--save-plan", type=click.Path(path_type=Path), help="Also write the plan as JSON.")
@input_shape_option
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="Pruned model."
)
@preprocess_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def prune_cmd(
    model: Path,
    ratio: float | None,
    flops: float | None,
    latency: float | None,
    batch: int,
    threads: int,
    device: str,
    plan_scope: str,
    plan_path: Path | None,
    criterion: str,
    round_to: int,
    min_channels: int,
    data: Path | None,
    calib_samples: int,
    save_plan: Path | None,
    input_shapes: tuple[str, ...],
    output: Path,
    as_json: bool,
    **flags: Any,
) -> None:
    """Prune MODEL's channels and write a smaller, exact ONNX model to OUTPUT.

    \b
    One of:
      --ratio R   uniform: every prunable group keeps (1-R)*C channels, rounded to --round-to
      --flops F   at most F of the MACs remain: uniform ratio by bisection, then the
                  budget left by rounding regrows the thinnest groups
      --latency L at most L of the original's latency (predicted by a latency table
                  timed on this machine, cached); with --flops both budgets hold
      --plan P    keep exactly the channels listed in a plan JSON

    --flops/--latency prune all groups or only block interiors, whichever the latency
    table predicts faster (--plan-scope); the choice and why are printed as a note.

    The input model is never modified; OUTPUT is written atomically. MACs are for
    --input-shape (or the --data samples); a model with a dynamic input size prunes by
    --ratio or --plan without one (MACs then n/a), --flops needs it. A fixed size folds
    shape computations: OUTPUT then runs at that size. With --criterion
    activation, preprocessing of uint8 images comes from the flags, else from
    preprocess.json next to the data.
    """
    from onnxprune.model import load_model, save_model
    from onnxprune.pipeline import SpeedOptions, prune_model

    budget = flops if latency is None else (flops or latency)
    chosen = [v for v in (ratio, budget, plan_path) if v is not None]
    if len(chosen) != 1:
        raise click.UsageError(
            "give exactly one of --ratio, --flops or --plan (--latency may replace or join --flops)"
        )
    speed = SpeedOptions(latency, batch, device, threads, plan_scope, show_progress=not as_json)
    model = resolve_model_path(model)
    guard_outputs(
        {"MODEL": model, "--data": data, "--plan": plan_path},
        {"-o": output, "--save-plan": save_plan},
    )
    calib = None
    if criterion == "activation" and plan_path is None and data is not None:
        calib = load_cli_data(data, model, flags, cli_input_shapes(input_shapes)[0])
    declared = load_model(model, infer_shapes=False) if calib is not None else None
    shapes, source = cli_input_shapes(input_shapes, declared, calib)
    result = prune_model(
        model, ratio=ratio, flops=flops, plan=plan_path, criterion=criterion,
        round_to=round_to, min_channels=min_channels, data=calib, calib_samples=calib_samples,
        input_shapes=shapes, shapes_source=source, speed=speed,
    )  # fmt: skip
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    written = save_model(result.model, output, protect=[model])
    plan_file = result.plan.save(save_plan) if save_plan is not None else None
    summary = result.to_dict()
    if as_json:
        echo_json(
            {
                "input": str(model),
                "output": str(written),
                "plan": summary.pop("plan"),
                "plan_file": str(plan_file) if plan_file else None,
                **summary,
            }
        )
        return
    if result.fallbacks:
        click.echo(
            f"note: groups {', '.join(map(str, result.fallbacks))} have no "
            "BatchNormalization; scored by l1",
            err=True,
        )
    click.echo(str(result))
    click.echo(f"wrote    {written}" + (f" (plan: {plan_file})" if plan_file else ""))

"""``onnxprune groups`` (channel groups of a model) and ``onnxprune prune`` (uniform or
plan-file pruning with exact surgery)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np

from onnxprune.cli.common import echo_json, resolve_model_path
from onnxprune.errors import OnnxPruneError

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


def _analyze(model_path: Path):
    from onnxprune.deps import analyze
    from onnxprune.model import load_model

    model = load_model(model_path)
    return model, analyze(model)


def _calibration(data: Path, model_path: Path, samples: int) -> np.ndarray:
    from onnxprune.data import load_data

    dataset = load_data(data, model_path)
    x = np.asarray(dataset.x, dtype=np.float32)
    if len(x) > samples:
        # Data sets are often sorted by class: take a seeded shuffle, not the first rows.
        order = np.random.default_rng(0).permutation(len(x))[:samples]
        x = x[np.sort(order)]
    return x


def _ratio_text(before: int, after: int) -> str:
    return f"{before:,} -> {after:,} ({after / before:.4f})" if before else f"{before} -> {after}"


def register(main: click.Group) -> None:
    @main.command("groups")
    @click.argument("model", type=click.Path(path_type=Path))
    @click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON.")
    @click.option("--prunable", "prunable_only", is_flag=True, help="List prunable groups only.")
    def groups_cmd(model: Path, as_json: bool, prunable_only: bool) -> None:
        """Show MODEL's channel groups: channels removed together, and why some are frozen.

        \b
        Each group lists the nodes whose output rows (producers) and input columns
        (consumers) lose a removed channel and the tensors that carry it.
        """
        _, analysis = _analyze(resolve_model_path(model))
        if as_json:
            groups = [g.to_dict() for g in analysis.groups if g.prunable or not prunable_only]
            echo_json(
                {
                    "model": str(model),
                    "groups": groups,
                    "prunable": len(analysis.prunable_groups()),
                    "frozen": len(analysis.groups) - len(analysis.prunable_groups()),
                }
            )
        else:
            click.echo(groups_table(analysis, prunable_only))

    @main.command("prune")
    @click.argument("model", type=click.Path(path_type=Path))
    @click.option("--ratio", type=float, help="Remove round(R*C) channels of every prunable group.")
    @click.option(
        "--flops",
        type=float,
        help="Keep at most this fraction of the MACs (uniform ratio + budget fill).",
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
    @click.option(
        "--save-plan", type=click.Path(path_type=Path), help="Also write the plan as JSON."
    )
    @click.option(
        "-o", "--output", type=click.Path(path_type=Path), required=True, help="Pruned model."
    )
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    def prune_cmd(
        model: Path,
        ratio: float | None,
        flops: float | None,
        plan_path: Path | None,
        criterion: str,
        round_to: int,
        min_channels: int,
        data: Path | None,
        calib_samples: int,
        save_plan: Path | None,
        output: Path,
        as_json: bool,
    ) -> None:
        """Prune MODEL's channels and write a smaller, exact ONNX model to OUTPUT.

        \b
        One of:
          --ratio R   uniform: remove round(R*C) channels of every prunable group
          --flops F   at most F of the MACs remain: uniform ratio by bisection, then the
                      budget left by rounding regrows the thinnest groups
          --plan P    keep exactly the channels listed in a plan JSON
        The input model is never modified; OUTPUT is written atomically.
        """
        from onnxprune import importance
        from onnxprune.cost import model_cost
        from onnxprune.model import check_model, save_model
        from onnxprune.plan import PruningPlan
        from onnxprune.surgery import apply_plan

        chosen = [
            flag
            for flag, v in (("--ratio", ratio), ("--flops", flops), ("--plan", plan_path))
            if v is not None
        ]
        if len(chosen) != 1:
            raise click.UsageError("give exactly one of --ratio, --flops or --plan")
        if criterion == "activation" and data is None and plan_path is None:
            raise OnnxPruneError("--criterion activation needs calibration data: add --data PATH")
        if ratio is not None and not 0.0 <= ratio < 1.0:
            raise OnnxPruneError(
                f"--ratio {ratio} must be in [0, 1): the fraction of channels removed"
            )
        model = resolve_model_path(model)
        original, analysis = _analyze(model)
        if not analysis.prunable_groups() and plan_path is None:
            click.echo(
                f"note: '{model}' has no prunable channel group; `onnxprune groups {model}` "
                "shows why",
                err=True,
            )
        calib = None
        if criterion == "activation" and plan_path is None:
            calib = _calibration(data, model, calib_samples)  # type: ignore[arg-type]
        scores = None
        if plan_path is None:
            scores = importance.score_channels(analysis, criterion, calib)
        if plan_path is not None:
            plan = PruningPlan.load(plan_path, analysis)
        elif ratio is not None:
            plan = importance.plan_from_ratios(
                analysis, ratio, criterion, round_to, min_channels, scores=scores
            )
        else:
            assert flops is not None  # exactly one mode was checked above
            plan = importance.plan_for_flops(
                analysis,
                flops,
                criterion,
                round_to,
                min_channels,
                scores=scores,
            )
        fallbacks = list(scores.fallbacks) if scores is not None else []
        pruned = apply_plan(analysis, plan)
        check_model(pruned)
        before = model_cost(analysis.model)
        after = model_cost(pruned)
        written = save_model(pruned, output, protect=[model])
        plan_file = plan.save(save_plan) if save_plan is not None else None
        sizes = analysis.group_sizes()
        thinned = [g for g, idx in plan.keep.items() if len(idx) < sizes[g]]
        removed = sum(sizes[g] - len(plan.keep[g]) for g in thinned)
        record = {
            "input": str(model),
            "output": str(written),
            "plan": plan.meta,
            "plan_file": str(plan_file) if plan_file else None,
            "groups": len(analysis.groups),
            "prunable_groups": len(analysis.prunable_groups()),
            "groups_pruned": len(thinned),
            "channels_removed": removed,
            "macs_before": before.macs,
            "macs_after": after.macs,
            "macs_ratio": after.macs / before.macs if before.macs else 1.0,
            "params_before": before.params,
            "params_after": after.params,
            "params_ratio": after.params / before.params if before.params else 1.0,
            "bn_fallback_groups": fallbacks,
        }
        if as_json:
            echo_json(record)
            return
        if fallbacks:
            click.echo(
                f"note: groups {', '.join(map(str, fallbacks))} have no BatchNormalization; "
                "scored by l1",
                err=True,
            )
        if plan_path is not None:
            how = f"plan file {plan_path}"
        else:
            how = f"uniform ratio {plan.meta.get('prune_ratio')}"
            if flops is not None:
                how = f"MACs target {flops}: {how}" + (
                    " + budget fill" if plan.meta.get("filled") else ""
                )
            how += f" ({criterion}, round-to {round_to}, min-channels {min_channels})"
        click.echo(f"plan     {how}")
        click.echo(
            f"groups   {len(thinned)} of {len(analysis.prunable_groups())} prunable groups thinned, "
            f"{removed} channels removed"
        )
        click.echo(f"MACs     {_ratio_text(before.macs, after.macs)}")
        click.echo(f"params   {_ratio_text(before.params, after.params)}")
        click.echo(f"wrote    {written}" + (f" (plan: {plan_file})" if plan_file else ""))
        del original

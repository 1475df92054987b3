"""``onnxprune search``: the main job (see :mod:`onnxprune.search.loop`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from onnxprune.cli.common import (
    cli_input_shapes,
    echo_json,
    guard_outputs,
    input_shape_option,
    load_cli_data,
    preprocess_options,
    resolve_model_path,
)
from onnxprune.pipeline import RECOVERY_METHODS
from onnxprune.search.strategy import REWARDS


def register(main: click.Group) -> None:
    main.add_command(search_command)
    main.add_command(strategies_command)


@click.command("search")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--flops",
    type=float,
    help="Fraction of the original MACs to keep, e.g. 0.5 (a --flops or --latency budget is "
    "required; both may be given).",
)
@click.option(
    "--latency",
    type=float,
    help="Fraction of the original's measured latency to keep, e.g. 0.5, at --batch on "
    "--device with --threads: predicted by a latency table (timed in context, cached in "
    "$ONNXPRUNE_CACHE or ~/.cache/onnxprune), verified by timing the result.",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Batch size the --latency budget is for.",
)
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="Calibration data (.npz with x[, y], .npy, or image folder with class sub-folders). "
    "Without labels the reward is fidelity to the unpruned model.",
)
@click.option(
    "--strategy",
    default="gnn-rl",
    show_default=True,
    help="Preset name (gnn-rl, agmc, amc, uniform, random, fast) or a .toml file.",
)
@click.option(
    "--reward",
    type=click.Choice(REWARDS),
    help="What the reward measures (preset: auto = top-1 with labels; KL to the unpruned "
    "model for a classifier without labels, reported as top-1 agreement on the held-out "
    "split; snr for any other outputs; cosine, timestep: see report.md).",
)
@click.option("--episodes", type=int, help="Override the preset's number of episodes.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed (CPU runs repeat).")
@click.option("--reward-samples", type=int, help="Samples in the reward split (preset: 500).")
@click.option(
    "--eval-samples",
    type=int,
    help="Held-out samples for the final evaluation (preset: all not used by the reward).",
)
@click.option(
    "--eval-data",
    type=click.Path(path_type=Path),
    help="Evaluate the final model on this data instead of the held-out split of --data.",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda", "auto"]),
    default="cpu",
    show_default=True,
    help="onnxruntime device for reward and evaluation.",
)
@click.option(
    "--recover",
    type=click.Choice(RECOVERY_METHODS),
    help="Accuracy recovery on the final model (presets: ls); fits on the reward split.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue from OUTDIR/checkpoint.pt (same arguments; --episodes may grow).",
)
@click.option(
    "--latency-runs",
    type=int,
    default=20,
    show_default=True,
    help="Timed runs for latency p50 at batch 1 (batch 32: half as many); 0 skips timing.",
)
@click.option(
    "--threads",
    type=int,
    help="Threads per candidate evaluation (onnxruntime intra-op and torch; default 1, so "
    "--workers N uses N cores) and onnxruntime threads of the final evaluation (default: "
    "all cores; the --latency table and its verification use 1 unless given).",
)
@click.option(
    "--workers",
    type=int,
    default=0,
    show_default=True,
    help="Evaluate each round's candidates on N local worker processes (0: in-process); "
    "the result is the same, e.g. --workers 2. With --ray: the number of Ray actors.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS]",
    help="Evaluate candidates on Ray actors (pip install 'onnxprune[ray]'): --ray starts a "
    "local cluster, --ray ray://head:10001 (or auto) connects to a running one.",
)
@click.option(
    "--ray-gpus-per-worker",
    type=float,
    default=0.0,
    show_default=True,
    help="GPUs each Ray actor asks for (num_gpus; with --device cuda or auto).",
)
@preprocess_options
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option(
    "-o",
    "--output",
    "outdir",
    required=True,
    type=click.Path(path_type=Path),
    help="Output folder: pruned.onnx, plan.json, report.json, report.md, plots, checkpoint.",
)
def search_command(
    model: Path,
    flops: float | None,
    latency: float | None,
    batch: int,
    data: Path,
    strategy: str,
    reward: str | None,
    episodes: int | None,
    seed: int,
    reward_samples: int | None,
    eval_samples: int | None,
    eval_data: Path | None,
    device: str,
    recover: str | None,
    resume: bool,
    latency_runs: int,
    threads: int | None,
    workers: int,
    ray_address: str | None,
    ray_gpus_per_worker: float,
    scale: float | None,
    mean: str | None,
    std: str | None,
    layout: str | None,
    resize: str | None,
    input_shapes: tuple[str, ...],
    as_json: bool,
    outdir: Path,
) -> int:
    """Search per-group prune ratios inside a MACs and/or latency budget; write the
    pruned model.

    \b
    Example:
      onnxprune search model.onnx --flops 0.5 --data calib.npz -o out/
      onnxprune search model.onnx --latency 0.5 --batch 32 --data calib.npz -o out/
      onnxprune search model.onnx --flops 0.5 --data calib.npz -o out/ --resume
      onnxprune search model.onnx --flops 0.5 --data calib.npz -o out/ --workers 2
      onnxprune search model.onnx --flops 0.5 --data calib.npz -o out/ --ray
      onnxprune search model.onnx --flops 0.5 --data calib.npz -o out/ --ray auto

    Each round the agent proposes the strategy's `parallel` candidates (presets: 4); they are
    evaluated together (--workers N local processes, --ray on a Ray cluster), so the same
    seed gives the same plan whatever evaluates them.

    --latency F: every episode ends inside F of the latency the table predicts (a latency
    wall like the MACs wall); the final model is timed interleaved with the original (the
    gate's method) and, if it misses F, re-picked under a tighter prediction. report.md
    shows predicted vs measured latency and a plot of the table (docs/LATENCY.md).

    --data is split by a seeded shuffle into disjoint parts: the reward split, the images
    each candidate's least-squares refit is fitted on, a selection split on which the best
    few plans are re-scored for the final pick, and the held-out split the report's
    accuracy comes from (or --eval-data). report.md lists what each got.

    MACs are priced at --input-shape, else at the size of one --data sample; a dynamic
    input size is fixed to it (shape computations folded: pruned.onnx runs at that size).

    Ctrl-C stops the search and keeps the best plan so far; --resume continues it.
    Preprocessing of uint8 images comes from the flags, else from preprocess.json next to
    the data.
    """
    import dataclasses

    from onnxprune.search import load_strategy, run_search
    from onnxprune.search.outdir import RESULT_FILES

    if flops is None and latency is None:
        raise click.UsageError(
            "give a budget: --flops F (fraction of the MACs), --latency F (fraction of the "
            "measured latency), or both"
        )
    model = resolve_model_path(model)
    guard_outputs(
        {"MODEL": model, "--data": data, "--eval-data": eval_data},
        {f"-o {outdir}/{name}": outdir / name for name in RESULT_FILES},
    )
    chosen: Any = strategy
    if reward is not None:  # --reward overrides the preset's ``reward`` key
        chosen = dataclasses.replace(load_strategy(strategy), reward=reward)
    flags = {"scale": scale, "mean": mean, "std": std, "layout": layout, "resize": resize}
    shapes = cli_input_shapes(input_shapes)[0]
    dataset = load_cli_data(data, model, flags, shapes)
    eval_dataset = load_cli_data(eval_data, model, flags, shapes) if eval_data is not None else None
    result = run_search(
        model,
        dataset,
        flops,
        chosen,
        outdir,
        seed,
        episodes=episodes,
        reward_samples=reward_samples,
        eval_samples=eval_samples,
        eval_data=eval_dataset,
        device=device,
        recover=recover,
        resume=resume,
        show_progress=not as_json,
        latency_runs=latency_runs,
        threads=threads,
        input_shapes=shapes,
        workers=workers,
        ray=False if ray_address is None else (True if ray_address == "local" else ray_address),
        ray_gpus_per_worker=ray_gpus_per_worker,
        latency=latency,
        batch=batch,
    )
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(str(result))
        click.echo(f"report: {result.files['report_md']}")
    return 0


@click.command(
    "strategies",
    epilog=(
        "\b\nExamples:\n  onnxprune strategies\n  onnxprune strategies --json\n"
        "  onnxprune search model.onnx --flops 0.5 --data calib.npz --strategy fast -o out/"
    ),
)
@click.option("--json", "as_json", is_flag=True, help="Print the presets as JSON.")
def strategies_command(as_json: bool) -> None:
    """List the bundled search presets."""
    from onnxprune.search import load_strategy, strategy_names

    presets: list[Any] = [load_strategy(name) for name in strategy_names()]
    if as_json:
        echo_json([p.to_dict() for p in presets])
        return
    for preset in presets:
        click.echo(str(preset))

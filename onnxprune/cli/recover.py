"""``onnxprune recover``: least squares or distillation fine-tuning of a pruned model."""

from __future__ import annotations

from pathlib import Path

import click

from onnxprune.cli.common import (
    cli_input_shapes,
    echo_json,
    guard_outputs,
    input_shape_option,
    load_cli_data,
)
from onnxprune.errors import OnnxPruneError
from onnxprune.pipeline import RECOVERY_METHODS


def register(main: click.Group) -> None:
    """Add the ``recover`` command to the CLI group."""
    main.add_command(recover)


@click.command(
    epilog=(
        "\b\nExamples:\n"
        "  onnxprune recover pruned.onnx --reference model.onnx --data calib.npz -o recovered.onnx\n"
        "  onnxprune recover pruned.onnx --reference model.onnx --data images/ --method finetune "
        "--minutes 10 -o recovered.onnx"
    )
)
@click.argument("pruned", type=click.Path(path_type=Path))
@click.option(
    "--reference",
    type=click.Path(path_type=Path),
    required=True,
    help="The unpruned model the pruned one was cut from (teacher / LS target).",
)
@click.option(
    "--data",
    "data_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Calibration data (.npz/.npy/image folder; preprocess.json next to it).",
)
@click.option(
    "--method",
    type=click.Choice([m for m in RECOVERY_METHODS if m != "none"]),
    default="ls",
    show_default=True,
    help="Least squares, distillation fine-tuning, or both.",
)
@click.option(
    "--epochs",
    type=float,
    default=5.0,
    show_default=True,
    help="Fine-tuning passes over the recovery split.",
)
@click.option(
    "--minutes",
    type=float,
    default=None,
    help="Wall-clock budget for fine-tuning (shortens the cosine schedule).",
)
@click.option("--lr", type=float, default=3e-4, show_default=True, help="Peak learning rate.")
@click.option("--batch", type=int, default=64, show_default=True, help="Fine-tuning batch size.")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option(
    "--bn",
    type=click.Choice(["train", "freeze"]),
    default="train",
    show_default=True,
    help="BatchNormalization during fine-tuning: batch statistics, or frozen.",
)
@click.option("--no-augment", is_flag=True, help="No random flip / pad-4 crop.")
@click.option(
    "--ls-images",
    type=int,
    default=1000,
    show_default=True,
    help="Images used by least squares (seeded subset of the recovery split).",
)
@click.option(
    "--holdout",
    type=float,
    default=0.2,
    show_default=True,
    help="Fraction of the data held out to measure accuracy before/after.",
)
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(path_type=Path),
    default=None,
    help="The plan the model was pruned with (optional; the channel correspondence is "
    "read from the weights).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="torch intra-op threads for least squares / fine-tuning (default 1: fastest per "
    "CPU-second for these small convolutions, and robust on a busy machine; raise it to use "
    "more cores for one large model).",
)
@click.option(
    "--ls-memory",
    type=click.IntRange(min=0),
    default=256,
    show_default=True,
    help="MiB of activations least squares keeps in RAM between layers; the rest is spilled "
    "to a temporary folder next to -o and removed afterwards.",
)
@input_shape_option
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON record instead of text.")
def recover(
    pruned: Path, reference: Path, data_path: Path, method: str, epochs: float,
    minutes: float | None, lr: float, batch: int, optimizer: str, bn: str, no_augment: bool,
    ls_images: int, holdout: float, plan_path: Path | None, seed: int, threads: int | None,
    ls_memory: int, input_shapes: tuple[str, ...], output: Path, as_json: bool,
) -> None:  # fmt: skip
    """Recover the accuracy of PRUNED from the unpruned --reference, on --data.

    \b
    ls        refit each layer whose inputs were pruned to the reference's output (seconds)
    finetune  distil the reference into PRUNED on its own ONNX graph (minutes)
    Accuracy (top-1 with labels, agreement with the reference always) is measured on a
    seeded held-out part of the data before and after. The output has PRUNED's structure.
    """
    from onnxprune.model import fix_input_shapes, load_model, save_model
    from onnxprune.pipeline import compare, recover_model

    if plan_path is not None and not plan_path.exists():
        raise OnnxPruneError(f"plan file '{plan_path}' does not exist; check --plan")
    if not 0.0 < holdout < 1.0:
        raise OnnxPruneError(f"--holdout {holdout} must be a fraction in (0, 1)")
    guard_outputs(
        {"PRUNED": pruned, "--reference": reference, "--data": data_path, "--plan": plan_path},
        {"-o": output},
    )
    pruned_model = load_model(pruned)
    reference_model = load_model(reference)
    dataset = load_cli_data(
        data_path, reference_model, input_shapes=cli_input_shapes(input_shapes)[0]
    )
    shapes, source = cli_input_shapes(input_shapes, reference_model, dataset)
    pruned_model = fix_input_shapes(pruned_model, shapes, source=source)
    reference_model = fix_input_shapes(reference_model, shapes, source=source)
    held_count = max(1, int(round(holdout * len(dataset))))
    if held_count >= len(dataset):
        raise OnnxPruneError(f"'{data_path}' has only {len(dataset)} samples; need at least 2")
    held_out, train = dataset.split(held_count, len(dataset) - held_count, seed=seed)
    before = compare(reference_model, pruned_model, held_out)
    result = recover_model(
        pruned_model, reference_model, train, method, ls_images=ls_images, epochs=epochs,
        lr=lr, batch=batch, optimizer=optimizer, bn=bn, augment=not no_augment,
        minutes=minutes, seed=seed, threads=threads, show_progress=not as_json,
        activation_memory=ls_memory * 2**20, spill_dir=output.parent,
        report=None if as_json else lambda line: click.echo(line, err=True),
    )  # fmt: skip
    after = compare(reference_model, result.model, held_out, original_logits=before.original_logits)
    save_model(result.model, output, protect=[pruned, reference])
    if as_json:
        phases = {k: v for k, v in result.to_dict().items() if k in ("least_squares", "finetune")}
        echo_json(
            {
                "method": method, "pruned": str(pruned), "reference": str(reference),
                "data": str(data_path), "output": str(output), "held_out": len(held_out),
                "recovery_samples": len(train), "reference_eval": before.original.to_dict(),
                "before": before.pruned.to_dict(), **phases, "after": after.pruned.to_dict(),
            }
        )  # fmt: skip
        return
    from onnxprune.fidelity import METRIC_TEXT, MIN_RELIABLE_SAMPLES

    click.echo(f"reference: {before.original}")
    click.echo(f"before:    {before.pruned}")
    click.echo(f"after:     {after.pruned}")
    click.echo(f"{after.metric}: {METRIC_TEXT[after.metric]}")
    if len(held_out) < MIN_RELIABLE_SAMPLES:
        click.echo(
            f"WARNING: only {len(held_out)} held-out samples (fewer than {MIN_RELIABLE_SAMPLES}); "
            "read the intervals, or raise --holdout",
            err=True,
        )
    click.echo(f"wrote {output}")

"""Shared CLI plumbing: error handling, JSON output, progress bars."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from onnxprune.errors import InternalError, OnnxPruneError
from onnxprune.progress import iter_progress, progress  # noqa: F401  (re-exported)

EXIT_OK = 0
EXIT_FAIL = 1  # a check failed (e.g. the latency gate)
EXIT_USAGE = 2  # bad input / usage error
EXIT_INTERNAL = 3  # a bug in onnxprune (an internal invariant broke)


def run_guarded(cli: click.Group, args: list[str] | None = None) -> int:
    """Run the click group; ``OnnxPruneError`` becomes one stderr line and exit code 2,
    :class:`~onnxprune.errors.InternalError` a "please report" line and exit code 3."""
    debug = "--debug" in (args if args is not None else sys.argv[1:])
    try:
        rv = cli.main(args=args, prog_name="onnxprune", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except OnnxPruneError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    except InternalError as exc:
        if debug:
            raise
        click.echo(
            f"internal error, please report: {exc} (rerun with --debug for the traceback)",
            err=True,
        )
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return rv if isinstance(rv, int) else EXIT_OK


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def resolve_model_path(path: Path) -> Path:
    """The ONNX file behind a command's MODEL argument.

    TensorFlow SavedModel folders, Keras ``.keras``/``.h5`` and ``.tflite`` files are
    converted (through ``onnxprune.convert``, extra ``[tf]``) into a temporary folder that
    lives as long as the running command; the user is told so on stderr.
    """
    import tempfile

    from onnxprune.convert import SourceKind, detect_source_kind, ensure_onnx

    try:
        kind = detect_source_kind(Path(path))
    except OnnxPruneError:
        kind = SourceKind.ONNX  # let the ONNX loader explain what is wrong with the file
    if kind is SourceKind.ONNX:
        return Path(path)
    tmpdir = click.get_current_context().with_resource(
        tempfile.TemporaryDirectory(prefix="onnxprune-convert-")
    )
    onnx_path, converted = ensure_onnx(path, tmpdir)
    if converted:
        click.echo(f"converted {path} to a temporary ONNX model ({onnx_path})", err=True)
    return Path(onnx_path)


def preprocess_options(func: Any) -> Any:
    """Click options ``--scale --mean --std --layout --resize`` for commands that read data."""
    options = [
        click.option("--scale", type=float, help="Multiply uint8 pixels by this (default 1/255)."),
        click.option("--mean", help="Per-channel mean after scaling, e.g. 0.485,0.456,0.406."),
        click.option("--std", help="Per-channel std after scaling, e.g. 0.229,0.224,0.225."),
        click.option(
            "--layout",
            type=click.Choice(["NCHW", "NHWC"], case_sensitive=False),
            help="Model input layout (default: inferred from the model input shape).",
        ),
        click.option(
            "--resize", metavar="HxW", help="Resize images to HxW (default: model's H, W)."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def load_cli_data(
    data: Path,
    model: Any,
    flags: dict[str, Any] | None = None,
    input_shapes: dict[str, list[int]] | None = None,
) -> Any:
    """``load_data`` with the command's preprocessing flags (:func:`onnxprune.data.
    preprocess_from_flags`) and its ``--input-shape`` values (dynamic dims they fix are the
    size images are resized to); the raw-image note (:func:`onnxprune.data.raw_images_note`)
    and what loading resized or converted (``Dataset.notes``) go to stderr."""
    from onnxprune.data import load_data, preprocess_from_flags, raw_images_note

    spec = preprocess_from_flags(data, **(flags or {}))
    dataset = load_data(data, model, spec, input_shapes=input_shapes)
    note = raw_images_note(data, spec)
    if note is not None:
        click.echo(note, err=True)
    for line in getattr(dataset, "notes", ()):
        click.echo(f"note: {line}", err=True)
    return dataset

"""Shared CLI plumbing: error handling, JSON output, progress bars."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from onnxprune.errors import InternalError, OnnxPruneError
from onnxprune.progress import iter_progress, progress  # noqa: F401  (re-exported)

EXIT_OK = 0
EXIT_FAIL = 1  # a check failed (e.g. the latency gate)
EXIT_USAGE = 2  # bad input / usage error
EXIT_INTERNAL = 3  # a bug in onnxprune (an internal invariant broke)
EXIT_INCONCLUSIVE = 4  # the latency gate cannot tell on this machine (too noisy)


def run_guarded(cli: click.Group, args: list[str] | None = None) -> int:
    """Run the click group; ``OnnxPruneError`` becomes one stderr line and exit code 2,
    :class:`~onnxprune.errors.InternalError` a "please report" line and exit code 3."""
    debug = "--debug" in (args if args is not None else sys.argv[1:])
    try:
        rv = cli.main(args=args, prog_name="onnxprune", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.UsageError as exc:  # one line like every other user error
        if debug:
            raise
        where = exc.ctx.command_path if exc.ctx is not None else "onnxprune"
        click.echo(f"error: {exc.format_message()} (see '{where} --help')", err=True)
        return EXIT_USAGE
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
    except MemoryError:
        if debug:
            raise
        click.echo(
            "error: out of memory; use less data (--reward-samples, --eval-samples, fewer "
            "images) or a machine with more memory",
            err=True,
        )
        return EXIT_USAGE
    except Exception as exc:  # any other exception is a bug: never a bare traceback
        if debug:
            raise
        first_line = (str(exc).splitlines() or [""])[0][:300]
        click.echo(
            f"internal error, please report: {type(exc).__name__}: {first_line}{_where(exc)} "
            "(rerun with --debug for the traceback)",
            err=True,
        )
        return EXIT_INTERNAL
    return rv if isinstance(rv, int) else EXIT_OK


def _where(exc: BaseException) -> str:
    """`` at file:line`` of the innermost onnxprune frame, for the bug report."""
    import traceback

    package = str(Path(__file__).resolve().parents[1])
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(package)]
    if not frames:
        return ""
    frame = frames[-1]
    return f" at {Path(frame.filename).name}:{frame.lineno}"


def guard_outputs(inputs: dict[str, Path | None], outputs: dict[str, Path | None]) -> None:
    """Refuse, before any work, an output that would land on something the command reads.

    ``inputs``/``outputs`` map an option name (for the message) to a path or ``None``. An
    input model given as a folder protects every model in it, and a model protects its
    external-data files; paths are compared after resolving symlinks. Two outputs on one
    path are refused too (the second would replace the first).
    """
    from onnxprune.model import protected_files

    read = [
        (flag, file)
        for flag, path in inputs.items()
        if path is not None
        for file in protected_files([path])
    ]
    written: dict[Path, str] = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        target = path.resolve()
        for in_flag, file in read:
            if file.exists() and target == file.resolve():
                what = "input model" if file.suffix == ".onnx" else "input"
                raise OnnxPruneError(
                    f"refusing to overwrite the {what} '{file}' ({in_flag}) with {flag}; "
                    "choose another output path"
                )
        if target in written:
            raise OnnxPruneError(
                f"{flag} and {written[target]} both name '{path}'; give them different paths"
            )
        written[target] = flag


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
    input_shapes: Mapping[str, Sequence[int]] | None = None,
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


def input_shape_option(func: Any) -> Any:
    """Click option ``--input-shape [NAME:]DIMS`` (repeatable) as ``input_shapes``."""
    return click.option(
        "--input-shape",
        "input_shapes",
        multiple=True,
        metavar="[NAME:]DIMS",
        help="Fix a dynamic input size, e.g. x:1x3x640x640, or 1x3x640x640 for a single-input "
        "model (repeat per input). Default: the size of the --data samples, if any (for "
        "every input the option does not name).",
    )(func)


def cli_input_shapes(
    specs: tuple[str, ...], model: Any = None, dataset: Any = None
) -> tuple[dict[str, tuple[int, ...]] | None, str]:
    """``(shapes, source)``: the parsed ``--input-shape`` specs; with ``model`` and
    ``dataset`` also one sample of the data (after preprocessing, batch 1) for every input the
    specs do not name (:func:`onnxprune.model.input_shapes_from`); ``None`` when there is
    nothing. ``source`` names where the shapes came from, for error messages."""
    from onnxprune.model import graph_inputs, input_shapes_from, parse_input_shapes

    given = parse_input_shapes(specs) if specs else None
    if dataset is None or model is None:
        return given, "--input-shape"
    samples = dataset.sample_shapes([i.name for i in graph_inputs(model)])
    shapes, source = input_shapes_from(model, given, samples, f"the data ({dataset.source})")
    return shapes or None, source


def echo_fixed_note(before: Any, after: Any, err: bool = True) -> None:
    """Tell the user when fixing input shapes made dynamic dims static: shape computations
    are then folded for that size and a model written from it runs at that size only."""
    from onnxprune.model import fixed_input_note

    note = fixed_input_note(before, after)
    if note is not None:
        click.echo(f"note: {note}", err=err)

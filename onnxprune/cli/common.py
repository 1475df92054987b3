"""Shared CLI plumbing: error handling, JSON output, progress bars."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from onnxprune.errors import OnnxPruneError

EXIT_OK = 0
EXIT_FAIL = 1  # a check failed (e.g. the latency gate)
EXIT_USAGE = 2  # bad input / usage error


def run_guarded(cli: click.Group, args: list[str] | None = None) -> int:
    """Run the click group; ``OnnxPruneError`` becomes one stderr line and exit code 2."""
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


@contextmanager
def progress(description: str, total: int | None, *, enabled: bool = True) -> Iterator[Any]:
    """A rich progress bar on stderr (hidden when ``enabled`` is false, e.g. with --json).

    Yields an object with ``advance(n=1, **fields)``.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if not enabled:
        yield _NullTask()
        return
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=False,
    )
    with bar:
        task_id = bar.add_task(description, total=total, status="")
        yield _Task(bar, task_id)


class _Task:
    def __init__(self, bar: Any, task_id: Any) -> None:
        self._bar = bar
        self._id = task_id

    def advance(self, n: int = 1, status: str = "") -> None:
        self._bar.update(self._id, advance=n, status=status)


class _NullTask:
    def advance(self, n: int = 1, status: str = "") -> None:
        return None


def iter_progress(items: Iterable[Any], description: str, total: int, enabled: bool = True):
    with progress(description, total, enabled=enabled) as task:
        for item in items:
            yield item
            task.advance()


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

"""Progress bars on stderr (rich), shared by the CLI and long-running library calls."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any


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

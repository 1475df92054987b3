"""The search's output folder: one search at a time, and never two runs' files mixed.

- :func:`check_output_folder` (before any work): a folder that already holds a search's
  files (checkpoint, plan, model, report) is refused unless ``--resume`` continues that
  search, so a new run can neither overwrite a finished one without notice nor leave its
  model beside another run's checkpoint.
- :class:`OutputLock` (while the search runs): ``OUTDIR/.onnxprune.lock`` is created
  exclusively and holds the owner's host and pid; a second search into the same folder is
  refused naming that pid. A lock whose process is gone (killed, crashed) is stale and is
  taken over, so ``kill -9`` never blocks a later ``--resume``; the temporaries such a run
  left half-written are removed once the lock is taken.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from types import TracebackType

from onnxprune.atomic import require_free_space
from onnxprune.errors import OnnxPruneError
from onnxprune.search.checkpoint import CHECKPOINT

LOCK = ".onnxprune.lock"
RESULT_FILES = (CHECKPOINT, "plan.json", "pruned.onnx", "report.json", "report.md")
_ALL_OUTPUTS = (*RESULT_FILES, "reward.png", "ratios.png", "latency_table.png")


def check_output_folder(outdir: Path, resume: bool, model_bytes: int = 0) -> None:
    """Refuse a folder holding another search's files unless ``resume`` continues it, or
    without room for the results (about twice the model: ``pruned.onnx`` is at most the
    model's size, the checkpoint, plan, report and plots are small next to it)."""
    if outdir.exists() and not outdir.is_dir():
        raise OnnxPruneError(f"output '{outdir}' exists and is not a folder; pass a folder with -o")
    found = [name for name in RESULT_FILES if (outdir / name).exists()]
    if found and not resume:
        raise OnnxPruneError(
            f"output folder '{outdir}' already holds a search ({', '.join(found)}); continue "
            "it with --resume, or choose a new folder with -o (delete the folder to start over)"
        )
    require_free_space(outdir, 2 * model_bytes, "the search's results")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class OutputLock:
    """Exclusive ownership of ``outdir`` for one search (a context manager)."""

    def __init__(self, outdir: Path) -> None:
        self.path = outdir / LOCK
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}
        self.created_folder = False

    def __str__(self) -> str:
        return f"lock {self.path} ({self.owner['host']}:{self.owner['pid']})"

    def to_dict(self) -> dict[str, object]:
        return {"path": str(self.path), **self.owner}

    def _holder(self) -> dict[str, object] | None:
        """The live holder of an existing lock, or ``None`` when it is stale."""
        try:
            holder = json.loads(self.path.read_text())
            host, pid = str(holder["host"]), int(holder["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # half-written or damaged: its writer died while creating it
        if host != self.owner["host"]:
            return holder  # another machine's process: cannot tell, so assume it runs
        return holder if pid != os.getpid() and _alive(pid) else None

    def __enter__(self) -> OutputLock:
        self.created_folder = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None:
                    raise OnnxPruneError(
                        f"output folder '{self.path.parent}' is in use by another onnxprune "
                        f"search (host {holder.get('host')}, pid {holder.get('pid')}); wait for "
                        f"it, or choose another folder with -o"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(self.owner))
            self._remove_temporaries()
            return self
        raise OnnxPruneError(f"could not take the lock '{self.path}'; try again")

    def _remove_temporaries(self) -> None:
        """Temporaries of outputs a killed run was writing (``.NAME.*`` beside ``NAME``,
        see :func:`onnxprune.atomic.atomic_path`): the folder is ours now, nobody else is
        writing them, and the targets themselves were never touched by them."""
        for entry in self.path.parent.iterdir():
            if any(entry.name.startswith(f".{name}.") for name in _ALL_OUTPUTS):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.path.unlink(missing_ok=True)
        if self.created_folder and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()  # a search that wrote nothing leaves nothing behind

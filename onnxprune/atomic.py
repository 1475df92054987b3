"""Atomic file output: write to a temporary file in the target's folder, then rename.

Every stage that writes a file (models, plans, reports, plots, checkpoints, JSON records)
goes through :func:`atomic_path` (or :func:`staging_folder` for a file set such as a model
and its external data), so a reader never sees a half-written file and a failure leaves
neither a partial target nor a stray temporary file behind:

- the temporary file is flushed to disk (``fsync``) before it replaces the target, and the
  folder entry after, so a power cut leaves the old file or the new one, never a torn one;
- a full disk (``ENOSPC``, quota) or any other write error removes the temporaries, keeps a
  previous output intact and becomes one :class:`~onnxprune.errors.OnnxPruneError` line
  ("no space left on the device holding ..., nothing written");
- a target that is not a regular file (a FIFO, a device) or is read-only is refused before
  anything is written: replacing it would silently destroy something the user did not mean
  to give as an output.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from onnxprune.errors import OnnxPruneError

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def check_output_target(target: Path) -> None:
    """Refuse an output path whose current occupant must not be replaced."""
    try:
        info = target.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OnnxPruneError(f"cannot inspect output path '{target}': {exc.strerror}") from exc
    if stat.S_ISLNK(info.st_mode):
        info = target.stat() if target.exists() else info
    if stat.S_ISDIR(info.st_mode):
        raise OnnxPruneError(f"output path '{target}' is a folder; give a file name")
    if not stat.S_ISREG(info.st_mode):
        raise OnnxPruneError(
            f"output path '{target}' exists and is not a regular file (a FIFO, socket or "
            "device); choose another output path"
        )
    if not info.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise OnnxPruneError(
            f"output path '{target}' is read-only; make it writable or choose another path"
        )


def require_free_space(folder: Path, needed: int, what: str) -> None:
    """Refuse before writing when ``folder``'s filesystem cannot hold ``needed`` bytes (a
    size known in advance: a model's serialised size), instead of failing half-way."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if needed > free:
        raise OnnxPruneError(
            f"no space left on the device holding '{folder}': {what} needs "
            f"{needed / 2**20:,.1f} MiB, {free / 2**20:,.1f} MiB are free; nothing written, "
            "free space or choose another output path"
        )


def write_error(target: Path, exc: OSError) -> OnnxPruneError:
    """The one-line user error for a failed write of ``target`` (nothing was written)."""
    if exc.errno in _DISK_FULL:
        return OnnxPruneError(
            f"no space left on the device holding '{target.parent}' ({exc.strerror}); "
            f"nothing written, any previous '{target.name}' is intact; free space or choose "
            "another output path"
        )
    return OnnxPruneError(
        f"cannot write '{target}' ({exc.strerror or exc}); nothing written; check the "
        "folder's permissions or choose another output path"
    )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    try:
        _fsync(folder)
    except OSError:  # some filesystems cannot fsync a directory; the rename still happened
        pass


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target``.

    The temporary name keeps ``target``'s suffix (matplotlib and friends pick the format from
    it). The result gets the usual umask-derived mode (``mkstemp`` alone would give 0600).
    An ``OSError`` while writing or renaming becomes :func:`write_error`.
    """
    target = Path(target)
    check_output_target(target)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent
        )
        os.close(fd)
        tmp = Path(name)
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, target)
        _fsync_folder(target.parent)
    except OSError as exc:
        raise write_error(target, exc) from exc
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


@contextmanager
def staging_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A private temporary folder beside ``target`` (same filesystem, so its files can be
    renamed into place), removed afterwards whatever happens. The caller writes a file set
    there, fsyncs it with :func:`commit_file` and renames each file into place itself."""
    target = Path(target)
    check_output_target(target)
    folder: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        yield folder
    except OSError as exc:
        raise write_error(target, exc) from exc
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def commit_file(staged: Path, target: Path) -> None:
    """Flush ``staged`` to disk and rename it onto ``target`` (same filesystem)."""
    _fsync(staged)
    os.chmod(staged, _umask_mode())
    os.replace(staged, target)
    _fsync_folder(target.parent)

"""Atomic file output: write to a temporary file in the target's folder, then rename.

Every stage that writes a file (models, plans, reports, plots, checkpoints, JSON records)
goes through :func:`atomic_path`, so a reader never sees a half-written file and a failure
leaves neither a partial target nor a stray temporary file behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target``.

    The temporary name keeps ``target``'s suffix (matplotlib and friends pick the format from
    it). The result gets the usual umask-derived mode (``mkstemp`` alone would give 0600).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()

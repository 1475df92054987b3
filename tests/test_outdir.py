"""One search per output folder, and never two runs' files mixed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from onnxprune.data import Dataset
from onnxprune.errors import OnnxPruneError
from onnxprune.search.outdir import LOCK, OutputLock, check_output_folder
from tests.test_search import _run, _strategy, tiny_data, tiny_model  # noqa: F401


def test_a_finished_search_is_not_overwritten_without_resume(
    tiny_model: Path,  # noqa: F811
    tiny_data: Dataset,  # noqa: F811
    tmp_path: Path,
) -> None:
    strategy = _strategy(tmp_path, "random", 2, 2)
    out = tmp_path / "out"
    _run(tiny_model, tiny_data, out, strategy)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(OnnxPruneError, match=r"already holds a search \(checkpoint\.pt, plan"):
        _run(tiny_model, tiny_data, out, strategy, seed=1)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert not (out / LOCK).exists()  # released after the finished run
    assert _run(tiny_model, tiny_data, out, strategy, resume=True).resumed_from == 2


def test_an_empty_or_missing_folder_is_fine(tmp_path: Path) -> None:
    check_output_folder(tmp_path / "new", resume=False)
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty", resume=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OnnxPruneError, match="is not a folder"):
        check_output_folder(tmp_path / "file", resume=False)


def test_a_second_search_into_a_busy_folder_is_refused(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK).write_text(json.dumps({"host": os.uname().nodename, "pid": sleeper.pid}))
        with pytest.raises(
            OnnxPruneError, match=f"in use by another onnxprune search.*pid {sleeper.pid}"
        ):
            with OutputLock(tmp_path):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    with OutputLock(tmp_path) as lock:  # its holder is gone: the lock is stale, taken over
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid() == lock.owner["pid"]
    assert not (tmp_path / LOCK).exists()


def test_a_damaged_lock_is_stale(tmp_path: Path) -> None:
    (tmp_path / LOCK).write_text('{"host": ')  # its writer died while writing it
    with OutputLock(tmp_path):
        assert (tmp_path / LOCK).exists()
    assert not (tmp_path / LOCK).exists()


def test_the_lock_is_released_when_the_search_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), OutputLock(tmp_path):
        raise RuntimeError("search failed")
    assert not (tmp_path / LOCK).exists()


def test_taking_the_lock_removes_a_killed_runs_temporaries(tmp_path: Path) -> None:
    for name in (".checkpoint.pt.abc123.pt", ".pruned.onnx.x1.onnx", ".plan.json.q.json"):
        (tmp_path / name).write_text("half")
    (tmp_path / ".pruned.onnx.staging").mkdir()  # an external-data staging folder
    (tmp_path / "plan.json").write_text("{}")  # a real output stays
    (tmp_path / ".hidden_user_file").write_text("mine")  # not ours: stays
    with OutputLock(tmp_path):
        names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".hidden_user_file", LOCK, "plan.json"]

"""Atomic output: the target appears whole or not at all, and no temporary file is left."""

from __future__ import annotations

import pytest

from onnxprune.atomic import atomic_path


def test_success_replaces_target_and_keeps_suffix(tmp_path):
    target = tmp_path / "sub" / "plot.png"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == target.parent
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["plot.png"]


def test_failure_leaves_old_target_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]

"""Search checkpoints: a safe format (no code runs on load), a checksum, a data fingerprint."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from onnxprune.data import Dataset
from onnxprune.errors import OnnxPruneError
from onnxprune.search.checkpoint import MAGIC, Checkpoint, SearchState, data_sha256
from onnxprune.search.result import BestPlan, EpisodeRecord
from tests.test_search import _run, _strategy, tiny_data, tiny_model  # noqa: F401

FINGERPRINT = {"model_sha": "abc", "seed": 0, "data_sha": "d1"}


class _Payload:
    """Pickles to a call that creates a file: what a crafted checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.makedirs, (str(self.marker),))


def _state() -> SearchState:
    record = EpisodeRecord(0, "warm-up", -0.25, 0.49, {1: 8, 2: 16}, False, 0.1)
    agent = {
        "noise": {"sigma": 0.5, "rng": np.random.default_rng(3).bit_generator.state},
        "buffer": [(np.arange(6, dtype=np.float32).reshape(2, 3), np.float64(0.5), None)],
        "weights": torch.ones(2, 2),
        "count": np.int64(7),
    }
    cache = {(np.int64(8), np.int64(16)): -0.25, (16, 16): -0.5}
    return SearchState(agent, cache, [record], BestPlan(-0.25, 0, {1: 8, 2: 16}))


def _framed(payload: bytes) -> bytes:
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + payload


def test_state_round_trips_exactly(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path / "checkpoint.pt", FINGERPRINT)
    checkpoint.save(_state())
    loaded = checkpoint.load()
    assert loaded.log == _state().log and loaded.best == _state().best
    assert loaded.cache == {(8, 16): -0.25, (16, 16): -0.5}
    item = loaded.agent["buffer"][0]
    np.testing.assert_array_equal(item[0], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert item[0].dtype == np.float32 and item[1] == 0.5 and item[2] is None
    assert loaded.agent["count"] == 7 and torch.equal(loaded.agent["weights"], torch.ones(2, 2))
    rng = np.random.default_rng()
    rng.bit_generator.state = loaded.agent["noise"]["rng"]
    assert rng.random() == np.random.default_rng(3).random()  # generator state is exact
    assert not list(tmp_path.glob(".checkpoint.pt*"))  # no temporary left


def test_crafted_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"fingerprint": FINGERPRINT, "agent": _Payload(marker)}, buffer)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(_framed(buffer.getvalue()))  # a valid frame around a malicious payload
    with pytest.raises(OnnxPruneError, match="damaged or not an onnxprune checkpoint"):
        Checkpoint(path, FINGERPRINT).load()
    assert not marker.exists()
    path.write_bytes(pickle.dumps(_Payload(marker)))  # the old format: a bare pickle
    with pytest.raises(OnnxPruneError, match="unknown format"):
        Checkpoint(path, FINGERPRINT).load()
    assert not marker.exists()


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda raw: b"", "unknown format"),
        (lambda raw: raw[: len(raw) // 2], "checksum mismatch"),
        (lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), "checksum mismatch"),
        (lambda raw: np.random.default_rng(0).bytes(300), "unknown format"),
        (lambda raw: _framed(b"not a torch file"), "UnpicklingError|RuntimeError"),
        (lambda raw: _framed(_torch_bytes([1, 2])), "unexpected content"),
    ],
)
def test_damaged_checkpoint_is_one_clear_error(tmp_path: Path, damage, why: str) -> None:
    path = tmp_path / "checkpoint.pt"
    Checkpoint(path, FINGERPRINT).save(_state())
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(OnnxPruneError, match=why) as info:
        Checkpoint(path, FINGERPRINT).load()
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_right_fingerprint_with_broken_state_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(_framed(_torch_bytes({"fingerprint": FINGERPRINT, "agent": {}})))
    with pytest.raises(OnnxPruneError, match="unreadable state"):
        Checkpoint(path, FINGERPRINT).load()


def test_data_hash_sees_values_dtype_and_shape() -> None:
    x = np.zeros((4, 3), np.float32)
    assert data_sha256(x, None) == data_sha256(x.copy(), None)
    assert data_sha256(x) != data_sha256(x.reshape(3, 4))
    assert data_sha256(x) != data_sha256(x.astype(np.float64))
    changed = x.copy()
    changed[2, 1] = 1e-7
    assert data_sha256(x) != data_sha256(changed)
    assert data_sha256(x, None) != data_sha256(x, np.zeros(4, np.int64))


def test_resume_with_other_data_is_refused(
    tiny_model: Path,  # noqa: F811
    tiny_data: Dataset,  # noqa: F811
    tmp_path: Path,
) -> None:
    strategy = _strategy(tmp_path, "random", 2, 2)
    _run(tiny_model, tiny_data, tmp_path / "out", strategy)
    other = Dataset(tiny_data.x + 0.01, tiny_data.y, "other-data")  # same size, other values
    with pytest.raises(OnnxPruneError, match="another model, strategy, seed.*data"):
        _run(tiny_model, other, tmp_path / "out", strategy, resume=True)
    resumed = _run(tiny_model, tiny_data, tmp_path / "out", strategy, resume=True)
    assert resumed.resumed_from == 2

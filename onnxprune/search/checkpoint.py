"""Search checkpoints: what ``--resume`` needs to continue exactly where a run stopped.

``OUTDIR/checkpoint.pt`` is written atomically after every round of candidates (a round
boundary of the uninterrupted run, whatever evaluated them). It holds the
fingerprint of the run (model hash, strategy, seed, budget, reward split size), the agent's
``state_dict()``, the env's plan cache, the episode log and the best plan. A resumed run
loads it and ends with the same result as an uninterrupted one.

The file cannot carry code. It is ``MAGIC``, the SHA-256 of the payload, and the payload:
a ``torch.save`` of plain types and tensors only (numpy arrays are stored as bytes + dtype +
shape), read back with ``torch.load(weights_only=True)``, whose unpickler refuses anything
else. A truncated, corrupted, foreign or crafted file is one clear error, never a traceback
and never executed.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxprune.atomic import atomic_path
from onnxprune.errors import InternalError, OnnxPruneError
from onnxprune.search.result import BestPlan, EpisodeRecord
from onnxprune.search.strategy import Strategy

CHECKPOINT = "checkpoint.pt"
MAGIC = b"onnxprune checkpoint 2\n"
_ARRAY = "__ndarray__"

# Strategy keys a resumed run may change: the episode count may grow (extend a finished
# run), and the evaluation budget, final recovery and held-out size do not touch the search.
_FREE_KEYS = ("episodes", "evaluations", "recover", "eval_samples", "name", "source")


def data_sha256(*arrays: np.ndarray | None) -> str:
    """Hash of the samples a search learns from (inputs and labels of its splits), so a
    ``--resume`` with other data is refused even when the sample count matches."""
    digest = hashlib.sha256()
    for array in arrays:
        if array is None:
            digest.update(b"none")
            continue
        contiguous = np.ascontiguousarray(array)
        digest.update(f"{contiguous.dtype.str}{contiguous.shape}".encode())
        digest.update(contiguous.tobytes())
    return digest.hexdigest()


def fingerprint(
    model_sha: str,
    strategy: Strategy,
    seed: int,
    flops: float,
    n_reward: int,
    free_keys: tuple[str, ...] = (),
    data_sha: str = "",
    latency: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What must match for ``--resume``; ``free_keys``: further strategy keys the agent
    derives from the episode count (``Agent.resume_free_keys``), so they may change too;
    ``data_sha``: :func:`data_sha256` of the search's data; ``latency``: the latency budget
    (target, batch, table key), only when there is one (older checkpoints stay valid)."""
    settings = strategy.to_dict()
    for free in (*_FREE_KEYS, *free_keys):
        settings.pop(free)
    if settings.get("parallel") == 1:  # rounds of one: a checkpoint from before rounds
        settings.pop("parallel")
    extra = {} if latency is None else {"latency": latency}
    return extra | {
        "model_sha": model_sha,
        "strategy": settings,
        "seed": seed,
        "flops": flops,
        "reward_samples": n_reward,
        "data_sha": data_sha,
    }


def _encode(value: Any) -> Any:
    """``value`` with numpy arrays and scalars turned into types ``weights_only`` accepts."""
    if isinstance(value, np.ndarray):
        contiguous = np.ascontiguousarray(value)
        if contiguous.dtype.hasobject:
            raise InternalError("a search state holds an object array; it cannot be saved")
        return {_ARRAY: contiguous.tobytes(), "dtype": contiguous.dtype.str, "shape": value.shape}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {_encode(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_encode(v) for v in value)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if _ARRAY in value:
            flat = np.frombuffer(value[_ARRAY], dtype=np.dtype(value["dtype"]))
            return flat.reshape(tuple(value["shape"])).copy()
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_decode(v) for v in value)
    return value


@dataclass
class SearchState:
    """Everything a checkpoint restores: ``agent`` is the agent's ``state_dict()``, ``cache``
    the env's ``{counts: reward}`` plan cache."""

    agent: dict[str, Any]
    cache: dict[tuple[int, ...], float] = field(default_factory=dict)
    log: list[EpisodeRecord] = field(default_factory=list)
    best: BestPlan | None = None

    def __str__(self) -> str:
        best = "no plan yet" if self.best is None else str(self.best)
        return f"search state after {len(self.log)} episode(s), {len(self.cache)} plans, {best}"

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types only (what the checkpoint file stores)."""
        return {
            "agent": self.agent,
            "cache": dict(self.cache),
            "log": [asdict(e) for e in self.log],
            "best": None if self.best is None else asdict(self.best),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchState:
        best = data["best"]
        return cls(
            agent=data["agent"],
            cache=dict(data["cache"]),
            log=[EpisodeRecord(**e) for e in data["log"]],
            best=None if best is None else BestPlan(**best),
        )


class Checkpoint:
    """``path`` of this run's checkpoint and the ``fingerprint`` it must carry."""

    def __init__(self, path: Path, run_fingerprint: dict[str, Any]) -> None:
        self.path = path
        self.fingerprint = run_fingerprint

    def __str__(self) -> str:
        return f"checkpoint {self.path}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "fingerprint": self.fingerprint}

    def save(self, state: SearchState) -> None:
        """Write ``state`` atomically (temporary file + rename) with its checksum."""
        import torch

        buffer = io.BytesIO()
        torch.save(_encode({"fingerprint": self.fingerprint, **state.to_dict()}), buffer)
        payload = buffer.getvalue()
        with atomic_path(self.path) as tmp:
            Path(tmp).write_bytes(MAGIC + hashlib.sha256(payload).hexdigest().encode() + payload)

    def _read(self) -> dict[str, Any]:
        """The checkpoint's content, or one clear error for a damaged or foreign file."""
        import torch

        damaged = (
            f"--resume: checkpoint '{self.path}' is damaged or not an onnxprune checkpoint "
            "({why}); delete it to start over, or use a new output folder"
        )
        if not self.path.is_file():
            raise OnnxPruneError(
                f"--resume: no checkpoint '{self.path}' in the output folder; run without --resume"
            )
        raw = self.path.read_bytes()
        if not raw.startswith(MAGIC):
            raise OnnxPruneError(damaged.format(why="unknown format"))
        digest, payload = raw[len(MAGIC) : len(MAGIC) + 64], raw[len(MAGIC) + 64 :]
        if hashlib.sha256(payload).hexdigest().encode() != digest:
            raise OnnxPruneError(damaged.format(why="checksum mismatch: truncated or modified"))
        try:
            data = torch.load(io.BytesIO(payload), weights_only=True)
        except Exception as exc:  # the safe unpickler refuses anything but plain data
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            raise OnnxPruneError(damaged.format(why=why)) from exc
        if not isinstance(data, dict):
            raise OnnxPruneError(damaged.format(why="unexpected content"))
        return _decode(data)

    def load(self) -> SearchState:
        """The saved state; refuses a missing, damaged or foreign file or another run's."""
        data = self._read()
        if data.get("fingerprint") != self.fingerprint:
            raise OnnxPruneError(
                f"--resume: checkpoint '{self.path}' was made with another model, strategy, "
                "seed, --flops, --reward-samples or data; use the same arguments or a new "
                "output folder"
            )
        try:
            return SearchState.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise OnnxPruneError(
                f"--resume: checkpoint '{self.path}' has the right fingerprint but an unreadable "
                f"state ({type(exc).__name__}: {exc}); delete it to start over"
            ) from exc

"""Every data split of a search, from one seeded permutation (pure numpy).

With ``n`` samples in ``--data`` and ``order = default_rng(seed).permutation(n)``:

1. **reward**: the head of ``order``, ``min(reward_samples, n - 1)`` samples
   (``n`` when ``--eval-data`` provides the held-out split);
2. **fit** (only with ``reward_recover = "ls"``): the next ``recover_images`` samples of
   the per-candidate least-squares refit, at most half of what is left (all of it with
   ``--eval-data``), so the reward scores a refit on images it never saw;
3. **select** (only with ``select_top > 1``): the next ``select_samples`` samples on which
   the best few plans are re-scored, again at most half of what is left;
4. **held-out**: the rest (the first ``eval_samples`` of it when > 0), for the report;
   with ``--eval-data``, that file instead (``eval_samples`` of it, seeded, when fewer).

The splits are disjoint by construction; each index array is sorted. The data may be sorted
by class, hence the shuffle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxprune.errors import OnnxPruneError


@dataclass
class SplitSizes:
    """Requested sizes; ``fit``/``select`` 0 when the strategy does not use that split."""

    reward: int
    fit: int = 0
    select: int = 0
    heldout: int = 0  # 0: everything left

    def __str__(self) -> str:
        return (
            f"requested: reward {self.reward}, fit {self.fit}, select {self.select}, "
            f"held-out {self.heldout or 'the rest'}"
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "reward": self.reward,
            "fit": self.fit,
            "select": self.select,
            "heldout": self.heldout,
        }

    @classmethod
    def of(cls, strategy: Any) -> SplitSizes:
        """The sizes a :class:`~onnxprune.search.strategy.Strategy` asks for."""
        return cls(
            reward=strategy.reward_samples,
            fit=strategy.recover_images if strategy.reward_recover == "ls" else 0,
            select=strategy.select_samples if strategy.select_top > 1 else 0,
            heldout=strategy.eval_samples,
        )


@dataclass
class SplitIndices:
    """Sample indices of each split, sorted ``[k]`` int arrays.

    ``fit``/``select`` are ``None`` when empty. ``heldout`` indexes ``--data`` (``None``
    when ``--eval-data`` is used); ``eval_pick`` indexes ``--eval-data`` (``None``: all of it).
    """

    reward: np.ndarray
    fit: np.ndarray | None
    select: np.ndarray | None
    heldout: np.ndarray | None
    eval_pick: np.ndarray | None = None

    def __str__(self) -> str:
        def size(a: np.ndarray | None) -> str:
            return "-" if a is None else str(len(a))

        return (
            f"splits: reward {len(self.reward)}, fit {size(self.fit)}, "
            f"select {size(self.select)}, held-out {size(self.heldout)}"
        )

    def to_dict(self) -> dict[str, list[int] | None]:
        def as_list(a: np.ndarray | None) -> list[int] | None:
            return None if a is None else a.tolist()

        return {
            "reward": self.reward.tolist(),
            "fit": as_list(self.fit),
            "select": as_list(self.select),
            "heldout": as_list(self.heldout),
            "eval_pick": as_list(self.eval_pick),
        }


def _take(order: np.ndarray, start: int, count: int) -> tuple[np.ndarray | None, np.ndarray]:
    """``(sorted order[start:start+count] or None, order without them)``."""
    if not count:
        return None, order
    taken = np.sort(order[start : start + count])
    return taken, np.concatenate([order[:start], order[start + count :]])


def _spare(order: np.ndarray, used: int, eval_data: bool, wanted: int) -> int:
    """How many of ``wanted`` samples a middle split gets: at most half of what the reward
    split left, so the held-out split keeps the other half (all of it with eval data)."""
    spare = len(order) - used
    if not eval_data:
        spare //= 2
    return max(0, min(wanted, spare))


def split_indices(
    n_samples: int, sizes: SplitSizes, seed: int, n_eval: int | None = None
) -> SplitIndices:
    """The splits of ``n_samples`` samples (module docstring); ``n_eval``: the size of
    ``--eval-data`` (``None``: no eval data, the held-out split comes from the same data)."""
    eval_data = n_eval is not None
    if n_samples < 2:
        raise OnnxPruneError(f"{n_samples} sample(s) cannot be split; need at least 2")
    n_reward = min(sizes.reward, n_samples if eval_data else n_samples - 1)
    order = np.random.default_rng(seed).permutation(n_samples)
    reward = np.sort(order[:n_reward])
    fit, order = _take(order, n_reward, _spare(order, n_reward, eval_data, sizes.fit))
    select, order = _take(order, n_reward, _spare(order, n_reward, eval_data, sizes.select))
    heldout = eval_pick = None
    if n_eval is not None:
        if sizes.heldout and sizes.heldout < n_eval:
            eval_pick = np.sort(np.random.default_rng(seed).permutation(n_eval)[: sizes.heldout])
    else:
        rest = order[n_reward:]
        heldout = np.sort(rest[: sizes.heldout] if sizes.heldout else rest)
    return SplitIndices(reward, fit, select, heldout, eval_pick)


@dataclass
class DataSplits:
    """The splits as :class:`~onnxprune.data.Dataset` objects (``fit``/``select`` may be
    ``None``), the held-out split's description and the indices they were taken at."""

    reward: Any
    fit: Any
    select: Any
    heldout: Any
    eval_source: str
    indices: SplitIndices

    def __str__(self) -> str:
        return f"{self.indices}; held-out: {self.eval_source}"

    def to_dict(self) -> dict[str, Any]:
        return {"eval_source": self.eval_source, **self.indices.to_dict()}


def make_splits(dataset: Any, eval_dataset: Any, sizes: SplitSizes, seed: int) -> DataSplits:
    """Split ``dataset`` (and pick from ``eval_dataset`` when given) with
    :func:`split_indices`; each split is ``Dataset.subset`` of its indices."""
    if len(dataset) < 2:
        raise OnnxPruneError(
            f"data '{dataset.source}' has {len(dataset)} sample(s); need at least 2"
        )
    n_eval = None if eval_dataset is None else len(eval_dataset)
    indices = split_indices(len(dataset), sizes, seed, n_eval)

    def subset(idx: np.ndarray | None) -> Any:
        return None if idx is None else dataset.subset(idx)

    if eval_dataset is not None:
        heldout = (
            eval_dataset if indices.eval_pick is None else eval_dataset.subset(indices.eval_pick)
        )
        eval_source = heldout.source
    else:
        heldout = dataset.subset(indices.heldout)
        eval_source = f"{dataset.source} (held-out split, disjoint from the reward split)"
    return DataSplits(
        dataset.subset(indices.reward),
        subset(indices.fit),
        subset(indices.select),
        heldout,
        eval_source,
        indices,
    )

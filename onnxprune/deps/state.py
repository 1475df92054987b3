"""Mutable state of one dependency analysis: channel atoms, ties, freezes and rewrite actions.

Every channel position of every tensor that carries prunable channels is an *atom* (an
int). Ops that force two channel positions to be removed together unite their atoms
(union-find); ops that cannot be rewritten freeze atoms with a reason. Handlers also
record *actions*: what surgery must rewrite at a node once the kept channels are known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxprune.deps.graph import GraphIndex


@dataclass
class ChanInfo:
    """Channel layout of one tensor: dimension ``axis`` holds ``atoms[i]`` at position ``i``.

    A flattened ``C*H*W`` axis holds each channel's atom ``H*W`` times (NCHW: in blocks,
    NHWC: interleaved with stride ``C``).
    """

    axis: int
    atoms: np.ndarray  # int64 [length of dimension `axis`]


@dataclass(frozen=True)
class ParamSlice:
    """Slice constant input ``slot`` of node ``node`` along ``axis`` by the kept positions of
    ``tensor``'s channel axis. ``role``: producer (output rows), consumer (input columns),
    param (per-channel parameter of a channel-wise op)."""

    node: int
    slot: int
    axis: int
    tensor: str
    role: str


@dataclass(frozen=True)
class DepthwiseGroup:
    """Set the ``group`` attribute of a depthwise Conv to the kept channels of ``tensor``."""

    node: int
    tensor: str


@dataclass(frozen=True)
class GroupedConv:
    """Grouped Conv with ``groups`` blocks: rows follow ``output``, each row block keeps the
    kept input columns of its own block of ``input``."""

    node: int
    input: str
    output: str
    groups: int


@dataclass(frozen=True)
class SplitSizes:
    """Split on the channel axis: sizes become the kept channels of each output."""

    node: int
    axis: int


@dataclass(frozen=True)
class SliceBounds:
    """Slice on the channel axis (step 1): ``entry`` of starts/ends is rewritten from the
    kept positions of ``input`` within ``[start, end)``."""

    node: int
    entry: int
    input: str
    start: int
    end: int


@dataclass(frozen=True)
class PadAmounts:
    """Pad on the channel axis: pads ``entry`` / ``entry + n`` become the kept padded
    channels of ``output`` at its beginning (``begin`` positions) and end (``end``)."""

    node: int
    entry: int
    n: int
    output: str
    begin: int
    end: int


@dataclass(frozen=True)
class ShapeEntry:
    """Constant input ``slot`` (Reshape shape, Resize sizes) has the size of ``tensor``'s
    channel axis at position ``entry``: rewrite it to the kept size."""

    node: int
    slot: int
    entry: int
    tensor: str


@dataclass(frozen=True)
class MaskSlot:
    """Input ``slot`` of node ``node`` mixes channels of ``tensor``: the masked reference
    multiplies it by the 0/1 keep mask there."""

    node: int
    slot: int
    tensor: str


Action = (
    ParamSlice
    | DepthwiseGroup
    | GroupedConv
    | SplitSizes
    | SliceBounds
    | PadAmounts
    | ShapeEntry
    | MaskSlot
)


class State:
    """Union-find over channel atoms plus the per-tensor channel layout and actions."""

    def __init__(self, index: GraphIndex) -> None:
        self.index = index
        self.parent: list[int] = []
        self.frozen: list[str | None] = []
        self.producer_of: list[int] = []  # node index creating the atom, -1 for constants
        self.chan: dict[str, ChanInfo] = {}
        self.actions: list[Action] = []
        self.roots: list[tuple[int, str]] = []  # (node index, output tensor) of producers
        self.block_ties: list[tuple[str, int, str]] = []  # (tensor, blocks, why)

    # -- atoms ---------------------------------------------------------------------------
    def _new(self, count: int, producer: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        self.frozen.extend([None] * count)
        self.producer_of.extend([producer] * count)
        return np.arange(start, start + count, dtype=np.int64)

    def new_atoms(self, count: int, node: int, tensor: str) -> np.ndarray:
        """Fresh channels created by a weighted producer (Conv/Gemm/MatMul output rows)."""
        self.roots.append((node, tensor))
        return self._new(count, node)

    def const_atoms(self, count: int) -> np.ndarray:
        """Channels with constant content (e.g. zero channels added by a Pad)."""
        return self._new(count, -1)

    def find(self, atom: int) -> int:
        parent = self.parent
        root = atom
        while parent[root] != root:
            root = parent[root]
        while parent[atom] != root:
            parent[atom], atom = root, parent[atom]
        return root

    def union(self, first: np.ndarray, second: np.ndarray) -> None:
        """Tie position ``i`` of ``first`` to position ``i`` of ``second``."""
        for a, b in zip(first.tolist(), second.tolist(), strict=True):
            root_a, root_b = self.find(a), self.find(b)
            if root_a != root_b:
                if root_a < root_b:
                    self.parent[root_b] = root_a
                else:
                    self.parent[root_a] = root_b

    def freeze(self, atoms: np.ndarray, reason: str) -> None:
        for atom in np.unique(atoms).tolist():
            if self.frozen[atom] is None:
                self.frozen[atom] = reason

    def freeze_tensor(self, name: str, reason: str) -> None:
        info = self.chan.get(name)
        if info is not None:
            self.freeze(info.atoms, reason)

    def classes(self) -> np.ndarray:
        """Representative atom of every atom: int64 [num_atoms]."""
        return np.array([self.find(a) for a in range(len(self.parent))], dtype=np.int64)

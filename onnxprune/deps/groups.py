"""Channel groups: which channels of which tensors must be removed together, and why.

:func:`analyze` normalises the model, runs the per-op handlers over the graph in
topological order and turns tied channel atoms into :class:`ChannelGroup` records.

Group formation: every weighted producer (Conv/ConvTranspose/Gemm/MatMul) creates one atom
per output channel. Ops tie atoms (residual Add, depthwise Conv, SE gates, ...). The
channels (atom classes) of producers that share a tied channel form one connected
component; that component is split further so that every tensor holds each group's
channels either never or the same number of times each (a Split into halves gives two
groups). So the kept size of every tensor's channel axis is affine in the groups' keep
counts (:class:`ChannelExpr`). A group is frozen when any of its channels
was frozen by a handler (unknown op, graph output, channel shuffle, ...).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from onnx import ModelProto

from onnxprune.deps.graph import GraphIndex, attr
from onnxprune.deps.handlers import HANDLERS
from onnxprune.deps.state import GroupedConv, MaskSlot, ParamSlice, State
from onnxprune.errors import PlanError


@dataclass(frozen=True)
class ChannelExpr:
    """Kept size of dimension ``axis`` of one tensor, affine in the groups' keep counts.

    ``kept = const + sum(mult * kept[group_id] for group_id, mult in terms)``.
    A plain channel tensor of group 3 is ``ChannelExpr(1, 0, ((3, 1),))``; a flattened
    ``C*H*W`` vector of group 3 with ``H*W = 64`` is ``ChannelExpr(1, 0, ((3, 64),))``.
    """

    axis: int
    const: int
    terms: tuple[tuple[int, int], ...]

    def value(self, kept: Mapping[int, int]) -> int:
        """Evaluate for ``kept`` (group id -> kept channels)."""
        return self.const + sum(mult * kept[group_id] for group_id, mult in self.terms)

    def __str__(self) -> str:
        parts = [
            f"{mult}*g{group_id}" if mult != 1 else f"g{group_id}" for group_id, mult in self.terms
        ]
        if self.const or not parts:
            parts.append(str(self.const))
        return f"axis {self.axis}: " + " + ".join(parts)

    def to_dict(self) -> dict:
        return {"axis": self.axis, "const": self.const, "terms": [list(t) for t in self.terms]}


@dataclass
class ChannelSlice:
    """Where a group's channels sit in one tensor.

    ``tensor``'s dimension ``axis`` holds the group's ``length`` channels starting at
    position ``offset``; ``repeat`` > 1 for flattened features (each channel occupies
    ``repeat`` positions, ``layout`` says how: ``"contiguous"``, ``"blocks"`` (NCHW
    ``C*H*W``: each channel a block of ``repeat``), ``"interleaved"`` (NHWC ``H*W*C``: stride
    ``period``) or ``"scattered"``).
    """

    tensor: str
    axis: int
    offset: int
    length: int
    repeat: int = 1
    layout: str = "contiguous"
    period: int = 0

    def __str__(self) -> str:
        span = f"[{self.offset}:{self.offset + self.length * self.repeat}]"
        if self.layout == "blocks":
            span += f" blocks of {self.repeat}"
        elif self.layout == "interleaved":
            span += f" interleaved x{self.repeat} stride {self.period}"
        elif self.layout == "scattered":
            span = f"{self.length} channels x{self.repeat} scattered from {self.offset}"
        return f"{self.tensor} axis {self.axis} {span}"

    def to_dict(self) -> dict:
        return {
            "tensor": self.tensor,
            "axis": self.axis,
            "offset": self.offset,
            "length": self.length,
            "repeat": self.repeat,
            "layout": self.layout,
            "period": self.period,
        }


@dataclass
class ChannelGroup:
    """Channels removed together.

    - ``size``: number of channels; a plan keeps a subset ``0 <= k < size`` of them.
    - ``members``: every (tensor, axis, positions) holding them.
    - ``producers``: nodes whose output channels (weight rows) are sliced.
    - ``consumers``: nodes whose input channels (weight columns, flattened features) are
      sliced.
    - ``params``: channel-wise nodes whose per-channel constants/attributes are sliced
      (BN, depthwise Conv, broadcast Mul/Add, Pad/Split/Slice/Reshape/Resize constants).
    - ``frozen_reason``: why the group cannot be pruned (``None`` if it can).
    - ``block_count``: keep counts must be equal in each of this many equal blocks of the
      channel index (grouped Conv).
    """

    id: int
    size: int
    members: list[ChannelSlice] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    params: list[str] = field(default_factory=list)
    frozen_reason: str | None = None
    block_count: int = 1

    @property
    def prunable(self) -> bool:
        return self.frozen_reason is None

    def __str__(self) -> str:
        state = "prunable" if self.prunable else "frozen"
        blocks = f", {self.block_count} equal blocks" if self.block_count > 1 else ""
        lines = [f"Group {self.id}: {self.size} channels, {state}{blocks}"]
        if self.frozen_reason:
            lines.append(f"  frozen: {self.frozen_reason}")
        lines.append(f"  producers (output rows): {', '.join(self.producers) or '-'}")
        lines.append(f"  consumers (input columns): {', '.join(self.consumers) or '-'}")
        if self.params:
            lines.append(f"  channel-wise (sliced along): {', '.join(self.params)}")
        lines.append(f"  tied tensors ({len(self.members)}):")
        lines += [f"    {member}" for member in self.members]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "size": self.size,
            "prunable": self.prunable,
            "frozen_reason": self.frozen_reason,
            "block_count": self.block_count,
            "producers": list(self.producers),
            "consumers": list(self.consumers),
            "params": list(self.params),
            "members": [m.to_dict() for m in self.members],
        }


def _describe_positions(positions: np.ndarray, channel: np.ndarray, length: int):
    """(repeat, layout, period) of a group's positions in one tensor axis; ``channel`` is the
    group channel index held at each position."""
    count = len(positions)
    repeat = count // length if length else 1
    contiguous = bool(np.all(np.diff(positions) == 1)) if count > 1 else True
    order = np.arange(length)
    if repeat == 1:
        layout = "contiguous" if contiguous and np.array_equal(channel, order) else "scattered"
        return 1, layout, 0
    if contiguous and np.array_equal(channel, np.repeat(order, repeat)):
        return repeat, "blocks", 0
    if np.array_equal(channel, np.tile(order, repeat)):
        starts = positions[::length]
        steps = np.diff(starts)
        if np.all(positions.reshape(repeat, length) - starts[:, None] == order) and (
            steps.size == 0 or np.all(steps == steps[0])
        ):
            return repeat, "interleaved", int(steps[0]) if steps.size else 0
    return repeat, "scattered", 0


_WEIGHT_SLOTS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "DequantizeLinear": 0}


def _tie_shared_weights(state: State) -> None:
    """Tie the channels of every node that reads the same weight initializer (Torch-Pruning's
    rule for shared modules): along each weight axis, the tensors whose channels slice it
    (output rows of every consumer, input columns of every consumer) are tied position by
    position, so one slicing serves all consumers and the weight stays one shared
    initializer. If some reader of the weight does not slice an axis (e.g. it reads a graph
    input, or is not a weighted op), the channels slicing that axis are frozen instead.

    Only weight slots count (Conv/ConvTranspose/Gemm/MatMul input 1, the quantized tensor of
    a QDQ weight): biases and BN constants are often shared only because an optimiser merged
    equal values (zeros, ones), which must not tie unrelated layers."""
    index = state.index
    uses: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for action in state.actions:
        if isinstance(action, ParamSlice):
            node = index.nodes[action.node]
            if _WEIGHT_SLOTS.get(node.op_type) == action.slot and action.role != "param":
                uses[node.input[action.slot]].append((action.node, action.axis, action.tensor))
        elif isinstance(action, GroupedConv):
            weight = index.nodes[action.node].input[1]
            uses[weight].append((action.node, 0, action.output))
            if action.input:
                uses[weight].append((action.node, 1, action.input))
    for weight, slices in uses.items():
        readers = sorted({reader for reader, _slot in index.consumers.get(weight, [])})
        if len(readers) < 2:
            continue
        by_axis: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for reader, axis, tensor in slices:
            if tensor in state.chan:
                by_axis[axis].append((reader, tensor))
        for axis, entries in by_axis.items():
            missing = [r for r in readers if r not in {reader for reader, _ in entries}]
            lengths = {len(state.chan[tensor].atoms) for _, tensor in entries}
            if missing or len(lengths) > 1:
                other = index.node_label(missing[0]) if missing else "another reader"
                for _, tensor in entries:
                    state.freeze_tensor(
                        tensor,
                        f"weight '{weight}' is shared with node {other}, which cannot slice its "
                        f"axis {axis} the same way",
                    )
                continue
            first = state.chan[entries[0][1]].atoms
            for _, tensor in entries[1:]:
                state.union(first, state.chan[tensor].atoms)


class DependencyAnalysis:
    """Result of :func:`analyze`: the normalised ``model``, its ``groups`` and the channel
    layout of every tensor (for surgery, the masked reference and the cost model)."""

    def __init__(self, model: ModelProto, index: GraphIndex, state: State) -> None:
        self.model = model
        self.index = index
        self.state = state
        self.groups: list[ChannelGroup] = []
        self._build()

    # -- construction --------------------------------------------------------------------
    def _build(self) -> None:
        state, index = self.state, self.index
        _tie_shared_weights(state)
        for name in index.graph_outputs:
            state.freeze_tensor(name, f"channels reach the graph output '{name}'")
        for tensor, root_node in ((t, n) for n, t in state.roots):
            atoms = state.chan[tensor].atoms if tensor in state.chan else np.zeros(0, np.int64)
            classes_here = [state.find(a) for a in atoms.tolist()]
            if len(set(classes_here)) < len(classes_here):
                state.freeze(
                    atoms,
                    f"channels of node {index.node_label(root_node)} are tied to each other",
                )
        n_atoms = len(state.parent)
        cls = state.classes() if n_atoms else np.zeros(0, np.int64)
        self._cls = cls
        # components of classes connected through producers
        comp = list(range(n_atoms))

        def comp_find(a: int) -> int:
            while comp[a] != a:
                comp[a] = comp[comp[a]]
                a = comp[a]
            return a

        has_producer = np.zeros(n_atoms, dtype=bool)
        for _node, tensor in state.roots:
            info = state.chan.get(tensor)
            if info is None:
                continue
            root_classes = np.unique(cls[info.atoms])
            has_producer[root_classes] = True
            base = comp_find(int(root_classes[0]))
            for c in root_classes[1:].tolist():
                other = comp_find(c)
                if other != base:
                    comp[max(other, base)] = min(other, base)
                    base = min(other, base)
        # refinement signature: which tensors hold the class, how often
        signature = np.zeros(n_atoms, dtype=np.uint64)
        rng = np.random.default_rng(0)
        for tensor in sorted(state.chan):
            stamp = rng.integers(1, 2**63 - 1, dtype=np.uint64)
            np.add.at(signature, cls[state.chan[tensor].atoms], stamp)
        reasons: dict[int, list[str]] = defaultdict(list)
        for atom, reason in enumerate(state.frozen):
            if reason is not None and reason not in reasons[int(cls[atom])]:
                reasons[int(cls[atom])].append(reason)
        # groups: classes with a producer, keyed by (component, signature)
        key_to_group: dict[tuple[int, int], int] = {}
        group_classes: list[list[int]] = []
        for c in np.unique(cls).tolist():
            if not has_producer[c]:
                continue
            key = (comp_find(c), int(signature[c]))
            if key not in key_to_group:
                key_to_group[key] = len(group_classes)
                group_classes.append([])
            group_classes[key_to_group[key]].append(c)
        self._class_group = np.full(n_atoms, -1, dtype=np.int64)
        self._class_index = np.full(n_atoms, -1, dtype=np.int64)
        for gid, classes in enumerate(group_classes):
            self._class_group[classes] = gid
            self._class_index[classes] = np.arange(len(classes))
            group_reasons: list[str] = []
            for c in classes:
                for reason in reasons.get(c, []):
                    if reason not in group_reasons:
                        group_reasons.append(reason)
            frozen = None
            if group_reasons:
                extra = len(group_reasons) - 3
                frozen = "; ".join(group_reasons[:3]) + (f"; +{extra} more" if extra > 0 else "")
            self.groups.append(ChannelGroup(gid, len(classes), frozen_reason=frozen))
        self._apply_block_ties()
        self._fill_members()

    def _positions_group(self, tensor: str) -> np.ndarray:
        """Group id of every position of ``tensor``'s channel axis (-1: no group)."""
        return self._class_group[self._cls[self.state.chan[tensor].atoms]]

    def _apply_block_ties(self) -> None:
        """Grouped Conv block structure: a group whose channels all sit in one grouped Conv
        tensor in order gets ``block_count`` (lcm over such ties); a group spread over several
        blocks in another layout is frozen. A group with one channel per block (e.g. the input
        of a depthwise Conv with channel multiplier > 1) can never lose a channel without
        changing the Conv's group count, so it is frozen too, with the reason."""
        last_tie: dict[int, tuple[str, str]] = {}
        for tensor, blocks, why in self.state.block_ties:
            info = self.state.chan.get(tensor)
            if info is None:
                continue
            group_ids = self._positions_group(tensor)
            gids = set(group_ids.tolist())
            gid = next(iter(gids))
            ok = len(gids) == 1 and gid >= 0
            if ok:
                index_in_group = self._class_index[self._cls[info.atoms]]
                group = self.groups[gid]
                ok = (
                    len(info.atoms) == group.size
                    and bool(np.all(index_in_group == np.arange(group.size)))
                    and group.size % blocks == 0
                )
            if ok:
                group = self.groups[gid]
                group.block_count = math.lcm(group.block_count, blocks)
                last_tie[gid] = (why, tensor)
                continue
            for g in gids:
                if g >= 0 and self.groups[g].prunable:
                    self.groups[
                        g
                    ].frozen_reason = (
                        f"{why} '{tensor}' mixes several groups in its {blocks} blocks"
                    )
        for gid, (why, tensor) in last_tie.items():
            group = self.groups[gid]
            if group.prunable and group.block_count > 1 and group.block_count == group.size:
                group.frozen_reason = (
                    f"{why} '{tensor}' has one channel per group ({group.size} groups); "
                    "removing any would change the group structure"
                )

    def _fill_members(self) -> None:
        state, index = self.state, self.index
        roles: dict[int, dict[str, list[str]]] = defaultdict(
            lambda: {"producers": [], "consumers": [], "params": []}
        )

        def add(gid: int, role: str, node_index: int) -> None:
            name = index.nodes[node_index].name
            if name not in roles[gid][role]:
                roles[gid][role].append(name)

        for tensor in state.chan:
            group_ids = self._positions_group(tensor)
            for gid in np.unique(group_ids).tolist():
                if gid < 0:
                    continue
                positions = np.flatnonzero(group_ids == gid)
                size = self.groups[gid].size
                channel = self._class_index[self._cls[state.chan[tensor].atoms[positions]]]
                repeat, layout, period = _describe_positions(positions, channel, size)
                self.groups[gid].members.append(
                    ChannelSlice(
                        tensor,
                        state.chan[tensor].axis,
                        int(positions[0]),
                        size,
                        repeat,
                        layout,
                        period,
                    )
                )
        for node_index, tensor in state.roots:
            if tensor in state.chan:
                for gid in np.unique(self._positions_group(tensor)).tolist():
                    if gid >= 0:
                        add(gid, "producers", node_index)
        for action in state.actions:
            target: str | None = getattr(action, "tensor", None) or getattr(action, "output", None)
            if target is None or target not in state.chan:
                continue
            role = "params"
            if isinstance(action, MaskSlot):
                role = "consumers"
            elif isinstance(action, ParamSlice):
                role = {"producer": "producers", "consumer": "consumers"}.get(action.role, "params")
            for gid in np.unique(self._positions_group(target)).tolist():
                if gid >= 0:
                    add(gid, role, action.node)
        for gid, group in enumerate(self.groups):
            group.producers = roles[gid]["producers"]
            group.consumers = roles[gid]["consumers"]
            group.params = roles[gid]["params"]

    # -- queries -------------------------------------------------------------------------
    def group(self, group_id: int) -> ChannelGroup:
        """The group with id ``group_id``; :class:`PlanError` if there is none."""
        if not 0 <= group_id < len(self.groups):
            raise PlanError(
                f"group {group_id} does not exist; the model has groups 0..{len(self.groups) - 1}"
            )
        return self.groups[group_id]

    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def group_sizes(self) -> dict[int, int]:
        """Full channel count of every group (frozen ones too)."""
        return {g.id: g.size for g in self.groups}

    def tensor_groups(self) -> dict[str, list[int]]:
        """Tensor name -> ids of the groups on its channel axis."""
        out: dict[str, list[int]] = {}
        for tensor in self.state.chan:
            gids = [g for g in np.unique(self._positions_group(tensor)).tolist() if g >= 0]
            if gids:
                out[tensor] = gids
        return out

    def channel_exprs(self) -> dict[str, ChannelExpr]:
        """Tensor name -> :class:`ChannelExpr` of its channel axis, for every
        tensor whose size depends on a prunable group."""
        exprs = {}
        prunable = np.array([g.prunable for g in self.groups] + [False], dtype=bool)
        for tensor, info in self.state.chan.items():
            group_ids = self._positions_group(tensor)
            variable = prunable[group_ids]
            if not variable.any():
                continue
            const = int(np.count_nonzero(~variable))
            gids, counts = np.unique(group_ids[variable], return_counts=True)
            terms = tuple(
                (int(g), int(c) // self.groups[int(g)].size)
                for g, c in zip(gids.tolist(), counts.tolist(), strict=True)
            )
            exprs[tensor] = ChannelExpr(info.axis, const, terms)
        # A QDQ weight (DequantizeLinear of an int8 initializer) with per-axis scales: its
        # float output shrinks on the quantisation axis like the tensor slicing that axis.
        for action in self.state.actions:
            if not isinstance(action, ParamSlice) or action.slot not in (1, 2):
                continue
            node = self.index.nodes[action.node]
            out = node.output[0]
            if node.op_type != "DequantizeLinear" or out in self.state.chan:
                continue
            expr = exprs.get(action.tensor)
            rank = self.index.rank(out) or self.index.rank(node.input[0])
            if expr is None or rank is None:
                continue
            axis = int(attr(node, "axis", 1)) % rank
            exprs[out] = ChannelExpr(axis, expr.const, expr.terms)
        return exprs

    def removed_classes(self, keep: dict[int, list[int]]) -> np.ndarray:
        """Validate ``keep`` (group id -> sorted keep indices) and return a bool mask over
        atoms: ``True`` for every atom class removed. Groups absent from ``keep`` keep all."""
        removed = np.zeros(len(self._cls), dtype=bool)
        for gid, indices in keep.items():
            group = self.group(int(gid))
            where = f"group {group.id} ({group.members[0].tensor if group.members else '?'})"
            kept = np.asarray(sorted(set(int(k) for k in indices)), dtype=np.int64)
            if kept.size == 0:
                raise PlanError(f"{where} keeps no channel; keep at least one")
            if kept[0] < 0 or kept[-1] >= group.size:
                raise PlanError(f"{where} has {group.size} channels; index out of range in plan")
            if kept.size == group.size:
                continue
            if not group.prunable:
                raise PlanError(f"{where} is frozen ({group.frozen_reason}); keep all its channels")
            if group.block_count > 1:
                per_block = np.bincount(
                    kept // (group.size // group.block_count), minlength=group.block_count
                )
                if len(set(per_block.tolist())) != 1:
                    raise PlanError(
                        f"{where} feeds a grouped Conv: keep the same number of channels in each "
                        f"of its {group.block_count} blocks (plan keeps {per_block.tolist()})"
                    )
            keep_mask = np.zeros(group.size, dtype=bool)
            keep_mask[kept] = True
            class_in_group = (self._class_group == group.id) & (
                self._cls == np.arange(len(self._cls))
            )
            classes = np.flatnonzero(class_in_group)
            removed[classes[~keep_mask[self._class_index[classes]]]] = True
        return removed

    def tensor_keep_mask(self, tensor: str, removed: np.ndarray) -> np.ndarray:
        """Bool keep mask over ``tensor``'s channel axis for ``removed`` classes."""
        return ~removed[self._cls[self.state.chan[tensor].atoms]]

    def __str__(self) -> str:
        frozen = len(self.groups) - len(self.prunable_groups())
        head = f"{len(self.groups)} channel groups ({frozen} frozen)"
        return "\n".join([head] + [str(g) for g in self.groups])

    def to_dict(self) -> dict:
        return {"groups": [g.to_dict() for g in self.groups]}


def analyze(model: ModelProto) -> DependencyAnalysis:
    """Normalise ``model`` and find its channel groups.

    Returns a :class:`DependencyAnalysis` whose ``.model`` is the normalised model (the one
    surgery rewrites). The input model is not modified.
    """
    from onnxprune.normalize import normalize

    normalized = normalize(model)
    index = GraphIndex(normalized)
    state = State(index)
    for node_index, node in enumerate(index.nodes):
        fn = HANDLERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        label = index.node_label(node_index)
        if fn is None:
            for name in node.input:
                if name:
                    state.freeze_tensor(
                        name, f"node {label} is not understood by the channel analysis"
                    )
            continue
        claimed = fn(state, node_index)
        for slot, name in enumerate(node.input):
            if name and slot not in claimed and name in state.chan:
                state.freeze_tensor(name, f"node {label} reads channels in input {slot}")
    return DependencyAnalysis(normalized, index, state)

"""The pruning plan: which channels of each channel group survive.

A :class:`PruningPlan` holds *keep indices* per group id of a
:class:`~onnxprune.deps.DependencyAnalysis` (sorted, unique, each in ``0 .. size - 1`` of the
group's channel numbering). Groups missing from ``keep`` keep every channel. The plan is
tied to one model by ``model_sha``: the SHA-256 of the **normalised** model's serialisation
(``analysis.model.SerializeToString()``), i.e. of what surgery rewrites, not of the input
file; two files that normalise to the same graph share plans, and a plan made for another
model is refused on load.

The JSON form (``save``/``to_json``) is meant to be read and edited by a person::

    {
     "format": "onnxprune-plan/1",
     "model_sha256": "...",
     "meta": {...},
     "groups": [
      {"id": 3, "channels": 16, "kept": 8, "tensors": ["conv1_out", ...], "tensor_count": 5,
       "keep": [0, 2, 3, ...]},
      ...
     ]
    }

(one line per group). ``channels``, ``tensors`` (the first few) and ``tensor_count`` are informative (they help a person find the group and are used
in error messages); only ``id`` and ``keep`` are read back. :meth:`PruningPlan.load` and
:func:`validate_plan` raise :class:`~onnxprune.errors.PlanError` naming the group and one of
its tensors for: unknown group, index out of range, duplicate index, keeping zero channels,
pruning a frozen group, and keep counts that differ between the equal blocks of a grouped
convolution (``block_count``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from onnxprune.atomic import atomic_path
from onnxprune.errors import PlanError

if TYPE_CHECKING:  # deps is an earlier stage; imported lazily only for typing
    from onnxprune.deps import ChannelGroup, DependencyAnalysis

PLAN_FORMAT = "onnxprune-plan/1"
# Tensor names written per group in the JSON (all are in ``tensor_count``); for people only.
_TENSORS_SHOWN = 4


def model_sha256(model: onnx.ModelProto) -> str:
    """Hex SHA-256 of ``model.SerializeToString()`` (for a plan: the normalised model)."""
    return hashlib.sha256(model.SerializeToString()).hexdigest()


def group_tensors(group: ChannelGroup) -> list[str]:
    """Names of the tensors a group's channels live in, in member order, without repeats."""
    names: list[str] = []
    for member in group.members:
        name = getattr(member, "tensor", None) or getattr(member, "name", None) or str(member)
        if name not in names:
            names.append(name)
    return names


def _describe(group_id: int, tensors: Iterable[str]) -> str:
    names = list(tensors)
    if not names:
        return f"group {group_id}"
    more = f" (+{len(names) - 1} more)" if len(names) > 1 else ""
    return f"group {group_id} (tensor '{names[0]}'{more})"


_PLAN_KEYS = frozenset({"format", "model_sha256", "meta", "groups"})
_GROUP_KEYS = frozenset({"id", "channels", "kept", "tensors", "tensor_count", "keep"})


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _json_int(value: Any, where: str) -> int:
    """``value`` if it is a JSON integer (``bool`` is not, nor ``3.0``, ``"3"`` or ``Infinity``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"{where} must be an integer, got {_short(value)}")
    return value


def _check_keys(data: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise PlanError(
            f"{where} has unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
        )


@dataclass
class PruningPlan:
    """Keep indices per channel group, for the model whose normalised SHA-256 is ``model_sha``.

    ``keep[group_id]`` is a sorted list of unique channel indices in ``0 .. size - 1``; a
    group absent from ``keep`` keeps all its channels. ``meta`` records how the plan was made
    (criterion, ratios, rounding, target fraction ...). ``sizes`` and ``tensors`` copy each
    listed group's channel count and tensor names from the analysis, for people and messages.
    """

    keep: dict[int, list[int]]
    model_sha: str
    meta: dict[str, Any] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    tensors: dict[int, list[str]] = field(default_factory=dict)

    @classmethod
    def from_keep(
        cls,
        analysis: DependencyAnalysis,
        keep: Mapping[int, Iterable[int]],
        meta: Mapping[str, Any] | None = None,
    ) -> PruningPlan:
        """Build and validate a plan for ``analysis`` (indices are sorted; see module doc)."""
        plan = cls(
            keep={int(g): sorted(int(i) for i in idx) for g, idx in keep.items()},
            model_sha=model_sha256(analysis.model),
            meta=dict(meta or {}),
        )
        validate_plan(plan, analysis)
        return plan

    @classmethod
    def full(cls, analysis: DependencyAnalysis) -> PruningPlan:
        """The plan that keeps everything (pruning with it is the identity)."""
        return cls(keep={}, model_sha=model_sha256(analysis.model), meta={"criterion": None})

    def kept(self, group_id: int, size: int) -> int:
        """Channels kept in group ``group_id`` whose full size is ``size``."""
        return len(self.keep[group_id]) if group_id in self.keep else size

    def pruned_groups(self) -> list[int]:
        """Ids of the groups that lose at least one channel (needs ``sizes``, filled on
        creation from an analysis)."""
        return sorted(g for g, idx in self.keep.items() if len(idx) < self.sizes.get(g, 1 << 62))

    def to_dict(self) -> dict[str, Any]:
        groups = []
        for group_id in sorted(self.keep):
            indices = self.keep[group_id]
            groups.append(
                {
                    "id": group_id,
                    "channels": self.sizes.get(group_id),
                    "kept": len(indices),
                    "tensors": self.tensors.get(group_id, [])[:_TENSORS_SHOWN],
                    "tensor_count": len(self.tensors.get(group_id, [])),
                    "keep": list(indices),
                }
            )
        return {
            "format": PLAN_FORMAT,
            "model_sha256": self.model_sha,
            "meta": self.meta,
            "groups": groups,
        }

    def to_json(self) -> str:
        """The JSON form, one line per group so a keep list is easy to find and edit."""
        data = self.to_dict()
        groups = data.pop("groups")
        head = json.dumps(data, indent=1)[:-2]  # drop the closing "\n}"
        lines = [f"  {json.dumps(group)}" for group in groups]
        body = ",\n".join(lines)
        return f'{head},\n "groups": [\n{body}\n ]\n}}' if lines else f'{head},\n "groups": []\n}}'

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON form atomically (temp file + rename); returns the path."""
        target = Path(path)
        with atomic_path(target) as tmp:
            tmp.write_text(self.to_json() + "\n")
        return target

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "plan") -> PruningPlan:
        """Parse the JSON form (structure only; :func:`validate_plan` checks the groups).

        Strict: every field must have its JSON type (integers are integers, not ``3.9``,
        ``true`` or ``"3"``), ``format`` (if given) must be :data:`PLAN_FORMAT`, unknown keys are
        refused, so an edit that does not mean what it says is an error, never coerced.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("groups"), list):
            raise PlanError(
                f"{source} is not an onnxprune plan: expected an object with a 'groups' list "
                f"(format {PLAN_FORMAT}); write one with `onnxprune prune --save-plan`"
            )
        _check_keys(data, _PLAN_KEYS, source)
        if data.get("format", PLAN_FORMAT) != PLAN_FORMAT:  # hand-written plans may omit it
            raise PlanError(
                f"{source} has format {data.get('format')!r}, this onnxprune reads "
                f"{PLAN_FORMAT!r}; write a new plan with `onnxprune prune --save-plan`"
            )
        model_sha = data.get("model_sha256", "")
        if not isinstance(model_sha, str):
            raise PlanError(f"{source}: 'model_sha256' must be a string, got {model_sha!r}")
        meta = data.get("meta") or {}
        if not isinstance(meta, Mapping):
            raise PlanError(f"{source}: 'meta' must be an object, got {_short(meta)}")
        plan = cls(keep={}, model_sha=model_sha, meta=dict(meta))
        for position, entry in enumerate(data["groups"]):
            plan._add_entry(entry, f"{source}: groups[{position}]")
        return plan

    def _add_entry(self, entry: Any, where: str) -> None:
        """One ``groups[i]`` object of the JSON form, type-checked."""
        if not isinstance(entry, Mapping) or "id" not in entry or "keep" not in entry:
            raise PlanError(f"{where} needs an 'id' and a 'keep' list")
        _check_keys(entry, _GROUP_KEYS, where)
        group_id = _json_int(entry["id"], f"{where}.id")
        if not isinstance(entry["keep"], list):
            raise PlanError(
                f"{where}.keep must be a list of channel indices, got {_short(entry['keep'])}"
            )
        indices = [_json_int(i, f"{where}.keep[{k}]") for k, i in enumerate(entry["keep"])]
        if group_id in self.keep:
            raise PlanError(f"{where}: group {group_id} is listed twice; merge the entries")
        self.keep[group_id] = indices
        if entry.get("channels") is not None:
            self.sizes[group_id] = _json_int(entry["channels"], f"{where}.channels")
        tensors = entry.get("tensors", [])
        if not isinstance(tensors, list) or not all(isinstance(t, str) for t in tensors):
            raise PlanError(
                f"{where}.tensors must be a list of tensor names, got {_short(tensors)}"
            )
        self.tensors[group_id] = list(tensors)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        analysis: DependencyAnalysis,
        *,
        check_sha: bool = True,
    ) -> PruningPlan:
        """Read a plan file and validate it against ``analysis``.

        Raises :class:`PlanError` naming the file for unreadable JSON or a plan made for
        another model (``check_sha``), and naming the group and tensor for every invalid
        group entry (see :func:`validate_plan`). Indices are returned sorted.
        """
        file = Path(path)
        try:
            data = json.loads(file.read_text())
        except FileNotFoundError as exc:
            raise PlanError(f"plan file '{file}' does not exist; check the path") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PlanError(f"plan file '{file}' is not readable JSON: {exc}") from exc
        except RecursionError as exc:
            raise PlanError(f"plan file '{file}' is nested too deeply to be a plan") from exc
        plan = cls.from_dict(data, source=f"plan file '{file}'")
        expected = model_sha256(analysis.model)
        if check_sha and plan.model_sha and plan.model_sha != expected:
            raise PlanError(
                f"plan file '{file}' was made for another model (sha256 {plan.model_sha[:12]}..., "
                f"this model normalises to {expected[:12]}...); make a new plan for this model"
            )
        validate_plan(plan, analysis, source=f"plan file '{file}'")
        plan.model_sha = expected
        return plan

    def __str__(self) -> str:
        lines = [f"PruningPlan for model {self.model_sha[:12]} ({len(self.keep)} groups listed)"]
        if self.meta:
            lines.append("  " + ", ".join(f"{k}={v}" for k, v in self.meta.items()))
        for group_id in sorted(self.keep):
            size = self.sizes.get(group_id)
            kept = len(self.keep[group_id])
            tensors = self.tensors.get(group_id) or []
            where = (
                f"  {tensors[0]}" + (f" +{len(tensors) - 1}" if len(tensors) > 1 else "")
                if tensors
                else ""
            )
            lines.append(
                f"  group {group_id:>4}: keep {kept:>5} / {size if size is not None else '?'}{where}"
            )
        return "\n".join(lines)


def validate_plan(plan: PruningPlan, analysis: DependencyAnalysis, source: str = "plan") -> None:
    """Check ``plan`` against ``analysis``; sorts the indices and fills ``sizes``/``tensors``.

    Raises :class:`PlanError` naming the group and tensor for: a group id the analysis does
    not have, an index outside ``0 .. size - 1``, a duplicate index, zero kept channels, a
    frozen group that would lose channels, or unequal keep counts across the
    ``block_count`` equal blocks of a grouped convolution.
    """
    groups = {group.id: group for group in analysis.groups}
    for group_id in sorted(plan.keep):
        indices = plan.keep[group_id]
        group = groups.get(group_id)
        if group is None:
            valid = f"0..{max(groups)}" if groups else "none"
            raise PlanError(
                f"{source}: {_describe(group_id, plan.tensors.get(group_id, []))} does not exist "
                f"in this model (group ids: {valid}); regenerate the plan with `onnxprune groups`"
            )
        tensors = group_tensors(group)
        where = _describe(group_id, tensors)
        size = int(group.size)
        if not indices:
            raise PlanError(
                f"{source}: {where} keeps zero channels; keep at least one (or remove the "
                "layer from the model instead)"
            )
        bad = [i for i in indices if not 0 <= i < size]
        if bad:
            raise PlanError(
                f"{source}: {where} has keep index {bad[0]} out of range 0..{size - 1} "
                f"({size} channels)"
            )
        if len(set(indices)) != len(indices):
            seen: set[int] = set()
            duplicate = next(i for i in indices if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise PlanError(f"{source}: {where} lists keep index {duplicate} twice")
        if group.frozen_reason is not None and len(indices) < size:
            raise PlanError(
                f"{source}: {where} is frozen ({group.frozen_reason}) and cannot lose channels; "
                "drop it from the plan"
            )
        blocks = max(int(getattr(group, "block_count", 1) or 1), 1)
        if blocks > 1 and len(indices) < size:
            block_size = size // blocks
            counts = [0] * blocks
            for i in indices:
                counts[min(i // block_size, blocks - 1)] += 1
            if len(set(counts)) != 1:
                raise PlanError(
                    f"{source}: {where} is split into {blocks} equal blocks of {block_size} "
                    f"channels (grouped convolution) that must keep the same number of "
                    f"channels each, but keeps {counts}"
                )
        plan.keep[group_id] = sorted(indices)
        plan.sizes[group_id] = size
        plan.tensors[group_id] = tensors


def kept_counts(plan: PruningPlan, analysis: DependencyAnalysis) -> dict[int, int]:
    """Kept channels of every group of ``analysis`` (full size where the plan is silent)."""
    return {group.id: plan.kept(group.id, int(group.size)) for group in analysis.groups}

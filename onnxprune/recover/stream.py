"""Running a graph over the calibration set one batch at a time, with bounded memory.

Least squares refits layers in topological order, and the input of layer ``k`` in the pruned
model depends on the refit of every layer before it: all images must pass layer ``k - 1``'s
fit before any of them can go on. So the graph advances in *segments* (the nodes between two
refit layers), and between segments the *frontier* -- the tensors produced so far that later
nodes still read (a layer's input, a residual branch waiting for its ``Add``) -- has to be
kept for every batch.

:class:`ActivationStore` keeps the frontier: per tensor and batch, in RAM while the frontier
held in RAM stays within ``memory_bytes``, beyond that in one spill file per tensor under a
temporary folder (written once, read back batch by batch, removed by :meth:`close`). Files
are read with ``numpy.fromfile`` rather than memory-mapped, so pages read back do not stay
mapped into (and counted in) the process. :class:`StreamRunner` runs a segment on one batch
at a time: it loads from the store only the frontier tensors the segment reads, runs the
nodes (dropping each activation after its last use), and stores the new frontier. So at
most one batch of activations per live tensor is in RAM beyond the store's budget, whatever
the number of images. A graph that never changes (the reference) needs no frontier: it runs
once, batch by batch, through :func:`run_batch`, which hands each produced tensor to a
callback before dropping it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from onnxprune.recover.interpreter import OnnxModule
from onnxprune.recover.interpreter.core import run_node_checked

# Frontier kept in RAM before spilling to disk (recover: ``reconstruct(activation_memory=)``).
DEFAULT_ACTIVATION_MEMORY = 256 * 2**20


def _libc_function(name: str) -> Any:
    library = ctypes.util.find_library("c")
    return None if library is None else getattr(ctypes.CDLL(library), name, None)  # glibc only


_MALLOC_TRIM = _libc_function("malloc_trim")


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``; nothing elsewhere).

    Streaming frees and re-allocates batch-sized buffers thousands of times; glibc raises
    its mmap threshold after the first large free, so later buffers come from the heap and
    its fragmentation grows the resident size with the number of batches (ResNet-50-like
    benchmark, least squares on 250 images: 2.6 GB peak untrimmed, 1.46 GB with the heap
    trimmed after each layer; docs/SCALING.md).
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@dataclass
class _Spilled:
    """Where one batch of a spilled tensor sits in its file."""

    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype


def _nbytes(value: Any) -> int:
    return value.element_size() * value.numel() if isinstance(value, Tensor) else 0


class ActivationStore:
    """Per-batch values of the frontier tensors: RAM up to ``memory_bytes``, then disk.

    ``folder`` is the parent of the temporary spill folder (None: the system temp folder);
    the spill folder is created on the first spill and removed by :meth:`close`.
    """

    def __init__(self, memory_bytes: int, folder: Path | str | None = None) -> None:
        self.memory_bytes = memory_bytes
        self.parent = folder
        self.resident: dict[tuple[str, int], Any] = {}
        self.resident_bytes = 0
        self.spilled: dict[tuple[str, int], _Spilled] = {}
        self.spilled_bytes = 0  # total ever written
        self._files: dict[str, Any] = {}
        self._folder: Path | None = None

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self.resident or key in self.spilled

    def resident_batches(self, in_flight: int | None = None) -> int:
        """How many distinct batches have activations in RAM: those with frontier values
        held here, plus the batch ``in_flight`` (being run) if given."""
        batches = {batch for _, batch in self.resident}
        return len(batches | {in_flight}) if in_flight is not None else len(batches)

    def put(self, name: str, batch: int, value: Any) -> None:
        size = _nbytes(value)
        if not isinstance(value, Tensor) or self.resident_bytes + size <= self.memory_bytes:
            self.resident[(name, batch)] = value
            self.resident_bytes += size
            return
        array = value.detach().contiguous().numpy()
        handle = self._file(name)
        offset = handle.seek(0, 2)
        array.tofile(handle)
        self.spilled[(name, batch)] = _Spilled(offset, tuple(array.shape), array.dtype)
        self.spilled_bytes += array.nbytes

    def get(self, name: str, batch: int) -> Any:
        if (name, batch) in self.resident:
            return self.resident[(name, batch)]
        where = self.spilled[(name, batch)]
        handle = self._files[name]
        handle.flush()
        count = int(np.prod(where.shape, dtype=np.int64))
        array = np.fromfile(handle.name, dtype=where.dtype, count=count, offset=where.offset)
        return torch.from_numpy(array.reshape(where.shape))

    def drop(self, name: str) -> None:
        """Forget every batch of ``name`` (and delete its spill file)."""
        for key in [k for k in self.resident if k[0] == name]:
            self.resident_bytes -= _nbytes(self.resident.pop(key))
        for key in [k for k in self.spilled if k[0] == name]:
            del self.spilled[key]
        handle = self._files.pop(name, None)
        if handle is not None:
            handle.close()
            Path(handle.name).unlink(missing_ok=True)

    def names(self) -> set[str]:
        return {name for name, _ in self.resident} | {name for name, _ in self.spilled}

    def close(self) -> None:
        """Drop everything and remove the spill folder."""
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        self.resident.clear()
        self.spilled.clear()
        self.resident_bytes = 0
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def _file(self, name: str) -> Any:
        if name not in self._files:
            if self._folder is None:
                if self.parent is not None:
                    Path(self.parent).mkdir(parents=True, exist_ok=True)
                self._folder = Path(tempfile.mkdtemp(prefix="onnxprune-ls-", dir=self.parent))
            path = self._folder / f"t{len(self._files)}_{abs(hash(name)) % 10**8}.bin"
            self._files[name] = open(path, "w+b")  # noqa: SIM115 - closed by drop()/close()
        return self._files[name]


class StreamRunner:
    """Runs ``module`` segment by segment over the calibration batches (module docstring).

    ``feeds(batch)`` returns the graph inputs of one batch (``{input name: tensor}``); they are
    taken from the data again for every segment instead of being stored. Several runners may
    share one ``store`` (and its RAM budget) under different ``tag`` prefixes.
    """

    def __init__(
        self,
        module: OnnxModule,
        feeds: Callable[[int], dict[str, Tensor]],
        store: ActivationStore,
        tag: str = "",
    ) -> None:
        self.module = module
        self.feeds = feeds
        self.store = store
        self.tag = tag
        self.next_index = 0
        self.base: dict[str, Any] = dict(module._folded)
        for name in module._slots:
            self.base[name] = module.tensor(name)
        self.inputs = set(module.input_names)
        self.producer = {out: i for i, (_, _, outs) in enumerate(module._nodes) for out in outs}
        # Last node reading each tensor (graph outputs no node reads are not kept).
        self.last_read: dict[str, int] = {}
        for index, (_, names_in, _) in enumerate(module._nodes):
            for name in names_in:
                if name:
                    self.last_read[name] = index
        self.batch_bytes = 0  # the largest batch's live activations seen at a segment's end

    def _needed(self, name: str, stop: int, keep: Collection[str]) -> bool:
        return name in keep or self.last_read.get(name, -1) >= stop

    def run(
        self, batch: int, stop: int, keep: Collection[str] = (), want: Collection[str] = ()
    ) -> dict[str, Any]:
        """Run nodes ``[next_index, stop)`` on ``batch``; return the ``want`` tensors.

        Tensors still read at or after ``stop`` (or named in ``keep``) are stored for the next
        segment; every other activation of the batch is dropped. Call :meth:`finish` once
        every batch has run the segment.
        """
        module, store = self.module, self.store
        nodes = [i for i in range(self.next_index, stop) if i not in module._fold_skip]
        reads = {n for i in nodes for n in module._nodes[i][1] if n} | set(want)
        env: dict[str, Any] = dict(self.feeds(batch))
        for name in reads:
            if name not in env and (self.tag + name, batch) in store:
                env[name] = store.get(self.tag + name, batch)
        loaded = set(env)
        for index in nodes:
            ctx, names_in, names_out = module._nodes[index]
            values = [self._value(env, n) if n else None for n in names_in]
            for name, value in zip(names_out, run_node_checked(module, ctx, values), strict=False):
                if name:
                    env[name] = value
            for name in names_in:
                if name and module._last_use.get(name) == index and name not in keep:
                    if name not in want:
                        env.pop(name, None)
        wanted = {name: self._value(env, name) for name in want}
        live = 0
        for name, value in env.items():
            if name in loaded or name in self.inputs or not self._needed(name, stop, keep):
                continue
            store.put(self.tag + name, batch, value)
            live += _nbytes(value)
        self.batch_bytes = max(self.batch_bytes, live + sum(map(_nbytes, wanted.values())))
        return wanted

    def _value(self, env: dict[str, Any], name: str) -> Any:
        return env[name] if name in env else self.base[name]

    def finish(self, stop: int, keep: Collection[str] = ()) -> None:
        """The segment up to ``stop`` ran on every batch: drop frontier tensors now dead."""
        self.next_index = max(self.next_index, stop)
        for key in self.store.names():
            if not key.startswith(self.tag):
                continue
            if not self._needed(key[len(self.tag) :], self.next_index, keep):
                self.store.drop(key)


def run_batch(
    module: OnnxModule,
    feeds: dict[str, Tensor],
    stop: int,
    on_tensor: Callable[[str, Any], None],
) -> int:
    """Run nodes ``[0, stop)`` of ``module`` on one batch, calling ``on_tensor(name, value)``
    for every tensor produced; each activation is dropped after its last use. Returns the
    largest number of activation bytes held at once."""
    env: dict[str, Any] = dict(module._folded)
    for name in module._slots:
        env[name] = module.tensor(name)
    static = set(env)
    env.update(feeds)
    live, peak = 0, 0
    for index in range(stop):
        if index in module._fold_skip:
            continue
        ctx, names_in, names_out = module._nodes[index]
        values = [env[n] if n else None for n in names_in]
        for name, value in zip(names_out, run_node_checked(module, ctx, values), strict=False):
            if name:
                env[name] = value
                live += _nbytes(value)
                on_tensor(name, value)
        peak = max(peak, live)
        for name in names_in:
            if name and module._last_use.get(name) == index and name not in static:
                live -= _nbytes(env.pop(name, None))
    return peak

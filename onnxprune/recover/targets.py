"""The reference model's side of least squares: sampled targets, computed once and reused.

Least squares (:mod:`.lsq`) fits each refit layer's output to the paired layer's output in
the unpruned *reference*, at a random subset of output positions per image. The reference
never changes, and the positions are drawn from one generator per reference layer (seeded by
the seed and the layer's node index), so for a given calibration set the sampled targets are
the same whichever plan is being repaired; only the kept output channels differ. A search
repairs hundreds of candidates of one model on one fit split, so it keeps a
:class:`ReferenceTargets` and pays for the reference pass once instead of once per candidate
(on a ResNet-50-size model that pass is about a third of a candidate's least squares;
docs/SCALING.md).

What is kept, per weighted reference layer and batch: the sampled positions (``chosen``) and
the layer's output there for *every* output channel (``rows [rows, C]``); a fit selects its
kept channels from that. Values go to an :class:`~.stream.ActivationStore` (RAM up to a
budget, then a temporary spill folder removed when the cache is closed or garbage-collected).

A cache answers only for the calibration set it was filled from: :meth:`ReferenceTargets.fill`
compares a key (reference weights, the data, the batch bounds, the seed, the positions per
image) and starts over on any difference, so a stale cache can cost time but never changes a
result.
"""

from __future__ import annotations

import weakref
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from onnx import ModelProto
from torch import Tensor

from onnxprune.recover.interpreter import OnnxModule
from onnxprune.recover.pairing import WeightedLayer, weighted_layers
from onnxprune.recover.storage import for_recovery
from onnxprune.recover.stream import (
    DEFAULT_ACTIVATION_MEMORY,
    ActivationStore,
    release_free_memory,
    run_batch,
)


def layer_generator(seed: int, reference_index: int) -> torch.Generator:
    """The sampling generator of the layer whose reference node is ``reference_index``: one
    stream per layer, so a layer's sampled positions depend neither on which other layers are
    refit nor on the plan, and the reference pass can draw them batch-major."""
    return torch.Generator().manual_seed(seed * 1_000_003 + reference_index)


def sampled_rows(
    op_type: str, y_ref: Tensor, positions: int, generator: torch.Generator
) -> tuple[Tensor | None, Tensor]:
    """One batch of a reference layer's output, reduced to the rows a fit reads.

    Returns ``(chosen, rows [rows, C])`` over all ``C`` output channels: ``chosen`` are the
    sampled output positions of a convolution (``[positions]``, the same for every image of
    the batch) or the sampled rows of a Gemm/MatMul output (``[positions * n]``), None when
    every one is used; ``rows`` has one row per (image, position).
    """
    if op_type == "Conv":
        target = y_ref.flatten(2)  # [n, C, L]
        chosen = None
        if positions < target.shape[2]:
            chosen = torch.randperm(target.shape[2], generator=generator)[:positions]
            target = target[:, :, chosen]
        return chosen, target.permute(0, 2, 1).reshape(-1, target.shape[1])
    rows_y = y_ref.reshape(-1, y_ref.shape[-1])
    if positions * y_ref.shape[0] < rows_y.shape[0]:
        chosen = torch.randperm(rows_y.shape[0], generator=generator)[: positions * y_ref.shape[0]]
        return chosen, rows_y[chosen]
    return None, rows_y


def recovery_module(model: ModelProto) -> OnnxModule:
    """A model as least squares reads and runs it: normalised (:func:`for_recovery`), ops
    without a torch handler in onnxruntime (no gradients are needed)."""
    return OnnxModule(for_recovery(model), train_bn=False, fallback="onnxruntime").eval()


def _data_checksum(arrays: list[np.ndarray]) -> tuple[Any, ...]:
    return tuple(
        (
            array.shape,
            str(array.dtype),
            zlib.crc32(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data),
        )
        for array in arrays
    )


def _weights_checksum(module: OnnxModule) -> int:
    crc = 0
    for name in sorted(module._slots):
        value = module.tensor(name).detach().contiguous().numpy()
        crc = zlib.crc32(value.reshape(-1).view(np.uint8).data, zlib.crc32(name.encode(), crc))
    return crc


class ReferenceTargets:
    """Sampled reference targets of every weighted layer, per batch (module docstring).

    ``memory_bytes`` of targets are kept in RAM, the rest spilled to a temporary folder under
    ``spill_dir`` (default: the system temp folder). Pass one instance to every
    :func:`~onnxprune.recover.lsq.reconstruct` call that repairs plans of the same reference
    on the same data; :meth:`close` (or garbage collection) removes the spill folder.
    """

    def __init__(
        self,
        memory_bytes: int = DEFAULT_ACTIVATION_MEMORY // 4,
        spill_dir: Path | str | None = None,
    ) -> None:
        self.store = ActivationStore(memory_bytes, spill_dir)
        self.key: tuple[Any, ...] | None = None
        self.outputs: set[str] = set()  # reference tensors whose targets are held
        self.peak_bytes = 0  # activation bytes of one batch of the reference pass
        self.passes = 0  # reference passes run (a reused cache runs none)
        self._model: ModelProto | None = None
        self._module: OnnxModule | None = None
        self._weights = 0
        self._layers: list[WeightedLayer] | None = None
        self._closer = weakref.finalize(self, self.store.close)

    def module_for(self, reference_model: ModelProto) -> OnnxModule:
        """The reference as a module for least squares, built once per reference model (a
        search repairs every candidate against the same ``ModelProto``, never modified)."""
        if self._model is not reference_model:
            self._model = reference_model
            self._module = recovery_module(reference_model)
            self._weights = _weights_checksum(self._module)
            self._layers = None
        assert self._module is not None
        return self._module

    def weighted_layers(self) -> list[WeightedLayer]:
        """The reference module's weighted layers (:func:`~.pairing.weighted_layers`), built
        once: pairing each candidate reads them."""
        assert self._module is not None, "module_for() first"
        if self._layers is None:
            self._layers = weighted_layers(self._module)
        return self._layers

    def key_for(
        self,
        reference: OnnxModule,
        arrays: list[np.ndarray],
        bounds: list[tuple[int, int]],
        seed: int,
        positions: int,
    ) -> tuple[Any, ...]:
        """What the held targets depend on: the reference's graph and weights, the data, its
        batches, the seed and the positions per image."""
        graph = tuple((ctx.op_type, tuple(i), tuple(o)) for ctx, i, o in reference._nodes)
        weights = self._weights if reference is self._module else _weights_checksum(reference)
        return (
            hash(graph), weights, _data_checksum(arrays), tuple(bounds), seed, positions,
        )  # fmt: skip

    def fill(
        self,
        reference: OnnxModule,
        layers: dict[str, str],
        feeds: Callable[[int], dict[str, Tensor]],
        batch_count: int,
        key: tuple[Any, ...],
        seed: int,
        positions: int,
    ) -> None:
        """Hold the targets of ``layers`` (reference output tensor -> op type) for ``key``.

        Layers already held for the same ``key`` cost nothing; the others take one pass of
        the reference over the batches. A different ``key`` drops everything held first.
        """
        if key != self.key:
            self.store.close()
            self.outputs, self.key = set(), key
        wanted = {name: op for name, op in layers.items() if name not in self.outputs}
        if not wanted:
            return
        producer = {out: i for i, (_, _, outs) in enumerate(reference._nodes) for out in outs}
        generators = {name: layer_generator(seed, producer[name]) for name in wanted}
        stop = max(producer[name] for name in wanted) + 1
        for batch in range(batch_count):

            def gather(name: str, value: Any, batch: int = batch) -> None:
                if name not in wanted:
                    return
                chosen, rows = sampled_rows(wanted[name], value, positions, generators[name])
                self.store.put(f"target:{name}", batch, rows)
                if chosen is not None:
                    self.store.put(f"chosen:{name}", batch, chosen)

            self.peak_bytes = max(self.peak_bytes, run_batch(reference, feeds(batch), stop, gather))
        self.outputs |= set(wanted)
        self.passes += 1
        release_free_memory()

    def drop(self, output: str) -> None:
        """Forget the targets of reference tensor ``output`` (a one-off fit frees each layer's
        targets once it is solved)."""
        self.store.drop(f"target:{output}")
        self.store.drop(f"chosen:{output}")
        self.outputs.discard(output)

    def get(self, output: str, batch: int, channels: Tensor) -> tuple[Tensor | None, Tensor]:
        """``(chosen, targets [rows, len(channels)])`` of reference tensor ``output`` in
        ``batch``: the sampled positions and the output channels ``channels`` there."""
        rows = self.store.get(f"target:{output}", batch)
        key = (f"chosen:{output}", batch)
        chosen = self.store.get(*key) if key in self.store else None
        return chosen, rows.index_select(1, channels)

    @property
    def resident(self) -> dict[tuple[str, int], Any]:
        return self.store.resident

    @property
    def resident_bytes(self) -> int:
        return self.store.resident_bytes

    @property
    def spilled_bytes(self) -> int:
        return self.store.spilled_bytes

    def close(self) -> None:
        """Drop every target and the reference module, and remove the spill folder."""
        self.store.close()
        self.outputs, self.key = set(), None
        self._model = self._module = None
        self._layers = None

"""How recovery feeds calibration data to a model whose batch dimension may be fixed.

A graph input declared ``[1, 3, 48, 320]`` defines the model for a batch of exactly 1: the
ONNX spec lets every node rely on that (a ``Reshape`` to the constant ``[1, 40, 3, 8, 15]``,
an ``Expand``/``ConstantOfShape``/``Tile`` sized by it, a ``Slice`` or ``Gather`` on axis 0,
a ``Transpose`` that moves the batch away from axis 0 before a ``MatMul``). Rewriting those
constants into ``-1``/``0`` is only sound where the dimension is provably the batch, which a
model-agnostic tool cannot decide in general (a leading ``1`` may just as well be a new
axis). So recovery does the one thing the spec guarantees: it runs a fixed-batch model on
chunks of exactly its batch size, as onnxruntime would. A dynamic batch (``dim_param`` or
no dim) keeps the caller's batch size.

The chunks of a fixed batch ``B`` hold whole samples: with ``N >= B`` images the last
``N mod B`` are dropped (least squares uses a subset anyway); with ``N < B`` the images are
repeated cyclically to fill one chunk (a repeated sample only weighs twice in the fit).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from onnx import ModelProto


def fixed_batch(model: ModelProto) -> int | None:
    """The first graph input's fixed batch size (``dim_value > 0`` on axis 0), else None."""
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if not value.type.tensor_type.HasField("shape") or not dims:
            return None
        first = dims[0]
        return first.dim_value if first.HasField("dim_value") and first.dim_value > 0 else None
    return None


def whole_chunks(x: np.ndarray, fixed: int) -> np.ndarray:
    """``x`` cut (or cyclically filled) to a multiple of ``fixed`` samples (module docstring).

    x: [N, ...] -> [k * fixed, ...] with k = max(1, N // fixed).
    """
    count = max(1, len(x) // fixed) * fixed
    if count <= len(x):
        return x[:count]
    return x[np.resize(np.arange(len(x)), count)]


def batch_starts(count: int, fixed: int | None, batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each batch over ``count`` samples: chunks of ``fixed`` if set."""
    step = fixed or max(1, batch_size)
    return [(start, min(start + step, count)) for start in range(0, count, step)]


def filled_index(index: np.ndarray, fixed: int | None) -> np.ndarray:
    """A training step's sample indices grown to a multiple of ``fixed`` by repeating them.

    index: [n] -> [ceil(n / fixed) * fixed] (unchanged when ``fixed`` is None).
    """
    if fixed is None or len(index) % fixed == 0:
        return index
    return np.resize(index, -(-len(index) // fixed) * fixed)


# Images per least-squares batch are capped so one batch of inputs stays below this: a
# 224x224 ImageNet image is 600 KB and its ResNet activations 5x that per tensor, so a batch
# of 100 would hold gigabytes; CIFAR-size inputs (12 KB) keep the full batch of 100.
BATCH_INPUT_BYTES = 4 * 2**20


def images_per_batch(sample_bytes: int, batch_size: int) -> int:
    """Images per calibration batch: ``batch_size``, fewer when one batch of inputs
    (``sample_bytes`` per image, all inputs together) would exceed ``BATCH_INPUT_BYTES``."""
    return max(1, min(batch_size, BATCH_INPUT_BYTES // max(sample_bytes, 1)))


def recovery_thread_count(threads: int | None) -> int:
    """The torch intra-op thread count of least squares and fine-tuning (the one rule).

    ``threads`` when the caller gives it (``--threads``), else 1. Recovery runs many small
    ops (convolutions of CIFAR-to-ImageNet size, one batch of calibration images), where a
    second thread mostly buys synchronisation: measured on the shared 2-core machine
    (least squares on ResNet-20, 800 images): 1 thread 4.2 s wall / 4.2 CPU-s; 2 threads
    2.7-5.6 s wall / 5.2-8.0 CPU-s depending on the load (under load the issue measured
    23.8 s against 5.3 s; a fixed-batch-1 ResNet-20, 50 images: 88 s on 2 threads, 5.5 s on
    one). One thread per process is also what parallel candidate evaluation wants.
    """
    return 1 if threads is None else max(1, int(threads))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch on ``count`` intra-op threads inside the block, the previous count restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def recovery_threads(threads: int | None) -> Iterator[None]:
    """torch on :func:`recovery_thread_count` threads inside the block."""
    with torch_threads(recovery_thread_count(threads)):
        yield


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the block, the previous count restored after."""
    with torch_threads(1):
        yield

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


# Chunks smaller than this run torch single-threaded (see small_chunk_threads).
SMALL_CHUNK = 16


@contextmanager
def small_chunk_threads(fixed: int | None) -> Iterator[None]:
    """Run torch on one thread while recovery works on chunks of a small fixed batch.

    An op on one sample is too small for intra-op parallelism to pay, and every op pays its
    thread synchronisation; on a loaded machine that wait dominates (measured on a fixed-
    batch-1 ResNet-20, 50 images, 2 busy cores: least squares 88 s on 2 threads, 5.5 s on
    one). The thread count is restored afterwards.
    """
    if fixed is None or fixed >= SMALL_CHUNK:
        yield
        return
    with one_torch_thread():
        yield


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the block, the previous count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

"""Accuracy recovery after pruning, without the user's training code.

- :mod:`.interpreter` — run an ONNX graph as a torch module whose parameters are its
  initializers (:class:`OnnxModule`) and write trained weights back (:func:`write_back`).
- :mod:`.lsq` — least-squares reconstruction of the layers whose inputs were pruned
  (:func:`least_squares_recover`, :func:`reconstruct`).
- :mod:`.stream` — running a graph over the calibration set one batch at a time, the
  activations later layers need kept in RAM up to a budget and spilled to disk beyond.
- :mod:`.batching` — fixed-batch chunks, batch sizes, and the one torch-thread rule of
  recovery (:func:`~.batching.recovery_thread_count`).
- :mod:`.finetune` — distillation fine-tuning on the ONNX graph (:func:`finetune`,
  :func:`distill`).
"""

from __future__ import annotations

from onnxprune.recover.finetune import FinetuneResult, distill, finetune
from onnxprune.recover.interpreter import OnnxModule, supported_ops, write_back
from onnxprune.recover.lsq import LayerFit, LeastSquaresResult, least_squares_recover, reconstruct

__all__ = [
    "FinetuneResult",
    "LayerFit",
    "LeastSquaresResult",
    "OnnxModule",
    "distill",
    "finetune",
    "least_squares_recover",
    "reconstruct",
    "supported_ops",
    "write_back",
]

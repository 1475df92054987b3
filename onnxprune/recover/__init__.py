"""Accuracy recovery after pruning, without the user's training code.

- :mod:`.interpreter` — run an ONNX graph as a torch module whose parameters are its
  initializers (:class:`OnnxModule`) and write trained weights back (:func:`write_back`).
- :mod:`.lsq` — least-squares reconstruction of the layers whose inputs were pruned
  (:func:`least_squares_recover`).
- :mod:`.finetune` — distillation fine-tuning on the ONNX graph (:func:`finetune`).
"""

from __future__ import annotations

from onnxprune.recover.interpreter import OnnxModule, supported_ops, write_back

__all__ = ["OnnxModule", "supported_ops", "write_back"]

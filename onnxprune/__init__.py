"""onnxprune: model-agnostic channel pruning for ONNX models."""

from onnxprune.errors import OnnxPruneError

__version__ = "0.1.0"
__all__ = ["OnnxPruneError", "__version__"]

"""The one exception base of onnxprune.

Every message names the node/tensor/file involved and says what to do. The CLI turns an
``OnnxPruneError`` into one line on stderr and exit code 2.
"""

from __future__ import annotations


class OnnxPruneError(Exception):
    """A user-facing error: bad input, unsupported model, impossible request."""


class UnsupportedOpError(OnnxPruneError):
    """An operator that a stage (e.g. training interpreter) cannot handle."""


class DataError(OnnxPruneError):
    """Calibration/evaluation data that cannot be read or does not fit the model."""


class PlanError(OnnxPruneError):
    """A pruning plan that does not fit the model's channel groups."""

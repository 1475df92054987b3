"""The exception classes of onnxprune.

Two kinds, kept apart so a bug never reads as a user mistake:

- :class:`OnnxPruneError` (and subclasses): the user's input cannot be used -- bad file,
  unsupported model, impossible request. Every message names the node/tensor/file involved
  and says what to do. The CLI prints one line on stderr and exits with code 2.
- :class:`InternalError`: one of onnxprune's own invariants broke (a bug). The CLI prints
  "internal error, please report" with the message, exits with code 3 and shows the
  traceback with ``--debug``.
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


class InternalError(Exception):
    """A broken internal invariant: a bug in onnxprune, not a problem with the user's input.

    Deliberately *not* an :class:`OnnxPruneError`, so a caller catching user errors does not
    swallow bugs.
    """

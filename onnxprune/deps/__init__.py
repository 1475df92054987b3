"""Channel dependency analysis: which channels must be pruned together.

``analyze(model) -> DependencyAnalysis`` (see :mod:`onnxprune.deps.groups`); per-op rules
live in :mod:`onnxprune.deps.handlers` (``@handler("Conv")``).
"""

from onnxprune.deps.groups import (
    ChannelExpr,
    ChannelGroup,
    ChannelSlice,
    DependencyAnalysis,
    analyze,
)
from onnxprune.deps.handlers import HANDLERS, handler

__all__ = [
    "HANDLERS",
    "ChannelExpr",
    "ChannelGroup",
    "ChannelSlice",
    "DependencyAnalysis",
    "analyze",
    "handler",
]

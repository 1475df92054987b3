"""Latency model of a model on its runtime: a lookup table of per-group time savings by
width, timed in context and cached on disk (:mod:`~onnxprune.latency.table`,
:mod:`~onnxprune.latency.build`, :mod:`~onnxprune.latency.cache`), the latency-step rounding
(:mod:`~onnxprune.latency.steps`) and latency-budget plans (:mod:`~onnxprune.latency.plans`).
See docs/LATENCY.md."""

from onnxprune.latency.build import SessionTimer, VariantTimer, build_table, group_signature
from onnxprune.latency.cache import cache_dir, latency_table, load_cached, table_key
from onnxprune.latency.table import GroupTiming, LatencyPredictor, LatencyTable

__all__ = [
    "GroupTiming",
    "LatencyPredictor",
    "LatencyTable",
    "SessionTimer",
    "VariantTimer",
    "build_table",
    "cache_dir",
    "group_signature",
    "latency_table",
    "load_cached",
    "table_key",
]

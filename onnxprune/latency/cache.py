"""The on-disk cache of latency tables, and the one entry point that builds or reuses one.

A table is valid for one model on one runtime: its key holds the SHA-256 of the analysed
model, the execution provider, intra-op threads, batch, input shapes, the onnxruntime
version, the CPU (or GPU) name and the widths the rounding allows per group. The file is
``$ONNXPRUNE_CACHE/latency/<sha256 of the key>.json`` (default cache folder
``~/.cache/onnxprune``); a later search with the same key reads it instead of timing again,
any change of the key misses. Files are written atomically (:mod:`onnxprune.atomic`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from onnxprune.budget import ChannelRounding
from onnxprune.errors import OnnxPruneError
from onnxprune.latency.build import (
    SessionTimer,
    VariantTimer,
    build_table,
    count_variants,
    legal_widths,
)
from onnxprune.latency.table import TABLE_VERSION, LatencyTable


def cache_dir() -> Path:
    """``$ONNXPRUNE_CACHE/latency``, default ``~/.cache/onnxprune/latency``."""
    root = os.environ.get("ONNXPRUNE_CACHE") or str(Path.home() / ".cache" / "onnxprune")
    return Path(root) / "latency"


def device_name(device: str) -> str:
    """The CPU model, or the GPU name for CUDA (what a timing is only valid on)."""
    from onnxprune.evaluate import cpu_model, cuda_available

    if device == "cuda" or (device == "auto" and cuda_available()):
        try:
            import torch

            return "cuda:" + torch.cuda.get_device_name(0)
        except Exception:
            return "cuda:unknown"
    return cpu_model()


def table_key(
    analysis: Any,
    rounding: ChannelRounding,
    batch: int,
    device: str,
    threads: int | None,
    input_shapes: Mapping[str, Sequence[int]] | None,
) -> dict[str, Any]:
    """Everything a table's timings depend on (see module docstring)."""
    import onnxruntime as ort

    from onnxprune.evaluate import cuda_available
    from onnxprune.plan import model_sha256

    use_cuda = device == "cuda" or (device == "auto" and cuda_available())
    widths = {str(g): legal_widths(rounding, i) for i, g in enumerate(rounding.group_ids)}
    return {
        "table_version": TABLE_VERSION,
        "model_sha256": model_sha256(analysis.model),
        "provider": "CUDAExecutionProvider" if use_cuda else "CPUExecutionProvider",
        "threads": int(threads or 0),
        "batch": int(batch),
        "input_shapes": {k: [int(d) for d in v] for k, v in (input_shapes or {}).items()},
        "onnxruntime": ort.__version__,
        "device_name": device_name(device),
        "widths": widths,
    }


def key_path(key: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return cache_dir() / f"{digest[:32]}.json"


def load_cached(key: Mapping[str, Any]) -> LatencyTable | None:
    """The cached table for ``key``, or None (missing, unreadable or another key)."""
    path = key_path(key)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        table = LatencyTable.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError, OnnxPruneError):
        return None  # missing, damaged or another table version: rebuild
    if table.key != dict(key):
        return None
    table.cached, table.path = True, str(path)
    return table


def save_table(table: LatencyTable) -> Path:
    from onnxprune.atomic import atomic_path

    path = key_path(table.key)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(table.to_dict(), indent=1), encoding="utf-8")
    table.path = str(path)
    return path


def latency_table(
    analysis: Any,
    rounding: ChannelRounding,
    *,
    batch: int = 1,
    device: str = "cpu",
    threads: int | None = 1,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    timer: VariantTimer | None = None,
    show_progress: bool = True,
    use_cache: bool = True,
) -> LatencyTable:
    """The latency table of ``analysis.model`` for ``rounding``'s groups: from the cache when
    its key matches, else built (a progress bar on stderr) and saved.

    ``timer`` replaces the onnxruntime timer (tests); a table built with a custom timer is
    cached like any other, under the same key.
    """
    from onnxprune.progress import progress

    key = table_key(analysis, rounding, batch, device, threads, input_shapes)
    if use_cache:
        cached = load_cached(key)
        if cached is not None:
            return cached
    if timer is None:
        timer = SessionTimer(analysis.model, batch, device, threads, input_shapes)
    total = count_variants(analysis, rounding)
    with progress(f"latency table (batch {batch})", total, enabled=show_progress) as task:
        table = build_table(analysis, rounding, timer, key, task)
    if use_cache:
        save_table(table)
    return table


def model_latency_table(
    model: Any,
    *,
    batch: int = 1,
    device: str = "cpu",
    threads: int | None = 1,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    round_to: int = 8,
    min_channels: int = 1,
    show_progress: bool = True,
    timer: VariantTimer | None = None,
) -> LatencyTable:
    """The latency table of every prunable group of ``model`` (a path or ``ModelProto``),
    analysed as ``prune`` analyses it (same key: ``prune --latency`` and ``--plan-scope
    auto`` reuse the table ``bench --latency-table`` built)."""
    from onnxprune.cost import PlanCost
    from onnxprune.deps import analyze
    from onnxprune.model import fix_input_shapes, load_model

    loaded = load_model(model) if not hasattr(model, "graph") else model
    analysis = analyze(fix_input_shapes(loaded, input_shapes))
    plan_cost = PlanCost(analysis.model, analysis.channel_exprs(), analysis.group_sizes())
    rounding = ChannelRounding(analysis.prunable_groups(), round_to, min_channels)
    return latency_table(
        analysis, rounding, batch=batch, device=device, threads=threads,
        input_shapes=dict(plan_cost.input_shapes), timer=timer, show_progress=show_progress,
    )  # fmt: skip


__all__ = [
    "cache_dir",
    "model_latency_table",
    "device_name",
    "key_path",
    "latency_table",
    "load_cached",
    "table_key",
]

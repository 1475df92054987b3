"""Learning components of the search: graph encoders (m-GNN, AGMC GCN), the DDPG agent and
the agent registry (:mod:`onnxprune.rl.agents`).

Encoders share one API: ``encoder(keep_ratios) -> (g: [D], group_emb: [G, D])`` with ``G``
the prunable channel groups in ``analysis.prunable_groups()`` order and ``encoder.out_dim == D``.

The encoders are imported on first use: ``torch_geometric`` takes seconds to import, and
loading a strategy preset (``onnxprune.rl.config``) must not pay for it.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "GCNEncoder": "onnxprune.rl.gcn",
    "AttentionPooling": "onnxprune.rl.mgnn",
    "MGNNConv": "onnxprune.rl.mgnn",
    "MultiStageGNN": "onnxprune.rl.mgnn",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'onnxprune.rl' has no attribute '{name}'")


__all__ = ["AttentionPooling", "GCNEncoder", "MGNNConv", "MultiStageGNN"]

"""Hierarchical computational graph with automatic motif extraction (GNN-RL, paper 002 §3.1).

``build_hierarchy(model, analysis=None)`` -> :class:`Hierarchy` (levels as networkx
MultiDiGraphs, motifs, ``to_pyg(keep_ratios)`` -> list of :class:`LevelTensors`).
"""

from onnxprune.hgraph.hierarchy import (
    EDGE_DIM,
    EDGE_FEATURES,
    NODE_DIM,
    NODE_FEATURES,
    Hierarchy,
    LevelTensors,
    Motif,
    MotifInstance,
    build_hierarchy,
)
from onnxprune.hgraph.level0 import OP_VOCAB, OpRecord, TensorInfo

__all__ = [
    "EDGE_DIM",
    "EDGE_FEATURES",
    "NODE_DIM",
    "NODE_FEATURES",
    "OP_VOCAB",
    "Hierarchy",
    "LevelTensors",
    "Motif",
    "MotifInstance",
    "OpRecord",
    "TensorInfo",
    "build_hierarchy",
]

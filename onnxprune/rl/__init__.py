"""Learning components of the search: graph encoders (m-GNN, AGMC GCN) and the DDPG agent.

Encoders share one API: ``encoder(keep_ratios) -> (g: [D], group_emb: [G, D])`` with ``G``
the prunable channel groups in ``analysis.prunable_groups()`` order and ``encoder.out_dim == D``.
"""

from onnxprune.rl.gcn import GCNEncoder
from onnxprune.rl.mgnn import AttentionPooling, MGNNConv, MultiStageGNN

__all__ = ["AttentionPooling", "GCNEncoder", "MGNNConv", "MultiStageGNN"]

"""AMC baseline agent (He et al. 2018, "AMC: AutoML for Model Compression").

AMC describes each prunable layer ``t`` by a hand-made state vector and lets a DDPG agent
with plain MLPs choose that layer's prune ratio, one layer per step. Here a "layer" is a
prunable channel group (its first producer gives the layer shape), and the state has the 11
features of AMC's eq. 3 (the brief calls it "10-dim"; AMC's list has 11 entries)::

    [t, n, c, h, w, stride, k, FLOPs[t], reduced, rest, a_{t-1}]

``n``/``c``: output/input channels of the producer, ``h``/``w``: its output feature map,
``k``: kernel size, ``FLOPs[t]``: MACs the group can remove, ``reduced``: MACs removed by
the actions so far, ``rest``: MACs the later groups can still remove, ``a_{t-1}``: the
previous action. Every feature is divided by its maximum over the layers (AMC normalises
to [0, 1]); ``reduced`` and ``rest`` are fractions of the model's MACs.

The sequence of per-group actions forms one action vector for
:class:`onnxprune.env.PruningEnv`, whose FLOPs wall keeps the episode inside the budget
(AMC clamps each action instead; the wall gives the same hard guarantee for every agent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxprune.model import tensor_shapes
from onnxprune.rl.ddpg import DDPG, DDPGConfig, FlatEncoder

STATE_FEATURES = 11


@dataclass
class LayerShape:
    """Static description of one action group's producer: ``n, c, h, w, stride, k``."""

    n: int
    c: int
    h: int
    w: int
    stride: int
    k: int

    def __str__(self) -> str:
        return f"{self.n}x{self.c} k{self.k} s{self.stride} -> {self.h}x{self.w}"

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    # AMC's layer state needs a number per dim: an unknown dim counts as 1 (paper's state is
    # per-sample), an unknown rank as no dims.
    return {
        name: [1 if d is None else d for d in dims or ()]
        for name, dims in tensor_shapes(model).items()
    }


def layer_shapes(
    model: onnx.ModelProto, producers: Sequence[Sequence[str]], sizes: Sequence[int]
) -> list[LayerShape]:
    """One :class:`LayerShape` per group from its first producer node (by node name).

    ``producers[i]``: producer node names of group ``i``; ``sizes[i]``: its channel count.
    A producer that is not a Conv (or no producer) gives ``h = w = k = stride = 1`` and
    ``c`` from a Gemm/MatMul weight when there is one, else ``n``.
    """
    if not any(len(v.type.tensor_type.shape.dim) for v in model.graph.value_info):
        model = onnx.shape_inference.infer_shapes(model)
    nodes = {node.name: node for node in model.graph.node}
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    shapes = _shapes(model)
    out = []
    for names, size in zip(producers, sizes, strict=True):
        node = next((nodes[n] for n in names if n in nodes), None)
        shape = LayerShape(size, size, 1, 1, 1, 1)
        if node is not None and len(node.input) > 1 and node.input[1] in inits:
            weight = inits[node.input[1]]
            if node.op_type == "Conv" and len(weight) >= 3:
                group = next((a.i for a in node.attribute if a.name == "group"), 1)
                strides = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1])
                spatial = shapes.get(node.output[0], [])[2:]
                shape = LayerShape(
                    n=weight[0],
                    c=weight[1] * group,
                    h=spatial[0] if len(spatial) > 0 else 1,
                    w=spatial[1] if len(spatial) > 1 else 1,
                    stride=max(strides) if strides else 1,
                    k=max(weight[2:]),
                )
            elif len(weight) == 2:
                shape = LayerShape(size, min(weight), 1, 1, 1, 1)
        out.append(shape)
    return out


class AMCState:
    """Builds AMC state vectors ``[11]`` for a sequence of groups.

    ``shapes``: per group; ``removable``: MACs fraction each group can remove alone ``[G]``.
    """

    def __init__(self, shapes: Sequence[LayerShape], removable: np.ndarray) -> None:
        n = len(shapes)
        static = np.array(
            [[t, s.n, s.c, s.h, s.w, s.stride, s.k, removable[t]] for t, s in enumerate(shapes)],
            dtype=np.float64,
        )
        scale = np.maximum(static.max(axis=0), 1e-12)
        self.static = static / scale
        self.removable = np.asarray(removable, dtype=np.float64)
        self.n = n

    def __str__(self) -> str:
        return f"AMCState({self.n} layers x {STATE_FEATURES} features)"

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.n, "features": STATE_FEATURES}

    def vector(self, t: int, actions: Sequence[float]) -> np.ndarray:
        """State of layer ``t`` given the actions ``actions[:t]`` already taken ``[11]``."""
        taken = np.asarray(actions[:t], dtype=np.float64)
        reduced = float(np.sum(taken * self.removable[:t]))
        rest = float(np.sum(self.removable[t + 1 :]))
        previous = float(taken[-1]) if t > 0 else 0.0
        return np.concatenate([self.static[t], [reduced, rest, previous]])


def make_amc_agent(state: AMCState, config: DDPGConfig | None = None, seed: int = 0) -> DDPG:
    """DDPG with plain MLPs on the 11-feature state and one action (this layer's ratio)."""
    import torch

    def observe(record: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(record), dtype=torch.float32)

    return DDPG(FlatEncoder, observe, state.vector(0, []), 1, config, seed=seed)


def propose(
    agent: DDPG, state: AMCState, noise: Any | None, warmup: bool
) -> tuple[list[np.ndarray], np.ndarray]:
    """Roll out one AMC episode: per-layer states ``[G][11]`` and actions ``[G]``.

    ``warmup``: uniform random actions from ``noise``; else the actor's action, perturbed
    by ``noise`` when it is given (``noise=None``: deterministic, e.g. for the final plan).
    """
    actions: list[float] = []
    states = []
    for t in range(state.n):
        record = state.vector(t, actions)
        states.append(record)
        if warmup:
            if noise is None:
                raise ValueError("warm-up actions need a noise object (its seeded generator)")
            action = float(noise.uniform(1)[0])
        else:
            greedy = agent.act(record)
            action = float(noise.sample(greedy)[0]) if noise is not None else float(greedy[0])
        actions.append(action)
    return states, np.array(actions, dtype=np.float32)

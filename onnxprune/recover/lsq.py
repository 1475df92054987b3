"""Least-squares reconstruction of the layers whose input channels were pruned.

After channels are removed from a layer's input, its remaining weights no longer produce
the unpruned model's output. Following AMC (He et al. 2018, section 3.4: "we use
least-square reconstruction ... to fine-tune the weights of the pruned layer") and ThiNet
(Luo et al. 2017, section 3.3: "minimize the reconstruction error ... by a linear least
squares"), each consumer ``y = W x + b`` of pruned channels is refit on calibration data:

    W*, b* = argmin_{W,b} || [X_p 1] [W b]^T - Y_ref ||^2 + lambda || [W b] - [W0 b0] ||^2

- ``X_p``: the layer's input in the *pruned* model, after the layers before it were already
  refit (processing in topological order, so errors do not compound);
- ``Y_ref``: the output of the paired layer in the *original* model, restricted to the
  output channels the pruned layer keeps;
- the ridge term pulls toward the pruned weights ``W0`` (not toward zero), so a layer whose
  removed inputs were already zero is left unchanged, and ``lambda`` is ``ridge`` times the
  mean diagonal of ``X^T X``.

k x k convolutions become linear through im2col, gathered at a random subset of output
positions per image (:func:`_conv_patches`); grouped convolutions are solved per group
(a depthwise convolution is a per-channel fit over its k x k taps); Gemm and MatMul with a
constant weight are solved over their last axis. The normal equations ``X^T X`` and
``X^T Y`` are accumulated batch by batch (float64) while both graphs stream over the
calibration set one batch at a time (:mod:`.stream`); the activations later layers still
need are kept in RAM up to ``activation_memory`` bytes and spilled to a temporary folder
beyond, so memory does not grow with the number of images. The result equals fitting on
all activations at once.

Layers whose weight (or bias) initializer is shared with another node are left as they are
(and listed in ``LeastSquaresResult.skipped``).

Models as exporters write them:

- Both models are read through :func:`onnxprune.normalize.normalize` (:mod:`.storage`), so
  weights in ``Constant`` nodes are refit like initializers; the refit values are written
  back where the pruned model keeps them (initializer or ``Constant`` node).
- Pruned and reference layers are paired by structure and weights (:mod:`.pairing`): a
  reference exported by another path (other node and tensor names) pairs; one that cannot
  be paired is refused with an :class:`OnnxPruneError` naming the first unpaired layer.
  The kept output rows and input columns are found by exact (sorted-subsequence) matching
  of the weights, since surgery copies kept rows/columns unchanged. No name of a layer or
  a model is used for decisions.
- A model with a fixed batch dimension runs in chunks of exactly that batch
  (:mod:`.batching`); the fit is the same as the dynamic-batch model's.
- "0 layers refit" is never silent: ``LeastSquaresResult.note`` says why (nothing pruned,
  or every pruned-input layer unrefittable, each listed with its reason).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from onnx import ModelProto
from torch import Tensor

from onnxprune.errors import DataError, OnnxPruneError
from onnxprune.recover.batching import (
    batch_starts,
    fixed_batch,
    images_per_batch,
    recovery_threads,
    whole_chunks,
)
from onnxprune.recover.interpreter import OnnxModule, conv_input_padded, write_back
from onnxprune.recover.pairing import (
    LayerPair,
    WeightedLayer,
    match_dense_rows,  # noqa: F401 - part of this module's API
    pair_layers,
    weighted_layers,
)
from onnxprune.recover.storage import for_recovery, store_values
from onnxprune.recover.stream import (
    DEFAULT_ACTIVATION_MEMORY,
    ActivationStore,
    StreamRunner,
    release_free_memory,
)
from onnxprune.recover.targets import ReferenceTargets, recovery_module


@dataclass
class LayerFit:
    """The refit of one layer: sizes and output MSE vs the original before/after."""

    node: str
    op_type: str
    kept_inputs: int
    original_inputs: int
    kept_outputs: int
    samples: int
    mse_before: float
    mse_after: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        return (
            f"{self.node} ({self.op_type}, in {self.kept_inputs}/{self.original_inputs}, "
            f"out {self.kept_outputs}): mse {self.mse_before:.4g} -> {self.mse_after:.4g}"
        )


@dataclass
class LeastSquaresResult:
    """Outcome of :func:`reconstruct`: the refit model and one record per layer.

    ``skipped`` names the layers whose inputs were pruned but that least squares cannot refit
    (and why); ``note`` says why nothing was refit when ``layers`` is empty.
    """

    model: ModelProto
    layers: list[LayerFit] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0
    peak_activation_bytes: int = 0
    skipped: list[str] = field(default_factory=list)
    note: str = ""
    fixed_batch: int | None = None
    peak_batches_in_memory: int = 0
    spilled_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [layer.to_dict() for layer in self.layers],
            "images": self.images,
            "seconds": self.seconds,
            "peak_activation_bytes": self.peak_activation_bytes,
            "skipped": list(self.skipped),
            "note": self.note,
            "fixed_batch": self.fixed_batch,
            "peak_batches_in_memory": self.peak_batches_in_memory,
            "spilled_bytes": self.spilled_bytes,
        }

    def __str__(self) -> str:
        if not self.layers and self.note:
            head = f"least squares: nothing refit: {self.note}"
        else:
            chunks = f" in chunks of its fixed batch {self.fixed_batch}" if self.fixed_batch else ""
            head = (
                f"least squares: {len(self.layers)} layers refit on {self.images} images"
                f"{chunks} in {self.seconds:.1f} s (peak activations "
                f"{self.peak_activation_bytes / 2**20:.0f} MiB"
                + (f", {self.spilled_bytes / 2**20:.0f} MiB spilled to disk)"
                   if self.spilled_bytes else ")")
            )  # fmt: skip
        if self.skipped:
            head += f"; {len(self.skipped)} with pruned inputs left as they are"
        lines = [head]
        lines += [f"  {layer}" for layer in self.layers]
        lines += [f"  not refit: {reason}" for reason in self.skipped]
        return "\n".join(lines)


# -- the layers we can refit --------------------------------------------------------------


@dataclass
class _Layer:
    index: int  # node index in the pruned module
    name: str
    op_type: str
    weight: str
    bias: str | None
    groups: int
    out_keep: list[int]  # kept output channels, as indices into the reference output
    kept_inputs: int
    original_inputs: int
    output: str
    ref_output: str  # the paired reference layer's output tensor


@dataclass
class _Selection:
    """The layers to refit, the ones with pruned inputs that cannot be, and whether any
    layer differs from the reference at all."""

    layers: list[_Layer]
    skipped: list[str]
    pruned_any: bool


def _bias_of(pair: LayerPair, module: OnnxModule) -> tuple[str | None, str]:
    """(bias tensor or None, reason it cannot be refit per channel or '')."""
    layer, inputs = pair.pruned, pair.pruned.inputs
    if layer.op_type not in ("Conv", "Gemm") or len(inputs) < 3 or not inputs[2]:
        return None, ""
    if inputs[2] not in module.initializer_names("param"):
        return None, ""
    count = module.tensor(inputs[2]).numel()
    if count == layer.matrix.shape[0]:
        return inputs[2], ""
    if layer.op_type == "Gemm" and count == 1:
        return None, ""
    return (
        None,
        f"its bias '{inputs[2]}' is broadcast ({count} values for {layer.matrix.shape[0]} outputs)",
    )


def _find_layers(
    pruned: OnnxModule,
    reference: OnnxModule,
    all_layers: bool,
    reference_layers: list[WeightedLayer] | None = None,
) -> _Selection:
    """Pair the weighted layers by structure (:mod:`.pairing`) and pick those to refit
    (``reference_layers``: the reference's weighted layers when the caller kept them)."""
    if reference_layers is None:
        reference_layers = weighted_layers(reference)
    pairs = pair_layers(weighted_layers(pruned), reference_layers)
    uses: dict[str, int] = {}
    for _, inputs, _ in pruned._nodes:
        for name in set(inputs):
            uses[name] = uses.get(name, 0) + 1
    selection = _Selection([], [], False)
    for pair in pairs:
        layer, ref = pair.pruned, pair.reference
        if layer.matrix.shape != ref.matrix.shape or layer.groups != ref.groups:
            selection.pruned_any = True
        if layer.inputs_total == ref.inputs_total and not all_layers:
            continue
        if pair.out_keep is None:
            raise OnnxPruneError(
                f"node '{layer.name}': its pruned weights '{layer.weight}' cannot be paired with "
                f"the reference: {pair.reason} (nearest reference layer of the same kind: "
                f"{ref.describe()}, weights '{ref.weight}'); pass as --reference the model the "
                "pruned one was cut from"
            )
        bias, bias_problem = _bias_of(pair, pruned)
        shared = [n for n in (layer.weight, bias) if n is not None and uses.get(n, 0) > 1]
        if shared or bias_problem:
            # Refitting a weight shared by several nodes for one of them breaks the others.
            why = (
                f"its weight '{shared[0]}' is shared with another node" if shared else bias_problem
            )
            selection.skipped.append(f"{layer.name}: {why}")
            continue
        selection.layers.append(
            _Layer(
                layer.index,
                layer.name,
                layer.op_type,
                layer.weight,
                bias,
                layer.groups,
                pair.out_keep,
                layer.inputs_total,
                ref.inputs_total,
                layer.output,
                ref.output,
            )  # fmt: skip
        )
    return selection


# -- per-layer solve --------------------------------------------------------------------------


def _conv_patches(
    x: Tensor,
    kernel: list[int],
    padding: list[int],
    strides: list[int],
    dilations: list[int],
    chosen: Tensor | None,
) -> Tensor:
    """im2col of a 1-D/2-D convolution's input at the output positions ``chosen`` (flat
    indices into the output map; None: all of them): ``[n * positions, C * prod(kernel)]``,
    rows image-major, columns ordered (channel, kernel offsets) as the weight flattens.

    Gathers only the sampled patches instead of unfolding the whole map (16 of the 3,136
    positions of a 56 x 56 map); the values equal ``F.unfold``'s columns at ``chosen``.
    """
    if any(padding):
        x = F.pad(x, [p for pad in reversed(padding) for p in (pad, pad)])
    spatial = x.shape[2:]
    out = [
        (spatial[a] - dilations[a] * (kernel[a] - 1) - 1) // strides[a] + 1
        for a in range(len(kernel))
    ]
    flat = torch.arange(int(np.prod(out))) if chosen is None else chosen
    coords, rest = [], flat
    for size in reversed(out):  # unravel the flat output index, last axis fastest
        coords.append(rest % size)
        rest = rest // size
    coords.reverse()
    rank = len(kernel)
    index: list[Tensor] = []
    for a in range(rank):
        taps = coords[a][:, None] * strides[a] + torch.arange(kernel[a]) * dilations[a]
        shape = [len(flat)] + [kernel[b] if b == a else 1 for b in range(rank)]
        index.append(taps.reshape(shape))  # [P, 1.., k_a, ..1]
    where: tuple[Any, ...] = (slice(None), slice(None), *index)
    patches = x[where]  # type: ignore[index]  # [n, C, P, k...]
    patches = patches.movedim(2, 1)  # [n, P, C, k...]
    return patches.reshape(x.shape[0] * len(flat), -1)


def _features(
    layer: _Layer, ctx: Any, x: Tensor, weight_shape: tuple[int, ...], chosen: Tensor | None
) -> Tensor:
    """The layer's input rows at the sampled positions: ``[rows, groups, f]`` (im2col for a
    convolution, ``f = i/g * prod(k)``), in the row order of
    :func:`~onnxprune.recover.targets.sampled_rows`."""
    if layer.op_type == "Conv":
        spatial = x.dim() - 2
        if spatial == 1:
            x = x.unsqueeze(2)
            weight_shape = (*weight_shape[:2], 1, weight_shape[2])
        x_padded, padding, strides, dilations = conv_input_padded(ctx, x, weight_shape)
        if spatial == 1:
            padding, strides, dilations = [0, *padding], [1, *strides], [1, *dilations]
        rows_x = _conv_patches(
            x_padded, list(weight_shape[2:]), list(padding), list(strides), list(dilations),
            chosen,
        )  # fmt: skip
        return rows_x.reshape(rows_x.shape[0], layer.groups, -1)
    rows_x = x.reshape(-1, x.shape[-1])
    return (rows_x if chosen is None else rows_x[chosen])[:, None, :]


def _current_matrix(layer: _Layer, module: OnnxModule, ctx: Any) -> Tensor:
    """Current [groups, f (+1 bias), o/g] solution matrix of the layer (W^T with bias row)."""
    weight = module.tensor(layer.weight).detach().double()
    if layer.op_type == "Conv":
        out = weight.shape[0]
        per_group = weight.reshape(layer.groups, out // layer.groups, -1).transpose(1, 2)
    elif layer.op_type == "Gemm":
        matrix = weight if ctx.attr("transB", 0) else weight.t()  # [o, i]
        per_group = (float(ctx.attr("alpha", 1.0)) * matrix).t()[None]
    else:
        per_group = weight[None]  # MatMul [i, o]
    if layer.bias is None:
        return per_group
    bias = module.tensor(layer.bias).detach().double().reshape(-1)
    if layer.op_type == "Gemm":
        bias = float(ctx.attr("beta", 1.0)) * bias
    bias = bias.reshape(layer.groups, 1, -1)
    return torch.cat([per_group, bias], dim=1)


def _store_matrix(layer: _Layer, module: OnnxModule, ctx: Any, solution: Tensor) -> None:
    if layer.bias is not None:
        weights, bias = solution[:, :-1, :], solution[:, -1, :].reshape(-1)
    else:
        weights, bias = solution, None
    current = module.tensor(layer.weight)
    if layer.op_type == "Conv":
        value = weights.transpose(1, 2).reshape(current.shape)
    elif layer.op_type == "Gemm":
        matrix = weights[0].t() / float(ctx.attr("alpha", 1.0))  # [o, i]
        value = matrix if ctx.attr("transB", 0) else matrix.t()
    else:
        value = weights[0]
    module.set_initializer(layer.weight, value.float())
    if bias is not None and layer.bias is not None:
        if layer.op_type == "Gemm":
            bias = bias / float(ctx.attr("beta", 1.0))
        module.set_initializer(layer.bias, bias.float().reshape(module.tensor(layer.bias).shape))


# Column blocks of at least this many features when a Gram matrix is built block by block.
_GRAM_BLOCK = 384


def _gram(f_g: Tensor) -> Tensor:
    """``F^T F`` per group (``[g, rows, f] -> [g, f, f]``, float32) from the blocks on and
    above the diagonal only, mirrored: with ``b`` column blocks that is ``(b + 1) / 2b`` of
    the multiply-adds of the full product (a BLAS ``syrk``, which torch does not expose)."""
    features = f_g.shape[2]
    blocks = max(1, min(8, features // _GRAM_BLOCK))
    if blocks == 1:
        return torch.bmm(f_g.transpose(1, 2), f_g)
    edges = [features * i // blocks for i in range(blocks + 1)]
    gram = torch.empty(f_g.shape[0], features, features, dtype=f_g.dtype)
    for first, stop in zip(edges[:-1], edges[1:], strict=True):
        strip = torch.bmm(f_g[:, :, first:stop].transpose(1, 2), f_g[:, :, first:])
        gram[:, first:stop, first:] = strip
        gram[:, first:, first:stop] = strip.transpose(1, 2)
    return gram


# Rows gathered before one float32 product is added to the float64 sums: small batches of
# large images would otherwise pay one f x f conversion per batch.
_FLUSH_ROWS = 2048


class _NormalEquations:
    """``F^T F`` and ``F^T R`` (float64) of one layer, accumulated batch by batch.

    Solves for the change ``d = S - S0`` from the residual ``R = T - F S0``: exact data gives
    ``R = 0`` and ``d = 0`` bit for bit, and float32 round-off in ``F^T F`` does not leak into
    ``S0``. Shapes: ``S0 [g, f(+1), o/g]``, ``gram [g, f(+1), f(+1)]``, ``cross [g, f(+1), o/g]``.
    Rows are multiplied in float32 in chunks of about ``_FLUSH_ROWS`` and summed in float64.
    """

    def __init__(self, layer: _Layer, module: OnnxModule, ctx: Any) -> None:
        self.layer, self.module, self.ctx = layer, module, ctx
        self.weight_shape = tuple(module.tensor(layer.weight).shape)
        self.current = _current_matrix(layer, module, ctx)
        groups, dim, outs = self.current.shape
        self.current_f32 = self.current.float()
        self.gram = torch.zeros(groups, dim, dim, dtype=torch.float64)
        self.cross = torch.zeros(groups, dim, outs, dtype=torch.float64)
        self.residual_energy = 0.0
        self.samples = 0
        self._pending: list[tuple[Tensor, Tensor]] = []  # ([g, rows, f], [g, rows, o/g])
        self._pending_rows = 0

    def add(self, x: Tensor, chosen: Tensor | None, target_rows: Tensor) -> None:
        """Add one batch: the layer's input ``x`` (pruned model), the sampled positions and
        the reference's targets there (:meth:`ReferenceTargets.get`)."""
        feats = _features(self.layer, self.ctx, x, self.weight_shape, chosen)  # [rows, g, f]
        targets = target_rows.reshape(target_rows.shape[0], self.layer.groups, -1)
        if self.layer.bias is not None:
            feats = torch.cat([feats, torch.ones_like(feats[:, :, :1])], dim=2)
        f_g = feats.transpose(0, 1)  # [g, rows, f]
        residual = targets.transpose(0, 1) - torch.bmm(f_g, self.current_f32)  # [g, rows, o/g]
        self.residual_energy += float((residual.double() ** 2).sum())
        self.samples += feats.shape[0]
        self._pending.append((f_g, residual))
        self._pending_rows += feats.shape[0]
        if self._pending_rows >= _FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        f_g = torch.cat([f for f, _ in self._pending], dim=1)
        residual = torch.cat([r for _, r in self._pending], dim=1)
        self._pending, self._pending_rows = [], 0
        self.gram += _gram(f_g).double()
        self.cross += torch.bmm(f_g.transpose(1, 2), residual).double()

    def solve(self, ridge: float) -> LayerFit:
        """Solve the ridge system, store the refit weights when they help, report the fit."""
        self._flush()
        layer, gram, cross = self.layer, self.gram, self.cross
        count = max(self.samples * len(layer.out_keep), 1)
        diag_mean = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-12)  # [g]
        lam = (ridge * diag_mean)[:, None, None]
        system = gram + lam * torch.eye(gram.shape[1], dtype=torch.float64)[None]
        # G + lam I is symmetric positive definite: Cholesky costs half of LU.
        factor, info = torch.linalg.cholesky_ex(system)
        if bool((info == 0).all()):
            delta = torch.cholesky_solve(cross, factor)
        else:  # not positive definite in float64 round-off
            delta = torch.linalg.solve(system, cross)
        # ||R - F d||^2 = ||R||^2 - 2 <d, F^T R> + <d, F^T F d>, and (G + lam I) d = F^T R
        # gives <d, G d> = <d, F^T R> - lam ||d||^2: the reduction is <d, F^T R> + lam ||d||^2.
        reduction = float((delta * cross).sum()) + float((lam * delta**2).sum())
        before = self.residual_energy / count
        after = max(self.residual_energy - reduction, 0.0) / count
        if reduction > 0:
            _store_matrix(layer, self.module, self.ctx, self.current + delta)
        else:  # nothing to gain (exact data): keep the pruned weights
            after = before
        return LayerFit(
            layer.name, layer.op_type, layer.kept_inputs, layer.original_inputs,
            len(layer.out_keep), self.samples, before, after,
        )  # fmt: skip


def _calibration_inputs(dataset: Any, names: list[str]) -> list[np.ndarray]:
    """One array ``[N, ...]`` per model input, in the order of ``names``.

    ``dataset`` is a ``Dataset`` (named inputs via :meth:`~onnxprune.data.Dataset.feeds`, or
    its one unnamed array) or a bare array for a single-input model.
    """
    if hasattr(dataset, "feeds"):
        feeds = dataset.feeds(names=names)
        return [np.asarray(feeds[name]) for name in names]
    if not isinstance(dataset, np.ndarray):
        raise DataError("calibration data must be a Dataset or a numpy array of model inputs")
    if len(names) != 1:
        raise DataError(
            f"the model has inputs {', '.join(names)} but the calibration data is one unnamed "
            "array; pass a Dataset with one array per input name (an .npz keyed by input name)"
        )
    return [dataset]


def layers_to_refit(
    pruned_model: ModelProto, reference_model: ModelProto, all_layers: bool = False
) -> list[str]:
    """Names of the nodes :func:`reconstruct` would refit, in the order it refits them."""
    pruned_module, reference_module = (
        recovery_module(pruned_model),
        recovery_module(reference_model),
    )
    return [
        layer.name for layer in _find_layers(pruned_module, reference_module, all_layers).layers
    ]


def _common_fixed_batch(pruned: ModelProto, reference: ModelProto) -> int | None:
    pruned_batch, reference_batch = fixed_batch(pruned), fixed_batch(reference)
    if pruned_batch and reference_batch and pruned_batch != reference_batch:
        raise OnnxPruneError(
            f"the pruned model's input has a fixed batch of {pruned_batch} and the reference's "
            f"of {reference_batch}; pass as --reference the model the pruned one was cut from"
        )
    return pruned_batch or reference_batch


def _nothing_refit(selection: _Selection) -> str:
    """Why no layer was refit, said explicitly ('' when some were)."""
    if selection.layers:
        return ""
    if not selection.pruned_any:
        return "no layer was pruned (every Conv/Gemm/MatMul has the reference's weights)"
    if selection.skipped:
        return "every layer with pruned inputs is left as it is (see below)"
    return "no layer has pruned inputs (only output channels of the last layers differ)"


@dataclass
class _Settings:
    positions: int
    ridge: float
    seed: int
    activation_memory: int
    spill_dir: Path | str | None


def reconstruct(
    pruned_model: ModelProto,
    reference_model: ModelProto,
    dataset: Any,
    *,
    max_images: int = 1000,
    positions_per_image: int = 32,
    ridge: float = 1e-3,
    batch_size: int = 100,
    all_layers: bool = False,
    seed: int = 0,
    threads: int | None = None,
    activation_memory: int = DEFAULT_ACTIVATION_MEMORY,
    spill_dir: Path | str | None = None,
    on_layer: Callable[[LayerFit], None] | None = None,
    reference_targets: ReferenceTargets | None = None,
) -> LeastSquaresResult:
    """Refit every Conv/Gemm/MatMul whose input channels were pruned (see module docstring).

    Args:
        pruned_model: the physically pruned model.
        reference_model: the unpruned model it was cut from (any exporter: layers are paired
            by structure and weights, :mod:`.pairing`; weights may be ``Constant`` nodes).
        dataset: a ``Dataset`` (one array per model input, :attr:`~onnxprune.data.Dataset.inputs`,
            or its one unnamed array) or an array ``[N, ...model input]`` of a single-input
            model. The reference model's inputs are fed in the same order.
        max_images: a seeded random subset of at most this many images is used.
        positions_per_image: output positions sampled per image for convolutions (and
            rows per sample for MatMul over a sequence).
        ridge: regularisation strength relative to the mean diagonal of ``X^T X``.
        batch_size: images per batch while accumulating ``X^T X``, capped so one batch of
            inputs stays within :data:`~onnxprune.recover.batching.BATCH_INPUT_BYTES`; a model
            with a fixed batch runs in chunks of exactly that batch (:mod:`.batching`).
        all_layers: also refit layers whose inputs were not pruned.
        threads: torch intra-op threads (default 1,
            :func:`~onnxprune.recover.batching.recovery_thread_count`).
        activation_memory: bytes of activations kept in RAM between two refit layers; beyond
            that they are spilled to a temporary folder under ``spill_dir`` (default: the
            system temp folder) and read back batch by batch (:mod:`.stream`), so memory does
            not grow with the number of images.
        on_layer: called after each layer (progress reporting).
        reference_targets: a :class:`~onnxprune.recover.targets.ReferenceTargets` kept by
            the caller across calls with the same ``reference_model`` and data (a search's
            per-candidate fits): the reference module and its sampled targets are built once
            and reused; the result equals a call without it.

    Returns a :class:`LeastSquaresResult` whose ``model`` has the same structure as
    ``pruned_model`` with new values for the refit layers' weights and biases (see
    :func:`~onnxprune.recover.storage.store_values`). Raises :class:`OnnxPruneError` naming
    the first layer that cannot be paired with the reference.
    """
    start = time.perf_counter()
    pruned_graph = for_recovery(pruned_model)
    # Ops without a torch handler run in onnxruntime: least squares needs no gradients.
    pruned_module = OnnxModule(pruned_graph, train_bn=False, fallback="onnxruntime").eval()
    reference_module = (
        reference_targets.module_for(reference_model)
        if reference_targets is not None
        else recovery_module(reference_model)
    )
    arrays = _calibration_inputs(dataset, pruned_module.input_names)
    if len(reference_module.input_names) != len(arrays):
        raise OnnxPruneError(
            f"the pruned model has inputs {', '.join(pruned_module.input_names)} but the "
            f"reference has {', '.join(reference_module.input_names)}; pass as --reference the "
            "model the pruned one was cut from"
        )
    if len(arrays[0]) == 0:
        raise DataError("least squares needs at least one calibration image; got none")
    rng = np.random.default_rng(seed)
    if len(arrays[0]) > max_images:
        chosen = np.sort(rng.choice(len(arrays[0]), max_images, replace=False))
        arrays = [array[chosen] for array in arrays]
    fixed = _common_fixed_batch(pruned_graph, reference_model)
    if fixed is not None:
        arrays = [whole_chunks(array, fixed) for array in arrays]
    selection = _find_layers(
        pruned_module, reference_module, all_layers,
        reference_targets.weighted_layers() if reference_targets is not None else None,
    )  # fmt: skip
    result = LeastSquaresResult(
        model=pruned_model, images=len(arrays[0]), skipped=selection.skipped,
        note=_nothing_refit(selection), fixed_batch=fixed,
    )  # fmt: skip
    if selection.layers:
        per_image = sum(array[:1].nbytes for array in arrays)
        bounds = batch_starts(len(arrays[0]), fixed, images_per_batch(per_image, batch_size))
        settings = _Settings(positions_per_image, ridge, seed, activation_memory, spill_dir)
        with recovery_threads(threads):
            _fit_all(selection.layers, (pruned_module, reference_module), arrays, bounds,
                     settings, result, on_layer, reference_targets)  # fmt: skip
        result.model = store_values(
            pruned_model, pruned_graph, write_back(pruned_module, pruned_graph)
        )
    result.seconds = time.perf_counter() - start
    return result


def _batch_feeds(
    names: list[str], arrays: list[np.ndarray], bounds: list[tuple[int, int]]
) -> Callable[[int], dict[str, Tensor]]:
    def feeds(batch: int) -> dict[str, Tensor]:
        first, stop = bounds[batch]
        return {
            name: torch.from_numpy(np.ascontiguousarray(array[first:stop]))
            for name, array in zip(names, arrays, strict=True)
        }

    return feeds


def _fit_all(
    layers: list[_Layer],
    modules: tuple[OnnxModule, OnnxModule],
    arrays: list[np.ndarray],
    bounds: list[tuple[int, int]],
    settings: _Settings,
    result: LeastSquaresResult,
    on_layer: Callable[[LayerFit], None] | None,
    cache: ReferenceTargets | None,
) -> None:
    """Refit the selected layers in pruned-graph order. The reference leaves each layer's
    sampled targets (one pass, or none when ``cache`` already holds them for this data); then
    the pruned graph streams batch by batch (:mod:`.stream`): per layer, every batch runs the
    segment up to it and adds to the layer's normal equations, the layer is solved, and the
    next segment starts."""
    pruned_module, reference_module = modules
    # A quarter of the RAM budget for the (small) sampled targets, the rest for the frontier
    # of the pruned graph, whose spill is the expensive one.
    targets = (
        cache
        if cache is not None
        else ReferenceTargets(settings.activation_memory // 4, settings.spill_dir)
    )
    store = ActivationStore(
        settings.activation_memory - settings.activation_memory // 4, settings.spill_dir
    )
    pruned = StreamRunner(pruned_module, _batch_feeds(pruned_module.input_names, arrays, bounds),
                          store, "pruned:")  # fmt: skip
    spilled_before = targets.spilled_bytes
    try:
        with torch.no_grad():
            # A kept cache holds every weighted layer (later plans refit other layers); a
            # one-off fit only the layers it refits.
            if cache is not None:
                held = {ref.output: ref.op_type for ref in cache.weighted_layers()}
            else:
                held = {layer.ref_output: layer.op_type for layer in layers}
            key = (
                ("once",)
                if cache is None
                else targets.key_for(
                    reference_module, arrays, bounds, settings.seed, settings.positions
                )
            )
            targets.fill(
                reference_module, held, _batch_feeds(reference_module.input_names, arrays, bounds),
                len(bounds), key, settings.seed, settings.positions,
            )  # fmt: skip
            for layer in layers:
                ctx, names_in, _ = pruned_module._nodes[layer.index]
                equations = _NormalEquations(layer, pruned_module, ctx)
                channels = torch.as_tensor(layer.out_keep)
                for batch in range(len(bounds)):
                    x = pruned.run(batch, layer.index, want=[names_in[0]])[names_in[0]]
                    chosen, rows = targets.get(layer.ref_output, batch, channels)
                    equations.add(x, chosen, rows)
                    in_ram = {b for _, b in store.resident}
                    if cache is None:
                        in_ram |= {b for _, b in targets.resident}
                    result.peak_batches_in_memory = max(
                        result.peak_batches_in_memory, len(in_ram | {batch})
                    )
                pruned.finish(layer.index)
                if cache is None:  # each reference layer pairs with one pruned layer
                    targets.drop(layer.ref_output)
                release_free_memory()
                result.peak_activation_bytes = max(
                    result.peak_activation_bytes,
                    max(pruned.batch_bytes, targets.peak_bytes) + store.resident_bytes
                    + targets.resident_bytes,
                )  # fmt: skip
                fit = equations.solve(settings.ridge)
                result.layers.append(fit)
                if on_layer is not None:
                    on_layer(fit)
    finally:
        result.spilled_bytes = store.spilled_bytes + targets.spilled_bytes - spilled_before
        store.close()
        if cache is None:
            targets.close()


def least_squares_recover(
    pruned_model: ModelProto, reference_model: ModelProto, dataset: Any, **options: Any
) -> ModelProto:
    """Pruned model with its pruned-input layers refit by least squares (see :func:`reconstruct`).

    The channel correspondence is read from the weights (exact match), which also covers
    models pruned by hand. ``options`` are passed to :func:`reconstruct`.
    """
    return reconstruct(pruned_model, reference_model, dataset, **options).model

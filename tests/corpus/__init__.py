"""The test-model corpus: small models covering what exporters emit.

``CORPUS`` maps a model name to a builder ``build(out_dir: Path) -> Path`` that writes
``out_dir/<name>.onnx`` (seeded weights, so every build is identical) and returns its path.
``build_all(out_dir)`` builds every model and returns ``{name: path}``.

Torch models are exported with the dynamo exporter (opset 18, dynamic batch axis) and its
optimiser minus the Conv+BN fusion, so BatchNormalization nodes stay in the graph, except
``resnet_b_folded`` (exporter default: BN folded into Conv). The ``tf_*`` models are written
with ``onnx.helper`` in tf2onnx's style (NHWC, see :mod:`tf_style`); ``onnx_ops`` is written
with ``onnx.helper`` to cover ops the exporters above do not emit. Every model's inputs
are 4-D float32 with a dynamic first axis.

See ``DESCRIPTIONS`` for what each model exercises.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from . import torch_models as tm
from .onnx_ops import build_onnx_ops
from .tf_style import build_tf_nhwc_flatten, build_tf_nhwc_mixed, build_tf_nhwc_pool

_NCHW16 = (2, 3, 16, 16)


def _torch(name: str, model_fn, seed: int, shape=_NCHW16, fold_bn: bool = False):
    def build(out_dir: Path) -> Path:
        return tm.export_torch(name, model_fn, shape, Path(out_dir), seed=seed, fold_bn=fold_bn)

    build.__name__ = f"build_{name}"
    build.__doc__ = model_fn.__doc__
    return build


CORPUS: dict[str, Callable[[Path], Path]] = {
    "resnet_a": _torch("resnet_a", partial(tm.TinyResNet, "A"), 1),
    "resnet_b": _torch("resnet_b", partial(tm.TinyResNet, "B"), 2),
    "resnet_b_folded": _torch("resnet_b_folded", partial(tm.TinyResNet, "B"), 3, fold_bn=True),
    "vgg": _torch("vgg", tm.TinyVGG, 4),
    "mobilenet_v1": _torch("mobilenet_v1", tm.TinyMobileNetV1, 5),
    "mobilenet_v2": _torch("mobilenet_v2", tm.TinyMobileNetV2, 6),
    "shufflenet_v2": _torch("shufflenet_v2", tm.TinyShuffleNetV2, 7),
    "densenet": _torch("densenet", tm.TinyDenseNet, 8),
    "senet": _torch("senet", tm.TinySENet, 9),
    "resnext": _torch("resnext", tm.TinyResNeXt, 10),
    "unet": _torch("unet", tm.TinyUNet, 11),
    "conv_output": _torch("conv_output", tm.ConvToOutput, 12),
    "channel_split": _torch("channel_split", tm.ChannelSplit, 13),
    "softmax_channels": _torch("softmax_channels", tm.SoftmaxChannels, 14),
    "no_prunable": _torch("no_prunable", tm.NoPrunable, 15, shape=(2, 3, 8, 8)),
    "misc_ops": _torch("misc_ops", tm.MiscOps, 16),
    "shared_weights": _torch("shared_weights", tm.SharedWeights, 17),
    "channel_slices": _torch("channel_slices", tm.ChannelSlices, 18),
    "tf_nhwc_pool": build_tf_nhwc_pool,
    "tf_nhwc_flatten": build_tf_nhwc_flatten,
    "tf_nhwc_mixed": build_tf_nhwc_mixed,
    "onnx_ops": build_onnx_ops,
}

DESCRIPTIONS: dict[str, str] = {
    "resnet_a": "CIFAR ResNet, option-A shortcuts (strided slice + zero channel Pad)",
    "resnet_b": "CIFAR ResNet, option-B shortcuts (1x1 conv + BN)",
    "resnet_b_folded": "resnet_b exported with the exporter's optimiser (BN folded into Conv)",
    "vgg": "VGG: Flatten(C*H*W) -> Gemm hidden layer -> Gemm classifier",
    "mobilenet_v1": "depthwise-separable convs",
    "mobilenet_v2": "inverted residuals, depthwise, ReLU6 as Clip",
    "shufflenet_v2": "channel split + concat + channel shuffle (Reshape/Transpose/Reshape)",
    "densenet": "concat chains, transition with AveragePool",
    "senet": "squeeze-excitation gates (1x1-conv gate and Linear gate) with a residual",
    "resnext": "grouped convolutions (4 and 2 groups) in residual blocks",
    "unet": "skip concats, ConvTranspose, nearest Resize, 2-channel map output",
    "conv_output": "a Conv feeding a graph output directly (its channels are frozen)",
    "channel_split": "Split on the channel axis, residual in one branch, concat",
    "softmax_channels": "Softmax over channels in the middle of the network",
    "no_prunable": "Conv -> Softmax over channels -> output: nothing to prune",
    "misc_ops": "InstanceNorm, HardSwish, SiLU, scalar Div/Sub, per-channel Mul/Add constants",
    "shared_weights": "one Conv weight read by two Conv nodes (weight sharing)",
    "channel_slices": "overlapping channel slices, self-concat, depthwise multiplier 2",
    "tf_nhwc_pool": "tf2onnx-style NHWC graph, ReduceMean head, Pad + auto_pad, depthwise",
    "tf_nhwc_flatten": "tf2onnx-style NHWC graph, interleaved NHWC Reshape -> MatMul head",
    "tf_nhwc_mixed": "ops left in NHWC: bias Add on the last axis, Resize, Concat axis 3, Squeeze",
    "onnx_ops": "onnx.helper graph: Sum residual, PRelu, Cast, Dropout, Max, GAP, Flatten, Gemm",
}


def build_all(out_dir: Path) -> dict[str, Path]:
    """Build every corpus model into ``out_dir``; returns ``{name: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {name: build(out) for name, build in CORPUS.items()}


EXPORT_NOTES = tm.EXPORT_NOTES

__all__ = ["CORPUS", "DESCRIPTIONS", "EXPORT_NOTES", "build_all"]

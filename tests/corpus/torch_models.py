"""Small torch models of the corpus, exported to ONNX with the dynamo exporter.

Widths are tiny (4..32 channels) so exports and onnxruntime runs take milliseconds. Every
BatchNorm gets random running statistics and affine parameters so that a surgery bug on BN
constants changes the outputs. Exports run the exporter's optimiser without its BN fusion
(unless a builder asks for it): the BN nodes must stay in the graph for the corpus to
exercise BN slicing.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# Builders record here when the dynamo exporter failed and the TorchScript one was used.
EXPORT_NOTES: dict[str, str] = {}


def _randomise_bn(model: nn.Module, generator: torch.Generator) -> None:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
            c = module.num_features
            with torch.no_grad():
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator) * 1.3 + 0.2)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.3)


@contextlib.contextmanager
def _keep_batchnorm() -> Iterator[None]:
    """Run the exporter's optimiser without its Conv+BN fusion rule.

    The default optimiser folds eval-mode BN into the preceding Conv; the corpus wants the
    BN nodes (their constants must be sliced too) but otherwise the graph a user gets by
    default (Split not SplitToSequence, constants folded, no shape subgraphs).
    """
    try:
        from onnxscript import rewriter
        from onnxscript.rewriter.rules.common import _fuse_batchnorm
    except ImportError:  # pragma: no cover - other onnxscript layout: fusion stays on
        yield
        return
    saved = rewriter._DEFAULT_REWRITE_RULES
    fused = set(map(id, _fuse_batchnorm.rules))
    rewriter._DEFAULT_REWRITE_RULES = tuple(r for r in saved if id(r) not in fused)
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = saved


def export_torch(
    name: str,
    model_fn: Callable[[], nn.Module],
    input_shape: tuple[int, ...],
    out_dir: Path,
    *,
    seed: int,
    fold_bn: bool = False,
) -> Path:
    """Build ``model_fn()`` with seeded weights, randomise BN, export to ``out_dir/name.onnx``.

    The exporter's optimiser runs (constant folding, Split instead of sequences) but keeps
    BatchNormalization nodes unless ``fold_bn``. The batch axis is dynamic (``batch``). Falls back to ``dynamo=False`` when the dynamo
    exporter fails, and records that in :data:`EXPORT_NOTES`.
    """
    torch.manual_seed(seed)
    model = model_fn()
    _randomise_bn(model, torch.Generator().manual_seed(seed + 1))
    model.eval()
    example = torch.randn(*input_shape, generator=torch.Generator().manual_seed(seed + 2))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.onnx"
    keep_bn = contextlib.nullcontext() if fold_bn else _keep_batchnorm()
    with warnings.catch_warnings(), keep_bn:
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                opset_version=18,
                input_names=["input"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
                optimize=True,
                external_data=False,
                verbose=False,
            )
        except Exception as exc:  # pragma: no cover - depends on the torch version
            EXPORT_NOTES[name] = f"dynamo export failed ({type(exc).__name__}); used dynamo=False"
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                opset_version=18,
                input_names=["input"],
                dynamic_axes={"input": {0: "batch"}},
            )
    return path


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


# --------------------------------------------------------------------------- ResNets


class BasicBlock(nn.Module):
    """CIFAR basic block; ``shortcut`` 'A' = strided slice + zero channel pad, 'B' = 1x1 conv+BN."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.body1 = conv_bn(cin, cout, 3, stride)
        self.body2 = conv_bn(cout, cout, 3, 1)
        self.shortcut_kind = shortcut if (stride != 1 or cin != cout) else "identity"
        self.pad = (cout - cin) // 2
        if self.shortcut_kind == "B":
            self.proj = conv_bn(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body2(F.relu(self.body1(x)))
        if self.shortcut_kind == "A":
            short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        elif self.shortcut_kind == "B":
            short = self.proj(x)
        else:
            short = x
        return F.relu(out + short)


class TinyResNet(nn.Module):
    """stem 8 -> [8, 8] -> [16 (stride 2), 16] -> GAP -> Linear(16, 10)."""

    def __init__(self, shortcut: str) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.blocks = nn.Sequential(
            BasicBlock(8, 8, 1, shortcut),
            BasicBlock(8, 16, 2, shortcut),
            BasicBlock(16, 16, 1, shortcut),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --------------------------------------------------------------------------- VGG


class TinyVGG(nn.Module):
    """conv8-conv8-pool-conv16-pool -> Flatten(16*4*4) -> Linear(256, 32) -> ReLU -> Linear(32, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 8),
            nn.ReLU(),
            conv_bn(8, 8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# --------------------------------------------------------------------------- MobileNets


def dw_sep(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        conv_bn(cin, cin, 3, stride, groups=cin), nn.ReLU(), conv_bn(cin, cout, 1), nn.ReLU()
    )


class TinyMobileNetV1(nn.Module):
    """stem 8 (s2) -> dw8/pw16 -> dw16 (s2)/pw32 -> GAP -> Linear(32, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 8, 3, 2), nn.ReLU(), dw_sep(8, 16, 1), dw_sep(16, 32, 2)
        )
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.body = nn.Sequential(
            conv_bn(cin, hidden, 1),
            nn.ReLU6(),
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.ReLU6(),
            conv_bn(hidden, cout, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.use_res else out


class TinyMobileNetV2(nn.Module):
    """stem 8 -> IR(8->8, e2) -> IR(8->16, s2, e2) -> IR(16->16, e2) -> 1x1 conv 32 -> GAP -> FC."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 8),
            nn.ReLU6(),
            InvertedResidual(8, 8, 1, 2),
            InvertedResidual(8, 16, 2, 2),
            InvertedResidual(16, 16, 1, 2),
            conv_bn(16, 32, 1),
            nn.ReLU6(),
        )
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


# --------------------------------------------------------------------------- ShuffleNetV2


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                conv_bn(cin, cin, 3, stride, cin), conv_bn(cin, branch, 1), nn.ReLU()
            )
        b2_in = cin if stride > 1 else branch
        self.branch2 = nn.Sequential(
            conv_bn(b2_in, branch, 1),
            nn.ReLU(),
            conv_bn(branch, branch, 3, stride, branch),
            conv_bn(branch, branch, 1),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class TinyShuffleNetV2(nn.Module):
    """stem 8 -> unit(8->16, s2) -> unit(16->16) -> 1x1 conv 32 -> GAP -> FC."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.units = nn.Sequential(ShuffleUnit(8, 16, 2), ShuffleUnit(16, 16, 1))
        self.head = conv_bn(16, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.head(self.units(F.relu(self.stem(x)))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# --------------------------------------------------------------------------- DenseNet


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.conv(F.relu(self.bn(x)))), dim=1)


class TinyDenseNet(nn.Module):
    """stem 8 -> dense(3 layers, growth 4) -> transition 20->10 (avgpool) -> dense(2, g4) -> GAP -> FC."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.block1 = nn.Sequential(DenseLayer(8, 4), DenseLayer(12, 4), DenseLayer(16, 4))
        self.trans = nn.Sequential(
            nn.BatchNorm2d(20), nn.ReLU(), nn.Conv2d(20, 10, 1), nn.AvgPool2d(2)
        )
        self.block2 = nn.Sequential(DenseLayer(10, 4), DenseLayer(14, 4))
        self.bn = nn.BatchNorm2d(18)
        self.fc = nn.Linear(18, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.trans(self.block1(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).flatten(1))


# --------------------------------------------------------------------------- SE


class SEConv(nn.Module):
    """Squeeze-excitation with 1x1 convs (gate computed from the tensor it scales)."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * gate


class SELinear(nn.Module):
    """Squeeze-excitation with Linear layers (mean -> Linear -> ReLU -> Linear -> sigmoid)."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c, hidden)
        self.fc2 = nn.Linear(hidden, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], x.shape[1]
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * gate.view(b, c, 1, 1)


class TinySENet(nn.Module):
    """conv 8 -> conv 16 + SE(conv gate, residual) -> conv 16 (s2) + SE(linear gate) -> GAP -> FC."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.conv1 = conv_bn(8, 16)
        self.conv1b = conv_bn(16, 16)
        self.se1 = SEConv(16, 4)
        self.conv2 = conv_bn(16, 16, 3, 2)
        self.se2 = SELinear(16, 4)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(F.relu(self.stem(x))))
        x = F.relu(x + self.se1(self.conv1b(x)))
        x = self.se2(F.relu(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# --------------------------------------------------------------------------- ResNeXt


class ResNeXtBlock(nn.Module):
    def __init__(self, c: int, width: int, cardinality: int) -> None:
        super().__init__()
        self.reduce = conv_bn(c, width, 1)
        self.grouped = conv_bn(width, width, 3, 1, groups=cardinality)
        self.expand = conv_bn(width, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.reduce(x))
        out = F.relu(self.grouped(out))
        return F.relu(x + self.expand(out))


class TinyResNeXt(nn.Module):
    """stem 16 -> ResNeXt(width 16, 4 groups) -> ResNeXt(width 8, 2 groups) -> GAP -> FC."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.blocks = nn.Sequential(ResNeXtBlock(16, 16, 4), ResNeXtBlock(16, 8, 2))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# --------------------------------------------------------------------------- U-Net


class TinyUNet(nn.Module):
    """enc 8 @16 -> enc 16 @8 -> bott 16 @4 -> ConvT up + cat -> conv 8 -> Upsample + cat -> conv -> 1x1 -> 2 maps."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = conv_bn(3, 8)
        self.enc2 = conv_bn(8, 16)
        self.bott = conv_bn(16, 16)
        self.up1 = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec1 = conv_bn(8 + 16, 8)
        self.dec2 = conv_bn(8 + 8, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = F.relu(self.enc1(x))
        e2 = F.relu(self.enc2(F.max_pool2d(e1, 2)))
        b = F.relu(self.bott(F.max_pool2d(e2, 2)))
        d1 = F.relu(self.dec1(torch.cat((self.up1(b), e2), dim=1)))
        up = F.interpolate(d1, scale_factor=2.0, mode="nearest")
        d2 = F.relu(self.dec2(torch.cat((up, e1), dim=1)))
        return self.head(d2)


# --------------------------------------------------------------------------- odd ones


class ConvToOutput(nn.Module):
    """Two outputs: a feature map straight from a Conv (its channels are frozen) and logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.conv2(F.relu(self.conv1(x)))
        return features, self.fc(F.adaptive_avg_pool2d(F.relu(features), 1).flatten(1))


class ChannelSplit(nn.Module):
    """conv 12 -> split [4, 8] on channels -> two branches -> add/concat -> conv -> GAP -> FC."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 12)
        self.branch_a = conv_bn(4, 8)
        self.branch_b = conv_bn(8, 8)
        self.conv2 = conv_bn(16, 8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(F.relu(self.conv1(x)), [4, 8], dim=1)
        a = F.relu(self.branch_a(a))
        b = F.relu(self.branch_b(b) + b)
        x = F.relu(self.conv2(torch.cat((a, b), dim=1)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SoftmaxChannels(nn.Module):
    """conv 8 -> conv 8 -> softmax over channels (mixes channels: frozen) -> conv 8 -> GAP -> FC."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 8)
        self.conv2 = conv_bn(8, 8)
        self.conv3 = conv_bn(8, 8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = torch.softmax(self.conv2(x), dim=1)
        x = F.relu(self.conv3(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class NoPrunable(nn.Module):
    """conv 3->6 -> softmax over channels -> output: its only channel group is frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.conv(x), dim=1)


class MiscOps(nn.Module):
    """Channel-wise ops in between convs: InstanceNorm (affine), HardSwish, SiLU (x*sigmoid(x)),
    scalar Div/Sub, a learned per-channel scale (Mul by a [1,C,1,1] constant), a per-channel
    shift on a broadcast [C,1,1] constant, MaxPool, GlobalAveragePool, Dropout, Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.InstanceNorm2d(8, affine=True)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.scale = nn.Parameter(torch.rand(1, 12, 1, 1) + 0.5)
        self.shift = nn.Parameter(torch.randn(12, 1, 1) * 0.1)
        self.conv3 = nn.Conv2d(12, 8, 1)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(8, 10)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.normal_(0.0, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.hardswish(self.norm(self.conv1(x)))
        x = self.conv2(x) / 2.0 - 0.1
        x = F.silu(x * self.scale + self.shift)
        x = F.max_pool2d(x, 2)
        x = F.relu(self.conv3(x))
        x = self.drop(F.adaptive_avg_pool2d(x, 1).flatten(1))
        return self.fc(x)


class SharedWeights(nn.Module):
    """One Conv module applied to two different tensors: both Conv nodes read the same weight
    initializer, so pruning one node's output rows must not slice the other's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.branch = nn.Conv2d(8, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.stem(x))
        b = F.relu(self.branch(a))
        left = F.relu(self.shared(a))
        right = F.relu(self.shared(b))
        x = torch.cat((left, right), dim=1)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ChannelSlices(nn.Module):
    """Overlapping channel slices x[:, :8] and x[:, 4:], a tensor concatenated with itself,
    and a depthwise conv with channel multiplier 2 (groups=C, 2C outputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 12)
        self.left = conv_bn(8, 8)
        self.right = conv_bn(8, 8)
        self.conv2 = conv_bn(8, 6)
        self.dw2 = nn.Conv2d(6, 12, 3, padding=1, groups=6)
        self.conv3 = nn.Conv2d(12, 8, 1)
        self.fc = nn.Linear(16 + 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        left = F.relu(self.left(x[:, :8]))
        right = F.relu(self.right(x[:, 4:]))
        y = F.relu(self.conv2(left + right))
        twice = torch.cat((right, right), dim=1)
        z = F.relu(self.conv3(F.relu(self.dw2(y))))
        pooled = torch.cat((F.adaptive_avg_pool2d(twice, 1), F.adaptive_avg_pool2d(z, 1)), dim=1)
        return self.fc(pooled.flatten(1))

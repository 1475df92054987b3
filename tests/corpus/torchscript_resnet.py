"""A ResNet as torch's TorchScript exporter writes it (``torch.onnx.export(..., dynamo=False)``),
the way most ONNX files in the wild were made: shape arithmetic computed at run time.

- Option-A shortcuts: ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))`` with ``p`` read from
  ``x.shape[1]`` (a ``Shape -> Gather -> Sub -> Div -> ... -> Concat -> Pad`` chain).
- TF-style "same" convolutions (timm's ``Conv2dSame``): the first conv of every block pads
  its input by amounts computed from ``x.shape[-2:]``, so with a dynamic H/W the pads are
  only known at run time, and with a fixed H/W they are constants.

``export(path, dynamic_hw=True)`` writes it with dynamic batch, height and width; the input is
``input: float32[batch, 3, H, W]`` (16x16 in the example), output ``logits: [batch, 10]``.
Run ``python -m tests.corpus.torchscript_resnet OUT.onnx`` to write one by hand.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class SameConv(nn.Module):
    """3x3 conv with TF "same" padding computed from the input size at run time."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(cin, cout, 3, stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        s = self.stride
        pad_h = ((height + s - 1) // s - 1) * s + 3 - height
        pad_w = ((width + s - 1) // s - 1) * s + 3 - width
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return self.conv(x)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = SameConv(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.option_a = stride != 1 or cin != cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.option_a:
            pad = (self.bn2.num_features - x.shape[1]) // 2
            short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))
        else:
            short = x
        return F.relu(out + short)


class TorchScriptResNet(nn.Module):
    """stem 8 -> [8, 8] -> [16 (stride 2, option A), 16] -> GAP -> Linear(16, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8))
        self.blocks = nn.Sequential(Block(8, 8, 1), Block(8, 16, 2), Block(16, 16, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def export(path: str | Path, *, dynamic_hw: bool = True, seed: int = 0) -> Path:
    """Seeded weights (BN statistics randomised, so pruned channels matter), eval mode,
    TorchScript export at opset 17; returns ``path``."""
    torch.manual_seed(seed)
    model = TorchScriptResNet()
    generator = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    model.eval()
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python ints from shapes
        torch.onnx.export(
            model, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False, opset_version=17,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": axes, "logits": {0: "batch"}},
        )  # fmt: skip
    return Path(path)


if __name__ == "__main__":
    print(export(sys.argv[1] if len(sys.argv) > 1 else "torchscript_resnet.onnx"))

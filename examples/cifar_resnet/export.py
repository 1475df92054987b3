"""Export the pretrained CIFAR-10 ResNets to ONNX and cut the bundled data subsets.

Usage (from the repository root; needs the weights and arrays from ``../shared/data``)::

    python examples/cifar_resnet/export.py --weights ../shared/data/cifar10-resnet \
        --data ../shared/data/cifar10 --depths 20 32 44 56 --out examples/cifar_resnet

Writes ``resnet{depth}.onnx`` (opset 18, dynamic batch axis ``batch``, input ``input``
float32[batch,3,32,32], output ``logits``) and, with ``--subsets``, ``data/calib.npz``
(1,000 training images) and ``data/test.npz`` (2,000 test images), both seeded shuffles of
the class-sorted source arrays.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resnet_cifar import CifarResNet  # noqa: E402

WEIGHT_FILES = {
    20: "resnet20-12fca82f.th",
    32: "resnet32-d509ac18.th",
    44: "resnet44-014dd654.th",
    56: "resnet56-4bfd9763.th",
}


def load_pretrained(depth: int, weights_dir: Path) -> CifarResNet:
    checkpoint = torch.load(
        weights_dir / WEIGHT_FILES[depth], map_location="cpu", weights_only=True
    )
    state = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}
    model = CifarResNet(depth)
    model.load_state_dict(state, strict=True)
    return model.eval()


def export(model: torch.nn.Module, path: Path) -> None:
    example = torch.randn(2, 3, 32, 32)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        opset_version=18,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: batch}},
        external_data=False,
    )
    program.optimize()
    proto = program.model_proto
    proto.producer_name = "pytorch"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(path))


def write_subsets(data_dir: Path, out_dir: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, count in (("calib", 1000), ("test", 2000)):
        arrays = np.load(data_dir / f"{name}.npz")
        order = rng.permutation(len(arrays["y"]))[:count]
        np.savez_compressed(out_dir / f"{name}.npz", x=arrays["x"][order], y=arrays["y"][order])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=Path("../shared/data/cifar10-resnet"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cifar10"))
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 56])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument(
        "--subsets", action="store_true", help="also write data/calib.npz, data/test.npz"
    )
    args = parser.parse_args()
    for depth in args.depths:
        model = load_pretrained(depth, args.weights)
        path = args.out / f"resnet{depth}.onnx"
        export(model, path)
        print(f"wrote {path}")
    if args.subsets:
        write_subsets(args.data, args.out / "data")
        print(f"wrote {args.out / 'data'}/calib.npz and test.npz")


if __name__ == "__main__":
    main()

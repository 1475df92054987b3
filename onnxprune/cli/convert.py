"""``onnxprune convert``: TensorFlow SavedModel / Keras / TFLite -> ONNX."""

from __future__ import annotations

from pathlib import Path

import click

from onnxprune.cli.common import echo_json, guard_outputs


@click.command("convert")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="ONNX file to write (atomically; never the input).",
)
@click.option("--opset", default=17, show_default=True, help="ONNX opset of the result (13..18).")
@click.option(
    "--inputs-as-nchw",
    "inputs_as_nchw",
    multiple=True,
    metavar="NAME",
    help="Expose this NHWC graph input as NCHW (repeatable, or comma-separated).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON record instead of text.")
def convert_cmd(
    src: Path, out: Path, opset: int, inputs_as_nchw: tuple[str, ...], as_json: bool
) -> None:
    """Convert a TensorFlow model to ONNX with tf2onnx (needs `pip install "onnxprune[tf]"`).

    SRC is a SavedModel folder, a Keras .keras/.h5 file or a .tflite file.

    \b
    Example:
      onnxprune convert saved_model/ -o model.onnx
      onnxprune convert model.keras -o model.onnx --inputs-as-nchw image
    """
    from onnxprune.convert import convert, detect_source_kind
    from onnxprune.model import load_model, model_info

    guard_outputs({"SRC": src}, {"-o": out})
    kind = detect_source_kind(src)
    names = [n for item in inputs_as_nchw for n in item.split(",") if n]
    written = convert(src, out, opset=opset, inputs_as_nchw=names or None)
    info = model_info(load_model(written, infer_shapes=False))
    if as_json:
        echo_json({"source": str(src), "kind": kind.value, "output": str(written), "model": info})
        return
    click.echo(f"converted {src} ({kind}) to {written}")
    click.echo(str(info))


def register(main: click.Group) -> None:
    main.add_command(convert_cmd)

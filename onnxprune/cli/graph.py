"""``onnxprune graph``: show the hierarchical computational graph and its motifs."""

from __future__ import annotations

from pathlib import Path

import click

from onnxprune.cli.common import (
    cli_input_shapes,
    echo_fixed_note,
    echo_json,
    guard_outputs,
    input_shape_option,
)


@click.command(
    "graph",
    epilog=(
        "\b\nExamples:\n  onnxprune graph examples/cifar_resnet/resnet20.onnx\n"
        "  onnxprune graph model.onnx --png levels.png --graphml levels.graphml\n"
        "  onnxprune graph detector.onnx --input-shape x:1x3x640x640 --json"
    ),
)
@click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print levels and motifs as JSON.")
@click.option(
    "--graphml",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write each level to <stem>.level<k>.graphml next to this path.",
)
@click.option(
    "--png",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw the level graphs into this PNG file.",
)
@click.option(
    "--max-region",
    default=64,
    show_default=True,
    type=click.IntRange(min=2),
    help="Largest region (ops) considered as a motif candidate.",
)
def graph_command(
    model: Path,
    input_shapes: tuple[str, ...],
    as_json: bool,
    graphml: Path | None,
    png: Path | None,
    max_region: int,
) -> None:
    """Build the hierarchical graph of MODEL: levels, motifs and their instance counts.

    \b
    Level 0: feature maps (nodes) joined by operations (edges).
    Level k: repeated regions of level k-1 (motifs) replaced by one edge each.
    """
    from onnxprune.hgraph import build_hierarchy
    from onnxprune.hgraph.draw import draw_png, write_graphml
    from onnxprune.model import fix_input_shapes, load_model

    guard_outputs({"MODEL": model}, {"--graphml": graphml, "--png": png})
    loaded = load_model(model)
    shapes, source = cli_input_shapes(input_shapes)
    fixed = fix_input_shapes(loaded, shapes, source=source)
    echo_fixed_note(loaded, fixed)
    hierarchy = build_hierarchy(fixed, max_region_ops=max_region)
    written: list[Path] = []
    if graphml is not None:
        written.extend(write_graphml(hierarchy, graphml))
    if png is not None:
        written.append(draw_png(hierarchy, png))
    if as_json:
        echo_json(hierarchy.to_dict())
        return
    click.echo(str(hierarchy))
    for path in written:
        click.echo(f"wrote {path}")


def register(main: click.Group) -> None:
    main.add_command(graph_command)

"""The ``onnxprune`` command line.

Each pipeline stage keeps its commands in ``onnxprune/cli/<stage>.py`` with a
``register(main)`` function; this module only builds the group and turns errors into one
line and exit code 2 (tracebacks only with ``--debug``).
"""

from __future__ import annotations

import importlib
import sys

import click

from onnxprune import __version__
from onnxprune.cli.common import run_guarded

# Order is the order of `onnxprune --help`.
_COMMAND_MODULES = (
    "onnxprune.cli.foundation",  # info, flops, eval, bench, gate
    "onnxprune.cli.prune",  # groups, prune
    "onnxprune.cli.graph",  # graph
    "onnxprune.cli.search",  # search
    "onnxprune.cli.recover",  # recover
    "onnxprune.cli.convert",  # convert
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="onnxprune")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Prune channels out of any ONNX model, exactly, and measure what it buys.

    \b
    Main job:
      onnxprune search model.onnx --flops 0.5 --data calib/ -o out/
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(main)


def entry() -> None:
    sys.exit(run_guarded(main))

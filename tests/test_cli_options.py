"""Every option an error message suggests exists on the command that printed it, and every
command's ``--help`` shows an example."""

from __future__ import annotations

import re
from pathlib import Path

import click
import numpy as np
import onnx
import pytest

from onnxprune.cli import main
from tests.conftest import make_tiny_cnn
from tests.test_input_shapes import invoke

OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _options(command: click.Command) -> set[str]:
    names = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    names |= {opt for param in main.params for opt in param.opts}  # --debug, --version
    return names | {"--help"}  # click's "Try 'onnxprune X --help'" on usage errors


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad-inputs")
    dynamic = make_tiny_cnn((8, 16))
    dims = dynamic.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    onnx.save_model(dynamic, str(folder / "dynamic.onnx"))
    onnx.save_model(make_tiny_cnn((8, 16)), str(folder / "static.onnx"))
    rng = np.random.default_rng(0)
    np.savez(folder / "wrong.npz", x=rng.normal(size=(4, 3, 8)).astype(np.float32))
    np.savez(folder / "data.npz", x=rng.normal(size=(40, 3, 16, 16)).astype(np.float32))
    return {p.stem: p for p in folder.iterdir()} | {"out": folder / "out"}


# Invocations that fail on bad input, per command ({name} is a file of the fixture).
BAD_CALLS: dict[str, list[str]] = {
    "info": ["{dynamic} --input-shape nope:1x3x4x4", "{missing}"],
    "flops": ["{dynamic}", "{dynamic} --input-shape input:1x3", "{static} --input-shape 1x3x"],
    "eval": ["{static} --data {wrong}", "{dynamic} --data {missing}"],
    "bench": ["{dynamic}", "{static} --input-shape 1x4x16x16"],
    "gate": ["{dynamic} {dynamic} --runs 5", "{static} {static} --max-accuracy-drop 1"],
    "groups": ["{dynamic} --input-shape x:1x3x4x4", "{missing}"],
    "prune": [
        "{dynamic} --flops 0.5 -o {out}.onnx",
        "{dynamic} --ratio 0.5 --criterion activation -o {out}.onnx",
        "{static} --ratio 1.5 -o {out}.onnx",
        "{static} --ratio 0.5 --plan {missing} -o {out}.onnx",
    ],
    "graph": ["{dynamic} --input-shape input:1x3x4", "{static} --png {static}"],
    "search": [
        "{dynamic} --flops 0.5 --data {wrong} -o {out}",
        "{static} --flops 0.001 --data {data} -o {out} --strategy uniform",
        "{static} --flops 2 --data {data} -o {out}",
        "{static} --flops 0.5 --data {data} -o {out} --workers -1",
        "{static} --flops 0.5 --data {data} -o {out} --ray-gpus-per-worker 1",
    ],
    "recover": [
        "{static} --reference {static} --data {data} --holdout 2 -o {out}.onnx",
        "{static} --reference {static} --data {data} --plan {missing} -o {out}.onnx",
        "{dynamic} --reference {dynamic} --data {data} --input-shape 1x3x9 -o {out}.onnx",
    ],
    "convert": ["{missing} -o {out}.onnx"],
}


def test_every_command_has_bad_calls():
    assert set(BAD_CALLS) | {"strategies"} == set(main.commands)


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_suggested_options_exist_on_the_command(name: str, files: dict[str, Path]):
    command = main.commands[name]
    paths = {k: str(v) for k, v in files.items()} | {"missing": str(files["out"]) + "-none"}
    suggested: dict[str, str] = {}
    for call in BAD_CALLS[name]:
        code, _, err = invoke(name, *call.format(**paths).split())
        assert code == 2, f"`{name} {call}` was expected to fail as a usage error: {err}"
        for option in OPTION.findall(err):
            suggested.setdefault(option, err.strip())
    missing = {opt: why for opt, why in suggested.items() if opt not in _options(command)}
    assert not missing, f"`onnxprune {name}` suggests options it does not accept: {missing}"


def test_the_dynamic_size_advice_is_followed_by_an_accepted_option(files: dict[str, Path]):
    code, _, err = invoke("prune", files["dynamic"], "--flops", "0.5", "-o", files["out"])
    assert code == 2 and "--input-shape input:1x3xNxN" in err
    assert "--input-shape" in _options(main.commands["prune"])


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_help_has_an_example(name: str):
    code, stdout, _ = invoke(name, "--help")
    assert code == 0 and "Example" in stdout, f"`onnxprune {name} --help` shows no example"

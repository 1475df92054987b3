"""Input sizes everywhere: ``model.fix_input_shapes``, ``--input-shape`` on every command,
prune without a known size, and the shapes the costs are for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnxprune.cli import main
from onnxprune.cli.common import run_guarded
from onnxprune.cost import model_cost
from onnxprune.errors import OnnxPruneError
from onnxprune.model import (
    SINGLE_INPUT,
    fix_input_shapes,
    parse_input_shapes,
    tensor_shapes,
    value_dims,
)
from onnxprune.pipeline import COST_UNAVAILABLE, prune_model
from tests.conftest import finish_model, make_tiny_cnn, tiny_cnn_macs

WIDTHS = (8, 16)


def invoke(*args: object) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``onnxprune ARGS``."""
    runner = CliRunner()
    with runner.isolation() as (out, err, _):
        code = run_guarded(main, [str(a) for a in args])
    return code, out.getvalue().decode(), err.getvalue().decode()


def _dynamic_cnn() -> onnx.ModelProto:
    """The tiny CNN with input ``[batch, 3, H, W]`` (H, W symbolic)."""
    model = make_tiny_cnn(WIDTHS)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    return model


@pytest.fixture
def dynamic_path(tmp_path: Path) -> Path:
    path = tmp_path / "dynamic.onnx"
    onnx.save_model(_dynamic_cnn(), str(path))
    return path


def _two_inputs() -> onnx.ModelProto:
    """``a: [N, 4, H]`` and ``b: [N, 4, H]`` added; output ``[N, 4, H]``."""
    nodes = [helper.make_node("Add", ["a", "b"], ["y"], "add")]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 4, "H"]) for name in "ab"
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H"])]
    return finish_model(nodes, inputs, outputs, [], "two_inputs")


# ------------------------------------------------------------------ parser and fixer


def test_parser_takes_named_and_bare_shapes():
    assert parse_input_shapes(["x:1x3x640x480", "y:2X8"]) == {"x": (1, 3, 640, 480), "y": (2, 8)}
    assert parse_input_shapes(["1x3x32x32"]) == {SINGLE_INPUT: (1, 3, 32, 32)}
    with pytest.raises(OnnxPruneError, match="'x' twice"):
        parse_input_shapes(["x:1x2", "x:1x3"])


def test_fix_sets_dims_keeps_batch_and_reinfers():
    fixed = fix_input_shapes(_dynamic_cnn(), {"input": (1, 3, 20, 12)})
    assert value_dims(fixed.graph.input[0], symbolic=True) == ("batch", 3, 20, 12)
    # shapes re-inferred at that size: conv2 (stride 2, pad 1) halves 20x12 to 10x6
    assert tensor_shapes(fixed, symbolic=True)["c2"] == ("batch", 16, 10, 6)
    whole = fix_input_shapes(_dynamic_cnn(), {SINGLE_INPUT: (2, 3, 8, 8)}, keep_batch=False)
    assert value_dims(whole.graph.input[0]) == (2, 3, 8, 8)
    assert value_dims(whole.graph.output[0]) == (2, 10)


def test_fix_resolves_a_symbol_in_every_input_and_output():
    fixed = fix_input_shapes(_two_inputs(), {"a": (1, 4, 7)})
    assert value_dims(fixed.graph.input[1], symbolic=True) == ("N", 4, 7)  # b shares H
    assert value_dims(fixed.graph.output[0], symbolic=True) == ("N", 4, 7)


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"nope": (1, 3, 16, 16)}, r"'nope', which is not a model input; inputs are: input"),
        ({"input": (1, 3, 16)}, r"input 'input' has rank 3 \(1x3x16\) but the input has rank 4"),
        ({"input": (1, 4, 16, 16)}, r"input 'input' size 4 in dimension 1, but the model fixes"),
    ],
)
def test_fix_errors_name_the_input_and_the_problem(shapes, message):
    with pytest.raises(OnnxPruneError, match=message):
        fix_input_shapes(_dynamic_cnn(), shapes)


def test_fix_refuses_one_symbol_two_sizes_and_bare_shapes_for_two_inputs():
    with pytest.raises(OnnxPruneError, match=r"'H' two sizes: 7 \(input 'a'\) and 9"):
        fix_input_shapes(_two_inputs(), {"a": (1, 4, 7), "b": (1, 4, 9)})
    with pytest.raises(OnnxPruneError, match="2 inputs \\(a, b\\); write NAME:DIMS"):
        fix_input_shapes(_two_inputs(), {SINGLE_INPUT: (1, 4, 7)})
    with pytest.raises(OnnxPruneError, match="the data \\(calib\\) names 'c'"):
        fix_input_shapes(_two_inputs(), {"c": (1,)}, source="the data (calib)")


def test_cost_takes_a_bare_shape():
    assert model_cost(_dynamic_cnn(), input_shapes={SINGLE_INPUT: (1, 3, 32, 32)}).macs == (
        tiny_cnn_macs(WIDTHS, image=32)
    )


# ------------------------------------------------------------------ prune without a size


def test_prune_ratio_and_plan_need_no_size(dynamic_path: Path, tmp_path: Path):
    result = prune_model(dynamic_path, ratio=0.5, round_to=1)
    assert result.original_cost is None and result.pruned_cost is None
    assert result.to_dict()["macs_before"] is None
    assert result.input_shapes == {"input": [None, 3, None, None]}
    assert f"MACs     {COST_UNAVAILABLE}" in str(result)
    # the pruned model still takes any size: 4 + 8 channels kept
    assert value_dims(result.model.graph.input[0], symbolic=True) == ("batch", 3, "H", "W")
    plan = result.plan.save(tmp_path / "plan.json")
    again = prune_model(dynamic_path, plan=plan)
    assert again.channels_removed == result.channels_removed == 12


def test_prune_cli_reports_macs_na_then_counts_them_at_the_given_size(
    dynamic_path: Path, tmp_path: Path
):
    out = tmp_path / "p.onnx"
    code, stdout, _ = invoke("prune", dynamic_path, "--ratio", "0.5", "--round-to", "1", "-o", out)
    assert code == 0 and "MACs     n/a (dynamic input size; pass --input-shape)" in stdout
    code, stdout, _ = invoke(
        "prune", dynamic_path, "--ratio", "0.5", "--round-to", "1", "-o", out, "--json"
    )
    record = json.loads(stdout)
    assert code == 0 and record["macs_before"] is None and record["macs_after"] is None
    code, stdout, err = invoke(
        "prune", dynamic_path, "--ratio", "0.5", "--round-to", "1", "-o", out,
        "--input-shape", "input:1x3x16x16", "--json",
    )  # fmt: skip
    record = json.loads(stdout)
    assert code == 0, err
    assert record["macs_before"] == tiny_cnn_macs(WIDTHS)
    assert record["macs_after"] == tiny_cnn_macs((4, 8))
    assert record["input_shapes"] == {"input": [1, 3, 16, 16]}
    assert "input size fixed to input[?x3x16x16]" in err


def test_prune_flops_without_a_size_names_the_option(dynamic_path: Path, tmp_path: Path):
    code, _, err = invoke("prune", dynamic_path, "--flops", "0.5", "-o", tmp_path / "p.onnx")
    assert code == 2
    assert "input 'input' has dynamic dimension 2 ('H')" in err and "--input-shape" in err
    code, stdout, err = invoke(
        "prune", dynamic_path, "--flops", "0.5", "-o", tmp_path / "p.onnx",
        "--input-shape", "1x3x16x16", "--round-to", "1", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["macs_after"] <= 0.5 * tiny_cnn_macs(WIDTHS)


def test_prune_takes_the_size_from_the_data(dynamic_path: Path, tmp_path: Path):
    x = np.random.default_rng(0).normal(size=(8, 3, 12, 12)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    code, stdout, err = invoke(
        "prune", dynamic_path, "--ratio", "0.5", "--round-to", "1", "--criterion", "activation",
        "--data", tmp_path / "calib.npz", "-o", tmp_path / "p.onnx", "--json",
    )  # fmt: skip
    assert code == 0, err
    record = json.loads(stdout)
    assert record["input_shapes"] == {"input": [1, 3, 12, 12]}
    assert record["macs_before"] == tiny_cnn_macs(WIDTHS, image=12)


def test_groups_info_graph_take_input_shape(dynamic_path: Path):
    code, stdout, _ = invoke("groups", dynamic_path, "--input-shape", "input:1x3x24x24", "--json")
    assert code == 0 and json.loads(stdout)["input_shapes"] == {"input": ["batch", 3, 24, 24]}
    code, stdout, _ = invoke("info", dynamic_path, "--input-shape", "1x3x24x24", "--json")
    assert code == 0 and json.loads(stdout)["inputs"][0]["shape"] == ["batch", 3, 24, 24]
    code, _, err = invoke("graph", dynamic_path, "--input-shape", "input:1x3x24")
    assert code == 2 and "input 'input' has rank 3" in err


# ------------------------------------------------------------------ search


def test_search_runs_on_a_dynamic_size_at_the_data_size(dynamic_path: Path, tmp_path: Path):
    from onnxprune.data import Dataset
    from onnxprune.search import run_search
    from tests.test_search import _strategy

    x = np.random.default_rng(0).normal(size=(60, 3, 12, 12)).astype(np.float32)
    result = run_search(
        dynamic_path, Dataset(x, None, "calib"), 0.6, _strategy(tmp_path, "uniform", 1, 0),
        tmp_path / "out", show_progress=False, latency_runs=0, reward_samples=30,
    )  # fmt: skip
    assert result.input_shapes == {"input": [1, 3, 12, 12]}
    assert result.original["macs"] == tiny_cnn_macs(WIDTHS, image=12)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["input_shapes"] == {"input": [1, 3, 12, 12]}
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "- input size (MACs are for): input[1x3x12x12]" in markdown
    assert any("input size fixed to input[?x3x12x12]" in note for note in result.notes)


def test_anonymous_dim_params_are_not_one_symbol():
    """paddle2onnx writes ``?`` for every unknown dim: H and W may differ."""
    model = _dynamic_cnn()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param = dims[3].dim_param = "?"
    fixed = fix_input_shapes(model, {"input": (1, 3, 48, 192)})
    assert value_dims(fixed.graph.input[0], symbolic=True) == ("batch", 3, 48, 192)


def test_bench_and_gate_take_a_bare_shape(dynamic_path: Path):
    code, stdout, err = invoke(
        "bench", dynamic_path, "--input-shape", "1x3x20x20", "--runs", "3", "--json"
    )
    assert code == 0, err
    assert json.loads(stdout)["input_shapes"] == {"input": [1, 3, 20, 20]}
    code, stdout, err = invoke(
        "gate", dynamic_path, dynamic_path, "--input-shape", "1x3x20x20", "--runs", "5",
        "--max-slowdown", "100",
    )  # fmt: skip
    assert code == 0, err


def test_search_refuses_data_of_another_size_than_input_shape(dynamic_path: Path, tmp_path: Path):
    from onnxprune.data import Dataset
    from onnxprune.search import run_search
    from tests.test_search import _strategy

    x = np.zeros((40, 3, 12, 12), dtype=np.float32)
    with pytest.raises(OnnxPruneError, match=r"the data \(calib\) gives input 'input' size 12"):
        run_search(
            dynamic_path, Dataset(x, None, "calib"), 0.6, _strategy(tmp_path, "uniform", 1, 0),
            tmp_path / "out", show_progress=False, input_shapes={"input": (1, 3, 16, 16)},
        )  # fmt: skip
    assert not (tmp_path / "out").exists()

"""Outputs can never touch inputs (issue 15's measured cases): exit 2, one line, input intact."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.cli import main
from onnxprune.cli.common import run_guarded
from tests.conftest import make_tiny_cnn


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def folder_model(tmp_path: Path) -> Path:
    folder = tmp_path / "model_dir"
    folder.mkdir()
    onnx.save_model(make_tiny_cnn(batch=1), str(folder / "model.onnx"))
    return folder


def _run(capsys, *args: object) -> tuple[int, str]:
    code = run_guarded(main, [str(a) for a in args])
    return code, capsys.readouterr().err


def test_prune_into_the_folder_it_reads(folder_model: Path, capsys) -> None:
    before = _sha(folder_model / "model.onnx")
    code, err = _run(
        capsys, "prune", folder_model, "--ratio", "0.3", "-o", folder_model / "model.onnx"
    )
    assert code == 2 and "refusing to overwrite the input model" in err and err.count("\n") == 1
    assert _sha(folder_model / "model.onnx") == before


def test_save_plan_onto_the_model(folder_model: Path, tmp_path: Path, capsys) -> None:
    model = folder_model / "model.onnx"
    before = _sha(model)
    code, err = _run(
        capsys, "prune", model, "--ratio", "0.3", "--save-plan", model, "-o", tmp_path / "x.onnx"
    )
    assert code == 2 and "(MODEL) with --save-plan" in err
    assert _sha(model) == before and not (tmp_path / "x.onnx").exists()


def test_plan_and_model_outputs_on_one_path(folder_model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "same.onnx"
    code, err = _run(capsys, "prune", folder_model, "--ratio", "0.3", "--save-plan", out, "-o", out)
    assert code == 2 and "--save-plan and -o both name" in err and not out.exists()


def test_gate_json_onto_the_base_model(folder_model: Path, capsys) -> None:
    model = folder_model / "model.onnx"
    before = _sha(model)
    code, err = _run(capsys, "gate", folder_model, model, "--runs", "5", "--json", model)
    assert code == 2 and "(BASE) with --json" in err and _sha(model) == before


def test_recover_onto_the_reference_folder(folder_model: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((8, 3, 16, 16), np.float32))
    model = folder_model / "model.onnx"
    before = _sha(model)
    code, err = _run(
        capsys, "recover", model, "--reference", folder_model, "--data", data, "-o", model
    )
    assert code == 2 and "refusing to overwrite the input model" in err and _sha(model) == before


def test_search_with_the_model_inside_its_output_folder(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    model = out / "pruned.onnx"  # would be replaced by the search's own pruned.onnx
    onnx.save_model(make_tiny_cnn(batch=1), str(model))
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((8, 3, 16, 16), np.float32))
    before = _sha(model)
    code, err = _run(capsys, "search", model, "--flops", "0.5", "--data", data, "-o", out)
    assert code == 2 and "refusing to overwrite the input model" in err and _sha(model) == before


def test_output_onto_the_inputs_external_data(tmp_path: Path, capsys) -> None:
    model = tmp_path / "a.onnx"
    onnx.save_model(make_tiny_cnn(batch=1), str(model), save_as_external_data=True,
                    location="X.onnx.data", size_threshold=0)  # fmt: skip
    data_file = tmp_path / "X.onnx.data"
    before = _sha(data_file)
    code, err = _run(capsys, "prune", model, "--ratio", "0.3", "-o", data_file)
    assert code == 2 and "refusing to overwrite the input" in err and _sha(data_file) == before
    code, err = _run(capsys, "prune", model, "--ratio", "0.3", "-o", tmp_path / "X.onnx")
    assert code == 0, err
    assert _sha(data_file) == before  # the new model's weights went elsewhere
    assert onnx.load(str(model)).graph.initializer  # the input still loads

"""`onnxprune groups` and `onnxprune prune` through the real entry point (run_guarded)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnxprune.cli import main
from onnxprune.cli.common import run_guarded
from onnxprune.cost import model_cost
from onnxprune.model import load_model
from tests.corpus.fixtures import corpus_model  # noqa: F401  (pytest fixture)


def invoke(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``onnxprune ARGS``."""
    runner = CliRunner()
    with runner.isolation() as (out, err, _):
        code = run_guarded(main, [str(a) for a in args])
    return code, out.getvalue().decode(), err.getvalue().decode()


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def resnet_b(corpus_model):  # noqa: F811
    return corpus_model("resnet_b")


def _outputs(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def test_groups_table(resnet_b):
    code, out, _ = invoke("groups", resnet_b)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["id", "ch", "blocks", "status", "producers", "consumers", "tensors"]
    assert lines[-1] == "6 groups: 5 prunable, 1 frozen"
    frozen = [line for line in lines if "frozen:" in line]
    assert len(frozen) == 1 and "channels reach the graph output" in frozen[0]
    assert sum(" prunable " in line for line in lines[1:-1]) == 5


def test_groups_prunable_only(corpus_model):  # noqa: F811
    code, out, _ = invoke("groups", corpus_model("softmax_channels"), "--prunable")
    assert code == 0
    rows = out.splitlines()[1:-1]
    assert len(rows) == 2 and all("prunable" in row for row in rows)
    assert out.splitlines()[-1] == "4 groups: 2 prunable, 2 frozen"


def test_groups_json(resnet_b):
    code, out, _ = invoke("groups", resnet_b, "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["prunable"], data["frozen"]) == (5, 1)
    sizes = sorted(g["size"] for g in data["groups"] if g["prunable"])
    assert sizes == [8, 8, 16, 16, 16]
    assert all(g["members"] and g["producers"] for g in data["groups"])


def test_prune_ratio_prints_costs_and_keeps_input(resnet_b, tmp_path):
    before = _sha(resnet_b)
    out_path = tmp_path / "pruned.onnx"
    code, out, err = invoke("prune", resnet_b, "--ratio", "0.5", "--round-to", "1", "-o", out_path)
    assert code == 0, err
    assert _sha(resnet_b) == before
    original = model_cost(load_model(resnet_b))
    pruned = model_cost(load_model(out_path))
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["MACs"] == (
        f"{original.macs:,} -> {pruned.macs:,} ({pruned.macs / original.macs:.4f})"
    )
    assert lines["params"].startswith(f"{original.params:,} -> {pruned.params:,}")
    assert lines["groups"] == "5 of 5 prunable groups thinned, 32 channels removed"  # 4+4+8+8+8


def test_prune_flops_json_and_plan_replay(resnet_b, tmp_path):
    first, plan_file = tmp_path / "a.onnx", tmp_path / "plan.json"
    code, out, err = invoke(
        "prune", resnet_b, "--flops", "0.6", "--round-to", "2", "--criterion", "bn",
        "--save-plan", plan_file, "-o", first, "--json",
    )  # fmt: skip
    assert code == 0, err
    record = json.loads(out)
    assert record["macs_ratio"] <= 0.6
    assert record["macs_after"] == model_cost(load_model(first)).macs
    assert record["plan"]["criterion"] == "bn" and record["plan"]["flops_target"] == 0.6
    assert json.loads(plan_file.read_text())["groups"]
    second = tmp_path / "b.onnx"
    code, out, err = invoke("prune", resnet_b, "--plan", plan_file, "-o", second)
    assert code == 0, err
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(_outputs(first, x)[0], _outputs(second, x)[0])


def test_prune_activation_with_data(resnet_b, tmp_path):
    data = tmp_path / "calib.npz"
    x = np.random.default_rng(1).standard_normal((12, 3, 16, 16)).astype(np.float32)
    np.savez(data, x=x)
    out_path = tmp_path / "act.onnx"
    code, out, err = invoke(
        "prune", resnet_b, "--ratio", "0.25", "--round-to", "1", "--criterion", "activation",
        "--data", data, "-o", out_path, "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["channels_removed"] == 2 + 2 + 4 + 4 + 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--ratio", "0.5", "--criterion", "activation"],
            "--criterion activation needs calibration data",
        ),
        (["--flops", "0.01"], "smallest reachable fraction is"),
        (["--ratio", "1.5"], "--ratio 1.5 must be in [0, 1)"),
        ([], "give exactly one of --ratio, --flops or --plan"),
        (["--ratio", "0.5", "--flops", "0.5"], "give exactly one of --ratio, --flops or --plan"),
    ],
)
def test_prune_errors_exit_2_and_write_nothing(resnet_b, tmp_path, args, message):
    out_path = tmp_path / "never.onnx"
    code, out, err = invoke("prune", resnet_b, *args, "-o", out_path)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not out_path.exists()
    assert list(tmp_path.iterdir()) == []


def test_bad_plan_names_group(resnet_b, tmp_path):
    plan_file = tmp_path / "plan.json"
    code, _, err = invoke(
        "prune", resnet_b, "--ratio", "0.5", "--save-plan", plan_file, "-o", tmp_path / "ok.onnx"
    )
    assert code == 0, err
    data = json.loads(plan_file.read_text())
    group = data["groups"][0]
    group["keep"].append(group["channels"] + 3)
    plan_file.write_text(json.dumps(data))
    out_path = tmp_path / "bad.onnx"
    code, _, err = invoke("prune", resnet_b, "--plan", plan_file, "-o", out_path)
    assert code == 2
    assert f"group {group['id']} (tensor '{group['tensors'][0]}'" in err
    assert f"keep index {group['channels'] + 3} out of range" in err
    assert len(err.strip().splitlines()) == 1
    assert not out_path.exists()


def test_model_without_prunable_groups(corpus_model, tmp_path):  # noqa: F811
    code, out, err = invoke(
        "prune", corpus_model("no_prunable"), "--ratio", "0.5", "-o", tmp_path / "same.onnx"
    )
    assert code == 0
    assert "has no prunable channel group" in err
    assert "0 of 0 prunable groups thinned" in out
    code, _, err = invoke(
        "prune", corpus_model("no_prunable"), "--flops", "0.5", "-o", tmp_path / "x.onnx"
    )
    assert code == 2 and "smallest reachable fraction is 1.0000" in err


def test_refuses_to_overwrite_input(resnet_b, tmp_path):
    copy = tmp_path / "model.onnx"
    copy.write_bytes(resnet_b.read_bytes())
    before = _sha(copy)
    code, _, err = invoke("prune", copy, "--ratio", "0.5", "-o", copy)
    assert code == 2
    assert "refusing to overwrite the input model" in err
    assert _sha(copy) == before


def test_prune_activation_applies_the_preprocessing_flags(resnet_b, tmp_path):
    from PIL import Image

    from onnxprune import importance
    from onnxprune.data import Preprocess, load_data
    from onnxprune.deps import analyze

    folder = tmp_path / "images"
    rng = np.random.default_rng(3)
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, size=(20, 20, 3)).astype(np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{i}.png")
    flags = ["--resize", "16x16", "--mean", "0.9,0.1,0.5", "--std", "0.05,0.5,0.1"]
    plan_file = tmp_path / "plan.json"
    code, _, err = invoke(
        "prune", resnet_b, "--ratio", "0.5", "--round-to", "1", "--criterion", "activation",
        "--data", folder, *flags, "--save-plan", plan_file, "-o", tmp_path / "p.onnx",
    )  # fmt: skip
    assert code == 0, err
    analysis = analyze(load_model(resnet_b))
    spec = Preprocess(mean=(0.9, 0.1, 0.5), std=(0.05, 0.5, 0.1), resize=(16, 16))

    def keep(preprocess):
        data = load_data(folder, analysis.model, preprocess)
        plan = importance.plan_from_ratios(analysis, 0.5, "activation", round_to=1, data=data.x)
        return {str(k): v for k, v in plan.keep.items()}

    saved = {str(g["id"]): g["keep"] for g in json.loads(plan_file.read_text())["groups"]}
    assert keep(spec) != keep(None)  # the flags change which channels survive
    assert saved == keep(spec)

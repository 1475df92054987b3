"""Models are validated on load: one line naming the node or tensor, never a later traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli import main
from onnxprune.cli.common import run_guarded
from onnxprune.errors import OnnxPruneError
from onnxprune.model import load_model


def _conv_model(**conv_attrs: object) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    s = numpy_helper.from_array(np.ones(4, np.float32), "s")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv1", **conv_attrs),
        helper.make_node("BatchNormalization", ["c", "s", "s", "s", "s"], ["y"], name="bn1"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c"])],
        [w, s],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _gemm_model(b_shape: tuple[int, int], bias: int, **attrs: object) -> onnx.ModelProto:
    b = numpy_helper.from_array(np.ones(b_shape, np.float32), "b")
    c = numpy_helper.from_array(np.ones(bias, np.float32), "c")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "b", "c"], ["y"], name="fc", **attrs)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c"])],
        [b, c],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _truncated_weight(model: onnx.ModelProto) -> onnx.ModelProto:
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:10]
    return model


def _relabel(model: onnx.ModelProto, data_type: int) -> onnx.ModelProto:
    model.graph.initializer[0].data_type = data_type  # the fuzzer's find: checker accepts it
    return model


def _old_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    model.opset_import[0].version = 1
    return model


def _conv_without_weight(model: onnx.ModelProto) -> onnx.ModelProto:
    del model.graph.node[0].input[1]
    return model


def _bn_vector_lengths(model: onnx.ModelProto) -> onnx.ModelProto:
    model.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "s3"))
    model.graph.node[1].input[2] = "s3"
    return model


CASES: list[tuple[str, Callable[[], onnx.ModelProto], str]] = [
    ("channels", lambda: _conv_model(group=2), r"'conv1' \(Conv\): input has 3 channels but the weight expects 3 x group 2 = 6"),
    ("inner", lambda: _gemm_model((6, 4), 4), r"'fc' \(Gemm\): A's inner size 8 does not match B's 6"),
    ("dtype", lambda: _relabel(_conv_model(), TensorProto.BOOL), r"tensor 'w' holds 432 bytes but its type and dims \[4, 3, 3, 3\] declare 108"),
    ("group", lambda: _conv_model(group=3), r"node 'conv1' \(Conv\): 4 output channels do not split into group = 3"),
    ("group0", lambda: _conv_model(group=0), r"'conv1' \(Conv\): group = 0"),
    ("kernel", lambda: _conv_model(kernel_shape=[5, 5]), r"kernel_shape \[5, 5\] disagrees"),
    ("pads", lambda: _conv_model(pads=[1, 1]), r"'conv1'.*pads \[1, 1\] must be 4 values"),
    ("strides", lambda: _conv_model(strides=[0, 1]), r"strides \[0, 1\] must be 2 values >= 1"),
    ("transB", lambda: _gemm_model((8, 4), 4, transB=2), r"'fc' \(Gemm\): transA = 0, transB = 2"),
    ("bias", lambda: _gemm_model((8, 4), 5), r"'fc' \(Gemm\): bias length 5 fits neither"),
    ("bn", lambda: _bn_vector_lengths(_conv_model()), r"'bn1' \(BatchNormalization\): scale, bias"),
    ("raw", lambda: _truncated_weight(_conv_model()), r"onnx.checker: .*tensor name: w.* too small"),
    ("arity", lambda: _conv_without_weight(_conv_model()), r"onnx.checker: .*input size 1 not in range.*node 'conv1'|onnx.checker: Node\(conv1\)"),
    ("opset", lambda: _old_opset(_conv_model()), r"declares opset 1; onnxprune supports opsets 7 to"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "make", "message"), CASES, ids=[c[0] for c in CASES])
def test_inconsistent_models_are_refused_on_load(tmp_path: Path, name, make, message) -> None:
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(make().SerializeToString())
    before = path.read_bytes()
    with pytest.raises(OnnxPruneError, match=message) as info:
        load_model(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert path.read_bytes() == before


@pytest.mark.parametrize("command", [["flops"], ["groups"], ["prune", "--ratio", "0.3", "-o"]])
def test_every_command_gives_one_line_and_exit_2(tmp_path: Path, capsys, command) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(_conv_model(group=3).SerializeToString())
    args = [command[0], str(path), *command[1:]]
    if args[-1] == "-o":
        args.append(str(tmp_path / "out.onnx"))
    assert run_guarded(main, args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "conv1" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]  # nothing written


def test_external_data_larger_than_its_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save_model(_conv_model(), str(path), save_as_external_data=True, location="m.data",
                    size_threshold=0)  # fmt: skip
    data = tmp_path / "m.data"
    data.write_bytes(data.read_bytes()[:50])
    with pytest.raises(
        OnnxPruneError, match=r"tensor '\w+' declares \d+ bytes .* 'm.data' holds 50"
    ):
        load_model(path)


def test_declaring_more_weights_than_memory_is_refused(tmp_path: Path, monkeypatch) -> None:
    import onnxprune.validate as validate

    monkeypatch.setattr(validate, "available_memory", lambda: 100)
    path = tmp_path / "m.onnx"
    path.write_bytes(_conv_model().SerializeToString())
    with pytest.raises(OnnxPruneError, match=r"declares 0\.0 GiB of weights but only 0\.0 GiB"):
        load_model(path)


def test_a_consistent_model_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.onnx"
    path.write_bytes(_conv_model(pads=[1, 1, 1, 1], strides=[1, 1], group=1).SerializeToString())
    assert len(load_model(path).graph.node) == 2

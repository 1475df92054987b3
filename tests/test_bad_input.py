"""A battery of bad inputs through the CLI (issue 15): every case exits 2 with one line that
names the thing, writes nothing, and leaves every input byte as it was."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.cli import main
from onnxprune.cli.common import run_guarded
from tests.conftest import make_tiny_cnn


def _model(**kwargs: object) -> onnx.ModelProto:
    return make_tiny_cnn(batch=1, **kwargs)


def _write_model(folder: Path, model: onnx.ModelProto, name: str = "m.onnx") -> Path:
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def _edited(edit: Callable[[onnx.ModelProto], None]) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        model = _model()
        edit(model)
        return _write_model(folder, model)

    return make


def _raw(data: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / "m.onnx"
        path.write_bytes(data)
        return path

    return make


def _set_opset(version: int) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        model.opset_import[0].version = version

    return edit


def _group(model: onnx.ModelProto) -> None:
    model.graph.node[2].attribute.append(onnx.helper.make_attribute("group", 3))


def _short(model: onnx.ModelProto) -> None:
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:7]


def _no_inputs(model: onnx.ModelProto) -> None:
    del model.graph.node[0].input[:]


def _dangling(model: onnx.ModelProto) -> None:
    model.graph.node[1].input[0] = "missing_tensor"


def _cycle(model: onnx.ModelProto) -> None:
    model.graph.node[0].input[0] = model.graph.node[1].output[0]


def _bad_utf8(model: onnx.ModelProto) -> None:
    raw = bytearray(model.SerializeToString())
    marker = raw.find(b"relu1")
    raw[marker + 4] = 0xE8
    model.ParseFromString(bytes(raw))


def _two_models(folder: Path) -> Path:
    sub = folder / "two"
    sub.mkdir()
    _write_model(sub, _model(), "a.onnx")
    _write_model(sub, _model(), "b.onnx")
    return sub


def _empty_folder(folder: Path) -> Path:
    (folder / "none").mkdir()
    return folder / "none"


def _external(damage: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / "m.onnx"
        onnx.save_model(_model(), str(path), save_as_external_data=True, location="m.data",
                        size_threshold=0)  # fmt: skip
        data = folder / "m.data"
        if damage == "missing":
            data.unlink()
        elif damage == "truncated":
            data.write_bytes(data.read_bytes()[:100])
        elif damage == "outside":
            model = onnx.load(str(path), load_external_data=False)
            for tensor in model.graph.initializer:
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = "../m.data"
            path.write_bytes(model.SerializeToString())
        return path

    return make


TINY = _model().SerializeToString()
MODEL_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (lambda f: f / "nope.onnx", "does not exist"),
    "empty": (_raw(b""), "holds no graph|not a readable ONNX model"),
    "truncated": (_raw(TINY[: len(TINY) // 3]), "not a readable ONNX model|does not pass"),
    "random": (
        _raw(np.random.default_rng(0).bytes(900)),
        "not a readable ONNX model|holds no graph",
    ),
    "text": (_raw(b"this is not a model\n" * 20), "not a readable ONNX model|holds no graph"),
    "opset1": (_edited(_set_opset(1)), "declares opset 1"),
    "opset99": (_edited(_set_opset(99)), "declares opset 99"),
    "group": (_edited(_group), "conv2"),
    "short_data": (_edited(_short), "conv1.w"),
    "no_inputs": (_edited(_no_inputs), "conv1"),
    "dangling": (_edited(_dangling), "missing_tensor"),
    "cycle": (_edited(_cycle), "does not pass onnx.checker"),
    "utf8": (_edited(_bad_utf8), "not valid UTF-8"),
    "two_models": (_two_models, "holds 2 .onnx files"),
    "fifo": (lambda f: (os.mkfifo(f / "m.onnx"), f / "m.onnx")[1], "not a regular file"),
    "empty_folder": (_empty_folder, "holds 0 .onnx files"),
    "data_missing": (_external("missing"), "m.data"),
    "data_truncated": (_external("truncated"), "m.data"),
    "data_outside": (_external("outside"), "outside the model folder"),
}
COMMANDS = {
    "info": ["info", "{model}"],
    "flops": ["flops", "{model}"],
    "groups": ["groups", "{model}"],
    "prune": ["prune", "{model}", "--ratio", "0.3", "-o", "{out}/pruned.onnx"],
}


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(folder.rglob("*"))
        if not p.is_fifo()
    }


def _check(capsys, folder: Path, args: list[str], expected: str) -> None:
    before = _snapshot(folder)
    code = run_guarded(main, args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert any(part in lines[0] for part in expected.split("|")), lines[0]
    assert _snapshot(folder) == before  # nothing written, every input byte unchanged


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_models(tmp_path: Path, capsys, case: str, command: str) -> None:
    make, expected = MODEL_CASES[case]
    model = make(tmp_path)
    args = [a.format(model=model, out=tmp_path) for a in COMMANDS[command]]
    _check(capsys, tmp_path, args, expected)


def _npz(**arrays: np.ndarray) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / "d.npz"
        np.savez(path, **arrays)
        return path

    return make


def _x(n: int = 8, value: float = 0.0, dtype: type = np.float32) -> np.ndarray:
    return np.full((n, 3, 16, 16), value, dtype)


def _fifo(folder: Path) -> Path:
    path = folder / "d.npz"
    os.mkfifo(path)
    return path


def _file(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return make


def _npz_as_npy(folder: Path) -> Path:
    np.savez(folder / "d.npz", x=_x())
    path = folder / "d.npy"
    (folder / "d.npz").rename(path)
    return path


def _bad_preprocess(folder: Path) -> Path:
    np.save(folder / "d.npy", np.zeros((4, 16, 16, 3), np.uint8))
    (folder / "preprocess.json").write_text(json.dumps({"layout": 5}))
    return folder / "d.npy"


def _broken_image(folder: Path) -> Path:
    images = folder / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return images


def _object_npz(folder: Path) -> Path:
    path = folder / "d.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    return path


DATA_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (lambda f: f / "nope.npz", "does not exist"),
    "fifo": (_fifo, "not a regular file"),
    "no_x": (_npz(images=_x()), "no 'x'"),
    "objects": (_object_npz, "objects|pickle"),
    "nan": (_npz(x=_x(value=np.nan)), "NaN or infinite"),
    "inf": (_npz(x=_x(value=np.inf)), "NaN or infinite"),
    "huge": (_npz(x=_x(value=1e300, dtype=np.float64)), "NaN or infinite"),
    "zero": (_npz(x=_x(n=0)), "no samples|0 samples"),
    "labels_negative": (_npz(x=_x(), y=np.full(8, -1)), "labels from -1"),
    "labels_range": (_npz(x=_x(), y=np.full(8, 10)), "classes 0..9"),
    "labels_huge": (_npz(x=_x(), y=np.full(8, 2**40)), "classes 0..9"),
    "labels_length": (_npz(x=_x(), y=np.zeros(5, np.int64)), "5 labels"),
    "labels_float": (_npz(x=_x(), y=np.zeros(8)), "must be integers"),
    "rank": (_npz(x=np.zeros((8, 16, 16), np.float32)), "rank"),
    "size": (_npz(x=np.zeros((8, 3, 20, 20), np.float32)), "'input'"),
    "npz_as_npy": (_npz_as_npy, "d.npy"),
    "extension": (_file("d.csv", b"1,2,3\n"), "unknown extension"),
    "preprocess": (_bad_preprocess, "layout"),
    "image": (_broken_image, "a.png"),
    "empty_images": (_empty_folder, "none"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data(tmp_path: Path, capsys, case: str) -> None:
    model = _write_model(tmp_path, _model())
    make, expected = DATA_CASES[case]
    data = make(tmp_path)
    _check(capsys, tmp_path, ["eval", str(model), "--data", str(data)], expected)


def _plan(tmp_path: Path, **edit: object) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(
        json.dumps({"format": "onnxprune-plan/1", "groups": [{"id": 0, "keep": [0, 1]}], **edit})
    )
    return path


REQUEST_CASES: dict[str, tuple[Callable[[Path, Path], list[str]], str]] = {
    "flops_zero": (lambda m, f: ["prune", str(m), "--flops", "0", "-o", str(f / "o.onnx")], "--flops"),
    "flops_above_one": (lambda m, f: ["prune", str(m), "--flops", "1.5", "-o", str(f / "o.onnx")], "--flops"),
    "flops_unreachable": (lambda m, f: ["prune", str(m), "--flops", "0.001", "-o", str(f / "o.onnx")], "smallest reachable"),
    "plan_format": (lambda m, f: ["prune", str(m), "--plan", str(_plan(f, format="x")), "-o", str(f / "o.onnx")], "format 'x'"),
    "plan_meta": (lambda m, f: ["prune", str(m), "--plan", str(_plan(f, meta=[1])), "-o", str(f / "o.onnx")], "'meta'"),
    "plan_missing": (lambda m, f: ["prune", str(m), "--plan", str(f / "none.json"), "-o", str(f / "o.onnx")], "none.json"),
    "search_flops": (lambda m, f: ["search", str(m), "--flops", "2", "--data", str(_npz(x=_x())(f)), "-o", str(f / "out")], "--flops"),
    "search_strategy": (lambda m, f: ["search", str(m), "--flops", "0.8", "--data", str(_npz(x=_x())(f)), "--strategy", "nope", "-o", str(f / "out")], "unknown strategy 'nope'"),
    "search_resume": (lambda m, f: ["search", str(m), "--flops", "0.8", "--data", str(_npz(x=_x())(f)), "--resume", "-o", str(f / "out")], "no checkpoint"),
    "search_toml": (lambda m, f: ["search", str(m), "--flops", "0.8", "--data", str(_npz(x=_x())(f)), "--strategy", str(_file("s.toml", b"agent = [")(f)), "-o", str(f / "out")], "s.toml"),
    "gate_runs": (lambda m, f: ["gate", str(m), str(m), "--runs", "2"], "--runs"),
    "recover_same": (lambda m, f: ["recover", str(m), "--reference", str(m), "--data", str(_npz(x=_x())(f)), "-o", str(m)], "refusing to overwrite"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REQUEST_CASES))
def test_bad_requests(tmp_path: Path, capsys, case: str) -> None:
    model = _write_model(tmp_path, _model())
    make, expected = REQUEST_CASES[case]
    args = make(model, tmp_path)
    _check(capsys, tmp_path, args, expected)


def test_the_battery_is_large_enough() -> None:
    total = len(MODEL_CASES) * len(COMMANDS) + len(DATA_CASES) + len(REQUEST_CASES)
    assert total >= 60

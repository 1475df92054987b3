"""Mutations of models and plans for fuzzing the CLI (``tests/test_fuzz.py`` runs a quick
profile, ``benchmarks/fuzz.py`` a long one).

A mutation takes the serialized bytes of a valid model and returns other bytes: byte flips
and truncation, or a structural edit through the onnx API (huge or negative dims, nodes
without inputs or outputs, wrong dtypes, bad ``group``/``transB``/``pads``/``strides``
attributes, an old or absurd opset, an initializer whose data disagrees with its dims).
:func:`run_case` feeds one mutated model through a command in-process and returns what a
user would see; :func:`verdict` says whether that is acceptable: exit 0 (only if
``onnx.checker`` accepts the mutated model), or exit 2 with one line; never an internal
error (exit 3), a traceback or any other exit code.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from onnxprune.cli import main
from onnxprune.cli.common import run_guarded

COMMANDS: dict[str, list[str]] = {
    "flops": ["flops", "{model}", "--input-shape", "input:1x3x16x16"],
    "groups": ["groups", "{model}"],
    "prune": ["prune", "{model}", "--ratio", "0.3", "-o", "{out}"],
}


def _node(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.NodeProto:
    return model.graph.node[int(rng.integers(len(model.graph.node)))]


def _set_attr(node: onnx.NodeProto, name: str, value: object) -> None:
    for attr in list(node.attribute):
        if attr.name == name:
            node.attribute.remove(attr)
    kind = onnx.AttributeProto.INTS if isinstance(value, list) else onnx.AttributeProto.INT
    node.attribute.append(onnx.helper.make_attribute(name, value, attr_type=kind))


def _huge_dim(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    tensor = model.graph.initializer[int(rng.integers(len(model.graph.initializer)))]
    tensor.dims[int(rng.integers(len(tensor.dims)))] = int(rng.choice([2**31, 2**40, -3, 0]))


def _drop_inputs(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    del _node(model, rng).input[:]


def _drop_outputs(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    del _node(model, rng).output[:]


def _wrong_dtype(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    tensor = model.graph.initializer[int(rng.integers(len(model.graph.initializer)))]
    tensor.data_type = int(
        rng.choice([TensorProto.INT64, TensorProto.STRING, TensorProto.BOOL, 99])
    )


def _bad_attribute(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    node = _node(model, rng)
    name = str(rng.choice(["group", "transB", "pads", "strides", "kernel_shape", "axis"]))
    ints = [int(v) for v in rng.integers(-3, 9, int(rng.integers(0, 6)))]
    _set_attr(
        node,
        name,
        ints if name in ("pads", "strides", "kernel_shape") else int(rng.integers(-2, 9)),
    )


def _opset(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    model.opset_import[0].version = int(rng.choice([1, 6, 7, 99]))


def _short_data(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    tensor = model.graph.initializer[int(rng.integers(len(model.graph.initializer)))]
    tensor.raw_data = tensor.raw_data[: int(rng.integers(len(tensor.raw_data)))]


def _rename_input(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    node = _node(model, rng)
    if node.input:
        node.input[int(rng.integers(len(node.input)))] = "does_not_exist"


def _cycle(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    first, last = model.graph.node[0], model.graph.node[-1]
    if first.input and last.output:
        first.input[0] = last.output[0]


STRUCTURAL: dict[str, Callable[[onnx.ModelProto, np.random.Generator], None]] = {
    "huge_dim": _huge_dim,
    "drop_inputs": _drop_inputs,
    "drop_outputs": _drop_outputs,
    "wrong_dtype": _wrong_dtype,
    "bad_attribute": _bad_attribute,
    "opset": _opset,
    "short_data": _short_data,
    "rename_input": _rename_input,
    "cycle": _cycle,
}


def mutate(raw: bytes, kind: str, seed: int) -> bytes:
    """``raw`` mutated by ``kind`` (``flip``, ``truncate`` or a key of :data:`STRUCTURAL`)."""
    rng = np.random.default_rng(seed)
    if kind == "flip":
        data = bytearray(raw)
        for position in rng.integers(0, len(data), int(rng.integers(1, 8))):
            data[position] ^= 1 << int(rng.integers(8))
        return bytes(data)
    if kind == "truncate":
        return raw[: int(rng.integers(0, len(raw)))]
    model = onnx.load_from_string(raw)
    STRUCTURAL[kind](model, rng)
    return model.SerializeToString()


def checker_accepts(raw: bytes) -> bool:
    try:
        onnx.checker.check_model(onnx.load_from_string(raw))
    except Exception:
        return False
    return True


@dataclass
class Case:
    """What one command printed for one mutated model."""

    command: str
    kind: str
    seed: int
    code: int
    stderr: str
    valid: bool

    def verdict(self) -> str | None:
        """``None`` when acceptable, else what is wrong."""
        if self.code == 0:
            return None if self.valid else "exit 0 on a model onnx.checker rejects"
        if self.code != 2:
            return f"exit {self.code}: {self.stderr.strip()[:200]}"
        if "Traceback" in self.stderr or self.stderr.strip().count("\n") > 0:
            return f"not one line: {self.stderr[:200]!r}"
        return None


def run_case(raw: bytes, command: str, kind: str, seed: int, folder: Path) -> Case:
    """Run ``command`` on ``raw`` (a mutated model) in ``folder``; the model file must not
    change and nothing may be written when the command fails."""
    model = folder / f"{command}-{kind}-{seed}.onnx"
    model.write_bytes(raw)
    out = folder / f"out-{command}-{kind}-{seed}.onnx"
    args = [a.format(model=model, out=out) for a in COMMANDS[command]]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = run_guarded(main, args)
    case = Case(command, kind, seed, code, stderr.getvalue(), checker_accepts(raw))
    if model.read_bytes() != raw:
        case.code, case.stderr = -1, "the input model was modified"
    elif code != 0 and out.exists():
        case.code, case.stderr = -1, "a failed command left an output file"
    model.unlink()
    out.unlink(missing_ok=True)
    return case


# Plans and data files, mutated (issue 15): through `prune --plan` and `eval --data`.
_JUNK: list[object] = [None, True, -1, 0, 3.9, 2**40, "123", "x", [], [1, 2], {"a": 1},
                       float("inf"), float("nan"), [[0, 1]], {"keep": [0]}]  # fmt: skip


def mutate_plan(valid: dict, seed: int) -> str:
    """A plan's JSON text with one field replaced by junk, a key dropped or added, or the
    text cut short."""
    import copy
    import json

    rng = np.random.default_rng(seed)
    plan = copy.deepcopy(valid)
    junk = _JUNK[int(rng.integers(len(_JUNK)))]
    choice = int(rng.integers(6))
    group = plan["groups"][int(rng.integers(len(plan["groups"])))] if plan["groups"] else {}
    if choice == 0 and group:
        group[str(rng.choice(["id", "keep", "channels", "tensors"]))] = junk
    elif choice == 1 and group and group.get("keep"):
        group["keep"][int(rng.integers(len(group["keep"])))] = junk
    elif choice == 2:
        plan[str(rng.choice(["format", "model_sha256", "meta", "groups"]))] = junk
    elif choice == 3:
        plan.pop(str(rng.choice(sorted(plan))), None)
    elif choice == 4:
        plan[str(rng.choice(["extra", "group", "Groups"]))] = junk
    text = json.dumps(plan, allow_nan=True)
    if choice == 5:
        text = text[: int(rng.integers(len(text)))]
    return text


def mutate_data(samples: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """``.npz`` arrays with one defect: odd values, dtypes, shapes, labels or names."""
    rng = np.random.default_rng(seed)
    x, y = samples.copy(), labels.copy()
    choice = int(rng.integers(9))
    if choice == 0:
        x.flat[int(rng.integers(x.size))] = float(rng.choice([np.nan, np.inf, -np.inf]))
    elif choice == 1:
        y[int(rng.integers(len(y)))] = int(rng.choice([-1, 10, 2**40]))
    elif choice == 2:
        y = y[: int(rng.integers(len(y)))]
    elif choice == 3:
        x = x[: int(rng.integers(len(x)))]
    elif choice == 4:
        x = x.reshape(len(x), -1)
    elif choice == 5:
        x = x.astype(rng.choice([np.float16, np.float64, np.int8, np.uint8, np.bool_]))
    elif choice == 6:
        x = x[:, :, : int(rng.integers(1, x.shape[2]))]
    elif choice == 7:
        return {"images": x, "y": y}
    else:
        y = y.astype(np.float32) + 0.5
    return {"x": x, "y": y}

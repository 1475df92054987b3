"""Model I/O: load (incl. external data), check, shape inference, info, atomic save.

Contract:
- :func:`load_model` never modifies the file it reads; it returns a ``ModelProto`` with all
  external data loaded into memory and shape inference applied (``strict`` off, so
  partially-inferable graphs still load).
- :func:`save_model` writes to a temporary file in the target folder and renames it, so a
  reader never sees a half-written model; it refuses to overwrite the model it was loaded
  from (``source_path``) or any path given in ``protect``.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, overload

import onnx
from onnx import ModelProto, TensorProto, numpy_helper

from onnxprune.atomic import (
    atomic_path,
    commit_file,
    require_free_space,
    staging_folder,
    write_error,
)
from onnxprune.errors import OnnxPruneError
from onnxprune.validate import check_declared_sizes, one_line, validate_model, validate_shapes

# Models above this size are saved with external data (protobuf's 2 GB limit).
_EXTERNAL_DATA_THRESHOLD = 1_800_000_000
#: Floating-point tensor element types: the initializers that are parameters (weights), as
#: opposed to integer shape constants, indices and quantized values.
FLOAT_TYPES: frozenset[int] = frozenset(
    {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
)


def _resolve_model_file(path: Path) -> Path:
    if not path.exists():
        raise OnnxPruneError(f"model file '{path}' does not exist; check the path")
    if path.is_dir():
        candidates = sorted(p for p in path.iterdir() if p.suffix == ".onnx")
        if len(candidates) != 1:
            raise OnnxPruneError(
                f"folder '{path}' holds {len(candidates)} .onnx files; pass the model file itself"
            )
        return candidates[0]
    if not path.is_file():  # a FIFO or device would block or stream forever
        raise OnnxPruneError(
            f"model path '{path}' is not a regular file (a FIFO, socket or device); pass an "
            ".onnx file or its folder"
        )
    return path


def _check_external_data_paths(model: ModelProto, base_dir: Path) -> None:
    """Refuse external-data locations that leave the model's folder (path traversal)."""
    base = base_dir.resolve()
    tensors: list[TensorProto] = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                tensors.append(attr.t)
    for tensor in tensors:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if location is None:
            raise OnnxPruneError(
                f"tensor '{tensor.name}' is stored externally but names no file; re-export the model"
            )
        target = (base / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(base):
            raise OnnxPruneError(
                f"tensor '{tensor.name}' points to external data '{location}' outside the model "
                f"folder '{base}'; move the data next to the model"
            )
        if not target.exists():
            raise OnnxPruneError(
                f"tensor '{tensor.name}' needs external data file '{location}', which is missing "
                f"from '{base}'; copy it next to the model"
            )


def load_model(path: str | os.PathLike[str], *, infer_shapes: bool = True) -> ModelProto:
    """Load an ONNX model from a file (or a folder holding exactly one ``.onnx`` file).

    External data must live in the model's folder. Raises :class:`OnnxPruneError` with the
    file name for a missing, truncated or non-ONNX file.
    """
    file = _resolve_model_file(Path(path))
    try:
        model = onnx.load(str(file), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ...
        raise OnnxPruneError(
            f"'{file}' is not a readable ONNX model ({type(exc).__name__}); "
            "check that the file is complete and really an .onnx export"
        ) from exc
    if not model.graph.node and not model.graph.output:
        raise OnnxPruneError(
            f"'{file}' parsed but holds no graph; it is probably not an ONNX model or is truncated"
        )
    _check_external_data_paths(model, file.parent)
    check_declared_sizes(model, file.parent, f"model '{file}'")
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(file.parent))
    except Exception as exc:
        raise OnnxPruneError(f"could not read the external data of '{file}': {exc}") from exc
    validate_model(model, f"model '{file}'")
    if infer_shapes:
        model = infer_model_shapes(model)
        validate_shapes(model, tensor_shapes(model), f"model '{file}'")
    return model


def infer_model_shapes(model: ModelProto) -> ModelProto:
    """Run ONNX shape inference with data propagation; on failure keep the model as is."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:
        # Shape inference is an aid: unknown custom domains make it fail, analysis then
        # freezes whatever lacks a shape instead of guessing.
        return model


def check_model(model: ModelProto, *, full: bool = True) -> None:
    """``onnx.checker`` with a readable error."""
    try:
        if model.ByteSize() < _EXTERNAL_DATA_THRESHOLD:
            onnx.checker.check_model(model, full_check=full)
    except Exception as exc:
        raise OnnxPruneError(f"the model does not pass onnx.checker: {one_line(str(exc))}") from exc


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: list[int | str | None]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape}

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass
class ModelInfo:
    """What a person wants to know about a model before pruning it."""

    producer: str
    producer_version: str
    ir_version: int
    opsets: dict[str, int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    num_nodes: int
    num_initializers: int
    params: int
    op_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "producer": self.producer,
            "producer_version": self.producer_version,
            "ir_version": self.ir_version,
            "opsets": self.opsets,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "num_nodes": self.num_nodes,
            "num_initializers": self.num_initializers,
            "params": self.params,
            "op_counts": self.op_counts,
        }

    def __str__(self) -> str:
        lines = [
            f"producer   {self.producer or '?'} {self.producer_version}".rstrip(),
            f"ir/opset   {self.ir_version} / "
            + ", ".join(f"{d or 'ai.onnx'}:{v}" for d, v in sorted(self.opsets.items())),
            f"nodes      {self.num_nodes} ({self.num_initializers} initializers, {self.params:,} params)",
        ]
        lines += [f"input      {t}" for t in self.inputs]
        lines += [f"output     {t}" for t in self.outputs]
        ops = ", ".join(
            f"{op}x{n}" for op, n in sorted(self.op_counts.items(), key=lambda kv: -kv[1])
        )
        lines.append(f"ops        {ops}")
        return "\n".join(lines)


Dims = tuple[int | None, ...]
SymbolicDims = tuple[int | str | None, ...]


@overload
def value_dims(
    value: onnx.ValueInfoProto | onnx.TypeProto, *, symbolic: Literal[False] = False
) -> Dims | None: ...
@overload
def value_dims(
    value: onnx.ValueInfoProto | onnx.TypeProto, *, symbolic: bool
) -> SymbolicDims | None: ...
def value_dims(
    value: onnx.ValueInfoProto | onnx.TypeProto, *, symbolic: bool = False
) -> SymbolicDims | None:
    """Dims of one declared tensor value, in the convention of :func:`tensor_shapes`.

    ``None`` when the rank is unknown (no shape, or not a tensor type); else one entry per
    dim: the ``int`` size of a static dim, ``None`` for an unknown one (a ``dim_param`` or no
    value; with ``symbolic=True`` a named ``dim_param`` is returned as its string instead).
    A negative ``dim_value`` is invalid ONNX that some exporters write for "dynamic": unknown.
    """
    type_proto = value.type if isinstance(value, onnx.ValueInfoProto) else value
    if type_proto.WhichOneof("value") != "tensor_type":
        return None
    tensor_type = type_proto.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value >= 0:
            dims.append(int(dim.dim_value))
        elif symbolic and dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


@overload
def tensor_shapes(
    model: ModelProto, *, symbolic: Literal[False] = False
) -> dict[str, Dims | None]: ...
@overload
def tensor_shapes(model: ModelProto, *, symbolic: bool) -> dict[str, SymbolicDims | None]: ...
def tensor_shapes(
    model: ModelProto, *, symbolic: bool = False
) -> dict[str, SymbolicDims | None] | dict[str, Dims | None]:
    """Shape of every tensor ``model`` declares, by name: the one reader of tensor shapes.

    Convention: ``None`` for an unknown rank, and inside a known rank ``None`` for an unknown
    dim (see :func:`value_dims`; ``symbolic=True`` keeps ``dim_param`` names as strings).
    Sources, later ones winning: graph inputs, ``value_info``, graph outputs, then initializers
    (their stored dims, always static). A known shape is never replaced by an unknown one.
    Run shape inference first (:func:`infer_model_shapes`) to have ``value_info`` filled.
    """
    graph = model.graph
    shapes: dict[str, SymbolicDims | None] = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        dims = value_dims(value, symbolic=symbolic)
        if dims is not None or value.name not in shapes:
            shapes[value.name] = dims
    for init in graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes


def static_shape(dims: SymbolicDims | None) -> tuple[int, ...] | None:
    """``dims`` when the rank and every dim are known integers, else ``None``."""
    if dims is None or any(not isinstance(d, int) for d in dims):
        return None
    return dims  # type: ignore[return-value]


def _value_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    ttype = vi.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type).name if ttype.elem_type else "?"
    return TensorInfo(vi.name, dtype, list(value_dims(vi, symbolic=True) or ()))


def graph_inputs(model: ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: graph inputs that are not initializers (old exporters list both)."""
    init_names = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in init_names]


def model_info(model: ModelProto) -> ModelInfo:
    op_counts: dict[str, int] = {}
    for node in model.graph.node:
        op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
    params = 0
    for init in model.graph.initializer:
        if init.data_type not in FLOAT_TYPES:
            continue
        n = 1
        for d in init.dims:
            n *= d
        params += n
    return ModelInfo(
        producer=model.producer_name,
        producer_version=model.producer_version,
        ir_version=model.ir_version,
        opsets={o.domain: o.version for o in model.opset_import},
        inputs=[_value_info(i) for i in graph_inputs(model)],
        outputs=[_value_info(o) for o in model.graph.output],
        num_nodes=len(model.graph.node),
        num_initializers=len(model.graph.initializer),
        params=params,
        op_counts=op_counts,
    )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def save_model(
    model: ModelProto,
    path: str | os.PathLike[str],
    *,
    protect: list[str | os.PathLike[str]] | tuple = (),
) -> Path:
    """Atomically write ``model`` to ``path`` (temp file in the same folder + rename).

    ``protect`` lists paths that must never be overwritten (the input model): saving onto
    one of them, or onto the external-data file of one of them, raises
    :class:`OnnxPruneError` and writes nothing. A model too large for one protobuf is saved
    with its weights in ``<name>.<token>.data`` beside it (see :func:`_save_external`).
    """
    target = Path(path)
    protected = protected_files(protect)
    for p in protected:
        if _same_file(target, p):
            what = "input model" if p.suffix == ".onnx" else "input model's external data"
            raise OnnxPruneError(
                f"refusing to overwrite the {what} '{p}'; choose another output path with -o"
            )
    if target.exists() and target.is_dir():
        raise OnnxPruneError(
            f"output path '{target}' is a folder; give a file name ending in .onnx"
        )
    require_free_space(target.parent, model.ByteSize(), f"'{target.name}'")
    if model.ByteSize() >= _EXTERNAL_DATA_THRESHOLD:
        _save_external(model, target, protected)
    else:
        with atomic_path(target) as tmp:
            onnx.save_model(model, str(tmp))
        _remove_stale_data(target, keep=None, protected=protected)
    return target


def protected_files(protect: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The protected paths plus the external-data files their models reference."""
    files = [Path(p) for p in protect]
    for path in list(files):
        if path.is_dir():  # a model given as its folder: protect every model file in it
            files += sorted(p for p in path.iterdir() if p.suffix == ".onnx")
    for model_file in list(files):
        if model_file.is_file() and model_file.suffix == ".onnx":
            try:
                header = onnx.load(str(model_file), load_external_data=False)
            except Exception:  # not a readable model: nothing more to protect
                continue
            for tensor in header.graph.initializer:
                for entry in tensor.external_data:
                    if entry.key == "location":
                        files.append(model_file.parent / entry.value)
    return files


def _data_files(target: Path) -> list[Path]:
    """External-data files an earlier :func:`save_model` wrote for ``target``."""
    pattern = re.compile(re.escape(target.name) + r"\.[0-9a-f]{16}\.data")
    if not target.parent.is_dir():
        return []
    return [p for p in target.parent.iterdir() if pattern.fullmatch(p.name)]


def _remove_stale_data(target: Path, keep: Path | None, protected: list[Path]) -> None:
    for stale in _data_files(target):
        if stale != keep and not any(_same_file(stale, p) for p in protected):
            stale.unlink(missing_ok=True)


def _save_external(model: ModelProto, target: Path, protected: list[Path]) -> None:
    """Write a large model and its weights as one crash-safe file set.

    The weights go to a new file ``<name>.<token>.data`` (a fresh name, so it never lands on
    a file this run did not create, e.g. an input's ``<name>.data``), both files are written
    in a private staging folder and renamed in: data first, then the model. At every moment
    the ``.onnx`` on disk references a complete data file (the old or the new one); data
    files of earlier saves to the same path are removed afterwards.
    """
    data_name = f"{target.name}.{secrets.token_hex(8)}.data"
    # onnx's external-data writer moves the weights out of the proto it is given: write a
    # copy, so the caller's model keeps its weights.
    staged_model = ModelProto()
    staged_model.CopyFrom(model)
    with staging_folder(target) as folder:
        onnx.save_model(
            staged_model,
            str(folder / target.name),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
        )
        data_target = target.parent / data_name
        try:
            commit_file(folder / data_name, data_target)
            commit_file(folder / target.name, target)
        except OSError as exc:
            data_target.unlink(missing_ok=True)
            raise write_error(target, exc) from exc
    _remove_stale_data(target, keep=target.parent / data_name, protected=protected)


def initializer_map(model: ModelProto) -> dict[str, TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def constant_value(model: ModelProto, name: str):
    """numpy value of an initializer or a ``Constant`` node output, else ``None``."""
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return None


# -- input shapes ----------------------------------------------------------------------------
#: ``dim_param`` values exporters write for "unknown" (paddle2onnx writes ``?``): each
#: occurrence is its own dim, not one symbol shared by every input.
ANONYMOUS_DIMS = frozenset({"?", "-1", "None", "unk"})
#: Key of a bare ``--input-shape DIMS`` (no ``NAME:``): the model's single input.
SINGLE_INPUT = ""


def parse_input_shapes(specs: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Parse CLI ``NAME:1x3x224x224`` strings into ``{name: (1, 3, 224, 224)}``.

    A bare ``1x3x224x224`` (the trtexec ``--shapes`` convention for a single input) is keyed
    :data:`SINGLE_INPUT`; :func:`fix_input_shapes` resolves it to the model's one input.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition(":")
        try:
            if sep and not name:
                raise ValueError
            shape = tuple(int(d) for d in dims.lower().split("x"))
            if any(d <= 0 for d in shape):
                raise ValueError
        except ValueError:
            raise OnnxPruneError(
                f"input shape '{spec}' is not NAME:DxDx... or DxDx...; "
                "e.g. --input-shape input:1x3x224x224"
            ) from None
        if name in shapes:
            raise OnnxPruneError(f"--input-shape gives input '{name or '(single)'}' twice")
        shapes[name] = shape
    return shapes


def named_input_shapes(
    model: ModelProto, shapes: Mapping[str, Sequence[int]], source: str
) -> dict[str, tuple[int, ...]]:
    """``shapes`` keyed by real input names (a bare shape resolved), unknown names refused."""
    names = [i.name for i in graph_inputs(model)]
    named = {name: tuple(int(d) for d in dims) for name, dims in shapes.items()}
    if SINGLE_INPUT in named:
        if len(names) != 1:
            raise OnnxPruneError(
                f"{source} gives a shape without an input name but the model has "
                f"{len(names)} inputs ({', '.join(names)}); write NAME:DIMS for each"
            )
        named[names[0]] = named.pop(SINGLE_INPUT)
    unknown = sorted(set(named) - set(names))
    if unknown:
        raise OnnxPruneError(
            f"{source} names '{unknown[0]}', which is not a model input; inputs are: "
            + ", ".join(names)
        )
    return named


def _bind_symbols(
    model: ModelProto, named: Mapping[str, tuple[int, ...]], source: str, keep_batch: bool
) -> dict[str, int]:
    """Symbol (``dim_param``) -> value from the given shapes; checks ranks and fixed dims."""
    bound: dict[str, int] = {}
    where: dict[str, str] = {}
    for inp in graph_inputs(model):
        if inp.name not in named:
            continue
        wanted = named[inp.name]
        dims = value_dims(inp, symbolic=True)
        if dims is None:
            continue  # rank unknown: the given shape becomes the declared one
        if len(wanted) != len(dims):
            raise OnnxPruneError(
                f"{source} for input '{inp.name}' has rank {len(wanted)} "
                f"({'x'.join(map(str, wanted))}) but the input has rank {len(dims)}"
            )
        for axis, (dim, value) in enumerate(zip(dims, wanted, strict=True)):
            if isinstance(dim, int) and dim != value:
                raise OnnxPruneError(
                    f"{source} gives input '{inp.name}' size {value} in dimension {axis}, but "
                    f"the model fixes it to {dim}; use {dim} there"
                )
            if not isinstance(dim, str) or dim in ANONYMOUS_DIMS or (keep_batch and axis == 0):
                continue
            if dim in bound and bound[dim] != value:
                raise OnnxPruneError(
                    f"{source} gives symbolic dimension '{dim}' two sizes: {bound[dim]} "
                    f"({where[dim]}) and {value} (input '{inp.name}'); they must agree"
                )
            bound[dim], where[dim] = value, f"input '{inp.name}'"
    return bound


def fix_input_shapes(
    model: ModelProto,
    shapes: Mapping[str, Sequence[int]] | None,
    *,
    keep_batch: bool = True,
    source: str = "--input-shape",
) -> ModelProto:
    """A copy of ``model`` whose inputs have the given static dims, shapes re-inferred.

    ``shapes`` maps input names (or :data:`SINGLE_INPUT`) to full shapes. Symbolic dims
    (``dim_param``) resolve consistently: fixing ``H`` in one input fixes ``H`` in every input
    and output that names it. With ``keep_batch`` a dynamic first dimension stays dynamic
    (sessions then still run any batch; the cost prices batch 1). ``source`` names where
    the shapes came from in errors (an unknown input name, a rank mismatch, a size that
    contradicts a fixed dim, one symbol given two sizes). ``None`` or ``{}`` returns
    ``model`` itself.
    """
    if not shapes:
        return model
    named = named_input_shapes(model, shapes, source)
    bound = _bind_symbols(model, named, source, keep_batch)
    fixed = ModelProto()
    fixed.CopyFrom(model)
    inputs = {i.name for i in graph_inputs(fixed)}
    for value in (*fixed.graph.input, *fixed.graph.output):
        if not value.type.HasField("tensor_type"):
            continue
        shape = value.type.tensor_type.shape
        if value.name in inputs and value.name in named and not shape.dim:
            shape.dim.extend(onnx.TensorShapeProto.Dimension() for _ in named[value.name])
        wanted = named.get(value.name) if value.name in inputs else None
        for axis, dim in enumerate(shape.dim):
            if dim.HasField("dim_value") and dim.dim_value >= 0:
                continue
            if keep_batch and axis == 0 and value.name in inputs:
                continue
            size = wanted[axis] if wanted is not None else bound.get(dim.dim_param or "?")
            if size is not None:
                dim.Clear()
                dim.dim_value = int(size)
    del fixed.graph.value_info[:]
    return infer_model_shapes(fixed)


def data_input_shapes(
    model: ModelProto, samples: Sequence[int] | Mapping[str, Sequence[int]]
) -> dict[str, tuple[int, ...]]:
    """``{input: (1, *sample dims)}``: the shape of one sample of the data after
    preprocessing, batch 1, for every model input the data holds.

    ``samples`` is ``{input name: sample dims}`` (``Dataset.sample_shapes()``), or one
    sample's dims for a single-input model (then ``{}`` for a multi-input one). Names that
    are not model inputs are left out (loading the data already refused them).
    """
    names = [i.name for i in graph_inputs(model)]
    if not isinstance(samples, Mapping):
        return {names[0]: (1, *(int(d) for d in samples))} if len(names) == 1 else {}
    return {name: (1, *(int(d) for d in samples[name])) for name in names if name in samples}


def input_shapes_from(
    model: ModelProto,
    given: Mapping[str, Sequence[int]] | None,
    samples: Mapping[str, Sequence[int]] | None,
    data_source: str = "the data",
) -> tuple[dict[str, tuple[int, ...]], str]:
    """``(shapes, source)``: the size every input is fixed to before analysis and pricing.

    ``given`` (``--input-shape``, names or :data:`SINGLE_INPUT`) wins per input; every other
    input takes one sample of the data (``samples``, ``{input: sample dims}``, batch 1).
    ``source`` says where they came from for the errors of :func:`fix_input_shapes` (which
    also resolves symbolic dims shared across inputs, and refuses a symbol given two sizes).
    """
    named = named_input_shapes(model, given, "--input-shape") if given else {}
    from_data = {
        name: dims
        for name, dims in data_input_shapes(model, samples or {}).items()
        if name not in named
    }
    if not from_data:
        return named, "--input-shape"
    if not named:
        return from_data, data_source
    return {**from_data, **named}, f"--input-shape and {data_source}"


def format_shapes(shapes: Mapping[str, Sequence[int | str | None]]) -> str:
    """``x[1x3x640x640], y[1x8]`` (``?`` for an unknown dim)."""
    return ", ".join(
        f"{name}[{'x'.join('?' if d is None else str(d) for d in dims)}]"
        for name, dims in shapes.items()
    )


def input_shapes(model: ModelProto) -> dict[str, SymbolicDims]:
    """Declared shape of every real input (symbolic names kept)."""
    return {i.name: value_dims(i, symbolic=True) or () for i in graph_inputs(model)}


def fixed_input_note(before: ModelProto, after: ModelProto) -> str | None:
    """A sentence saying which inputs :func:`fix_input_shapes` made static, or ``None``."""
    old, new = input_shapes(before), input_shapes(after)
    changed = {
        name: dims
        for name, dims in new.items()
        if any(
            not isinstance(a, int) and isinstance(b, int)
            for a, b in zip(old.get(name, ()), dims, strict=False)
        )
        or (not old.get(name) and dims)
    }
    if not changed:
        return None
    shown = {
        name: [d if isinstance(d, int) else None for d in dims] for name, dims in changed.items()
    }
    return (
        f"input size fixed to {format_shapes(shown)}: shape computations are folded for this "
        "size, so a model written from it runs at this input size only"
    )

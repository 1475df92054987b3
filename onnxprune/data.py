"""Calibration / evaluation data: ``.npz``, ``.npy`` and image folders, plus preprocessing.

Sources (:func:`load_data`):

- ``.npz`` with array ``x`` and optional ``y`` (integer labels); or, for any model (and the
  only way for a multi-input one), one array per model input name (``np.savez(path,
  x=images, im_info=sizes)``) plus optional ``y``. Every array holds ``[N, ...]`` with the same
  ``N``. A floating-point array whose shape already fits its model input is used as is. A
  ``uint8`` array for a 4-D float input holds images ``[N, H, W, C]`` (or ``[N, H, W]``) and
  goes through the :class:`Preprocess` spec. An integer model input (token ids, raw bytes)
  takes integer arrays unchanged (cast to the input's type).
  Any other array but ``y`` is an error: a name the model does not have is a typo.
- ``.npy``: one array, treated like ``x`` of an ``.npz`` without labels.
- A folder of images read with Pillow: class sub-folders give labels in sorted-name order
  (``cat/ dog/`` -> 0, 1); a flat folder is unlabelled (then evaluation measures fidelity
  to a reference model instead of accuracy). Images of any size and mode (RGB, RGBA, L, P,
  16-bit PNG) are read as the model's channels: L for a 1-channel input, RGBA for 4, else
  RGB (alpha dropped; 16-bit values scaled to 8 bits, not clipped).

Preprocessing (:class:`Preprocess`), applied to uint8 images in this order:
channel conversion (RGB/RGBA arrays to grayscale with Pillow's ITU-R 601-2 weights for a
1-channel input, grayscale replicated to RGB for a 3-channel one, RGBA to RGB; any other
mismatch is an error), resize to ``resize`` (default: the model's input H, W when both are
fixed), multiply by ``scale``, subtract ``mean`` and divide by ``std`` per channel, and lay
out as ``layout`` (NCHW or NHWC; default: inferred from the model input shape when
unambiguous, i.e. exactly one of dims 1 and 3 is 1, 3 or 4: tf2onnx exports are NHWC).
With a dynamic H or W and no ``resize``, images are used at their own size, which must then
be the same for all (else an error asks for ``--resize HxW``). ``Dataset.notes`` says what
was resized or converted, from which sizes to which.

``preprocess.json`` next to the data (in the same folder as the ``.npz``/``.npy`` file, or
inside the image folder) is read when no spec is passed. Keys, all optional::

    {"scale": 0.00392156862745098,          # multiply uint8 pixels by this (default 1/255)
     "mean": [0.485, 0.456, 0.406],         # per-channel mean after scaling (default none)
     "std": [0.229, 0.224, 0.225],          # per-channel std after scaling (default none)
     "layout": "NCHW",                       # "NCHW" | "NHWC" | null (infer from the model)
     "resize": null}                         # [H, W] | null (model's H, W when static)

Unknown keys are an error (a typo must not silently change the preprocessing).

Feeding a model: :meth:`Dataset.batches` is the one way data reaches a session (prediction,
evaluation, the ``activation`` criterion): every input by name, in chunks, cast to the input's
type, padded to a fixed batch; :meth:`Dataset.check_inputs` first refuses data that does not
fit the model's inputs (a missing or extra array, a wrong rank or fixed dim, a dtype that
cannot be cast), naming the input. :meth:`Dataset.sample_shapes` gives every input's size.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import onnx

from onnxprune.errors import DataError
from onnxprune.model import graph_inputs, load_model, value_dims
from onnxprune.validate import available_memory

__all__ = [
    "PREPROCESS_FILE",
    "Dataset",
    "InputSpec",
    "Preprocess",
    "as_dataset",
    "fixed_batch",
    "holds_raw_images",
    "input_spec",
    "input_specs",
    "load_data",
    "preprocess_from_flags",
    "raw_images_note",
]

PREPROCESS_FILE = "preprocess.json"
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
_LAYOUTS = ("NCHW", "NHWC")
_CHANNEL_SIZES = (1, 3, 4)
_INTEGER_TYPES = frozenset(
    {
        onnx.TensorProto.INT8,
        onnx.TensorProto.INT16,
        onnx.TensorProto.INT32,
        onnx.TensorProto.INT64,
        onnx.TensorProto.UINT8,
        onnx.TensorProto.UINT16,
        onnx.TensorProto.UINT32,
        onnx.TensorProto.UINT64,
    }
)
# Pillow modes of 16-bit (and 32-bit integer) grayscale images, e.g. 16-bit PNGs
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


_MAX_SIDE = 16384  # no model input is larger; a bigger --resize is a typo or an attack


@dataclass
class Preprocess:
    """How uint8 images become model input (see the module docstring for the order)."""

    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str | None = None
    resize: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.scale, int | float) or isinstance(self.scale, bool):
            raise DataError(f"scale must be a number, got {self.scale!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and (
                not isinstance(values, list | tuple)
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
            ):
                raise DataError(f"{name} must be a list of numbers, got {values!r}")
        if self.layout is not None:
            if not isinstance(self.layout, str):
                raise DataError(f'layout must be "NCHW" or "NHWC", got {self.layout!r}')
            self.layout = self.layout.upper()
            if self.layout not in _LAYOUTS:
                raise DataError(f"layout '{self.layout}' is not NCHW or NHWC")
        if self.mean is not None:
            self.mean = tuple(float(v) for v in self.mean)
        if self.std is not None:
            self.std = tuple(float(v) for v in self.std)
            if any(v == 0 for v in self.std):
                raise DataError("std contains 0; every per-channel std must be non-zero")
        if self.resize is not None:
            if (
                not isinstance(self.resize, list | tuple)
                or len(self.resize) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in self.resize)
                or not all(0 < v <= _MAX_SIDE for v in self.resize)
            ):
                raise DataError(
                    f"resize must be [H, W] with sizes 1..{_MAX_SIDE}, got {self.resize!r}"
                )
            self.resize = (int(self.resize[0]), int(self.resize[1]))

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> Preprocess:
        """Read a ``preprocess.json`` (keys in the module docstring)."""
        path = Path(path)
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read preprocessing spec '{path}': {exc}") from exc
        if not isinstance(spec, dict):
            raise DataError(
                f"'{path}' must hold a JSON object with keys scale/mean/std/layout/resize"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise DataError(
                f"'{path}' has unknown key '{unknown[0]}'; allowed keys: {', '.join(sorted(known))}"
            )
        try:
            return cls(**{k: v for k, v in spec.items() if v is not None or k != "scale"})
        except (TypeError, ValueError, DataError) as exc:
            raise DataError(f"'{path}': {exc}") from exc

    def to_dict(self) -> dict:
        return {
            "scale": self.scale,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "layout": self.layout,
            "resize": list(self.resize) if self.resize is not None else None,
        }

    def __str__(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.to_dict().items())


@dataclass
class Dataset:
    """Model-ready samples with optional labels ``y: int64 [N]``.

    ``x: [N, ...]`` is the model's input for a single-input model, the first input's array for
    a multi-input one. ``inputs`` maps every model input name to its array (all ``[N, ...]``,
    in the model's input order); it is ``None`` for a dataset built from one unnamed array
    (``Dataset(x, y, source)``), which :meth:`feeds` gives to the model's only input.
    ``notes`` are one-line remarks on what loading did (resizing, channel conversion).
    """

    x: np.ndarray
    y: np.ndarray | None
    source: str
    classes: list[str] | None = field(default=None)
    inputs: dict[str, np.ndarray] | None = field(default=None)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.inputs is not None:
            if not self.inputs:
                raise DataError(f"{self.source}: a dataset needs at least one input array")
            first = next(iter(self.inputs.values()))
            if self.x is not first:
                raise ValueError("Dataset.x must be the first array of Dataset.inputs")
            counts = {name: len(array) for name, array in self.inputs.items()}
            if len(set(counts.values())) > 1:
                listed = ", ".join(f"'{name}' {n}" for name, n in counts.items())
                raise DataError(
                    f"data '{self.source}' has different sample counts per input ({listed}); "
                    "every input array needs the same first dimension N"
                )
        if self.y is not None and len(self.y) != len(self.x):
            raise DataError(f"{self.source}: {len(self.x)} samples but {len(self.y)} labels")

    @classmethod
    def from_inputs(
        cls,
        inputs: dict[str, np.ndarray],
        y: np.ndarray | None,
        source: str,
        classes: list[str] | None = None,
        notes: Sequence[str] = (),
    ) -> Dataset:
        """A dataset of named input arrays; ``x`` is the first of them."""
        if not inputs:
            raise DataError(f"{source}: a dataset needs at least one input array")
        return cls(next(iter(inputs.values())), y, source, classes, dict(inputs), list(notes))

    def __len__(self) -> int:
        return len(self.x)

    @property
    def labelled(self) -> bool:
        return self.y is not None

    @property
    def input_names(self) -> tuple[str, ...]:
        """The model input names this data feeds; ``()`` for one unnamed array."""
        return tuple(self.inputs) if self.inputs is not None else ()

    def feeds(
        self, start: int = 0, stop: int | None = None, names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Session feeds for samples ``[start, stop)``: ``{input name: array [stop-start, ...]}``.

        ``names`` are the session's input names: required for an unnamed dataset (its one
        array goes to ``names[0]``), and for a named one every name must have an array.
        """
        if self.inputs is None:
            if not names or len(names) != 1:
                raise DataError(
                    f"data '{self.source}' holds one unnamed array but the model has inputs "
                    f"{', '.join(names or ()) or '(none given)'}; save one array per input name "
                    "in an .npz"
                )
            return {names[0]: self.x[start:stop]}
        wanted = list(names) if names is not None else list(self.inputs)
        missing = [name for name in wanted if name not in self.inputs]
        if missing:
            raise DataError(
                f"data '{self.source}' has no array for model input '{missing[0]}' (it has "
                f"{', '.join(self.inputs)}); save one array per input name in an .npz"
            )
        return {name: self.inputs[name][start:stop] for name in wanted}

    def rows(self, start: int = 0, stop: int | None = None) -> Dataset:
        """Samples ``[start, stop)`` of every input and the labels, as views (no copy)."""
        y = None if self.y is None else self.y[start:stop]
        if self.inputs is not None:
            inputs = {name: array[start:stop] for name, array in self.inputs.items()}
            return Dataset.from_inputs(inputs, y, self.source, self.classes, self.notes)
        return Dataset(self.x[start:stop], y, self.source, self.classes, notes=list(self.notes))

    def sample_shapes(self, names: Sequence[str] | None = None) -> dict[str, tuple[int, ...]]:
        """``{input name: shape of one sample}`` of every array :meth:`feeds` gives ``names``
        (``[N, 3, 32, 32]`` -> ``(3, 32, 32)``); the same errors as :meth:`feeds`."""
        return {name: tuple(a.shape[1:]) for name, a in self.feeds(0, 0, names).items()}

    def check_inputs(self, specs: Sequence[InputSpec]) -> None:
        """Raise :class:`DataError` (naming the input) unless this data can feed ``specs``:
        an array for every input and none for a name the model lacks, each array's sample
        shape fitting the input's declared rank and fixed dims, and a dtype that casts to
        the input's type without losing meaning (floats never feed an integer input)."""
        names = [spec.name for spec in specs]
        extra = [name for name in self.input_names if name not in names]
        if extra:
            raise DataError(
                f"data '{self.source}' has an array '{extra[0]}' but the model has no input of "
                f"that name (its inputs: {', '.join(names) or 'none'}); rename the array to a "
                "model input name or remove it"
            )
        feeds = self.feeds(0, 0, names)
        for spec in specs:
            array = feeds[spec.name]
            if not _castable(array.dtype, spec):
                raise DataError(
                    f"data '{self.source}' has {array.dtype} values for model input "
                    f"'{spec.name}', which takes {_type_name(spec)}; save that array as "
                    f"{_type_name(spec)}"
                )
            if spec.shape:  # an input of unknown rank takes any array
                _check_fits(array, spec, self.source)

    def batches(
        self, specs: Sequence[InputSpec], size: int
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """``(samples in the chunk, session feeds)`` for consecutive chunks of ``size``
        samples, every input cast to its type, after :meth:`check_inputs`.

        A model with a fixed batch ``B`` (:func:`fixed_batch`) gets chunks of exactly ``B``
        samples whatever ``size`` is: the last chunk is zero-padded to ``B`` and its first
        count says how many rows are real.
        """
        self.check_inputs(specs)
        fixed = fixed_batch(specs)
        step = fixed or max(1, size)
        names = [spec.name for spec in specs]
        dtypes = {spec.name: _feed_dtype(spec) for spec in specs}
        for start in range(0, len(self), step):
            feeds = self.feeds(start, start + step, names)
            real = min(step, len(self) - start)
            for name, chunk in feeds.items():
                dtype = dtypes[name]
                if dtype is not None and chunk.dtype != dtype:
                    chunk = chunk.astype(dtype)
                if fixed and real < fixed:
                    pad = np.zeros((fixed - real, *chunk.shape[1:]), dtype=chunk.dtype)
                    chunk = np.concatenate([chunk, pad])
                feeds[name] = chunk
            yield real, feeds

    def subset(self, idx: Sequence[int] | np.ndarray) -> Dataset:
        """The samples at ``idx`` (any integer index array) of every input, same source,
        classes and notes."""
        idx = np.asarray(idx, dtype=np.int64)
        y = None if self.y is None else self.y[idx]
        if self.inputs is not None:
            inputs = {name: array[idx] for name, array in self.inputs.items()}
            return Dataset.from_inputs(inputs, y, self.source, self.classes, self.notes)
        return Dataset(self.x[idx], y, self.source, self.classes, notes=list(self.notes))

    def sample(self, count: int, seed: int = 0) -> Dataset:
        """At most ``count`` samples, a seeded random choice kept in the original order (many
        data sets are sorted by class, so the first rows would be one class)."""
        if len(self) <= count:
            return self
        order = np.random.default_rng(seed).permutation(len(self))[:count]
        return self.subset(np.sort(order))

    def split(self, *sizes: int | float, seed: int = 0) -> tuple[Dataset, ...]:
        """Disjoint random subsets of the given sizes, after a seeded shuffle.

        A size is a count (int) or a fraction of the whole (float in (0, 1]). Shuffling first
        matters: many datasets (the bundled CIFAR arrays) are sorted by class.
        """
        n = len(self)
        counts = []
        for size in sizes:
            count = int(round(size * n)) if isinstance(size, float) else int(size)
            if count < 0 or (isinstance(size, float) and not 0 < size <= 1):
                raise DataError(f"split size {size} must be a count >= 0 or a fraction in (0, 1]")
            counts.append(count)
        if sum(counts) > n:
            raise DataError(
                f"{self.source}: splits of {counts} need {sum(counts)} samples but only {n} exist"
            )
        order = np.random.default_rng(seed).permutation(n)
        parts, start = [], 0
        for count in counts:
            parts.append(self.subset(order[start : start + count]))
            start += count
        return tuple(parts)

    def to_dict(self) -> dict:
        record = {
            "source": self.source,
            "n": len(self),
            "shape": list(self.x.shape[1:]),
            "labelled": self.labelled,
            "classes": self.classes,
        }
        if self.inputs is not None:
            record["inputs"] = {name: list(a.shape[1:]) for name, a in self.inputs.items()}
        if self.notes:
            record["notes"] = list(self.notes)
        return record

    def __str__(self) -> str:
        if self.y is None:
            labels = "unlabelled"
        else:
            n_classes = len(self.classes) if self.classes else len(np.unique(self.y))
            labels = f"labelled, {n_classes} classes"
        if self.inputs is not None and len(self.inputs) > 1:
            shapes = ", ".join(f"{name} {list(a.shape[1:])}" for name, a in self.inputs.items())
            return f"{len(self)} samples of inputs {shapes} from {self.source} ({labels})"
        return f"{len(self)} samples of {list(self.x.shape[1:])} from {self.source} ({labels})"


def as_dataset(data: Dataset | np.ndarray, source: str = "the input array") -> Dataset:
    """``data`` itself, or a bare ``[N, ...]`` array as one unnamed input (what the
    functions that take "a Dataset or an array" accept; :meth:`Dataset.feeds` gives it to a
    single-input model's only input)."""
    if isinstance(data, Dataset):
        return data
    return Dataset(np.asarray(data), None, source)


# --------------------------------------------------------------------------------------------
# model input


@dataclass
class InputSpec:
    """One model input: name, shape (``None`` for dynamic dims), layout and element type."""

    name: str
    shape: list[int | None]
    layout: str | None
    elem_type: int = onnx.TensorProto.FLOAT

    @property
    def spatial(self) -> tuple[int, int] | None:
        """``(H, W)`` when both are fixed, else ``None``."""
        h, w = self.spatial_dims
        return (h, w) if h is not None and w is not None else None

    @property
    def spatial_dims(self) -> tuple[int | None, int | None]:
        """``(H, W)`` of a 4-D image input with a known layout, ``None`` where dynamic."""
        if len(self.shape) != 4 or self.layout is None:
            return (None, None)
        if self.layout == "NCHW":
            return (self.shape[2], self.shape[3])
        return (self.shape[1], self.shape[2])

    @property
    def channels(self) -> int | None:
        if len(self.shape) != 4 or self.layout is None:
            return None
        return self.shape[1] if self.layout == "NCHW" else self.shape[3]

    @property
    def integer(self) -> bool:
        """An integer input (token ids, raw bytes): fed as integers, never preprocessed."""
        return self.elem_type in _INTEGER_TYPES

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self.elem_type))


def _spec_of(value: onnx.ValueInfoProto) -> InputSpec:
    # a 0-sized dim cannot be fed either: unknown, like the dims model.value_dims leaves open
    shape: list[int | None] = [d or None for d in value_dims(value) or ()]
    elem_type = value.type.tensor_type.elem_type or onnx.TensorProto.FLOAT
    return InputSpec(value.name, shape, _infer_layout(shape), elem_type)


def _infer_layout(shape: Sequence[int | None]) -> str | None:
    """NCHW or NHWC when exactly one of dims 1 and 3 is a channel count (1, 3 or 4)."""
    if len(shape) != 4:
        return None
    c_first, c_last = shape[1] in _CHANNEL_SIZES, shape[3] in _CHANNEL_SIZES
    if c_first and not c_last:
        return "NCHW"
    if c_last and not c_first:
        return "NHWC"
    return None


def fixed_batch(specs: Sequence[InputSpec]) -> int | None:
    """The fixed first dimension ``B > 0`` of the first input that declares one (a model
    exported for batch 1), else ``None`` (any batch runs)."""
    for spec in specs:
        if spec.shape and spec.shape[0] is not None and spec.shape[0] > 0:
            return spec.shape[0]
    return None


_FLOAT_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.BFLOAT16,
    }
)


def _feed_dtype(spec: InputSpec) -> np.dtype | None:
    """The numpy type fed to ``spec``; ``None`` for a type numpy has no match for."""
    fed = (_FLOAT_TYPES - {onnx.TensorProto.BFLOAT16}) | _INTEGER_TYPES | {onnx.TensorProto.BOOL}
    return spec.dtype if spec.elem_type in fed else None


def _type_name(spec: InputSpec) -> str:
    if spec.integer:
        return f"{spec.dtype} integers"
    if spec.elem_type == onnx.TensorProto.BOOL:
        return "booleans"
    return f"{onnx.TensorProto.DataType.Name(spec.elem_type).lower()} numbers"


def _castable(dtype: np.dtype, spec: InputSpec) -> bool:
    """Whether ``dtype`` values mean the same after a cast to ``spec``'s type: integers and
    booleans feed any numeric input, floats only a float input, booleans a bool input."""
    if spec.elem_type in _FLOAT_TYPES:
        return dtype.kind in "fiub"
    if spec.integer:
        return dtype.kind in "iub"
    if spec.elem_type == onnx.TensorProto.BOOL:
        return dtype.kind == "b"
    return True  # strings and other types: onnxruntime says what it wants


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """Name, shape, inferred layout and element type of every model input, in order."""
    return [_spec_of(value) for value in graph_inputs(model)]


def input_spec(model: onnx.ModelProto) -> InputSpec:
    """Name, shape and inferred layout of the model's only input."""
    specs = input_specs(model)
    if len(specs) != 1:
        raise DataError(
            f"the model has {len(specs)} inputs ({', '.join(s.name for s in specs)}); "
            "pass an .npz with one array per input name"
        )
    return specs[0]


def _fmt(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _check_fits(x: np.ndarray, spec: InputSpec, source: str) -> None:
    expected = spec.shape[1:]
    got = list(x.shape[1:])
    if len(got) != len(expected) or any(
        e is not None and e != g for e, g in zip(expected, got, strict=False)
    ):
        raise DataError(
            f"data '{source}' has samples of shape {_fmt(got)} but model input '{spec.name}' "
            f"expects {_fmt(spec.shape)}; fix the data or the preprocessing (--resize/--layout)"
        )


# --------------------------------------------------------------------------------------------
# preprocessing


def _resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    h, w = size
    out = np.empty((len(images), h, w, images.shape[3]), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
        resized = np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR))
        out[i] = resized.reshape(h, w, -1)
    return out


def _luminance(images: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[..., 3]`` -> L ``[..., 1]`` with Pillow's ``convert("L")`` arithmetic
    (ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B in 16-bit fixed point, rounded), so an
    array and an image folder of the same pixels give the same input."""
    rgb = images.astype(np.uint32)
    weighted = rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000
    return (weighted >> 16).astype(np.uint8)[..., None]


def _match_channels(
    images: np.ndarray, spec: InputSpec, source: str, notes: list[str]
) -> np.ndarray:
    """Convert ``[N, H, W, C]`` uint8 images to the model's channel count: RGB to grayscale
    for a 1-channel input, grayscale to RGB (replicated) for a 3-channel one, RGBA to RGB by
    dropping alpha. Any other mismatch is an error naming both counts."""
    have, want = images.shape[3], spec.channels
    if want is None or have == want:
        return images
    if want == 1 and have in (3, 4):
        converted = _luminance(images[..., :3])
    elif want == 3 and have == 1:
        converted = np.repeat(images, 3, axis=3)
    elif want == 3 and have == 4:
        converted = images[..., :3]
    else:
        raise DataError(
            f"data '{source}' holds {have}-channel images but model input '{spec.name}' "
            f"{_fmt(spec.shape)} takes {want} channels; convert the images to {want} channels"
        )
    notes.append(
        f"converted {have}-channel images of '{source}' to {want} channel(s) for model input "
        f"'{spec.name}'"
    )
    return converted


def _target_size(spec: InputSpec, preprocess: Preprocess) -> tuple[tuple[int, int] | None, str]:
    """Where images are resized to and why: ``--resize`` wins, else the model's fixed H, W."""
    if preprocess.resize is not None:
        return preprocess.resize, "--resize"
    return spec.spatial, f"the fixed H x W of model input '{spec.name}'"


def _dynamic_size_error(spec: InputSpec, source: str, sizes: Sequence[tuple[int, int]]) -> str:
    h, w = spec.spatial_dims
    example = f"{h or 'H'}x{w or 'W'}"
    listed = ", ".join(f"{a}x{b}" for a, b in sorted(set(sizes))[:3])
    return (
        f"images in '{source}' have different sizes ({listed}, ...) and model input "
        f"'{spec.name}' {_fmt(spec.shape)} has a dynamic height/width; pass --resize {example} "
        f"(or fix the input with --input-shape {spec.name}:...)"
    )


def _resize_note(sizes: Sequence[tuple[int, int]], target: tuple[int, int], why: str) -> str:
    changed = [s for s in sizes if tuple(s) != tuple(target)]
    distinct = sorted(set(changed))
    listed = ", ".join(f"{h}x{w}" for h, w in distinct[:3]) + (", ..." if len(distinct) > 3 else "")
    return (
        f"resized {len(changed)} of {len(sizes)} images from {listed} to "
        f"{target[0]}x{target[1]} (H x W, {why})"
    )


def preprocess_images(
    images: np.ndarray,
    spec: InputSpec,
    preprocess: Preprocess,
    source: str,
    notes: list[str] | None = None,
) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` images -> float32 model input (channels, resize, scale,
    mean/std, layout). What was converted or resized is appended to ``notes``."""
    notes = notes if notes is not None else []
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise DataError(
            f"data '{source}' holds uint8 array of shape {list(images.shape)}; expected images "
            "[N, H, W, C] or [N, H, W]"
        )
    layout = preprocess.layout or spec.layout
    if layout is None:
        raise DataError(
            f"cannot tell whether model input '{spec.name}' {_fmt(spec.shape)} is NCHW or NHWC; "
            'pass --layout NCHW|NHWC (or "layout" in preprocess.json)'
        )
    if layout != spec.layout:
        spec = dataclasses.replace(spec, layout=layout)
    images = _match_channels(images, spec, source, notes)
    target, why = _target_size(spec, preprocess)
    if target is not None and tuple(images.shape[1:3]) != tuple(target):
        # float32 after scaling: 4 bytes per value, plus the uint8 resize buffer
        _check_memory(
            5 * len(images) * target[0] * target[1] * images.shape[3],
            f"resizing '{source}' to {target[0]}x{target[1]}",
        )
        notes.append(_resize_note([tuple(images.shape[1:3])] * len(images), target, why))
        images = _resize(images, target)
    x = images.astype(np.float32) * np.float32(preprocess.scale)
    channels = x.shape[3]
    for name, values in (("mean", preprocess.mean), ("std", preprocess.std)):
        if values is not None and len(values) not in (1, channels):
            raise DataError(
                f"{name} has {len(values)} values but the images of '{source}' have {channels} channels"
            )
    if preprocess.mean is not None:
        x -= np.asarray(preprocess.mean, dtype=np.float32)
    if preprocess.std is not None:
        x /= np.asarray(preprocess.std, dtype=np.float32)
    if layout == "NCHW":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x


def _find_preprocess(path: Path) -> Preprocess:
    folder = path if path.is_dir() else path.parent
    candidate = folder / PREPROCESS_FILE
    return Preprocess.from_json(candidate) if candidate.exists() else Preprocess()


def _input_array(
    x: np.ndarray, spec: InputSpec, preprocess: Preprocess, source: str, notes: list[str]
) -> np.ndarray:
    """One stored array -> the array fed to ``spec``'s input (checked against its shape)."""
    if spec.integer:
        if not np.issubdtype(x.dtype, np.integer):
            raise DataError(
                f"data '{source}' has {x.dtype} values for model input '{spec.name}', which "
                f"takes {spec.dtype} integers; save that array as integers"
            )
        x = x.astype(spec.dtype, copy=False)
    elif x.dtype == np.uint8 and len(spec.shape) in (0, 4):
        x = preprocess_images(x, spec, preprocess, source, notes)
    elif np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32, copy=False)
    else:
        raise DataError(
            f"data '{source}' has {x.dtype} values for model input '{spec.name}', which cannot "
            "be cast to its type; use float samples shaped like the input, or uint8 images "
            "[N, H, W, C]"
        )
    if spec.shape and x.ndim != len(spec.shape):
        raise DataError(
            f"data '{source}' has a rank-{x.ndim} array {list(x.shape)} for model input "
            f"'{spec.name}', which has rank {len(spec.shape)} {_fmt(spec.shape)}; reshape it "
            "to [N, ...input dims]"
        )
    _check_fits(x, spec, source)
    return x


def _labels(y: np.ndarray, source: str) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels 'y' in '{source}' have dtype {y.dtype}; they must be integers")
    return y.reshape(-1).astype(np.int64)


def _load_image(path: Path, mode: str) -> np.ndarray:
    """One image file as uint8 ``[H, W]`` (mode L) or ``[H, W, C]`` (RGB, RGBA)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings(), Image.open(path) as image:
            # Pillow only warns between 89 and 179 megapixels: a decompression bomb is an error
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            if image.mode in _WIDE_MODES:
                # Pillow's convert("L") clips 16-bit values at 255 instead of scaling them:
                # scale 0..65535 to 0..255 ourselves (rounded, 65535 / 257 = 255).
                wide = np.asarray(image).astype(np.int64)
                gray = np.clip((wide + 128) // 257, 0, 255).astype(np.uint8)
                return np.asarray(Image.fromarray(gray, "L").convert(mode))
            # a palette may carry transparency; going through RGBA keeps Pillow quiet
            opened = image.convert("RGBA") if image.mode == "P" else image
            return np.asarray(opened.convert(mode))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise DataError(
            f"image '{path}' is too large to be a calibration image ({exc}); downscale it"
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(
            f"cannot read image '{path}' ({type(exc).__name__}); remove or replace the file"
        ) from exc


def _folder_items(path: Path) -> tuple[list[tuple[Path, int | None]], list[str] | None]:
    """Image files of a flat folder (unlabelled) or of class sub-folders (labels in sorted
    sub-folder order)."""
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))

    def images_in(folder: Path) -> list[Path]:
        return [
            f
            for f in sorted(folder.iterdir())
            if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
        ]

    if not subdirs:
        return [(f, None) for f in images_in(path)], None
    items: list[tuple[Path, int | None]] = [
        (f, label) for label, folder in enumerate(subdirs) for f in images_in(folder)
    ]
    return items, [d.name for d in subdirs]


def _load_folder(path: Path, spec: InputSpec, preprocess: Preprocess) -> Dataset:
    items, classes = _folder_items(path)
    if not items:
        raise DataError(
            f"image folder '{path}' holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
            "point --data at a folder of images or class sub-folders"
        )
    layout = preprocess.layout or spec.layout
    channels = dataclasses.replace(spec, layout=layout).channels if layout else None
    mode = {1: "L", 4: "RGBA"}.get(channels or 3, "RGB")
    target, why = _target_size(spec, preprocess)
    images, sizes = [], []
    for file, _ in items:
        image = _load_image(file, mode)
        if image.ndim == 2:
            image = image[..., None]
        sizes.append(tuple(image.shape[:2]))
        if target is not None and image.shape[:2] != tuple(target):
            image = _resize(image[None], target)[0]
        images.append(image)
    if target is None and len(set(sizes)) > 1:
        raise DataError(_dynamic_size_error(spec, str(path), sizes))
    notes = [_resize_note(sizes, target, why)] if target and set(sizes) != {target} else []
    x = preprocess_images(np.stack(images), spec, preprocess, str(path), notes)
    _check_fits(x, spec, str(path))
    y = np.array([label for _, label in items], dtype=np.int64) if classes is not None else None
    return Dataset.from_inputs({spec.name: x}, y, str(path), classes, notes)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except Exception as exc:
        raise DataError(f"cannot read '{path}' as .npz ({type(exc).__name__}: {exc})") from exc


def _npz_arrays(
    arrays: dict[str, np.ndarray], specs: list[InputSpec], path: Path
) -> dict[str, np.ndarray]:
    """The stored array for each model input: by input name, or ``x`` for a single-input
    model (the historical convention). Besides them only the labels ``y`` may be stored: an
    array for a name the model does not have is an error (a typo must not be ignored)."""
    names = [spec.name for spec in specs]
    if len(specs) == 1 and names[0] not in arrays:
        if "x" not in arrays:
            raise DataError(
                f"'{path}' has arrays {sorted(arrays)} but no 'x' (nor '{names[0]}', the "
                "model input); save samples as x (and labels as y)"
            )
        chosen = {names[0]: arrays["x"]}
        used = {"x"}
    else:
        missing = [name for name in names if name not in arrays]
        if missing:
            example = ", ".join(f"{name}=..." for name in names)
            raise DataError(
                f"'{path}' has no array for model input '{missing[0]}' (it has {sorted(arrays)});"
                f" save one array per input name, e.g. np.savez('{path.name}', {example})"
            )
        chosen = {name: arrays[name] for name in names}
        used = set(names)
    extra = sorted(set(arrays) - used - {"y"})
    if extra:
        raise DataError(
            f"'{path}' has an array '{extra[0]}' but the model has no input of that name (its "
            f"inputs: {', '.join(names)}); rename the array to a model input name or remove it"
        )
    return chosen


def _load_npz(path: Path, specs: list[InputSpec], preprocess: Preprocess) -> Dataset:
    arrays = _read_npz(path)
    names = {spec.name for spec in specs}
    y = arrays.get("y") if "y" not in names else None
    notes: list[str] = []
    inputs = {
        spec.name: _input_array(array, spec, preprocess, str(path), notes)
        for spec, array in zip(specs, _npz_arrays(arrays, specs, path).values(), strict=True)
    }
    labels = None if y is None else _labels(y, str(path))
    return Dataset.from_inputs(inputs, labels, str(path), notes=notes)


def _with_shapes(
    specs: list[InputSpec], input_shapes: Mapping[str, Sequence[int]]
) -> list[InputSpec]:
    """``specs`` with dynamic dims taken from ``input_shapes``; a given dim that contradicts
    a fixed one, a wrong rank or an unknown input name is an error."""
    by_name = {spec.name: spec for spec in specs}
    unknown = sorted(set(input_shapes) - set(by_name))
    if unknown:
        raise DataError(
            f"--input-shape names '{unknown[0]}', which is not a model input "
            f"({', '.join(by_name)}); use one of those names"
        )
    fixed = []
    for spec in specs:
        dims = input_shapes.get(spec.name)
        if dims is None:
            fixed.append(spec)
            continue
        dims = [int(d) for d in dims]
        clash = len(dims) != len(spec.shape) or any(
            have is not None and have != want
            for have, want in zip(spec.shape[1:], dims[1:], strict=False)
        )
        if clash:
            raise DataError(
                f"--input-shape {spec.name}:{'x'.join(map(str, dims))} does not fit model input "
                f"'{spec.name}' {_fmt(spec.shape)}; give one size per dim and keep the fixed ones"
            )
        # the batch stays as the model declares it: data may hold any number of samples
        shape = [spec.shape[0], *dims[1:]]
        fixed.append(_spec_of_shape(spec, shape))
    return fixed


def _spec_of_shape(spec: InputSpec, shape: list[int | None]) -> InputSpec:
    """``spec`` with another shape, layout re-inferred unless it was already known."""
    layout = spec.layout or _infer_layout(shape)
    return InputSpec(spec.name, shape, layout, spec.elem_type)


def _load_any(
    path: str | os.PathLike[str],
    model: onnx.ModelProto | str | os.PathLike[str],
    preprocess: Preprocess | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> Dataset:
    """:func:`load_data` by format, before the checks every format shares."""
    path = Path(path)
    if not isinstance(model, onnx.ModelProto):
        model = load_model(model, infer_shapes=False)
    specs = _with_shapes(input_specs(model), input_shapes or {})
    if not specs:
        raise DataError("the model has no inputs to feed data to")
    if not path.exists():
        raise DataError(f"data path '{path}' does not exist; check --data")
    if preprocess is None:
        preprocess = _find_preprocess(path)
    suffix = path.suffix.lower()
    if len(specs) > 1 and (path.is_dir() or suffix == ".npy"):
        names = ", ".join(spec.name for spec in specs)
        raise DataError(
            f"the model has {len(specs)} inputs ({names}) but '{path}' holds one kind of sample; "
            "save one array per input name in an .npz"
        )
    if path.is_dir():
        return _load_folder(path, specs[0], preprocess)
    if suffix == ".npz":
        return _load_npz(path, specs, preprocess)
    if suffix == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise DataError(f"cannot read '{path}' as .npy ({type(exc).__name__}: {exc})") from exc
        if not isinstance(x, np.ndarray):  # np.load opens a zip archive whatever its name
            x.close()
            raise DataError(f"'{path}' is an .npz archive, not an .npy array; rename it to .npz")
        notes: list[str] = []
        x = _input_array(x, specs[0], preprocess, str(path), notes)
        return Dataset.from_inputs({specs[0].name: x}, None, str(path), notes=notes)
    raise DataError(
        f"data file '{path}' has unknown extension '{path.suffix}'; use .npz, .npy or a folder of images"
    )


def load_data(
    path: str | os.PathLike[str],
    model: onnx.ModelProto | str | os.PathLike[str],
    preprocess: Preprocess | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> Dataset:
    """Load ``path`` (.npz, .npy or image folder) as model-ready input for ``model``.

    ``preprocess`` defaults to ``preprocess.json`` next to the data, else :class:`Preprocess`
    defaults. ``input_shapes`` (``--input-shape NAME:DIMS``) fixes dynamic input dims, so
    images are resized to its H x W (dim 0, the batch, never limits the sample count). The
    result's ``inputs`` maps every model input name to its array.

    Raises :class:`DataError` naming the file and the model input, before any work, for: a
    missing, empty, unreadable or non-regular (FIFO, device) source; an unknown extension; a
    missing input array; samples that do not fit the model input (both shapes named);
    arrays or a resize that would need more memory than is available; zero samples; NaN or
    Inf values; labels that are not one integer per sample in the model's class range.
    """
    model = model if isinstance(model, onnx.ModelProto) else load_model(model, infer_shapes=False)
    source = Path(path)
    if source.exists() and not (source.is_dir() or source.is_file()):
        raise DataError(
            f"data path '{source}' is not a regular file or a folder (a FIFO, socket or "
            "device); pass a .npz/.npy file or an image folder"
        )
    if source.is_file() and source.suffix.lower() == ".npz":
        _check_npz_size(source)
    dataset = _load_any(source, model, preprocess, input_shapes)
    _validate_samples(dataset, model)
    return dataset


def _check_memory(needed: int, what: str) -> None:
    available = available_memory()
    if available is not None and needed > available:
        raise DataError(
            f"{what} would need {needed / 2**30:.1f} GiB but only {available / 2**30:.1f} GiB "
            "of memory is available; use fewer or smaller samples"
        )


def _check_npz_size(path: Path) -> None:
    """The arrays' declared sizes (read from each member's .npy header, not its data) must
    fit in memory: a small compressed file can expand to gigabytes."""
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as handle:
                    version = np.lib.format.read_magic(handle)
                    reader = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = reader(handle)
                if dtype.hasobject:
                    raise DataError(
                        f"'{path}' array '{member[:-4]}' holds Python objects; onnxprune never "
                        "unpickles data: save numeric arrays"
                    )
                total += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise DataError(f"cannot read '{path}' as .npz ({type(exc).__name__}: {exc})") from exc
    _check_memory(total, f"'{path}'")


def _class_count(model: onnx.ModelProto) -> int | None:
    """Classes of a single ``[N, classes]`` output, when the model declares them."""
    outputs = model.graph.output
    if len(outputs) != 1:
        return None
    dims = value_dims(outputs[0])
    if dims is None or len(dims) != 2 or not dims[1]:
        return None
    return dims[1]


def _validate_samples(dataset: Dataset, model: onnx.ModelProto) -> None:
    if len(dataset) == 0:
        raise DataError(f"data '{dataset.source}' holds no samples; add samples or check --data")
    arrays = dataset.inputs or {"x": dataset.x}
    for name, array in arrays.items():
        if np.issubdtype(array.dtype, np.floating):
            bad = int(np.count_nonzero(~np.isfinite(array)))
            if bad:
                raise DataError(
                    f"data '{dataset.source}' input '{name}' has {bad:,} NaN or infinite "
                    "values (or values too large for float32); clean the data"
                )
    if dataset.y is None:
        return
    if len(dataset.y) != len(dataset):
        raise DataError(
            f"data '{dataset.source}' has {len(dataset.y)} labels for {len(dataset)} samples; "
            "give one integer label per sample"
        )
    classes = _class_count(model)
    low, high = int(dataset.y.min()), int(dataset.y.max())
    if low < 0 or (classes is not None and high >= classes):
        valid = f"0..{classes - 1}" if classes is not None else ">= 0"
        raise DataError(
            f"data '{dataset.source}' has labels from {low} to {high}, but the model's output "
            f"has classes {valid}; fix the labels or give data without labels"
        )


# --------------------------------------------------------------------------------------------
# preprocessing flags and format sniffing (the command-line options of every data command)


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"{flag} '{text}' is not a comma-separated list of numbers") from None


def preprocess_from_flags(
    data: str | os.PathLike[str],
    scale: float | None = None,
    mean: str | None = None,
    std: str | None = None,
    layout: str | None = None,
    resize: str | None = None,
) -> Preprocess | None:
    """A :class:`Preprocess` from the ``--scale/--mean/--std/--layout/--resize`` flags (as
    text), over ``preprocess.json`` next to ``data``; ``None`` when no flag is given
    (:func:`load_data` then reads ``preprocess.json`` or uses the defaults)."""
    if all(v is None for v in (scale, mean, std, layout, resize)):
        return None
    spec = _find_preprocess(Path(data))
    changes: dict[str, object] = {}
    if scale is not None:
        changes["scale"] = scale
    if mean is not None:
        changes["mean"] = _floats(mean, "--mean")
    if std is not None:
        changes["std"] = _floats(std, "--std")
    if layout is not None:
        changes["layout"] = layout.upper()
    if resize is not None:
        try:
            h, w = (int(v) for v in resize.lower().split("x"))
        except ValueError:
            raise DataError(f"--resize '{resize}' is not HxW, e.g. --resize 224x224") from None
        changes["resize"] = (h, w)
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def holds_raw_images(data: str | os.PathLike[str]) -> bool:
    """True when ``data`` holds uint8 images (an image folder, or uint8 ``x`` in .npz/.npy);
    reads only the array header."""
    data = Path(data)
    if data.is_dir():
        return True
    try:
        if data.suffix == ".npy":
            return np.load(data, mmap_mode="r").dtype == np.uint8
        if data.suffix == ".npz":
            with zipfile.ZipFile(data) as archive:
                members = [m for m in archive.namelist() if m.endswith(".npy") and m != "y.npy"]
                return any(_npy_member_dtype(archive, m) == np.uint8 for m in members)
    except Exception:  # unreadable files are reported by load_data with a proper message
        return False
    return False


def _npy_member_dtype(archive: zipfile.ZipFile, member: str) -> np.dtype:
    with archive.open(member) as stream:
        version = np.lib.format.read_magic(stream)
        header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        return header(stream)[2]


def raw_images_note(data: str | os.PathLike[str], preprocess: Preprocess | None) -> str | None:
    """The warning for uint8 images loaded with neither a spec nor a ``preprocess.json``:
    they are only scaled by 1/255, and most models expect a mean/std normalisation too; a
    silent mismatch would make every accuracy meaningless. ``None`` when nothing to say."""
    data = Path(data)
    folder = data if data.is_dir() else data.parent
    if preprocess is not None or (folder / PREPROCESS_FILE).exists():
        return None
    if not holds_raw_images(data):
        return None
    return (
        f"note: '{data}' holds uint8 images and there is no {PREPROCESS_FILE} next to it: "
        "pixels are only scaled by 1/255. If the model expects normalised input, pass "
        "--mean/--std (and --layout/--resize) or write a preprocess.json there."
    )

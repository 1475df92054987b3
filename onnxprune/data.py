"""Calibration / evaluation data: ``.npz``, ``.npy`` and image folders, plus preprocessing.

Sources (:func:`load_data`):

- ``.npz`` with array ``x`` and optional ``y`` (integer labels). A floating-point ``x`` whose
  shape already fits the model input is used as is. A ``uint8`` ``x`` holds images
  ``[N, H, W, C]`` (or ``[N, H, W]``) and goes through the :class:`Preprocess` spec.
- ``.npy``: one array, treated like ``x`` of an ``.npz`` without labels.
- A folder of images read with Pillow: class sub-folders give labels in sorted-name order
  (``cat/ dog/`` -> 0, 1); a flat folder is unlabelled (then evaluation measures fidelity
  to a reference model instead of accuracy).

Preprocessing (:class:`Preprocess`), applied to uint8 images in this order:
resize to ``resize`` (default: the model's input H, W when static and the images differ),
multiply by ``scale``, subtract ``mean`` and divide by ``std`` per channel, and lay out as
``layout`` (NCHW or NHWC; default: inferred from the model input shape when unambiguous,
i.e. exactly one of dims 1 and 3 is 1, 3 or 4).

``preprocess.json`` next to the data (in the same folder as the ``.npz``/``.npy`` file, or
inside the image folder) is read when no spec is passed. Keys, all optional::

    {"scale": 0.00392156862745098,          # multiply uint8 pixels by this (default 1/255)
     "mean": [0.485, 0.456, 0.406],         # per-channel mean after scaling (default none)
     "std": [0.229, 0.224, 0.225],          # per-channel std after scaling (default none)
     "layout": "NCHW",                       # "NCHW" | "NHWC" | null (infer from the model)
     "resize": null}                         # [H, W] | null (model's H, W when static)

Unknown keys are an error (a typo must not silently change the preprocessing).
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import onnx

from onnxprune.errors import DataError
from onnxprune.model import graph_inputs, load_model, value_dims

__all__ = [
    "PREPROCESS_FILE",
    "Dataset",
    "Preprocess",
    "holds_raw_images",
    "input_spec",
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


@dataclass
class Preprocess:
    """How uint8 images become model input (see the module docstring for the order)."""

    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str | None = None
    resize: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.layout is not None:
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
            if len(self.resize) != 2 or any(int(v) <= 0 for v in self.resize):
                raise DataError(f"resize must be [H, W] with positive sizes, got {self.resize}")
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
        except (TypeError, ValueError) as exc:
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
    """Model-ready samples ``x: float32 [N, ...model input]`` with optional ``y: int64 [N]``."""

    x: np.ndarray
    y: np.ndarray | None
    source: str
    classes: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.y is not None and len(self.y) != len(self.x):
            raise DataError(f"{self.source}: {len(self.x)} samples but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def labelled(self) -> bool:
        return self.y is not None

    def subset(self, idx: Sequence[int] | np.ndarray) -> Dataset:
        """The samples at ``idx`` (any integer index array), same source and classes."""
        idx = np.asarray(idx, dtype=np.int64)
        return Dataset(
            self.x[idx], None if self.y is None else self.y[idx], self.source, self.classes
        )

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
        return {
            "source": self.source,
            "n": len(self),
            "shape": list(self.x.shape[1:]),
            "labelled": self.labelled,
            "classes": self.classes,
        }

    def __str__(self) -> str:
        if self.y is None:
            labels = "unlabelled"
        else:
            n_classes = len(self.classes) if self.classes else len(np.unique(self.y))
            labels = f"labelled, {n_classes} classes"
        return f"{len(self)} samples of {list(self.x.shape[1:])} from {self.source} ({labels})"


# --------------------------------------------------------------------------------------------
# model input


@dataclass
class InputSpec:
    """The model's (single) input: name, shape (``None`` for dynamic dims) and layout."""

    name: str
    shape: list[int | None]
    layout: str | None

    @property
    def spatial(self) -> tuple[int, int] | None:
        if len(self.shape) != 4 or self.layout is None:
            return None
        h, w = (
            (self.shape[2], self.shape[3])
            if self.layout == "NCHW"
            else (self.shape[1], self.shape[2])
        )
        return (h, w) if h is not None and w is not None else None

    @property
    def channels(self) -> int | None:
        if len(self.shape) != 4 or self.layout is None:
            return None
        return self.shape[1] if self.layout == "NCHW" else self.shape[3]


def input_spec(model: onnx.ModelProto) -> InputSpec:
    """Name, shape and inferred layout of the model's only input."""
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise DataError(
            f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
            "data loading supports single-input models"
        )
    inp = inputs[0]
    # a 0-sized dim cannot be fed either: unknown, like the dims model.value_dims leaves open
    shape: list[int | None] = [d or None for d in value_dims(inp) or ()]
    layout = None
    if len(shape) == 4:
        c_first, c_last = shape[1] in _CHANNEL_SIZES, shape[3] in _CHANNEL_SIZES
        if c_first and not c_last:
            layout = "NCHW"
        elif c_last and not c_first:
            layout = "NHWC"
    return InputSpec(inp.name, shape, layout)


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


def preprocess_images(
    images: np.ndarray, spec: InputSpec, preprocess: Preprocess, source: str
) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` images -> float32 model input (resize, scale, mean/std, layout)."""
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
    target = preprocess.resize or spec.spatial
    if target is not None and tuple(images.shape[1:3]) != tuple(target):
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


def _array_dataset(
    x: np.ndarray, y: np.ndarray | None, spec: InputSpec, preprocess: Preprocess, source: str
) -> np.ndarray:
    if x.dtype == np.uint8:
        x = preprocess_images(x, spec, preprocess, source)
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32, copy=False)
    else:
        raise DataError(
            f"data '{source}' has x of dtype {x.dtype}; use float samples shaped like the model "
            "input, or uint8 images [N, H, W, C]"
        )
    _check_fits(x, spec, source)
    return x


def _labels(y: np.ndarray, source: str) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels 'y' in '{source}' have dtype {y.dtype}; they must be integers")
    return y.reshape(-1).astype(np.int64)


def _load_image(path: Path, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(
            f"cannot read image '{path}' ({type(exc).__name__}); remove or replace the file"
        ) from exc


def _load_folder(path: Path, spec: InputSpec, preprocess: Preprocess) -> Dataset:
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    items: list[tuple[Path, int | None]] = []
    classes: list[str] | None = None
    if subdirs:
        classes = [d.name for d in subdirs]
        for label, folder in enumerate(subdirs):
            items += [
                (f, label) for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_EXTENSIONS
            ]
    else:
        items = [(f, None) for f in sorted(path.iterdir()) if f.suffix.lower() in IMAGE_EXTENSIONS]
    if not items:
        raise DataError(
            f"image folder '{path}' holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
            "point --data at a folder of images or class sub-folders"
        )
    mode = "L" if spec.channels == 1 else "RGB"
    target = preprocess.resize or spec.spatial
    images = []
    for file, _ in items:
        image = _load_image(file, mode)
        if image.ndim == 2:
            image = image[..., None]
        if target is not None and image.shape[:2] != tuple(target):
            image = _resize(image[None], target)[0]
        images.append(image)
    sizes = {im.shape for im in images}
    if len(sizes) > 1:
        raise DataError(
            f"images in '{path}' have different sizes ({', '.join(str(s[:2]) for s in sorted(sizes)[:3])}) "
            "and the model input size is dynamic; pass --resize HxW"
        )
    x = preprocess_images(np.stack(images), spec, preprocess, str(path))
    _check_fits(x, spec, str(path))
    y = np.array([label for _, label in items], dtype=np.int64) if classes is not None else None
    return Dataset(x, y, str(path), classes)


def load_data(
    path: str | os.PathLike[str],
    model: onnx.ModelProto | str | os.PathLike[str],
    preprocess: Preprocess | None = None,
) -> Dataset:
    """Load ``path`` (.npz, .npy or image folder) as model-ready input for ``model``.

    ``preprocess`` defaults to ``preprocess.json`` next to the data, else :class:`Preprocess`
    defaults. Raises :class:`DataError` naming the file for a missing/empty/unreadable source,
    an unknown extension, or samples that do not fit the model input (both shapes named).
    """
    path = Path(path)
    if not isinstance(model, onnx.ModelProto):
        model = load_model(model, infer_shapes=False)
    spec = input_spec(model)
    if not path.exists():
        raise DataError(f"data path '{path}' does not exist; check --data")
    if preprocess is None:
        preprocess = _find_preprocess(path)
    if path.is_dir():
        return _load_folder(path, spec, preprocess)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                if "x" not in archive.files:
                    raise DataError(
                        f"'{path}' has arrays {archive.files} but no 'x'; save samples as x (and labels as y)"
                    )
                x = archive["x"]
                y = archive["y"] if "y" in archive.files else None
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"cannot read '{path}' as .npz ({type(exc).__name__}: {exc})") from exc
        x = _array_dataset(x, y, spec, preprocess, str(path))
        return Dataset(x, None if y is None else _labels(y, str(path)), str(path))
    if suffix == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise DataError(f"cannot read '{path}' as .npy ({type(exc).__name__}: {exc})") from exc
        return Dataset(_array_dataset(x, None, spec, preprocess, str(path)), None, str(path))
    raise DataError(
        f"data file '{path}' has unknown extension '{path.suffix}'; use .npz, .npy or a folder of images"
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
            with zipfile.ZipFile(data) as archive, archive.open("x.npy") as member:
                version = np.lib.format.read_magic(member)
                header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                return header(member)[2] == np.uint8
    except Exception:  # unreadable files are reported by load_data with a proper message
        return False
    return False


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

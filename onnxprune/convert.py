"""TensorFlow in: SavedModel / Keras / TFLite -> ONNX through tf2onnx (optional extra ``[tf]``).

Contract:
- :func:`detect_source_kind` tells what a path holds (ONNX file or folder, SavedModel folder,
  Keras ``.keras``/``.h5`` file, ``.tflite`` flatbuffer) from its layout and magic bytes, never
  from a model's name; anything else raises :class:`OnnxPruneError` listing what is accepted.
- :func:`convert` writes one ONNX model (atomically, never onto ``src``) and returns its path.
  TensorFlow and tf2onnx are imported lazily, only when a conversion really happens; without
  them the error says ``pip install "onnxprune[tf]"``.
- :func:`ensure_onnx` lets any command accept a TensorFlow path: it returns an ONNX path (the
  input itself, or a conversion written into ``tmpdir``) and whether it converted.

The converted graph keeps tf2onnx's idioms (NHWC Transposes, ``Clip`` for ReLU6, ``MatMul`` +
``Add`` for Dense, ...); ``onnxprune.normalize`` and ``onnxprune.deps`` handle those.
"""

from __future__ import annotations

import contextlib
import enum
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from onnxprune.errors import OnnxPruneError

DEFAULT_OPSET = 17
INSTALL_HINT = 'pip install "onnxprune[tf]"'

_TFLITE_MAGIC = b"TFL3"  # bytes 4..8 of a TFLite flatbuffer (its file identifier)
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class SourceKind(enum.Enum):
    """What a model path holds."""

    ONNX = "onnx"
    SAVED_MODEL = "saved_model"
    KERAS = "keras"
    TFLITE = "tflite"

    def __str__(self) -> str:
        return {
            SourceKind.ONNX: "an ONNX model",
            SourceKind.SAVED_MODEL: "a TensorFlow SavedModel",
            SourceKind.KERAS: "a Keras model",
            SourceKind.TFLITE: "a TFLite model",
        }[self]


_ACCEPTED = (
    "an .onnx file, a folder with one .onnx file, a SavedModel folder (with saved_model.pb), "
    "a Keras .keras/.h5 file or a .tflite file"
)


def detect_source_kind(path: str | os.PathLike[str]) -> SourceKind:
    """Classify ``path`` by layout and content.

    A folder is a SavedModel when it holds ``saved_model.pb``/``saved_model.pbtxt``, ONNX when
    it holds ``.onnx`` files. A file is classified by its magic bytes first (TFLite ``TFL3``
    identifier, HDF5 signature, zip archive = ``.keras``), then by suffix (``.onnx``,
    ``.keras``, ``.h5``/``.hdf5``, ``.tflite``).
    """
    src = Path(path)
    if not src.exists():
        raise OnnxPruneError(f"model path '{src}' does not exist; check the path")
    if src.is_dir():
        if (src / "saved_model.pb").is_file() or (src / "saved_model.pbtxt").is_file():
            return SourceKind.SAVED_MODEL
        if any(p.suffix == ".onnx" for p in src.iterdir()):
            return SourceKind.ONNX
        raise OnnxPruneError(
            f"folder '{src}' holds neither saved_model.pb nor an .onnx file; pass {_ACCEPTED}"
        )
    if not src.is_file():  # opening a FIFO or device would block or stream forever
        raise OnnxPruneError(
            f"model path '{src}' is not a regular file (a FIFO, socket or device); pass a "
            "model file or folder"
        )
    with open(src, "rb") as handle:
        head = handle.read(8)
    suffix = src.suffix.lower()
    if head[4:8] == _TFLITE_MAGIC:
        return SourceKind.TFLITE
    if head == _HDF5_MAGIC or (suffix == ".keras" and zipfile.is_zipfile(src)):
        return SourceKind.KERAS
    by_suffix = {
        ".onnx": SourceKind.ONNX,
        ".keras": SourceKind.KERAS,
        ".h5": SourceKind.KERAS,
        ".hdf5": SourceKind.KERAS,
        ".tflite": SourceKind.TFLITE,
    }
    if suffix in by_suffix:
        return by_suffix[suffix]
    if suffix == ".pb":
        raise OnnxPruneError(
            f"'{src}' is a bare .pb file; pass the SavedModel folder that contains it "
            "(frozen GraphDefs are not supported: re-save the model with tf.saved_model.save)"
        )
    raise OnnxPruneError(f"cannot tell what '{src}' holds; pass {_ACCEPTED}")


def _import_tf(src: Path, kind: SourceKind):
    """Import tensorflow and tf2onnx, or explain which extra to install."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as exc:
        raise OnnxPruneError(
            f"converting '{src}' ({kind}) needs TensorFlow and tf2onnx, which are not installed "
            f"({exc}); install them with: {INSTALL_HINT}"
        ) from exc
    return tf, tf2onnx


def _convert_keras(src: Path, opset: int, inputs_as_nchw: list[str] | None):
    tf, tf2onnx = _import_tf(src, SourceKind.KERAS)
    import keras

    try:
        model = keras.models.load_model(str(src), compile=False)
    except Exception as exc:
        raise OnnxPruneError(
            f"Keras could not load '{src}' ({type(exc).__name__}: {exc}); models with custom "
            "layers must be saved as a SavedModel (model.export(folder)) and converted from there"
        ) from exc
    signature = tuple(
        tf.TensorSpec((None, *tuple(t.shape)[1:]), t.dtype, name=_keras_input_name(t, i))
        for i, t in enumerate(model.inputs)
    )
    try:
        model_proto, _ = tf2onnx.convert.from_keras(
            model, input_signature=signature, opset=opset, inputs_as_nchw=inputs_as_nchw
        )
    except Exception:
        # tf2onnx's Keras path fails on some Keras 3 models (e.g. Sequential ones, with a
        # KeyError on a keras_tensor name); the SavedModel route handles them.
        with tempfile.TemporaryDirectory(prefix="onnxprune-keras-") as workdir:
            saved = Path(workdir) / "saved_model"
            with contextlib.redirect_stdout(io.StringIO()):  # export prints its signature
                model.export(str(saved))
            return _convert_saved_model(saved, opset, inputs_as_nchw)
    return model_proto


def _keras_input_name(tensor, index: int) -> str:
    name = getattr(tensor, "name", None) or f"input_{index}"
    return name.split(":")[0]


def _convert_tflite(src: Path, opset: int, inputs_as_nchw: list[str] | None):
    _, tf2onnx = _import_tf(src, SourceKind.TFLITE)
    model_proto, _ = tf2onnx.convert.from_tflite(
        str(src), opset=opset, inputs_as_nchw=inputs_as_nchw
    )
    return model_proto


def _convert_saved_model(src: Path, opset: int, inputs_as_nchw: list[str] | None):
    # tf2onnx's command line is its supported entry point for SavedModels (signatures, tables,
    # tensor renames); running it in a child process also keeps TF's global graph state out of
    # ours.
    import onnx

    _import_tf(src, SourceKind.SAVED_MODEL)
    with tempfile.TemporaryDirectory(prefix="onnxprune-convert-") as workdir:
        out = Path(workdir) / "model.onnx"
        cmd = [
            sys.executable,
            "-m",
            "tf2onnx.convert",
            "--saved-model",
            str(src),
            "--output",
            str(out),
            "--opset",
            str(opset),
        ]
        if inputs_as_nchw:
            cmd += ["--inputs-as-nchw", ",".join(inputs_as_nchw)]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not out.exists():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise OnnxPruneError(
                f"tf2onnx could not convert the SavedModel '{src}' (exit {proc.returncode}):\n"
                f"{tail}\nrun `python -m tf2onnx.convert --saved-model {src} --output x.onnx "
                "--verbose` for the full log"
            )
        return onnx.load(str(out))


def convert(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    inputs_as_nchw: Sequence[str] | None = None,
) -> Path:
    """Convert a SavedModel folder, Keras ``.keras``/``.h5`` file or ``.tflite`` file to ONNX.

    Args:
        src: the TensorFlow model; never modified.
        out: the ``.onnx`` file to write (atomically; refuses to overwrite ``src``).
        opset: ONNX opset of the result (tf2onnx supports 13..18).
        inputs_as_nchw: graph input names that tf2onnx should expose as NCHW (it inserts a
            Transpose behind them); each must name an input of the converted graph.

    Returns the path written. Raises :class:`OnnxPruneError` when ``src`` is already ONNX, when
    TensorFlow/tf2onnx are missing (with the ``pip install`` line), or when conversion fails.
    """
    from onnxprune.model import check_model, save_model

    src_path = Path(src)
    kind = detect_source_kind(src_path)
    if kind is SourceKind.ONNX:
        raise OnnxPruneError(f"'{src_path}' is already an ONNX model; nothing to convert")
    if not 7 <= opset <= 18:
        raise OnnxPruneError(f"opset {opset} is outside what tf2onnx supports; use 13..18")
    nchw = list(inputs_as_nchw) if inputs_as_nchw else None
    converters = {
        SourceKind.KERAS: _convert_keras,
        SourceKind.TFLITE: _convert_tflite,
        SourceKind.SAVED_MODEL: _convert_saved_model,
    }
    try:
        model_proto = converters[kind](src_path, opset, nchw)
    except OnnxPruneError:
        raise
    except Exception as exc:
        raise OnnxPruneError(
            f"tf2onnx could not convert '{src_path}' ({kind}): {type(exc).__name__}: {exc}"
        ) from exc
    input_names = [i.name for i in model_proto.graph.input]
    for name in nchw or []:
        if name not in input_names:
            raise OnnxPruneError(
                f"--inputs-as-nchw names '{name}', but the converted model's inputs are "
                f"{input_names}; pass one of those"
            )
    check_model(model_proto, full=False)
    return save_model(model_proto, out, protect=[src_path])


def ensure_onnx(path: str | os.PathLike[str], tmpdir: str | os.PathLike[str]) -> tuple[Path, bool]:
    """Return ``(onnx_path, converted)`` for any accepted model path.

    An ONNX path comes back unchanged with ``converted=False``. A TensorFlow model is converted
    (default opset, NHWC input kept) to ``tmpdir/<name>.onnx`` with ``converted=True``; callers
    print ``converted X to a temporary ONNX model`` and own ``tmpdir``'s lifetime.
    """
    src = Path(path)
    kind = detect_source_kind(src)
    if kind is SourceKind.ONNX:
        return src, False
    stem = src.stem if src.is_file() else src.resolve().name
    target = Path(tmpdir) / f"{stem or 'model'}.onnx"
    return convert(src, target), True

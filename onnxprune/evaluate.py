"""onnxruntime sessions, accuracy / fidelity, and latency.

- :func:`make_session` asks for ``CUDAExecutionProvider`` only after checking once (silently,
  ORT logging muted) that it really initialises on this machine; otherwise it uses the CPU
  provider, so a machine without CUDA prints nothing. ``device="cuda"`` without a working
  CUDA provider raises :class:`OnnxPruneError`.
- :func:`predict_outputs` runs every output over a ``Dataset`` (every input fed by name) or a
  bare array (single-input models), fixed-batch models in chunks of their batch;
  :func:`predict` the first one (the classifier path).
- :func:`evaluate` gives top-1/top-5 (in percent) when the data has labels, and label-free
  fidelity to a reference model (top-1 agreement in percent, mean KL(reference || model)
  in nats) when reference logits are given; :func:`fidelity_from_outputs` adds, for any
  outputs, SNR, cosine and per-timestep agreement (:mod:`onnxprune.fidelity`). Every figure
  carries its sample count and a 95 % interval.
- :func:`measure_latency` times ``session.run`` on random input of the model's input shape;
  :func:`interleaved_timings` and :func:`ratio_interval` are the gate's paired method, also
  used by :func:`onnxprune.pipeline.compare`. :func:`batch_unsupported` says which batch
  sizes a fixed-batch model cannot run.
"""

from __future__ import annotations

import os
import platform
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.errors import DataError, OnnxPruneError
from onnxprune.fidelity import (
    CONFIDENCE,
    METRIC_LABELS,
    METRIC_TEXT,
    MIN_RELIABLE_SAMPLES,
    OutputFidelity,
    auto_metric,
    format_figure,
    output_fidelity,
    output_kind,
    wilson_interval,
    worst,
)
from onnxprune.model import load_model

if TYPE_CHECKING:
    from onnxprune.data import Dataset, InputSpec

__all__ = [
    "EvalResult",
    "batch_unsupported",
    "fidelity_from_outputs",
    "interleaved_timings",
    "predict_outputs",
    "ratio_interval",
    "timing_summary",
    "LatencyResult",
    "cpu_model",
    "cuda_available",
    "evaluate",
    "make_feed",
    "make_session",
    "measure_latency",
    "predict",
    "session_provider",
    "session_specs",
]

_DEVICES = ("auto", "cpu", "cuda")
_ORT_WARNING = 2  # onnxruntime's default logger severity
_ORT_FATAL = 4
_cuda_ok: bool | None = None

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _probe_model() -> bytes:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "cuda_probe",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model.SerializeToString()


def cuda_available() -> bool:
    """True when a session with ``CUDAExecutionProvider`` really runs on CUDA (cached).

    The check creates a one-node session with ORT logging at FATAL, so a machine without a
    GPU or CUDA libraries prints nothing.
    """
    global _cuda_ok
    if _cuda_ok is None:
        _cuda_ok = False
        if "CUDAExecutionProvider" in ort.get_available_providers():
            options = ort.SessionOptions()
            options.log_severity_level = _ORT_FATAL
            ort.set_default_logger_severity(_ORT_FATAL)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    session = ort.InferenceSession(
                        _probe_model(), options, providers=["CUDAExecutionProvider"]
                    )
                    session.run(None, {"x": np.ones(1, np.float32)})
                _cuda_ok = session.get_providers()[0] == "CUDAExecutionProvider"
            except Exception:
                _cuda_ok = False
            finally:
                ort.set_default_logger_severity(_ORT_WARNING)
    return _cuda_ok


def _model_bytes(
    model_or_path: onnx.ModelProto | str | os.PathLike[str] | bytes,
) -> tuple[bytes, str]:
    if isinstance(model_or_path, bytes):
        return model_or_path, "<bytes>"
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path.SerializeToString(), model_or_path.graph.name or "<model>"
    model = load_model(Path(model_or_path), infer_shapes=False)
    return model.SerializeToString(), str(model_or_path)


def make_session(
    model_or_path: onnx.ModelProto | str | os.PathLike[str] | bytes,
    device: str = "auto",
    threads: int | None = None,
    spin: bool = True,
) -> ort.InferenceSession:
    """An ``InferenceSession`` on ``device`` (``auto``: CUDA when it works, else CPU).

    ``threads`` sets intra-op threads (``None``: onnxruntime's default, one per core).
    ``spin=False`` stops idle worker threads from busy-waiting: the right choice for
    throughput work (search rewards, recovery statistics) on a machine whose cores are shared,
    where spinning threads steal the cycles the other threads need. Latency measurements keep
    onnxruntime's default (spinning).
    Raises :class:`OnnxPruneError` for an unknown device, ``cuda`` without a working CUDA
    provider, or a model onnxruntime rejects (naming the model).
    """
    if device not in _DEVICES:
        raise OnnxPruneError(f"unknown device '{device}'; use one of: {', '.join(_DEVICES)}")
    if threads is not None and threads < 1:
        raise OnnxPruneError(f"threads must be >= 1, got {threads}")
    use_cuda = device == "cuda" or (device == "auto" and cuda_available())
    if device == "cuda" and not cuda_available():
        raise OnnxPruneError(
            "device 'cuda' requested but CUDAExecutionProvider does not initialise on this "
            "machine (no GPU or missing CUDA/cuDNN libraries); use --device cpu"
        )
    payload, label = _model_bytes(model_or_path)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = (
        ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
    )
    try:
        return ort.InferenceSession(payload, options, providers=providers)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxPruneError(
            f"onnxruntime cannot load model '{label}': {first_line}; run `onnxprune info` on it "
            "and check its opset/ops"
        ) from exc


def session_provider(session: ort.InferenceSession) -> str:
    """The execution provider that runs the session's nodes first (e.g. ``CPUExecutionProvider``)."""
    return session.get_providers()[0]


def session_threads(session: ort.InferenceSession) -> int:
    """Intra-op threads configured for ``session`` (0 = onnxruntime's default)."""
    return int(session.get_session_options().intra_op_num_threads)


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo, falling back to :func:`platform.processor`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


# --------------------------------------------------------------------------------------------
# prediction and accuracy


def session_specs(session: ort.InferenceSession) -> list[InputSpec]:
    """Every session input as an :class:`~onnxprune.data.InputSpec` (name, declared dims with
    ``None`` where dynamic, element type), in the session's order: what data is checked
    against and fed to."""
    from onnxprune.data import InputSpec

    specs = []
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else None for d in (inp.shape or [])]
        dtype = _ORT_DTYPES.get(inp.type)
        elem = (
            onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
            if dtype is not None
            else onnx.TensorProto.UNDEFINED
        )
        specs.append(InputSpec(inp.name, shape, None, elem))
    return specs


def batch_unsupported(session: ort.InferenceSession, batch: int) -> str | None:
    """Why ``session`` cannot run a batch of ``batch`` samples (``"fixed batch 1"``), or None."""
    for inp in session.get_inputs():
        dim = inp.shape[0] if inp.shape else None
        if isinstance(dim, int) and dim > 0 and dim != batch:
            return f"fixed batch {dim}"
    return None


def _stacked(value: np.ndarray, name: str, rows: int, fixed: int | None) -> np.ndarray:
    """One run's output ``name`` as ``[rows, ...]`` (see :func:`predict_outputs`)."""
    value = np.asarray(value)
    if fixed == 1 and (value.ndim == 0 or value.shape[0] != 1):
        # one sample per run: the whole output is that sample's, whatever its layout
        # (time-major sequence heads [T, 1, C], scalars); stack runs on a new axis
        value = value[None]
    if value.ndim == 0 or value.shape[0] != rows:
        raise DataError(
            f"output '{name}' has shape {list(value.shape)} for a batch of {rows}: its first "
            "dimension is not the batch, so its rows cannot be matched to samples; evaluate a "
            "model whose outputs are per sample"
        )
    return value


def _run_chunks(
    session: ort.InferenceSession, data: Dataset | np.ndarray, batch_size: int, names: list[str]
) -> list[np.ndarray]:
    """Outputs ``names`` for every sample of ``data``, run in chunks (see
    :func:`predict_outputs`); the one place a session runs over a dataset."""
    from onnxprune.data import as_dataset, fixed_batch

    dataset = as_dataset(data)
    specs = session_specs(session)
    fixed = fixed_batch(specs)
    chunks: list[list[np.ndarray]] = [[] for _ in names]
    for real, feeds in dataset.batches(specs, batch_size):
        try:
            results = session.run(names, feeds)
        except Exception as exc:
            given = ", ".join(f"'{k}' {list(v.shape)}" for k, v in feeds.items())
            expected = ", ".join(
                f"'{s.name}' [{', '.join('?' if d is None else str(d) for d in s.shape)}]"
                for s in specs
            )
            raise DataError(
                f"onnxruntime rejected a batch of {given} (model expects {expected}): "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        rows = len(next(iter(feeds.values())))
        for i, value in enumerate(results):
            chunks[i].append(_stacked(value, names[i], rows, fixed)[:real])
    if not chunks[0]:
        raise DataError("no samples to predict on; the dataset is empty")
    return [np.concatenate(parts).astype(np.float32, copy=False) for parts in chunks]


def predict_outputs(
    session: ort.InferenceSession, data: Dataset | np.ndarray, batch_size: int = 256
) -> list[np.ndarray]:
    """Every output of the model for every sample of ``data``, run in chunks of
    ``batch_size``.

    ``data`` is a :class:`~onnxprune.data.Dataset` (each model input fed by name from its
    array, :meth:`~onnxprune.data.Dataset.batches`) or a bare ``[N, ...input]`` array for a
    single-input model. Data that does not fit the model's inputs (a missing or extra array,
    a wrong rank or fixed dim, a dtype that cannot be cast) is a :class:`DataError` naming
    the input. A model with a fixed batch dimension ``B`` is run with exactly that batch
    (``B = 1``: sample by sample; otherwise the last chunk is zero-padded and cut), so a
    fixed-batch export evaluates instead of failing. A dynamic-size input is run at the size
    of the data. Returns one ``[N, ...output]`` float32 array per output, in the model's
    output order. With a fixed batch of 1 every run is one sample, so an output whose first
    dimension is not the batch (a time-major ``[T, 1, C]`` head) is that sample's whole
    output and is stacked as ``[N, T, 1, C]``. Otherwise raises :class:`DataError` when an
    output's first dimension is not the batch (its rows cannot be matched to samples).
    """
    return _run_chunks(session, data, batch_size, [o.name for o in session.get_outputs()])


def predict(
    session: ort.InferenceSession, data: Dataset | np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Logits of the first output for every sample of ``data`` (a ``Dataset`` or a bare
    ``[N, ...input]`` array; the classifier path), see :func:`predict_outputs`. Returns
    ``[N, ...output]`` float32."""
    return _run_chunks(session, data, batch_size, [session.get_outputs()[0].name])[0]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


_PERCENT = ("top1", "top5", "agreement", "timestep")


@dataclass
class EvalResult:
    """Accuracy (labels) and fidelity (reference outputs) of a model on ``n`` samples.

    ``top1``/``top5``/``agreement`` are percentages in [0, 100] or ``None`` when not
    measurable (no labels / fewer than 5 classes / no classifier reference); ``kl`` is the
    mean KL(reference || model) in nats. ``snr_db``, ``cosine`` and ``timestep`` (percent)
    are the worst output's figures (:mod:`onnxprune.fidelity`), ``outputs`` the per-output
    ones. ``intervals[name] = (low, high)``: 95 % interval of each figure (Wilson for top-1,
    top-5 and agreement; seeded bootstrap over samples for the others). ``metric`` names the
    headline figure (:attr:`score`).
    """

    top1: float | None
    top5: float | None
    agreement: float | None
    kl: float | None
    n: int
    labelled: bool
    snr_db: float | None = None
    cosine: float | None = None
    timestep: float | None = None
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    outputs: list[OutputFidelity] = field(default_factory=list)
    metric: str | None = None

    def value(self, metric: str) -> float | None:
        """The figure ``metric`` (one of :data:`onnxprune.fidelity.METRICS`)."""
        return {
            "top1": self.top1,
            "top5": self.top5,
            "agreement": self.agreement,
            "kl": self.kl,
            "snr": self.snr_db,
            "cosine": self.cosine,
            "timestep": self.timestep,
        }[metric]

    def figure(self, metric: str) -> str:
        """``"agreement 91.20 % [90.01, 92.28]"``: the figure with unit and interval."""
        return f"{METRIC_LABELS[metric]} {format_figure(metric, self.value(metric), self.intervals.get(metric))}"

    def to_dict(self) -> dict:
        return {
            "top1": self.top1,
            "top5": self.top5,
            "agreement": self.agreement,
            "kl": self.kl,
            "snr_db": self.snr_db,
            "cosine": self.cosine,
            "timestep_agreement": self.timestep,
            "n": self.n,
            "labelled": self.labelled,
            "metric": self.metric,
            "metric_text": METRIC_TEXT.get(self.metric or ""),
            "confidence": CONFIDENCE,
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "small_sample": self.n < MIN_RELIABLE_SAMPLES,
            "outputs": [o.to_dict() for o in self.outputs],
        }

    def __str__(self) -> str:
        parts = [self.figure(m) for m in METRIC_LABELS if self.value(m) is not None]
        text = ", ".join(parts) or "no metric (no labels, no reference)"
        return text + f" on {self.n} samples (95 % intervals)"

    @property
    def score(self) -> float | None:
        """The headline figure: ``metric``'s value when set, else top-1 when labelled, else
        agreement, else SNR: the number a reward or gate compares."""
        if self.metric is not None:
            return self.value(self.metric)
        for candidate in (self.top1, self.agreement, self.snr_db):
            if candidate is not None:
                return candidate
        return None


def _percent_interval(hits: np.ndarray) -> tuple[float, float]:
    low, high = wilson_interval(int(np.sum(hits)), len(hits))
    return low * 100, high * 100


def accuracy_from_logits(
    logits: np.ndarray, labels: np.ndarray | None, reference_logits: np.ndarray | None = None
) -> EvalResult:
    """Metrics from ``logits: [N, classes]``, ``labels: [N]`` and ``reference_logits: [N, classes]``."""
    logits = logits.reshape(len(logits), -1)
    n = len(logits)
    top1 = top5 = agreement = kl = None
    intervals: dict[str, tuple[float, float]] = {}
    if labels is not None:
        if len(labels) != n:
            raise DataError(f"{len(labels)} labels for {n} predictions")
        hits = logits.argmax(axis=1) == labels
        top1 = float(np.mean(hits) * 100)
        intervals["top1"] = _percent_interval(hits)
        if logits.shape[1] >= 5:
            best5 = np.argpartition(-logits, 4, axis=1)[:, :5]
            hits5 = (best5 == labels[:, None]).any(axis=1)
            top5 = float(np.mean(hits5) * 100)
            intervals["top5"] = _percent_interval(hits5)
    if reference_logits is not None:
        reference_logits = reference_logits.reshape(len(reference_logits), -1)
        if reference_logits.shape != logits.shape:
            raise DataError(
                f"reference logits have shape {list(reference_logits.shape)} but the model gives "
                f"{list(logits.shape)}; the reference must be the same task"
            )
        same = logits.argmax(1) == reference_logits.argmax(1)
        agreement = float(np.mean(same) * 100)
        intervals["agreement"] = _percent_interval(same)
        ref_log = _log_softmax(reference_logits.astype(np.float64))
        log = _log_softmax(logits.astype(np.float64))
        kl = float(np.mean(np.sum(np.exp(ref_log) * (ref_log - log), axis=1)))
    return EvalResult(top1, top5, agreement, kl, n, labels is not None, intervals=intervals)


def fidelity_from_outputs(
    outputs: Sequence[np.ndarray],
    labels: np.ndarray | None,
    reference_outputs: Sequence[np.ndarray] | None = None,
    names: Sequence[str] | None = None,
    metric: str | None = None,
) -> EvalResult:
    """Every measurable figure for ``outputs`` (one ``[N, ...]`` array per model output).

    Top-1/top-5/agreement/KL come from the first output when it is a classifier output
    ``[N, classes]``; with ``reference_outputs`` (the unpruned model's outputs on the same
    samples) every output also gets SNR, cosine and, for ``[N, T, C]``, per-timestep
    agreement, and the model-level figure is the worst output's (:mod:`onnxprune.fidelity`).
    ``metric``: the headline (``None``: :func:`onnxprune.fidelity.auto_metric`).
    """
    first = outputs[0]
    classifier = output_kind(first) == "logits"
    if reference_outputs is not None and len(reference_outputs) != len(outputs):
        raise DataError(
            f"the model has {len(outputs)} outputs but the reference {len(reference_outputs)}; "
            "the reference must be the same model before pruning"
        )
    reference_first = None if reference_outputs is None or not classifier else reference_outputs[0]
    if classifier:
        result = accuracy_from_logits(first, labels, reference_first)
    else:
        result = EvalResult(None, None, None, None, len(first), labels is not None)
    if reference_outputs is not None:
        labels_of = (
            list(names) if names is not None else [f"output{i}" for i in range(len(outputs))]
        )
        result.outputs = [
            output_fidelity(label, ref, out)
            for label, ref, out in zip(labels_of, reference_outputs, outputs, strict=True)
        ]
        for attribute, key in (("snr_db", "snr"), ("cosine", "cosine")):
            figure = worst(result.outputs, attribute)
            if figure is not None:
                setattr(result, attribute, getattr(figure, attribute))
                result.intervals[key] = getattr(figure, f"{key}_interval")
        sequence = worst(result.outputs, "timestep_agreement")
        if sequence is not None and sequence.timestep_interval is not None:
            result.timestep = sequence.timestep_agreement
            result.intervals["timestep"] = sequence.timestep_interval
    result.metric = metric or auto_metric(
        labels is not None, list(reference_outputs) if reference_outputs is not None else [first]
    )
    return result


def evaluate(
    session: ort.InferenceSession,
    dataset: Dataset,
    reference_logits: np.ndarray | None = None,
    batch_size: int = 256,
) -> EvalResult:
    """Run ``session`` over ``dataset`` and score its first output (see :class:`EvalResult`)."""
    logits = predict(session, dataset, batch_size)
    return accuracy_from_logits(logits, dataset.y, reference_logits)


# --------------------------------------------------------------------------------------------
# latency


def make_feed(
    session: ort.InferenceSession,
    batch: int = 1,
    input_shape: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    samples: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Random inputs for every session input: dynamic first dims -> ``batch``.

    ``input_shape`` (one full shape for a single-input model, or ``{input name: shape}``)
    gives an input's whole shape. For the other inputs any dynamic dimension after the batch
    is taken from ``samples`` (``{input name: sample dims}``, e.g.
    :meth:`onnxprune.data.Dataset.sample_shapes`: time at the data's size), else
    :class:`OnnxPruneError` names the input.
    """
    rng = np.random.default_rng(seed)
    inputs = session.get_inputs()
    if input_shape is not None and not isinstance(input_shape, Mapping):
        if len(inputs) != 1:
            raise OnnxPruneError(
                "a single --input-shape was given for a model with several inputs; use NAME:DxD..."
            )
        input_shape = {inputs[0].name: input_shape}
    given = dict(input_shape or {})
    feed: dict[str, np.ndarray] = {}
    for inp in inputs:
        sample = list((samples or {}).get(inp.name, ()))
        if len(sample) != len(inp.shape) - 1:
            sample = []  # a sample of another rank cannot say this input's sizes
        if inp.name in given:
            shape = [int(d) for d in given[inp.name]]
        else:
            shape = []
            for axis, dim in enumerate(inp.shape):
                if isinstance(dim, int) and dim > 0:
                    shape.append(dim)
                elif axis == 0:
                    shape.append(batch)
                elif sample:
                    shape.append(int(sample[axis - 1]))
                else:
                    raise OnnxPruneError(
                        f"input '{inp.name}' has dynamic dimension {axis} ('{dim}'); give the "
                        f"full shape with --input-shape {inp.name}:1x3x224x224 (your sizes)"
                    )
        dtype = _ORT_DTYPES.get(inp.type)
        if dtype is None:
            raise OnnxPruneError(
                f"input '{inp.name}' has type {inp.type}, not supported for timing"
            )
        if np.issubdtype(dtype, np.floating):
            feed[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[inp.name] = np.zeros(shape, dtype=dtype)
    return feed


@dataclass
class LatencyResult:
    """Latency of ``session.run`` in milliseconds over ``runs`` timed runs after ``warmup``."""

    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    runs: int
    warmup: int
    batch: int
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    provider: str = ""
    threads: int = 0
    times_ms: list[float] = field(default_factory=list, repr=False)

    @classmethod
    def from_times(cls, times_ms: Sequence[float], **meta: Any) -> LatencyResult:
        values = np.asarray(times_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return cls(
            p50=float(p50),
            p90=float(p90),
            p99=float(p99),
            mean=float(values.mean()),
            min=float(values.min()),
            runs=len(values),
            times_ms=[float(v) for v in values],
            **meta,
        )

    def to_dict(self) -> dict:
        return {
            "p50_ms": self.p50,
            "p90_ms": self.p90,
            "p99_ms": self.p99,
            "mean_ms": self.mean,
            "min_ms": self.min,
            "runs": self.runs,
            "warmup": self.warmup,
            "batch": self.batch,
            "input_shapes": self.input_shapes,
            "provider": self.provider,
            "threads": self.threads,
            "onnxruntime": ort.__version__,
        }

    def __str__(self) -> str:
        shapes = ", ".join(f"{k}[{'x'.join(map(str, v))}]" for k, v in self.input_shapes.items())
        return (
            f"p50 {self.p50:.3f} ms  p90 {self.p90:.3f} ms  p99 {self.p99:.3f} ms  "
            f"(mean {self.mean:.3f}, min {self.min:.3f}; {self.runs} runs, batch {self.batch}, "
            f"{shapes}, {self.provider}, threads {self.threads or 'default'})"
        )


def time_run(session: ort.InferenceSession, feed: Mapping[str, np.ndarray]) -> float:
    """Wall time of one ``session.run`` in milliseconds."""
    start = time.perf_counter_ns()
    session.run(None, dict(feed))
    return (time.perf_counter_ns() - start) / 1e6


# The gate's timing method (gate.py's docstring): interleaved rounds, paired bootstrap.


def timing_summary(times_ms: Sequence[float]) -> dict[str, float]:
    """min/p10/p50/p90/p99/max/mean of a timing list (ms)."""
    values = np.asarray(times_ms, dtype=np.float64)
    p10, p50, p90, p99 = np.percentile(values, [10, 50, 90, 99])
    return {
        "n": int(len(values)),
        "min": float(values.min()),
        "p10": float(p10),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(values.max()),
        "mean": float(values.mean()),
    }


def ratio_interval(
    base_ms: Sequence[float],
    cand_ms: Sequence[float],
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    paired: bool = True,
) -> tuple[float, float, float]:
    """``(ratio, low, high)``: median ratio and its bootstrap percentile interval.

    ``paired`` resamples rounds jointly (timings ``base_ms[i]``/``cand_ms[i]`` came from the
    same round); otherwise the two lists are resampled independently (baseline from a file).
    """
    base = np.asarray(base_ms, dtype=np.float64)
    cand = np.asarray(cand_ms, dtype=np.float64)
    ratio = float(np.median(cand) / np.median(base))
    rng = np.random.default_rng(seed)
    if paired:
        if len(base) != len(cand):
            raise ValueError("paired bootstrap needs equally many base and candidate timings")
        idx = rng.integers(0, len(base), size=(resamples, len(base)))
        ratios = np.median(cand[idx], axis=1) / np.median(base[idx], axis=1)
    else:
        idx_b = rng.integers(0, len(base), size=(resamples, len(base)))
        idx_c = rng.integers(0, len(cand), size=(resamples, len(cand)))
        ratios = np.median(cand[idx_c], axis=1) / np.median(base[idx_b], axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(ratios, [alpha, 1.0 - alpha])
    return ratio, float(low), float(high)


def interleaved_timings(
    base: ort.InferenceSession,
    cand: ort.InferenceSession,
    base_feed: Mapping[str, np.ndarray],
    cand_feed: Mapping[str, np.ndarray],
    rounds: int,
    start_round: int = 0,
    progress: Any = None,
) -> tuple[list[float], list[float]]:
    """Time ``rounds`` rounds of one run each, order alternating per round (ms lists)."""
    base_ms: list[float] = []
    cand_ms: list[float] = []
    for i in range(start_round, start_round + rounds):
        if i % 2 == 0:
            base_ms.append(time_run(base, base_feed))
            cand_ms.append(time_run(cand, cand_feed))
        else:
            cand_ms.append(time_run(cand, cand_feed))
            base_ms.append(time_run(base, base_feed))
        if progress is not None:
            progress.advance()
    return base_ms, cand_ms


def measure_latency(
    session_or_model: ort.InferenceSession | onnx.ModelProto | str | os.PathLike[str],
    input_shape: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    runs: int = 50,
    warmup: int = 5,
    batch: int = 1,
    *,
    progress: Any = None,
) -> LatencyResult:
    """p50/p90/p99 latency (ms) of one ``session.run`` on random input.

    ``session_or_model`` may be a session or anything :func:`make_session` takes (then a CPU
    session with default threads is made). ``progress`` (optional) gets ``advance()`` per run.
    """
    if runs < 1 or warmup < 0 or batch < 1:
        raise OnnxPruneError(
            f"need runs >= 1, warmup >= 0, batch >= 1 (got {runs}, {warmup}, {batch})"
        )
    session = (
        session_or_model
        if isinstance(session_or_model, ort.InferenceSession)
        else make_session(session_or_model, device="cpu")
    )
    feed = make_feed(session, batch, input_shape)
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        times.append(time_run(session, feed))
        if progress is not None:
            progress.advance()
    return LatencyResult.from_times(
        times,
        warmup=warmup,
        batch=batch,
        input_shapes={k: list(v.shape) for k, v in feed.items()},
        provider=session_provider(session),
        threads=session_threads(session),
    )

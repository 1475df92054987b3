"""Fidelity of a model's outputs to a reference model's, for any kind of output, with intervals.

Pure numpy; no onnxruntime. :mod:`onnxprune.evaluate` runs the models and calls these.

Output kinds (:func:`output_kind`, read from the reference array ``[N, ...]``):

- ``logits``: ``[N, classes]`` with ``classes >= 2`` (a classifier head): top-1 agreement and
  KL(reference || model), as before;
- ``sequence``: ``[N, T, C]`` with ``C >= 2`` (a CTC-like recogniser): also per-timestep argmax
  agreement, the fraction of timesteps whose best class is the reference's;
- ``dense``: anything else (detection maps ``[N, 1, H, W]``, box regressions, embeddings).

Task-agnostic figures, for every output:

- **SNR** in dB, ``10 log10(sum ref^2 / sum (ref - model)^2)`` summed over the samples and
  elements of one output (the signal-to-quantisation-noise ratio of signal processing, as
  used for quantised networks by e.g. NNCF/PPQ's layer-wise SNR). Higher is better; 0 dB means
  the error has the energy of the output itself. Identical outputs give ``+inf``, which is
  capped at :data:`SNR_CAP_DB` so means, rewards and JSON stay finite (float32 rounding alone
  is ~140 dB below the signal, so the cap only ever hides differences nobody can measure).
- **cosine** similarity of each sample's flattened output with the reference's, averaged over
  samples; 1 is identical direction.

The model-level figure is the **minimum over outputs**: a detector is only as faithful as its
least faithful head (ruined boxes are not saved by good scores), and with a mean an output
that the pruned channels do not touch (capped at 100 dB) would hide a broken one.

Intervals (95 %, seeded): Wilson (1927) score interval for proportions over independent
samples (top-1, top-1 agreement); a percentile bootstrap over samples for SNR, cosine and
per-timestep agreement (the timesteps of one sample are not independent, so they are
resampled together, whole samples at a time).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CONFIDENCE",
    "MIN_RELIABLE_SAMPLES",
    "SNR_CAP_DB",
    "OutputFidelity",
    "bootstrap_interval",
    "output_fidelity",
    "output_kind",
    "snr_db",
    "wilson_interval",
]

SNR_CAP_DB = 100.0
CONFIDENCE = 0.95
MIN_RELIABLE_SAMPLES = 200  # below this a held-out figure's interval is several points wide
_Z95 = 1.959963984540054  # the 97.5 % quantile of the standard normal
_RESAMPLES = 1000


def wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson (1927) score interval of a proportion ``successes / n``, as fractions in [0, 1].

    ``(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``; unlike the normal
    approximation it stays inside [0, 1] and is not zero-width at 0 % or 100 %.
    ``n == 0`` gives ``(0, 1)``: nothing is known.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(
    statistic: Callable[[np.ndarray], np.ndarray],
    n: int,
    seed: int = 0,
    resamples: int = _RESAMPLES,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``n`` samples (Efron 1979).

    ``statistic(indices: [resamples, n]) -> [resamples]`` evaluates the figure on each
    resample of sample indices (vectorised). Seeded: the same call gives the same interval.
    """
    if n <= 1:
        value = float(statistic(np.zeros((1, max(n, 1)), dtype=np.int64))[0]) if n else math.nan
        return value, value
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, n, size=(resamples, n))
    values = statistic(indices)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _db(signal: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """``10 log10(signal / noise)`` capped at :data:`SNR_CAP_DB` (zero noise -> the cap)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(noise > 0, signal / np.where(noise > 0, noise, 1.0), np.inf)
        db = 10.0 * np.log10(np.where(ratio > 0, ratio, 1e-30))
    return np.minimum(db, SNR_CAP_DB)


def snr_db(reference: np.ndarray, output: np.ndarray) -> float:
    """``10 log10(sum ref^2 / sum (ref - out)^2)`` in dB, capped at :data:`SNR_CAP_DB`."""
    ref = np.asarray(reference, dtype=np.float64)
    err = ref - np.asarray(output, dtype=np.float64)
    return float(_db(np.array(np.sum(ref * ref)), np.array(np.sum(err * err))))


def output_kind(reference: np.ndarray) -> str:
    """``logits`` (``[N, C]``, C >= 2), ``sequence`` (``[N, T, C]``, T, C >= 2) or ``dense``.

    Size-1 dimensions after the batch are ignored: a 1x1-conv classifier head ``[N, C, 1, 1]``
    is ``logits``.
    """
    dims = [d for d in reference.shape[1:] if d != 1]
    if len(dims) == 1 and dims[0] >= 2:
        return "logits"
    if reference.ndim == 3 and len(dims) == 2 and reference.shape[2] >= 2:
        return "sequence"
    return "dense"


@dataclass
class OutputFidelity:
    """Fidelity of one output ``name`` (``kind``, reference shape ``shape``) over ``n`` samples.

    ``snr_db``/``cosine`` with 95 % bootstrap intervals; ``timestep_agreement`` (percent) only
    for ``sequence`` outputs.
    """

    name: str
    kind: str
    shape: list[int]
    n: int
    snr_db: float
    snr_interval: tuple[float, float]
    cosine: float
    cosine_interval: tuple[float, float]
    timestep_agreement: float | None = None
    timestep_interval: tuple[float, float] | None = None

    def __str__(self) -> str:
        text = (
            f"{self.name} ({self.kind} {'x'.join(map(str, self.shape))}): SNR {self.snr_db:.2f} dB "
            f"[{self.snr_interval[0]:.2f}, {self.snr_interval[1]:.2f}], cosine {self.cosine:.4f}"
        )
        if self.timestep_agreement is not None:
            text += f", per-timestep agreement {self.timestep_agreement:.2f} %"
        return text

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": self.shape,
            "n": self.n,
            "snr_db": self.snr_db,
            "snr_interval": list(self.snr_interval),
            "cosine": self.cosine,
            "cosine_interval": list(self.cosine_interval),
            "timestep_agreement": self.timestep_agreement,
            "timestep_interval": None
            if self.timestep_interval is None
            else list(self.timestep_interval),
        }


def output_fidelity(
    name: str, reference: np.ndarray, output: np.ndarray, seed: int = 0
) -> OutputFidelity:
    """Fidelity of ``output: [N, ...]`` to ``reference: [N, ...]`` (same shape), see module."""
    if reference.shape != output.shape:
        from onnxprune.errors import DataError

        raise DataError(
            f"output '{name}' has shape {list(output.shape)} but the reference gives "
            f"{list(reference.shape)}; the reference must be the same model before pruning"
        )
    n = len(reference)
    ref = reference.reshape(n, -1).astype(np.float64)
    out = output.reshape(n, -1).astype(np.float64)
    err = ref - out
    # Per-sample sums: the corpus SNR of a resample is the ratio of its summed sums.
    signal, noise = np.sum(ref * ref, axis=1), np.sum(err * err, axis=1)
    dot = np.sum(ref * out, axis=1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    # Two all-zero samples point the same way; one zero and one non-zero do not.
    cosines = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), (noise == 0) * 1.0)
    snr = float(_db(signal.sum(), noise.sum()))
    snr_interval = bootstrap_interval(
        lambda idx: _db(signal[idx].sum(axis=1), noise[idx].sum(axis=1)), n, seed
    )
    cos_interval = bootstrap_interval(lambda idx: cosines[idx].mean(axis=1), n, seed)
    kind = output_kind(reference)
    result = OutputFidelity(
        name,
        kind,
        list(reference.shape),
        n,
        snr,
        snr_interval,
        float(cosines.mean()),
        cos_interval,
    )
    if kind == "sequence":
        same = (reference.argmax(axis=2) == output.argmax(axis=2)).mean(axis=1)
        result.timestep_agreement = float(same.mean() * 100)
        low, high = bootstrap_interval(lambda idx: same[idx].mean(axis=1), n, seed)
        result.timestep_interval = (low * 100, high * 100)
    return result


def worst(figures: Sequence[OutputFidelity], attribute: str) -> OutputFidelity | None:
    """The output with the lowest ``attribute`` (None values skipped); None if there is none."""
    present = [f for f in figures if getattr(f, attribute) is not None]
    return min(present, key=lambda f: getattr(f, attribute)) if present else None


METRICS = ("top1", "agreement", "kl", "snr", "cosine", "timestep")
METRIC_TEXT = {
    "top1": "top-1 accuracy against the labels (percent of samples whose best class is the "
    "label; higher is better)",
    "agreement": "top-1 agreement with the unpruned model (percent of samples whose best class "
    "is the unpruned model's; higher is better)",
    "kl": "KL(unpruned || pruned) of the class distributions in nats (0 is identical; lower is "
    "better)",
    "snr": "output signal-to-noise ratio against the unpruned model, 10 log10(sum ref^2 / sum "
    f"(ref - pruned)^2) in dB, worst output (higher is better; capped at {SNR_CAP_DB:g} dB)",
    "cosine": "cosine similarity of each sample's outputs with the unpruned model's, mean over "
    "samples, worst output (1 is identical; higher is better)",
    "timestep": "per-timestep argmax agreement of sequence outputs [N, T, C] with the unpruned "
    "model (percent of timesteps; higher is better)",
}


def auto_metric(labelled: bool, reference_outputs: Sequence[np.ndarray]) -> str:
    """The fidelity that fits the outputs: ``top1`` with labels and one classifier output,
    ``agreement`` for one classifier output without labels, else ``snr`` (any output)."""
    classifier = len(reference_outputs) == 1 and output_kind(reference_outputs[0]) == "logits"
    if classifier:
        return "top1" if labelled else "agreement"
    return "snr"


def measurable(labelled: bool, reference_outputs: Sequence[np.ndarray]) -> list[str]:
    """The metrics these outputs can give (what an error message may suggest)."""
    return [m for m in METRICS if not metric_problem(m, labelled, reference_outputs)]


def metric_problem(metric: str, labelled: bool, reference_outputs: Sequence[np.ndarray]) -> str:
    """Why ``metric`` cannot be measured on these outputs ('' when it can)."""
    kinds = [output_kind(r) for r in reference_outputs]
    if metric == "top1" and not labelled:
        return "needs labels"
    if metric in ("top1", "agreement", "kl") and kinds[0] != "logits":
        return (
            f"needs a classifier output [N, classes] but the first output has shape "
            f"{list(reference_outputs[0].shape)}"
        )
    if metric == "timestep" and "sequence" not in kinds:
        return "needs a sequence output [N, T, C]"
    return ""


METRIC_LABELS = {
    "top1": "top-1",
    "top5": "top-5",
    "agreement": "agreement",
    "kl": "KL",
    "snr": "SNR",
    "cosine": "cosine",
    "timestep": "per-timestep agreement",
}
_UNITS = {"snr": " dB", "kl": " nats", "cosine": ""}  # the others are percentages


def format_figure(metric: str, value: float | None, interval: Sequence[float] | None = None) -> str:
    """``"20.00 dB [18.51, 21.37]"``: a figure with its unit and, when given, its interval."""
    if value is None:
        return "-"
    digits = ".4f" if metric in ("cosine", "kl") else ".2f"
    text = f"{value:{digits}}{_UNITS.get(metric, ' %')}"
    if interval is not None:
        text += f" [{interval[0]:{digits}}, {interval[1]:{digits}}]"
    return text

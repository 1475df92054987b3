"""CI latency gate: is the candidate model no slower than ``max_slowdown`` x the baseline?

Method
------
1. Both models are loaded in one process with the same execution provider and thread count
   and fed the same random input.
2. They are timed *interleaved*: each round runs both once, the order alternating per round
   (AB, BA, AB, ...), so a burst of machine load, frequency scaling or cache pollution hits
   both models alike instead of one of them.
3. The statistic is ``ratio = median(candidate) / median(baseline)``. Its confidence interval
   (default 95 %) comes from a seeded paired bootstrap over rounds (resampling whole
   rounds keeps the pairing that interleaving creates).
4. Decision: **fail when the ratio's point estimate exceeds** ``max_slowdown``. When the
   interval still straddles the threshold, more rounds are timed (up to ``max_rounds``) so
   the estimate sharpens exactly where the decision is close; the record says whether the
   final interval was clear of the threshold (``conclusive``).

Why the point estimate and not an interval bound: "fail only if the lower bound exceeds the
threshold" never fails a regression it cannot prove, so on a noisy shared CI machine a real
+20 % regression slips through at ``--max-slowdown 1.10``; "fail if the upper bound
exceeds" makes identical models fail whenever noise widens the interval past 1.05. The
median ratio of paired, interleaved runs is an unbiased-in-practice estimate whose error is
a few percent, so it keeps both error rates low; ``benchmarks/gate_calibration.py`` measures
them (identical models must pass >= 19/20 at 1.05; a +20 % MACs candidate must fail
>= 19/20 at 1.10).

``baseline_json`` compares against a recorded baseline instead of re-timing the baseline.
Caveat: the two sets of timings then come from different moments (and maybe machines), so
machine noise no longer cancels; the record lists every mismatch in environment
(onnxruntime version, provider, threads, CPU, batch, input shapes) under ``caveats``.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.data import as_dataset
from onnxprune.errors import OnnxPruneError
from onnxprune.evaluate import (
    EvalResult,
    cpu_model,
    evaluate,
    interleaved_timings,
    make_feed,
    make_session,
    predict,
    ratio_interval,
    session_provider,
    session_threads,
    timing_summary,
)

__all__ = ["GateResult", "ratio_interval", "interleaved_timings", "run_gate", "timing_summary"]

RECORD_VERSION = 1


@dataclass
class GateResult:
    """The gate's verdict and everything needed to audit it later (JSON via ``to_dict``)."""

    passed: bool
    ratio: float
    ci_low: float
    ci_high: float
    confidence: float
    max_slowdown: float
    conclusive: bool
    base_median_ms: float
    cand_median_ms: float
    rounds: int
    warmup: int
    batch: int
    input_shapes: dict[str, list[int]]
    provider: str
    threads: int
    base_path: str = ""
    cand_path: str = ""
    baseline_source: str = "timed"  # "timed" or the baseline JSON path
    reasons: list[str] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)
    base_accuracy: EvalResult | None = None
    cand_accuracy: EvalResult | None = None
    accuracy_drop: float | None = None
    max_accuracy_drop: float | None = None
    base_times_ms: list[float] = field(default_factory=list, repr=False)
    cand_times_ms: list[float] = field(default_factory=list, repr=False)
    noise: list[str] = field(default_factory=list)
    min_ratio: float | None = None
    inconclusive: bool = False

    @property
    def verdict(self) -> str:
        if self.inconclusive:
            return "inconclusive"
        return "pass" if self.passed else "fail"

    def to_dict(self) -> dict:
        return {
            "record_version": RECORD_VERSION,
            "verdict": self.verdict,
            "passed": self.passed,
            "ratio": self.ratio,
            "interval": [self.ci_low, self.ci_high],
            "confidence": self.confidence,
            "conclusive": self.conclusive,
            "inconclusive": self.inconclusive,
            "noise": self.noise,
            "min_ratio": self.min_ratio,
            "max_slowdown": self.max_slowdown,
            "reasons": self.reasons,
            "caveats": self.caveats,
            "base": {
                "path": self.base_path,
                "median_ms": self.base_median_ms,
                "source": self.baseline_source,
                "summary_ms": timing_summary(self.base_times_ms) if self.base_times_ms else None,
                "times_ms": [round(t, 4) for t in self.base_times_ms],
                "accuracy": self.base_accuracy.to_dict() if self.base_accuracy else None,
            },
            "candidate": {
                "path": self.cand_path,
                "median_ms": self.cand_median_ms,
                "summary_ms": timing_summary(self.cand_times_ms) if self.cand_times_ms else None,
                "times_ms": [round(t, 4) for t in self.cand_times_ms],
                "accuracy": self.cand_accuracy.to_dict() if self.cand_accuracy else None,
            },
            "accuracy_drop": self.accuracy_drop,
            "max_accuracy_drop": self.max_accuracy_drop,
            "rounds": self.rounds,
            "warmup": self.warmup,
            "batch": self.batch,
            "input_shapes": self.input_shapes,
            "environment": environment(self.provider, self.threads),
        }

    def __str__(self) -> str:
        lines = [
            f"{self.verdict.upper()}: candidate/baseline median latency = {self.ratio:.3f} "
            f"({self.confidence:.0%} CI {self.ci_low:.3f}-{self.ci_high:.3f}), "
            f"limit {self.max_slowdown:.3f}",
            f"  baseline  {self.base_median_ms:.3f} ms median ({self.baseline_source})",
            f"  candidate {self.cand_median_ms:.3f} ms median, {self.rounds} interleaved rounds, "
            f"batch {self.batch}, {self.provider}, threads {self.threads or 'default'}",
        ]
        if not self.conclusive:
            lines.append("  note: the interval still contains the limit; the call is close")
        lines += [f"  noise: {n}" for n in self.noise]
        if self.inconclusive:
            lines.append(
                "  inconclusive: this machine is too noisy to tell; rerun on a quiet machine "
                "(or with --threads 1 and fewer parallel jobs)"
            )
        if self.accuracy_drop is not None:
            lines.append(
                f"  accuracy: baseline {self.base_accuracy}, candidate {self.cand_accuracy}; "
                f"drop {self.accuracy_drop:.2f} points (limit {self.max_accuracy_drop})"
            )
        lines += [f"  reason: {r}" for r in self.reasons]
        lines += [f"  caveat: {c}" for c in self.caveats]
        return "\n".join(lines)


def environment(provider: str, threads: int) -> dict[str, Any]:
    """Machine/runtime facts recorded with every gate result."""
    return {
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "provider": provider,
        "threads": threads,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def load_baseline(path: str | os.PathLike[str]) -> dict:
    """A JSON record written by ``onnxprune gate --json`` (its ``base`` timings are reused)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        base = record["base"]
        if not base.get("times_ms") and base.get("median_ms") is None:
            raise KeyError("median_ms")
    except FileNotFoundError:
        raise OnnxPruneError(
            f"baseline record '{path}' does not exist; check --baseline-json"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OnnxPruneError(
            f"'{path}' is not a gate record ({type(exc).__name__}: {exc}); write one with "
            "`onnxprune gate BASE BASE --json baseline.json`"
        ) from exc
    return record


def _baseline_caveats(record: dict, current: dict, batch: int, shapes: dict) -> list[str]:
    caveats = ["baseline timings come from an earlier run: machine noise does not cancel"]
    old = record.get("environment", {})
    for key in ("onnxruntime", "provider", "threads", "cpu"):
        if key in old and old[key] != current[key]:
            caveats.append(f"{key} differs: baseline {old[key]!r}, now {current[key]!r}")
    if record.get("batch") not in (None, batch):
        caveats.append(f"batch differs: baseline {record.get('batch')}, now {batch}")
    if record.get("input_shapes") not in (None, shapes):
        caveats.append(f"input shapes differ: baseline {record.get('input_shapes')}, now {shapes}")
    return caveats


def _accuracy(
    base: ort.InferenceSession, cand: ort.InferenceSession, data: Any
) -> tuple[EvalResult, EvalResult, float]:
    """Both models' scores; the drop is in top-1 points (labelled) or 100 - agreement."""
    base_logits = predict(base, data)
    if data.y is not None:
        base_result = evaluate(base, data)
        cand_result = evaluate(cand, data, reference_logits=base_logits)
        assert base_result.top1 is not None and cand_result.top1 is not None
        return base_result, cand_result, base_result.top1 - cand_result.top1
    from onnxprune.evaluate import accuracy_from_logits

    base_result = accuracy_from_logits(base_logits, None, base_logits)
    cand_result = evaluate(cand, data, reference_logits=base_logits)
    assert cand_result.agreement is not None
    return base_result, cand_result, 100.0 - cand_result.agreement


# A machine is called noisy when one of these is exceeded (calibrated in
# benchmarks/gate_calibration.py, quiet and with CPU burners beside the gate).
NOISY_SPREAD = 0.25  # IQR of the per-round ratios cand_i / base_i, relative to their median
NOISY_MIN_MEDIAN = 0.15  # |median ratio / min ratio - 1|: the tail, not the model, differs
NOISY_LOAD = 1.5  # 1-minute load average per CPU core


def _load_per_core() -> float | None:
    try:
        return os.getloadavg()[0] / max(os.cpu_count() or 1, 1)
    except (OSError, AttributeError):
        return None


def noise_signs(
    base_ms: Sequence[float], cand_ms: Sequence[float], paired: bool
) -> tuple[list[str], float]:
    """Signs that the machine, not the models, decided the timings; and the min ratio.

    Three independent signs: the per-round paired ratios spread widely; the ratio of the
    fastest runs disagrees with the median ratio (the fastest runs are the least disturbed,
    so on a quiet machine both agree); the load average exceeds the cores.
    """
    base, cand = np.asarray(base_ms, np.float64), np.asarray(cand_ms, np.float64)
    min_ratio = float(cand.min() / base.min())
    median_ratio = float(np.median(cand) / np.median(base))
    signs = []
    if paired and len(base) == len(cand) and len(base) >= 5:
        per_round = cand / base
        q1, q2, q3 = np.percentile(per_round, [25, 50, 75])
        if (q3 - q1) / q2 > NOISY_SPREAD:
            signs.append(
                f"per-round ratios spread {100 * (q3 - q1) / q2:.0f} % (IQR/median) > "
                f"{100 * NOISY_SPREAD:.0f} %"
            )
    if abs(median_ratio / min_ratio - 1) > NOISY_MIN_MEDIAN:
        signs.append(
            f"median ratio {median_ratio:.3f} disagrees with the fastest-run ratio {min_ratio:.3f}"
        )
    load = _load_per_core()
    if load is not None and load > NOISY_LOAD:
        signs.append(f"load average {load:.1f} per core > {NOISY_LOAD}")
    return signs, min_ratio


def check_same_inputs(base: Any, cand: Any) -> None:
    """Two versions of one model take the same inputs; anything else is a usage error
    (timing them against each other would compare different work)."""
    base_inputs, cand_inputs = base.get_inputs(), cand.get_inputs()
    if [i.name for i in base_inputs] != [i.name for i in cand_inputs]:
        raise OnnxPruneError(
            f"the models take different inputs: baseline {[i.name for i in base_inputs]}, "
            f"candidate {[i.name for i in cand_inputs]}; the gate compares two versions of "
            "one model"
        )
    for b_input, c_input in zip(base_inputs, cand_inputs, strict=True):
        fixed = [
            (b, c)
            for b, c in zip(b_input.shape, c_input.shape, strict=False)
            if isinstance(b, int) and isinstance(c, int)
        ]
        if len(b_input.shape) != len(c_input.shape) or any(b != c for b, c in fixed):
            raise OnnxPruneError(
                f"input '{b_input.name}' differs: baseline {b_input.shape}, candidate "
                f"{c_input.shape}; the gate compares two versions of one model"
            )


@dataclass
class _Timing:
    """Per-round times of both models and the ratio interval they gave."""

    base_ms: list[float]
    cand_ms: list[float]
    rounds: int
    ratio: float
    low: float
    high: float
    conclusive: bool


def _time_until_conclusive(
    base_session: Any,
    cand_session: Any,
    base_feed: dict[str, np.ndarray],
    cand_feed: dict[str, np.ndarray],
    recorded_base: list[float] | None,
    max_slowdown: float,
    runs: int,
    max_rounds: int,
    confidence: float,
    seed: int,
    progress: Any,
) -> _Timing:
    """Time in blocks of ``runs`` rounds until the ratio's interval excludes
    ``max_slowdown`` or ``max_rounds`` are done. With ``recorded_base`` (a baseline JSON)
    only the candidate is timed and the interval is unpaired."""
    base_ms: list[float] = []
    cand_ms: list[float] = []
    done = 0
    while True:
        todo = runs if done == 0 else min(runs, max_rounds - done)
        if recorded_base is None:
            b, c = interleaved_timings(
                base_session, cand_session, base_feed, cand_feed, todo, done, progress
            )
            base_ms += b
            cand_ms += c
        else:
            from onnxprune.evaluate import time_run

            for _ in range(todo):
                cand_ms.append(time_run(cand_session, cand_feed))
                if progress is not None:
                    progress.advance()
        done += todo
        if recorded_base is None:
            ratio, low, high = ratio_interval(base_ms, cand_ms, confidence, seed=seed)
        else:
            ratio, low, high = ratio_interval(
                recorded_base, cand_ms, confidence, seed=seed, paired=False
            )
        conclusive = not (low <= max_slowdown <= high)
        if conclusive or done >= max_rounds:
            return _Timing(base_ms, cand_ms, done, ratio, low, high, conclusive)


def _recorded_baseline(
    baseline_json: str | os.PathLike[str] | None,
    provider: str,
    threads: int,
    batch: int,
    shapes: dict[str, list[int]],
) -> tuple[list[float], list[str]]:
    """The baseline's recorded times and the environment mismatches (empty without a file)."""
    if baseline_json is None:
        return [], []
    record = load_baseline(baseline_json)
    times = [float(t) for t in record["base"].get("times_ms") or []]
    if not times:
        times = [float(record["base"]["median_ms"])]
    return times, _baseline_caveats(record, environment(provider, threads), batch, shapes)


def run_gate(
    base: onnx.ModelProto | str | os.PathLike[str],
    cand: onnx.ModelProto | str | os.PathLike[str],
    max_slowdown: float = 1.05,
    *,
    batch: int = 1,
    runs: int = 100,
    warmup: int = 10,
    threads: int | None = 1,
    device: str = "cpu",
    input_shape: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    baseline_json: str | os.PathLike[str] | None = None,
    data: Any = None,
    max_accuracy_drop: float | None = None,
    confidence: float = 0.95,
    max_rounds: int | None = None,
    seed: int = 0,
    progress: Any = None,
) -> GateResult:
    """Time ``cand`` against ``base`` (see the module docstring) and decide.

    ``runs`` is the number of interleaved rounds (each runs both models once); up to
    ``max_rounds`` (default ``4 * runs``) are used when the interval straddles the limit.
    ``data`` (a :class:`~onnxprune.data.Dataset`, every model input fed by name) with
    ``max_accuracy_drop`` (points) also fails a candidate whose top-1 (or agreement with the
    baseline, unlabelled) drops more; a dynamic input size ``input_shape`` does not give is
    then timed at the data's size.
    """
    if max_slowdown <= 0:
        raise OnnxPruneError(f"--max-slowdown must be > 0 (e.g. 1.05), got {max_slowdown}")
    if runs < 5:
        raise OnnxPruneError(f"--runs must be >= 5 for a median and an interval, got {runs}")
    if max_accuracy_drop is not None and data is None:
        raise OnnxPruneError("--max-accuracy-drop needs --data to measure accuracy on")
    max_rounds = max(runs, max_rounds if max_rounds is not None else 4 * runs)
    base_session = make_session(base, device=device, threads=threads)
    cand_session = make_session(cand, device=device, threads=threads)
    check_same_inputs(base_session, cand_session)
    # without --input-shape, dynamic sizes are the data's (every input), if data is given
    names = [i.name for i in base_session.get_inputs()]
    samples = as_dataset(data).sample_shapes(names) if data is not None else None
    base_feed = make_feed(base_session, batch, input_shape, seed=seed, samples=samples)
    cand_feed = make_feed(cand_session, batch, input_shape, seed=seed, samples=samples)
    shapes = {k: list(v.shape) for k, v in cand_feed.items()}
    provider, n_threads = session_provider(cand_session), session_threads(cand_session)
    for _ in range(warmup):
        base_session.run(None, base_feed)
        cand_session.run(None, cand_feed)

    baseline_source = "timed" if baseline_json is None else str(baseline_json)
    recorded_base, caveats = _recorded_baseline(baseline_json, provider, n_threads, batch, shapes)

    timing = _time_until_conclusive(
        base_session,
        cand_session,
        base_feed,
        cand_feed,
        recorded_base if baseline_json is not None else None,
        max_slowdown,
        runs,
        max_rounds,
        confidence,
        seed,
        progress,
    )
    base_ms, cand_ms, done = timing.base_ms, timing.cand_ms, timing.rounds
    ratio, low, high, conclusive = timing.ratio, timing.low, timing.high, timing.conclusive
    reference = base_ms if baseline_json is None else recorded_base
    noise, min_ratio = noise_signs(reference, cand_ms, paired=baseline_json is None)
    passed = ratio <= max_slowdown
    # Noisy and the fastest runs would decide the other way: no honest verdict.
    inconclusive = bool(noise) and ((min_ratio <= max_slowdown) != passed or not conclusive)
    reasons = []
    if not passed:
        reasons.append(
            f"candidate is {ratio:.3f}x the baseline median latency, above --max-slowdown "
            f"{max_slowdown}"
        )
    base_acc = cand_acc = None
    drop = None
    if data is not None:
        base_acc, cand_acc, drop = _accuracy(base_session, cand_session, data)
        if max_accuracy_drop is not None and drop > max_accuracy_drop:
            passed = False
            reasons.append(
                f"accuracy drops {drop:.2f} points, above --max-accuracy-drop {max_accuracy_drop}"
            )
    return GateResult(
        passed=passed,
        ratio=ratio,
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        max_slowdown=max_slowdown,
        conclusive=conclusive,
        base_median_ms=float(np.median(reference)),
        cand_median_ms=float(np.median(cand_ms)),
        rounds=done,
        warmup=warmup,
        batch=batch,
        input_shapes=shapes,
        provider=provider,
        threads=n_threads,
        base_path=str(base) if not isinstance(base, onnx.ModelProto) else "<model>",
        cand_path=str(cand) if not isinstance(cand, onnx.ModelProto) else "<model>",
        baseline_source=baseline_source,
        reasons=reasons,
        caveats=caveats,
        base_accuracy=base_acc,
        cand_accuracy=cand_acc,
        accuracy_drop=drop,
        max_accuracy_drop=max_accuracy_drop,
        base_times_ms=list(reference),
        cand_times_ms=cand_ms,
        noise=noise,
        min_ratio=min_ratio,
        inconclusive=inconclusive,
    )

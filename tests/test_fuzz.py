"""Quick fuzz profile: mutated models through flops, groups and prune (``tests/fuzzing.py``).

Every outcome must be exit 0 on a model ``onnx.checker`` accepts, or exit 2 with one line;
never an internal error, a traceback, a modified input or a half-written output. The long
profile is ``python benchmarks/fuzz.py --examples 5000``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import make_tiny_cnn
from tests.fuzzing import COMMANDS, STRUCTURAL, mutate, run_case

RAW = make_tiny_cnn().SerializeToString()
KINDS = ["flip", "truncate", *STRUCTURAL]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# finds of benchmarks/fuzz.py, kept as regressions: invalid UTF-8 in a dim_param reached
# graphsurgeon; a float weight relabelled BOOL passed the checker; a multi-line checker error
@example(kind="flip", seed=4741, command="prune")
@example(kind="wrong_dtype", seed=0, command="groups")
@example(kind="bad_attribute", seed=4186, command="prune")
@given(
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**32 - 1),
    command=st.sampled_from(sorted(COMMANDS)),
)
def test_mutated_models_never_crash_a_command(kind: str, seed: int, command: str) -> None:
    raw = mutate(RAW, kind, seed)
    with tempfile.TemporaryDirectory() as folder:
        case = run_case(raw, command, kind, seed, Path(folder))
    assert case.verdict() is None, f"{command} on {kind} (seed {seed}): {case.verdict()}"


@pytest.mark.parametrize("kind", KINDS)
def test_every_mutation_changes_the_model(kind: str) -> None:
    assert any(mutate(RAW, kind, seed) != RAW for seed in range(5))


def test_the_unmutated_model_passes_every_command(tmp_path: Path) -> None:
    for command in COMMANDS:
        case = run_case(RAW, command, "none", 0, tmp_path)
        assert case.code == 0 and case.verdict() is None, case.stderr

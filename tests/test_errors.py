"""User errors and internal errors are told apart by the CLI."""

from __future__ import annotations

import click
import pytest

from onnxprune.cli.common import EXIT_INTERNAL, EXIT_USAGE, run_guarded
from onnxprune.errors import InternalError, OnnxPruneError


def _group(exc: Exception) -> click.Group:
    @click.group()
    @click.option("--debug", is_flag=True)
    def cli(debug: bool) -> None:
        pass

    @cli.command()
    def boom() -> None:
        raise exc

    return cli


def test_user_error_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run_guarded(_group(OnnxPruneError("model 'x.onnx' is truncated")), ["boom"]) == EXIT_USAGE
    )
    err = capsys.readouterr().err
    assert err == "error: model 'x.onnx' is truncated\n"


def test_internal_error_asks_for_a_report_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert not issubclass(InternalError, OnnxPruneError)
    assert (
        run_guarded(_group(InternalError("plan cost 0.51 > budget 0.5")), ["boom"]) == EXIT_INTERNAL
    )
    err = capsys.readouterr().err
    assert err.startswith("internal error, please report: plan cost 0.51 > budget 0.5")
    assert "--debug" in err and "Traceback" not in err


def test_internal_error_traceback_with_debug() -> None:
    with pytest.raises(InternalError, match="budget"):
        run_guarded(_group(InternalError("budget")), ["--debug", "boom"])


def test_any_other_exception_is_an_internal_error_without_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_guarded(_group(ValueError("shape mismatch\nsecond line")), ["boom"]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    # the innermost frame inside the package (here the CLI runner; the test's own frame is not)
    assert err.startswith("internal error, please report: ValueError: shape mismatch at common.py:")
    assert err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(ValueError):
        run_guarded(_group(ValueError("x")), ["--debug", "boom"])


def test_memory_error_is_a_user_error_with_advice(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_guarded(_group(MemoryError()), ["boom"]) == EXIT_USAGE
    assert "out of memory" in capsys.readouterr().err

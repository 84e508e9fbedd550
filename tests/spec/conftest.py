"""Fixtures of the spec tests: paths of the data and bad-input folders, and the CLI run in-process."""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

import pytest

from spec_paths import REPO


@dataclass(frozen=True)
class CliResult:
    """What one `tierplan ...` invocation left behind."""

    exit_code: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> CliResult:
    """Run `tierplan ARGS` through tierplan.cli.main in this process, capturing output and exit code."""
    from tierplan.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    """The in-process CLI runner."""
    return run_cli


@pytest.fixture(scope="session")
def subprocess_env() -> dict[str, str]:
    """Environment for `python -m tierplan` subprocesses: the repo on PYTHONPATH, wide terminal."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "160"
    return env


@pytest.fixture(scope="session")
def python() -> str:
    """The interpreter running the tests."""
    return sys.executable

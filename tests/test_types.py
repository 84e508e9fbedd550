"""The library type-checks: mypy over tierplan as installed (.ci/typecheck.py, [tool.mypy]) finds nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mypy_finds_no_errors(tmp_path: Path) -> None:
    """Every module of the layers, the CLI and the API passes mypy with the project's settings."""
    r = subprocess.run([sys.executable, str(REPO / ".ci" / "typecheck.py")], capture_output=True, text=True,
                       timeout=900, env={**os.environ, "MYPY_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "Success: no issues found" in r.stdout

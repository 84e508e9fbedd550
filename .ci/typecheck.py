"""Type-check the library as installed (tierplan.planner, tierplan.runtime, ...) with mypy.

The layer folders install under `tierplan` through setuptools package-dir, which mypy cannot follow,
so this builds the installed shape from symlinks in a temporary folder and runs `mypy -p tierplan`
there (settings: [tool.mypy] in pyproject.toml). Exit code: mypy's. Usage: python .ci/typecheck.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shadow_tree(dest: Path) -> Path:
    """dest/tierplan laid out as the wheel installs it, every entry a symlink into the repository."""
    mapping = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    pkg = dest / "tierplan"
    pkg.mkdir()
    for entry in (REPO / "tierplan").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name, folder in mapping.items():
        if name != "tierplan":
            (pkg / name.split(".", 1)[1]).symlink_to(REPO / folder)
    return pkg


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tierplan-types-") as tmp:
        shadow_tree(Path(tmp))
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"),
               "--cache-dir", os.environ.get("MYPY_CACHE_DIR", str(Path(tempfile.gettempdir()) / "tierplan-mypy")),
               "-p", "tierplan", *sys.argv[1:]]
        return subprocess.run(cmd, cwd=tmp, env={**os.environ, "MYPYPATH": tmp}).returncode


if __name__ == "__main__":
    sys.exit(main())

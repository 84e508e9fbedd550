"""Paths the spec tests share (a module of its own: `conftest` is a name every test folder uses)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
BAD = HERE / "bad"
REPO = HERE.parent.parent

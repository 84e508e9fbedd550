"""The partition cache stays under its cap, least recently used folders first (partition.cachetrim)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tierplan.partition.api import cache_root, partition_model
from tierplan.partition.cachetrim import max_bytes, trim


def _folder(root: Path, name: str, size: int, used: float) -> Path:
    p = root / name
    p.mkdir(parents=True)
    (p / "piece.onnx").write_bytes(b"\0" * size)
    (p / "manifest.json").write_text("{}")
    os.utime(p / "manifest.json", (used, used))
    return p


def test_trim_removes_the_least_recently_used_until_under_the_cap(tmp_path: Path) -> None:
    old, mid, new = (_folder(tmp_path, n, 1000, t) for n, t in (("old", 1), ("mid", 2), ("new", 3)))
    removed = trim(tmp_path, keep=new, limit=2100)
    assert removed == [old]
    assert not old.exists() and mid.exists() and new.exists()
    assert trim(tmp_path, keep=new, limit=2100) == []


def test_trim_keeps_the_folder_just_written_even_over_the_cap(tmp_path: Path) -> None:
    old = _folder(tmp_path, "old", 1000, 5)
    new = _folder(tmp_path, "new", 5000, 1)         # its mtime is older, but it was just written
    assert trim(tmp_path, keep=new, limit=100) == [old]
    assert new.exists()


def test_cap_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERPLAN_CACHE_MAX_MB", "3")
    assert max_bytes() == 3 << 20
    monkeypatch.setenv("TIERPLAN_CACHE_MAX_MB", "lots")
    assert max_bytes() == 2048 << 20                # a bad value: the default (and a warning)


def test_cache_follows_xdg_and_partitioning_trims_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     squeezenet: Path) -> None:
    monkeypatch.delenv("TIERPLAN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "tierplan" / "partition"
    stale = _folder(cache_root(), "stale-0", 4 << 20, 1)
    monkeypatch.setenv("TIERPLAN_CACHE_MAX_MB", "4")
    res = partition_model(squeezenet, max_pieces=2)
    assert res.out_dir.parent == cache_root() and res.out_dir.is_dir()
    assert not stale.exists()                       # over 4 MB with the new pieces: the stale folder went
    assert partition_model(squeezenet, max_pieces=2).cached

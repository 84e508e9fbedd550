"""Keep the partition cache bounded: least recently used folders go first.

Every distinct set of cuts (the planner's candidate segments, each plan's refined cuts) writes a
folder of piece files under `cache_root()`, so a user who plans often would otherwise fill their
disk. A saved plan copies its pieces beside plan.json, so trimming the cache never breaks one.
The cap is `TIERPLAN_CACHE_MAX_MB` (default 2048 MB); the folder just written is always kept.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MAX_MB = 2048
ENV = "TIERPLAN_CACHE_MAX_MB"


def max_bytes() -> int:
    """The cache cap in bytes, from `TIERPLAN_CACHE_MAX_MB` (a bad value: the default, with a warning)."""
    raw = os.environ.get(ENV)
    if not raw:
        return DEFAULT_MAX_MB << 20
    try:
        mb = float(raw)
        if not mb >= 0:
            raise ValueError(raw)
    except ValueError:
        log.warning("%s=%r is not a number of MB >= 0; using %d", ENV, raw, DEFAULT_MAX_MB)
        return DEFAULT_MAX_MB << 20
    return int(mb * (1 << 20))


def touch(folder: Path) -> None:
    """Mark a cache folder as used now (its manifest's mtime is what trimming orders by)."""
    try:
        os.utime(folder / "manifest.json")
    except OSError:
        pass


def _usage(folder: Path) -> tuple[float, int]:
    """(last use, bytes) of one cache folder."""
    try:
        used = (folder / "manifest.json").stat().st_mtime
    except OSError:
        used = 0.0   # half-written or foreign: oldest
    size = 0
    for dirpath, _, files in os.walk(folder):
        for f in files:
            try:
                size += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return used, size


def trim(root: Path, keep: Path, limit: int | None = None) -> list[Path]:
    """Delete the least recently used folders under `root` until it holds at most `limit` bytes
    (default max_bytes()); `keep` stays whatever its size. Returns the folders deleted.

    >>> import tempfile; r = Path(tempfile.mkdtemp())
    >>> for i, n in enumerate("abc"):
    ...     (r / n).mkdir(); _ = (r / n / "manifest.json").write_bytes(b"x" * 100); os.utime(r / n / "manifest.json", (i, i))
    >>> [p.name for p in trim(r, keep=r / "a", limit=250)]
    ['b']
    """
    limit = max_bytes() if limit is None else limit
    try:
        folders = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []
    usage = {p: _usage(p) for p in folders}
    total = sum(size for _, size in usage.values())
    removed: list[Path] = []
    for p in sorted(folders, key=lambda p: usage[p][0]):
        if total <= limit:
            break
        if p.resolve() == keep.resolve():
            continue
        shutil.rmtree(p, ignore_errors=True)
        total -= usage[p][1]
        removed.append(p)
    if removed:
        log.info("partition cache over %d MB: removed %d least recently used folders", limit >> 20, len(removed))
    return removed

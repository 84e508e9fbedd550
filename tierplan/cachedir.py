"""tierplan's per-user cache folder, one rule for every layer that caches something.

$TIERPLAN_CACHE, else $XDG_CACHE_HOME/tierplan, else ~/.cache/tierplan; never the package or the
source tree (what is measured or derived on this host stays with this host's user).
"""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """The cache folder: $TIERPLAN_CACHE, else $XDG_CACHE_HOME/tierplan, else ~/.cache/tierplan.

    >>> import os; os.environ["TIERPLAN_CACHE"] = "/tmp/tp"; str(user_cache_dir())
    '/tmp/tp'
    >>> del os.environ["TIERPLAN_CACHE"]
    """
    if os.environ.get("TIERPLAN_CACHE"):
        return Path(os.environ["TIERPLAN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tierplan"

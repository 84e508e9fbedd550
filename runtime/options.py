"""A stage worker's options (`StageOptions`), as the controller sends them with Configure.

Kept apart from runtime.stage so that the controller and deploy set them without importing the worker.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tierplan.runtime.wire import CHUNK_BYTES

__all__ = ["StageOptions", "LINKS_DIR_MARKER", "shared_links_dir"]


@dataclass(frozen=True)
class StageOptions:
    """Knobs of a stage worker (sent with Configure as JSON)."""

    threads: int = 0                     # onnxruntime intra-op threads; 0 = its default
    batch_sites: tuple[str, ...] = ()    # sites that batch requests (cloud tier by default)
    max_batch: int = 8
    max_wait_ms: float = 2.0
    chunk_bytes: int = CHUNK_BYTES
    sender_threads: int = 8
    shm: bool = True                     # same-host peers: tensor bytes in shared memory (runtime.shm)
    # a directory every process of one deployment on this host shares: emulated links keep one
    # bandwidth budget across processes (runtime.links.LinkEmulator shared_dir); "" = per process
    links_shared_dir: str = ""
    # threads per worker that run nodes side by side (each request runs on one of them); runners
    # that are not thread-safe (TVM, LiteRT) still run one call at a time. One by default: with
    # every site on 2 shared cores (benchmarks/runtime.py) 4 threads cost 6% more CPU per request
    # and gave no more throughput; raise it for a site whose host has cores to spare
    compute_threads: int = 1

    @classmethod
    def from_json(cls, text: str) -> "StageOptions":
        """Options as a peer sent them, each number checked against `_OPTION_BOUNDS` (a worker checks
        `links_shared_dir` when it uses it: `shared_links_dir`)."""
        raw = json.loads(text) if text else {}
        if not isinstance(raw, dict):
            raise ValueError("options_json: expected a JSON object")
        raw["batch_sites"] = tuple(str(s) for s in raw.get("batch_sites", ()) or ())
        for name, (lo, hi) in _OPTION_BOUNDS.items():
            v = raw.get(name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi):
                raise ValueError(f"options_json: {name}={v!r} is outside [{lo}, {hi}]")
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})

    def to_json(self) -> str:
        d = dict(self.__dict__)
        d["batch_sites"] = list(self.batch_sites)
        return json.dumps(d)


# bounds of StageOptions' numbers as a peer may set them (a worker keeps its threads and memory)
_OPTION_BOUNDS = {"threads": (0, 256), "max_batch": (1, 4096), "max_wait_ms": (0, 60_000),
                  "chunk_bytes": (1 << 10, 64 << 20), "sender_threads": (1, 256), "compute_threads": (1, 64)}
LINKS_DIR_MARKER = ".tierplan-links"   # runtime.deploy marks the shared link folder of a deployment with it


def shared_links_dir(path: str) -> str | None:
    """The shared link folder a peer names, if this host's deploy made it (a real folder of this user
    holding LINKS_DIR_MARKER): the worker writes bucket files into it. "" gives None."""
    if not path:
        return None
    p = Path(path)
    if p.is_symlink() or not p.is_dir() or not (p / LINKS_DIR_MARKER).is_file() or p.stat().st_uid != os.getuid():
        raise ValueError(f"options_json: links_shared_dir {path!r} is not a folder a deploy on this host made "
                         f"(no {LINKS_DIR_MARKER} in it)")
    return str(p)


"""Content-addressed artifact store: artifacts/<sha>/piece.<ext> + meta.json, and the manifest.

The key of an artifact is sha256 over the piece's bytes, the target, the backend, the compiler
versions and the build settings (tuning, session options): the same inputs always land in the
same directory, so compiling an unchanged plan again finds everything and does no work.
Failed builds are stored too (meta.json with `ok: false` and the reason) so a backend that
rejects a piece is not retried until something in its key changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from tierplan.partition.onnx_graph import model_sha256

__all__ = ["ArtifactStore", "artifact_key", "file_sha256", "canonical_json", "MANIFEST_NAME", "META_NAME"]

MANIFEST_NAME = "manifest.json"
META_NAME = "meta.json"


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal strings (and hashes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes (the same digest partition/ keys its cache by)."""
    return model_sha256(path)


def artifact_key(piece_sha256: str, target: Mapping, backend: str, versions: Mapping, settings: Mapping) -> str:
    """sha256 of (piece bytes' hash, target, backend, compiler versions, build settings)."""
    h = hashlib.sha256()
    for part in (piece_sha256, canonical_json(dict(target)), backend,
                 canonical_json(dict(versions)), canonical_json(dict(settings))):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


class ArtifactStore:
    """A directory of `<sha>/` folders, each holding one artifact and its meta.json.

    Writes are atomic: a build happens in a temporary folder next to the store and is renamed
    into place when complete, so a crash never leaves a half-written artifact behind.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def dir(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> dict | None:
        """The stored meta of `key` when its folder is complete (and its file present), else None."""
        meta_path = self.dir(key) / META_NAME
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        if meta.get("ok") and not (self.dir(key) / str(meta.get("file_name", ""))).is_file():
            return None
        return meta

    def put(self, key: str, build: Callable[[Path], dict]) -> dict:
        """Run `build(tmpdir) -> meta` in a fresh folder and move it to `<root>/<key>` atomically.

        `meta` must carry `ok` (bool) and, when ok, `file_name` (a file build wrote in tmpdir).
        If another process stored the same key meanwhile, its copy is kept and returned.
        """
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-", dir=self.root))
        try:
            meta = dict(build(tmp))
            meta["key"] = key
            (tmp / META_NAME).write_text(json.dumps(meta, indent=2, default=str))
            dest = self.dir(key)
            existing = self.get(key)
            if existing is not None:      # stored meanwhile by another process: keep that copy
                return existing
            if dest.exists():             # an incomplete folder (no meta, or its file gone)
                shutil.rmtree(dest)
            try:
                os.replace(tmp, dest)
            except OSError:               # lost a race to another writer of the same key
                existing = self.get(key)
                if existing is None:
                    raise
                return existing
            return meta
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def file(self, key: str, meta: Mapping) -> Path:
        """Absolute path of the artifact file of a stored key."""
        return (self.dir(key) / str(meta["file_name"])).resolve()

    def write_manifest(self, manifest: Mapping) -> Path:
        """Write <root>/manifest.json atomically."""
        path = self.root / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
        os.replace(tmp, path)
        return path

"""A site's piece cache: the only place a stage worker writes the artifact bytes `Configure` carries.

The wire is hostile (see SECURITY.md): a `PieceFile` names its node and may carry a `filename` and
a manifest entry with paths in it, none of which is honoured as a path. The worker chooses every
name: `<sha256 of the bytes><extension>`, the extension taken from the backend's allowlist
(`EXTENSIONS`). The bytes must match the entry's `sha256` when it gives one, fit the size limits
(one file, one message, the whole cache), and the resolved path must lie inside the cache root.
The runner then loads only that file, from an entry rebuilt out of the few fields a backend
needs (`ENTRY_FIELDS`): paths a peer sends (`file`, `path`, `rel_file`, `host_file`, ...) are
dropped.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Mapping

from tierplan.runtime.wire import MAX_MESSAGE_BYTES
from tierplan.errors import InputError

__all__ = ["PieceCache", "EXTENSIONS", "ENTRY_FIELDS", "MAX_PIECE_FILE_BYTES", "MAX_CONFIGURE_FILES_BYTES",
           "DEFAULT_CACHE_LIMIT_BYTES", "safe_entry"]

#: backend -> the file extensions its artifacts may have (the first is the default)
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": (".onnx",),
    "ort": (".onnx",),
    "litert": (".tflite",),
    "tvm": (".so", ".tar"),
}
#: manifest entry fields a runner may read from a peer's entry; everything else is dropped
ENTRY_FIELDS = ("backend", "inputs", "outputs", "options", "target", "site", "device")
#: one piece file (a Configure message carries all of a site's files, so it is bounded by that too)
MAX_PIECE_FILE_BYTES = MAX_MESSAGE_BYTES
#: all files of one Configure together (gRPC refuses a bigger message before the handler sees it)
MAX_CONFIGURE_FILES_BYTES = MAX_MESSAGE_BYTES
#: the whole cache of one worker; the least recently used files are evicted to make room (a loaded
#: runner keeps its model in memory, and every Configure carries the bytes again)
DEFAULT_CACHE_LIMIT_BYTES = 4 << 30


def safe_entry(entry: Mapping, node: str, backend: str, path: Path) -> dict:
    """The entry a runner gets: the allowed fields of a peer's entry, the node as `piece`, the
    backend, and the worker-written `path` as the only file."""
    out = {k: entry[k] for k in ENTRY_FIELDS if k in entry}
    out.update(piece=node, backend=backend, file=str(path))
    return out


class PieceCache:
    """Flat, content-addressed folder of piece files written by this worker (mode 0700/0600)."""

    def __init__(self, root: str | Path, limit_bytes: int = DEFAULT_CACHE_LIMIT_BYTES,
                 file_limit_bytes: int = MAX_PIECE_FILE_BYTES) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self.root = self.root.resolve()
        self.limit_bytes = int(limit_bytes)
        self.file_limit_bytes = int(file_limit_bytes)
        self._lock = threading.Lock()

    def extension(self, node: str, backend: str, filename: str) -> str:
        """The extension of a piece's file: the sender's suffix if the backend allows it, else the
        backend's default; a backend without an allowlist, or a suffix outside it, is refused."""
        allowed = EXTENSIONS.get(backend)
        if allowed is None:
            raise InputError(f"piece {node}: backend {backend!r} is not one this worker loads. "
                             f"To fix: compile the piece for one of {', '.join(EXTENSIONS)}")
        suffix = Path(filename).suffix.lower() if filename else ""
        if not suffix:
            return allowed[0]
        if suffix not in allowed:
            raise InputError(f"piece {node}: a {backend} artifact may not be a {suffix!r} file "
                             f"(allowed: {', '.join(allowed)}). To fix: ship the compiled artifact")
        return suffix

    def check_sizes(self, sizes: Mapping[str, int]) -> None:
        """Refuse one file over the file limit, or files whose sum is over one message's limit."""
        for node, n in sizes.items():
            self._check_file(node, n)
        total = sum(sizes.values())
        if total > MAX_CONFIGURE_FILES_BYTES:
            raise InputError(f"Configure: {total} bytes of piece files are over the limit of "
                             f"{MAX_CONFIGURE_FILES_BYTES} bytes per message. To fix: put fewer pieces on one site")

    def put(self, node: str, data: bytes, ext: str, sha256: str | None = None) -> Path:
        """Write `data` as `<sha256><ext>` (once) and return its path; `sha256` is the digest the
        manifest entry promises. Older files are evicted to make room under the cache's limit."""
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and str(sha256).lower() != digest:
            raise InputError(f"piece {node}: the file's sha256 {digest[:16]}... does not match the manifest's "
                             f"{str(sha256)[:16]}... To fix: re-run `tierplan compile` and deploy again")
        self._check_file(node, len(data))
        path = self.path_for(digest, ext)
        with self._lock:
            if path.is_file() and not path.is_symlink() and path.stat().st_size == len(data):
                os.utime(path)          # recently used: last to be evicted
                return path
            self._make_room(node, len(data))
            tmp = self.root / f".{digest}{ext}.{os.getpid()}.{threading.get_ident()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return path

    def _check_file(self, node: str, nbytes: int) -> None:
        if nbytes > self.file_limit_bytes:
            raise InputError(f"piece {node}: file of {nbytes} bytes is over the limit of {self.file_limit_bytes} "
                             "bytes per piece file. To fix: split the model into smaller pieces")

    def path_for(self, digest: str, ext: str) -> Path:
        """`root/<digest><ext>`, checked to resolve to a file directly inside the root."""
        name = f"{digest}{ext}"
        if not all(c in "0123456789abcdef" for c in digest) or "/" in ext or os.sep in ext:
            raise InputError(f"piece cache: refusing the file name {name!r}")
        path = (self.root / name).resolve()
        if path.parent != self.root:
            raise InputError(f"piece cache: {name!r} resolves outside the cache {self.root}")
        return path

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.iterdir() if p.is_file() and not p.is_symlink())

    def _make_room(self, node: str, nbytes: int) -> None:
        """Evict files, least recently used first, until `nbytes` more fit under the limit; refuse a
        file bigger than the whole cache."""
        files = [p for p in self.root.iterdir() if p.is_file() and not p.is_symlink()]
        used = sum(p.stat().st_size for p in files)
        if nbytes <= self.limit_bytes:
            for p in sorted(files, key=lambda p: p.stat().st_mtime):
                if used + nbytes <= self.limit_bytes:
                    break
                used -= p.stat().st_size
                p.unlink(missing_ok=True)
        if used + nbytes > self.limit_bytes:
            raise InputError(f"piece {node}: {nbytes} more bytes would take the site's cache over its limit of "
                             f"{self.limit_bytes} bytes ({used} in use). To fix: give the worker a bigger "
                             "cache (--cache-max-mb) or put fewer pieces on this site")

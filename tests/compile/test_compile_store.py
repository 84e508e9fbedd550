"""Unit tests of the content-addressed artifact store and the manifest's input checks (no TVM)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tierplan.runtime.backends.base import TensorSpec, median_ms, random_inputs, target_arch
from tierplan.runtime.store import ArtifactStore, artifact_key, file_sha256

BASE = dict(piece_sha256="ab" * 32, target={"kind": "llvm"}, backend="tvm",
            versions={"tvm": "0.27.0.post1", "onnxruntime": "1.32.0"}, settings={"tune": {}})


def _key(**over) -> str:
    args = {**BASE, **over}
    return artifact_key(args["piece_sha256"], args["target"], args["backend"], args["versions"], args["settings"])


def test_key_is_stable_and_order_independent():
    """The same inputs give the same key whatever the dict order (content addressing)."""
    k1 = _key(target={"kind": "llvm", "mtriple": "aarch64-linux-gnu"})
    k2 = _key(target={"mtriple": "aarch64-linux-gnu", "kind": "llvm"})
    assert k1 == k2 and len(k1) == 64


@pytest.mark.parametrize("field,value", [
    ("piece_sha256", "cd" * 32),
    ("target", {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}),
    ("backend", "onnxruntime"),
    ("versions", {"tvm": "0.28.0", "onnxruntime": "1.32.0"}),
    ("settings", {"tune": {"trials": 16, "max_tasks": None}}),
])
def test_key_changes_with_every_component(field, value):
    """Piece bytes, target, backend, compiler versions and tune settings each change the key."""
    assert _key(**{field: value}) != _key()


def test_store_put_get_roundtrip(tmp_path):
    """A stored build is found again with its file; the build folder moves in atomically."""
    store = ArtifactStore(tmp_path)
    key = _key()

    def build(tmp):
        (tmp / "piece.onnx").write_bytes(b"onnx-bytes")
        return {"ok": True, "file_name": "piece.onnx", "latency_ms": 1.5}

    assert store.get(key) is None
    meta = store.put(key, build)
    assert meta["key"] == key
    again = store.get(key)
    assert again is not None and again["latency_ms"] == 1.5
    assert store.file(key, again).read_bytes() == b"onnx-bytes"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_store_failed_build_is_remembered(tmp_path):
    """A failed build is stored with its reason so it is not retried with identical inputs."""
    store = ArtifactStore(tmp_path)
    store.put("k" * 64, lambda tmp: {"ok": False, "reason": "TVM frontend rejected the piece"})
    meta = store.get("k" * 64)
    assert meta is not None and meta["ok"] is False and "frontend" in meta["reason"]


def test_store_crashing_build_leaves_nothing(tmp_path):
    """A build that raises leaves no folder behind (never half-written)."""
    store = ArtifactStore(tmp_path)

    def boom(tmp):
        (tmp / "piece.so").write_bytes(b"partial")
        raise RuntimeError("compiler crashed")

    with pytest.raises(RuntimeError):
        store.put("c" * 64, boom)
    assert store.get("c" * 64) is None
    assert list(tmp_path.iterdir()) == []


def test_store_missing_file_is_a_miss(tmp_path):
    """An entry whose artifact file vanished is treated as absent (rebuilt), not returned."""
    store = ArtifactStore(tmp_path)
    key = _key()
    store.put(key, lambda tmp: ((tmp / "piece.so").write_bytes(b"x"), {"ok": True, "file_name": "piece.so"})[1])
    (tmp_path / key / "piece.so").unlink()
    assert store.get(key) is None


def test_manifest_written_atomically(tmp_path):
    """write_manifest leaves a parseable manifest.json and no temporary file."""
    store = ArtifactStore(tmp_path)
    path = store.write_manifest({"artifacts": [{"piece": "m/p0"}]})
    assert json.loads(path.read_text())["artifacts"][0]["piece"] == "m/p0"
    assert not list(tmp_path.glob("*.tmp"))


def test_file_sha256_matches_bytes(tmp_path):
    """file_sha256 hashes the file's bytes (different bytes, different hash)."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    assert file_sha256(a) != file_sha256(b)
    assert file_sha256(a) == "7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed"


def test_random_inputs_deterministic_and_typed():
    """Check inputs are reproducible per seed and have the declared shape and dtype."""
    specs = [TensorSpec("x", (2, 3), "float32"), TensorSpec("ids", (4,), "int64"), TensorSpec("m", (2,), "bool")]
    a, b = random_inputs(specs, seed=3), random_inputs(specs, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["x"].shape == (2, 3) and a["x"].dtype == np.float32
    assert a["ids"].dtype == np.int64 and set(np.unique(a["ids"])) <= {0, 1}
    assert a["m"].dtype == np.bool_


def test_median_ms_respects_budget():
    """Timing stops early once the budget is spent but always makes at least one timed call."""
    calls = []
    ms, n = median_ms(lambda: calls.append(1), runs=1000, budget_s=0.0, warmup=0)
    assert n == 1 and len(calls) == 1 and ms >= 0


def test_target_arch_from_mtriple():
    """A target's architecture comes from its mtriple; no mtriple means this machine."""
    assert target_arch({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}) == "aarch64"
    assert target_arch({"kind": "llvm", "mtriple": "arm64-apple-darwin"}) == "aarch64"


def test_store_keeps_first_complete_copy(tmp_path):
    """Storing a key that is already complete keeps the stored copy (concurrent compiles agree)."""
    store = ArtifactStore(tmp_path)
    key = _key()
    store.put(key, lambda tmp: ((tmp / "piece.so").write_bytes(b"first"), {"ok": True, "file_name": "piece.so"})[1])
    meta = store.put(key, lambda tmp: ((tmp / "piece.so").write_bytes(b"second"),
                                       {"ok": True, "file_name": "piece.so"})[1])
    assert store.file(key, meta).read_bytes() == b"first"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]

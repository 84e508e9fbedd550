"""partition_model: one ONNX file -> verified pieces on disk with manifest.json, cached by model hash."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import networkx as nx
import numpy as np

from tierplan.cachedir import user_cache_dir
from tierplan.partition.cachetrim import touch, trim
from tierplan.partition.candidates import candidate_cuts, cuts_at
from tierplan.partition.cuts import Cut, Partition, coarsen, partition_from_cuts, topological_order
from tierplan.partition.extract import VerifyResult, build_pieces, verify_pieces, write_pieces
from tierplan.partition.feeds import random_feeds
from tierplan.partition.onnx_graph import load_onnx, model_sha256
from tierplan.partition.types import ConvShape, OpCost, Piece, TensorInfo
from tierplan.errors import InputError

__all__ = ["PartitionResult", "partition_model", "cache_root", "load_manifest", "piece_to_dict",
           "tensor_to_dict", "DEFAULT_MAX_PIECES", "MANIFEST_VERSION"]

DEFAULT_MAX_PIECES = 8      # ModelSpec.max_pieces default: what the planner handles per model
MANIFEST_VERSION = 2   # 2: a Conv's op record carries its channels, groups, kernel and strides


@dataclass(frozen=True)
class PartitionResult:
    """Pieces of one model, the manifest written beside them, and (when computed now) the op graph."""

    model: str
    pieces: list[Piece]
    manifest: dict
    out_dir: Path
    graph: nx.DiGraph | None = None
    partition: Partition | None = None
    verify: VerifyResult | None = None
    cached: bool = False


def cache_root() -> Path:
    """Where partition results are cached: <user cache>/partition (tierplan.cachedir: $TIERPLAN_CACHE,
    else $XDG_CACHE_HOME/tierplan, else ~/.cache/tierplan), trimmed by partition.cachetrim."""
    return user_cache_dir() / "partition"


def tensor_to_dict(t: TensorInfo) -> dict:
    return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "nbytes": t.nbytes}


def _tensor(d: Mapping) -> TensorInfo:
    return TensorInfo(name=d["name"], shape=tuple(int(x) for x in d["shape"]), dtype=d["dtype"], nbytes=int(d["nbytes"]))


def piece_to_dict(p: Piece, base: Path | None = None) -> dict:
    """A piece as in manifest.json (`file` relative to `base` when given)."""
    file = p.file
    if file is not None and base is not None:
        file = os.path.relpath(file, base)
    return {"id": p.id, "index": p.index, "inputs": [tensor_to_dict(t) for t in p.inputs],
            "outputs": [tensor_to_dict(t) for t in p.outputs], "flops": p.flops, "param_bytes": p.param_bytes,
            "file": file, "nodes": list(p.nodes),
            "ops": [[o.name, o.op_type, o.flops, o.param_bytes, o.act_bytes] + ([_conv_to_dict(o.conv)] if o.conv else [])
                    for o in p.ops]}


def _conv_to_dict(c: ConvShape) -> dict:
    return {"in_channels": c.in_channels, "out_channels": c.out_channels, "groups": c.groups,
            "kernel": list(c.kernel), "strides": list(c.strides)}


def _conv(d: Mapping | None) -> ConvShape | None:
    if not d:
        return None
    return ConvShape(in_channels=int(d["in_channels"]), out_channels=int(d["out_channels"]), groups=int(d["groups"]),
                     kernel=tuple(int(k) for k in d.get("kernel", ())),
                     strides=tuple(int(k) for k in d.get("strides", ())))


def _piece(d: Mapping, model: str, base: Path) -> Piece:
    return Piece(id=d["id"], model=model, index=int(d["index"]), nodes=tuple(d.get("nodes", ())),
                 inputs=tuple(_tensor(t) for t in d["inputs"]), outputs=tuple(_tensor(t) for t in d["outputs"]),
                 flops=float(d["flops"]), param_bytes=int(d["param_bytes"]),
                 ops=tuple(OpCost(name=o[0], op_type=o[1], flops=float(o[2]), param_bytes=int(o[3]),
                                  act_bytes=int(o[4]), conv=_conv(o[5] if len(o) > 5 else None))
                           for o in d.get("ops", ())),
                 file=str((base / d["file"]).resolve()) if d.get("file") else None)


def load_manifest(path: str | Path) -> tuple[dict, list[Piece]]:
    """Read a manifest.json written by partition_model; its pieces with absolute file paths."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
        pieces = [_piece(d, manifest["model"], path.parent) for d in manifest["pieces"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a partition manifest ({type(e).__name__}: {e}); "
                         "re-run `tierplan partition`") from None
    return manifest, pieces


def _cache_key(sha: str, dims: Mapping[str, int] | None, max_pieces: int, model: str,
               cuts: Sequence[int] | str | None = None) -> str:
    key = {"sha": sha, "dims": dict(sorted((dims or {}).items())), "k": max_pieces, "model": model,
           "v": MANIFEST_VERSION}
    if cuts is not None:   # pieces at given positions, or "segments:N" (the candidate cuts)
        key["cuts"] = cuts if isinstance(cuts, str) else [int(c) for c in cuts]
    text = json.dumps(key, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cached(out_dir: Path, key: str, verify: bool) -> tuple[dict, list[Piece]] | None:
    mpath = out_dir / "manifest.json"
    if not mpath.is_file():
        return None
    try:
        manifest, pieces = load_manifest(mpath)
    except InputError:
        return None
    if manifest.get("cache_key") != key or not all(p.file and Path(p.file).is_file() for p in pieces):
        return None
    if verify and manifest.get("verify", {}).get("max_abs_diff") is None:
        return None
    return manifest, pieces


def partition_model(path: str | Path, max_pieces: int = DEFAULT_MAX_PIECES, out_dir: str | Path | None = None,
                    dims: Mapping[str, int] | None = None, verify: bool = False, *,
                    model_name: str | None = None, feeds: Mapping[str, np.ndarray] | None = None,
                    use_cache: bool = True, cuts: Sequence[int] | None = None,
                    segments: int | None = None) -> PartitionResult:
    """Partition an ONNX model into at most `max_pieces` pieces written under `out_dir`.

    `cuts` (positions of the model's topological order, as manifest.json's `cuts` lists them)
    cuts exactly there instead (the pieces the planner chose); `segments` cuts at the candidate
    cut points (partition.candidates: at most that many segments), what the planner chooses from.

    `out_dir` defaults to a cache folder keyed by the model's hash, dims and `max_pieces`; when
    its manifest.json matches that key the pieces are read back instead of recomputed.
    `verify` runs the whole model and the chained pieces in onnxruntime on the same inputs
    (`feeds`, else random) and records the largest difference in the manifest.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    if max_pieces < 1:
        raise InputError(f"--max-pieces must be >= 1, got {max_pieces}")
    sha = model_sha256(path)
    name = model_name or path.stem
    how: Sequence[int] | str | None = (list(cuts) if cuts is not None
                                       else f"segments:{segments}" if segments is not None else None)
    key = _cache_key(sha, dims, max_pieces, name, how)
    out = Path(out_dir) if out_dir is not None else cache_root() / f"{name}-{key}"
    if use_cache and feeds is None:
        hit = _cached(out, key, verify)
        if hit is not None:
            manifest, pieces = hit
            touch(out)
            v = manifest.get("verify") or {}
            vr = (VerifyResult(v["max_abs_diff"], v.get("max_rel_diff", v["max_abs_diff"]), tuple(v.get("outputs", ())))
                  if v.get("max_abs_diff") is not None else None)
            return PartitionResult(model=name, pieces=pieces, manifest=manifest, out_dir=out, verify=vr, cached=True)

    G = load_onnx(path, dims, feeds)
    G.graph["model"] = name
    if cuts is not None:
        part = partition_from_cuts(topological_order(G), cuts_at(G, cuts))
    elif segments is not None:
        part = partition_from_cuts(topological_order(G), candidate_cuts(G, segments))
    else:
        part = coarsen(G, max_pieces)
    pieces = write_pieces(G, build_pieces(G, part, name), out)
    vr = None
    if verify:
        run_feeds = {**random_feeds(G.graph["inputs"], 0), **dict(feeds or {})}
        vr = verify_pieces(G, pieces, run_feeds)
    manifest = _manifest(G, name, path, sha, key, dims, max_pieces, pieces, part.cuts, vr, out)
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / "manifest.json")
    if out_dir is None:
        trim(cache_root(), keep=out)
    return PartitionResult(model=name, pieces=pieces, manifest=manifest, out_dir=out, graph=G, partition=part,
                           verify=vr, cached=False)


def _manifest(G: nx.DiGraph, name: str, path: Path, sha: str, key: str, dims, max_pieces: int,
              pieces: list[Piece], cuts: tuple[Cut, ...], vr: VerifyResult | None, out: Path) -> dict:
    return {
        "model": name, "source": str(path.resolve()), "sha256": sha, "cache_key": key,
        "dims": dict(dims or {}), "max_pieces": max_pieces, "manifest_version": MANIFEST_VERSION,
        "ops": G.number_of_nodes(), "flops": float(sum(p.flops for p in pieces)),
        "param_bytes": int(sum(p.param_bytes for p in pieces)),
        "uncounted_ops": list(G.graph.get("uncounted_ops", ())),
        "inputs": [tensor_to_dict(t) for t in G.graph["inputs"]],
        "outputs": [tensor_to_dict(t) for t in G.graph["outputs"]],
        "cuts": [{"position": c.position, "tensors": list(c.tensors), "nbytes": c.nbytes} for c in cuts],
        "pieces": [piece_to_dict(p, out) for p in pieces],
        "verify": (vr.as_dict() if vr is not None else {"max_abs_diff": None, "max_rel_diff": None, "outputs": []}),
    }

"""`tierplan partition MODEL.onnx --out DIR [--max-pieces K] [--verify] [--dims N=V,...] [--json]`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from tierplan.errors import InfeasibleError, InputError

if TYPE_CHECKING:
    from rich.console import JustifyMethod

__all__ = ["register", "parse_dims", "prepare_out_dir", "VERIFY_REL_TOLERANCE"]

VERIFY_REL_TOLERANCE = 1e-5   # chained pieces vs whole model, max |diff| / max |output|


def parse_dims(items: list[str] | None) -> dict[str, int]:
    """`["batch=1,seq=128", "x[2]=48"]` -> {"batch": 1, "seq": 128, "x[2]": 48}; InputError on bad items."""
    out: dict[str, int] = {}
    for item in items or []:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, value = part.rpartition("=")
            if not sep or not name:
                raise InputError(f"--dims {part!r}: expected NAME=VALUE (e.g. --dims batch=1,x[2]=48)")
            try:
                v = int(value)
            except ValueError:
                raise InputError(f"--dims {part!r}: {value!r} is not an integer") from None
            if v <= 0:
                raise InputError(f"--dims {part!r}: a dimension must be > 0")
            out[name.strip()] = v
    return out


def prepare_out_dir(out: Path, flag: str = "--out") -> None:
    """Create the folder `out` (with parents); InputError naming `flag` when a file is in the way or it cannot be written."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{flag} {out}: is an existing file, not a folder. To fix: pass a folder (it is created "
                         "if missing), or move the file away")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{flag} {out}: cannot create the folder ({e.strerror or e.__class__.__name__}). "
                         "To fix: pass a folder path you can write to") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {out}: cannot write in this folder (permission denied). "
                         "To fix: pass a folder you can write to")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _print(manifest: dict[str, Any], out_dir: Path, cached: bool) -> None:
    from tierplan.console import console
    from rich.table import Table

    con = console()
    t = Table(title=f"{manifest['model']}: {len(manifest['pieces'])} piece(s) from {manifest['ops']} operators"
                    + (" (cached)" if cached else ""), title_justify="left")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("piece", "left"), ("ops", "right"), ("GFLOPs", "right"), ("params", "right"), ("in", "right"),
        ("out", "right"), ("file", "left"))
    for col, just in columns:
        t.add_column(col, justify=just)
    for p in manifest["pieces"]:
        t.add_row(f"p{p['index']}", str(len(p["nodes"])), f"{p['flops'] / 1e9:.3f}", _fmt_bytes(p["param_bytes"]),
                  f"{len(p['inputs'])}: {_fmt_bytes(sum(i['nbytes'] for i in p['inputs']))}",
                  f"{len(p['outputs'])}: {_fmt_bytes(sum(o['nbytes'] for o in p['outputs']))}",
                  Path(p["file"]).name)
    con.print(t)
    con.print(f"total {manifest['flops'] / 1e9:.3f} GFLOPs, {_fmt_bytes(manifest['param_bytes'])} of weights; "
              f"cuts carry {', '.join(_fmt_bytes(c['nbytes']) for c in manifest['cuts']) or 'nothing'}; "
              f"written to {out_dir}/")
    if manifest.get("uncounted_ops"):
        con.print(f"[yellow]FLOPs not counted for[/]: {', '.join(manifest['uncounted_ops'])}")
    v = manifest.get("verify") or {}
    if v.get("max_abs_diff") is not None:
        ok = v["max_rel_diff"] <= VERIFY_REL_TOLERANCE
        con.print(f"verify: chained pieces vs whole model: max abs diff {v['max_abs_diff']:.3g}, "
                  f"max rel diff {v['max_rel_diff']:.3g} " + ("[green]OK[/]" if ok else "[red]MISMATCH[/]"))


def register(app: typer.Typer) -> None:
    @app.command("partition")
    def partition_cmd(
        model: Path = typer.Argument(..., help="ONNX model file."),
        out: Path = typer.Option(..., "--out", help="Directory for the piece files and manifest.json."),
        max_pieces: int = typer.Option(8, "--max-pieces", min=1, help="At most this many pieces."),
        verify: bool = typer.Option(False, "--verify", help="Run whole model and chained pieces; print the max difference."),
        dims: list[str] = typer.Option(None, "--dims", help="Dynamic dimensions, NAME=VALUE[,NAME=VALUE] (NAME or TENSOR[AXIS])."),
        as_json: bool = typer.Option(False, "--json", help="Print manifest.json to stdout."),
    ) -> None:
        """Cut an ONNX model into at most K verified standalone pieces at its cheapest cut points."""
        from tierplan.partition.api import partition_model

        created = not out.exists()
        prepare_out_dir(out)
        try:
            res = partition_model(model, max_pieces=max_pieces, out_dir=out, dims=parse_dims(dims), verify=verify)
        except BaseException:
            if created:   # nothing half-written: a folder this command made goes when the model is refused
                shutil.rmtree(out, ignore_errors=True)
            raise
        if as_json:
            print(json.dumps(res.manifest, indent=1))
        else:
            _print(res.manifest, res.out_dir, res.cached)
        v = res.manifest.get("verify") or {}
        if verify and v.get("max_rel_diff") is not None and v["max_rel_diff"] > VERIFY_REL_TOLERANCE:
            e = InfeasibleError(f"{model}: chained pieces differ from the whole model by {v['max_rel_diff']:.3g} "
                                f"(relative) > {VERIFY_REL_TOLERANCE}; report this model")
            e.result_printed = as_json   # the manifest (with its verify figures) is the JSON result
            raise e

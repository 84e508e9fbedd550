"""`tierplan profile MODEL|DIR [--backend ort|tvm|litert] [--json]`: measure a model or its pieces here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import typer

if TYPE_CHECKING:
    from tierplan.devices.profile import Measurement
    from tierplan.partition.types import Piece

__all__ = ["register"]


class _RunOptions(TypedDict):
    """How each file is timed (keyword arguments of devices.profile.measure)."""

    backend: str
    threads: int
    runs: int
    warmup: int


def register(app: typer.Typer) -> None:
    @app.command("profile")
    def profile_cmd(
        target: Path = typer.Argument(..., metavar="MODEL|DIR",
                                      help="An ONNX (or .tflite) file, or a `tierplan partition` output directory."),
        backend: str = typer.Option("ort", "--backend", help="ort (onnxruntime), tvm or litert."),
        threads: int = typer.Option(1, "--threads", min=1, help="Intra-op threads (fixed for stable figures)."),
        runs: int = typer.Option(20, "--runs", min=1, help="Timed runs per file (the median is reported)."),
        warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed warm-up runs."),
        dims: list[str] = typer.Option(None, "--dims", help="Bind dynamic input dimensions: NAME=VALUE[,...]."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Measure latency on this machine: warm-up, then the median of N runs with fixed threads."""
        from tierplan.devices.pieces import load_target
        from tierplan.devices.profile import BACKENDS, measure, measure_piece
        from tierplan.commands.partition import parse_dims
        from tierplan.errors import InputError

        if backend not in BACKENDS:
            raise InputError(f"--backend: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        kw: _RunOptions = {"backend": backend, "threads": threads, "runs": runs, "warmup": warmup}
        if target.is_file() and target.suffix == ".tflite":
            results = [measure(target, **kw)]
        else:
            pieces = load_target(target, parse_dims(dims) or None)
            if target.is_file() and dims:  # the file has dynamic dims: run a bound copy
                results = [_measure_bound(target, pieces[0], parse_dims(dims), kw)]
            else:
                results = [measure_piece(p, **kw) for p in pieces]
        rows: list[dict[str, Any]] = [{"id": m.id, "latency_ms": m.median_ms, "p10_ms": m.p10_ms,
                                       "p90_ms": m.p90_ms, "min_ms": m.min_ms, "cpu_ms": m.cpu_median_ms,
                                       "runs": m.runs, "file": m.file} for m in results]
        out = {"target": str(target), "backend": backend, "threads": threads,
               "latency_ms": sum(m.median_ms for m in results), "pieces": rows}
        if as_json:
            print(json.dumps(out, indent=2))
            return
        from tierplan.console import console
        from rich.table import Table

        t = Table(title=f"{target}: measured on this machine ({backend}, {threads} thread(s), median of {runs}; "
                        f"CPU ms = CPU time of the calling thread, immune to other processes)",
                  title_justify="left")
        for col in ("piece", "median ms", "p10 ms", "p90 ms", "CPU ms", "runs"):
            t.add_column(col, justify="left" if col == "piece" else "right")
        for p in rows:
            t.add_row(p["id"], f"{p['latency_ms']:.3f}", f"{p['p10_ms']:.3f}", f"{p['p90_ms']:.3f}",
                      f"{p['cpu_ms']:.3f}", str(p["runs"]))
        if len(results) > 1:
            t.add_row("[bold]total[/]", f"[bold]{out['latency_ms']:.3f}[/]", "", "",
                      f"{sum(p['cpu_ms'] for p in rows):.3f}", "")
        console().print(t)


def _measure_bound(path: Path, piece: Piece, dims: dict[str, int], kw: _RunOptions) -> Measurement:
    """Measure a model with dynamic input dims: write a copy with the dims bound, time it."""
    import tempfile

    import onnx

    from tierplan.devices.profile import measure
    from tierplan.partition.onnx_graph import bind_dims, read_model

    with tempfile.TemporaryDirectory() as tmp:
        bound = Path(tmp) / path.name
        onnx.save(bind_dims(read_model(path), dims, path), str(bound))
        m = measure(bound, inputs=list(piece.inputs), piece_id=piece.id, **kw)
    from dataclasses import replace
    return replace(m, file=str(path))

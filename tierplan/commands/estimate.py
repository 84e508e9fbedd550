"""`tierplan estimate MODEL|DIR --device NAME [--json]`: predicted latency per piece and in total."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

__all__ = ["register", "estimate"]


def estimate(target: Path, device_name: str, batch: int = 1, precision: str = "fp32",
             dims: dict[str, int] | None = None, calibration: Path | None = None, auto_calibrate: bool = True,
             progress: bool = False) -> dict[str, Any]:
    """The JSON object `tierplan estimate --json` prints (DESIGN.md field names, plus detail).

    `calibration`: a calibration file (`--calibration`; one of `local` made on another CPU is refused
    with a warning). For `local` with no calibration fitting this CPU, `auto_calibrate` makes a quick
    one first (the pieces being estimated among its samples) and caches it.
    """
    from tierplan.devices.catalog import get_device
    from tierplan.devices.costmodel import CostModel
    from tierplan.devices.pieces import load_target

    device = get_device(device_name)
    pieces = load_target(target, dims or None)
    if calibration is not None:
        from tierplan.devices.calibstore import use_calibration_file
        use_calibration_file(calibration)
    if device.name == "local" and auto_calibrate:
        from tierplan.devices.calibrate import ensure_local_calibration
        ensure_local_calibration([p for p in pieces if p.file and str(p.file).endswith(".onnx")], progress=progress)
    cm = CostModel()
    rows = []
    for p in pieces:
        ms = cm.piece_ms(p, device, batch=batch, precision=precision)
        rows.append({"id": p.id, "latency_ms": ms, "flops": p.flops, "param_bytes": p.param_bytes, "ops": len(p.ops),
                     "energy_j": cm.compute_energy_j(ms, device), "cost_usd": cm.compute_usd(ms, device)})
    cal = cm.calibration_for(device)
    return {"device": device.name, "latency_ms": sum(r["latency_ms"] for r in rows), "batch": batch,
            "precision": precision, "calibrated": cal is not None,
            "calibration_cpu": cal.cpu if cal is not None else None,
            "energy_j": sum(r["energy_j"] for r in rows), "cost_usd": sum(r["cost_usd"] for r in rows),
            "pieces": rows}


def register(app: typer.Typer) -> None:
    @app.command("estimate")
    def estimate_cmd(
        target: Path = typer.Argument(..., metavar="MODEL|DIR",
                                      help="An ONNX or .tflite file, or a `tierplan partition` output directory."),
        device: str = typer.Option(..., "--device", help="Catalog device name (see `tierplan devices`)."),
        batch: int = typer.Option(1, "--batch", min=1, help="Batch size."),
        precision: str = typer.Option("fp32", "--precision", help="fp32, fp16 or int8."),
        dims: list[str] = typer.Option(None, "--dims", help="Bind dynamic input dimensions: NAME=VALUE[,...]."),
        calibration: Path = typer.Option(None, "--calibration", help="Calibration file (default: the user's cache; "
                                         "for `local`, keyed by this CPU and made on first use)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Predict the latency of a model or its pieces on a catalog device (calibrated when available)."""
        from tierplan.commands.partition import parse_dims
        from tierplan.errors import InputError

        if precision not in ("fp32", "fp16", "int8"):
            raise InputError(f"--precision: {precision!r} is not one of fp32, fp16, int8")
        from tierplan.console import progress_wanted
        out = estimate(target, device, batch, precision, parse_dims(dims), calibration=calibration,
                       progress=progress_wanted(None, as_json))
        if as_json:
            print(json.dumps(out, indent=2))
            return
        from tierplan.console import console
        from rich.table import Table

        how = "calibrated" if out["calibrated"] else "datasheet roofline, not calibrated"
        t = Table(title=f"{target} on {device} (batch {batch}, {precision}; {how})", title_justify="left")
        for col in ("piece", "ops", "GFLOPs", "predicted ms", "energy J", "$"):
            t.add_column(col, justify="left" if col == "piece" else "right")
        for p in out["pieces"]:
            t.add_row(p["id"], str(p["ops"]), f"{p['flops'] / 1e9:.3f}", f"{p['latency_ms']:.3f}",
                      f"{p['energy_j']:.4f}", f"{p['cost_usd']:.2e}")
        if len(out["pieces"]) > 1:
            t.add_row("[bold]total[/]", "", "", f"[bold]{out['latency_ms']:.3f}[/]", f"{out['energy_j']:.4f}",
                      f"{out['cost_usd']:.2e}")
        console().print(t)

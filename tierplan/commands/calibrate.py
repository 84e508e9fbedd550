"""`tierplan calibrate [--out FILE] [--json]`: fit the cost model to this machine (the device `local`).

The default file is in the user's cache, keyed by this CPU (devices.calibstore), never in the package."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tierplan.console import PROGRESS_HELP

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("calibrate")
    def calibrate_cmd(
        out: Path = typer.Option(None, "--out", help="Calibration file (default: the user's cache, "
                                 "$XDG_CACHE_HOME/tierplan/calibration/<cpu key>.json)."),
        threads: int = typer.Option(1, "--threads", min=1, help="Intra-op threads used to measure (recorded)."),
        max_pieces: int = typer.Option(12, "--max-pieces", min=1, help="Pieces each calibration model is cut into."),
        runs: int = typer.Option(15, "--runs", min=3, help="Timed runs per piece (median)."),
        model: list[str] = typer.Option(None, "--model", help="Only these calibration models (default: all)."),
        as_json: bool = typer.Option(False, "--json", help="Print the calibration as JSON."),
        show_progress: bool = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
    ) -> None:
        """Measure real models and their pieces here; fit per-op-type efficiencies and overheads by NNLS."""
        from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

        from tierplan.console import console, progress, progress_wanted

        from tierplan.devices.calibrate import run_calibration
        from tierplan.devices.catalog import get_device

        with progress(progress_wanted(show_progress, as_json), TextColumn("[bold]calibrate[/]"), BarColumn(),
                      TextColumn("{task.completed} pieces measured"), TimeElapsedColumn(),
                      TextColumn("{task.description}")) as bar:
            task = bar.add_task("cutting the calibration models", total=None)

            def measured(msg: str) -> None:
                bar.update(task, advance=1, description=f"last: {msg}")
            cal, samples, path = run_calibration(out, threads=threads, max_pieces=max_pieces, runs=runs,
                                                 models=model or None, progress=measured)
            bar.update(task, total=max(1, bar.tasks[0].completed), description="fitted")
        if as_json:
            print(json.dumps({**cal.to_dict(), "file": str(path)}, indent=2))
            return
        from rich.table import Table

        eff = cal.efficiency(get_device("local"))
        t = Table(title=f"calibration of `local` ({cal.cpu}): {len(samples)} measured pieces of {len(cal.models)} "
                        f"models ({threads} thread(s); % of the detected all-core fp32 peak)",
                  title_justify="left")
        for col in ("op type", "ms/GFLOP", "GFLOP/s", "% of peak", "ms/MB"):
            t.add_column(col, justify="left" if col == "op type" else "right")
        for op, a in sorted(cal.ms_per_gflop.items()):
            t.add_row(op, f"{a:.3f}", f"{1e3 / a:.1f}" if a > 0 else "-",
                      f"{100 * eff[op]:.1f}" if a > 0 else "-", f"{cal.ms_per_mb.get(op, 0):.4f}")
        console().print(t)
        f = cal.fit
        console().print("per-op overhead by op class: " + ", ".join(
            f"{c} {us:.2f} us" for c, us in sorted(cal.class_overhead_us.items())))
        console().print(f"run overhead {cal.run_overhead_us:.2f} us, DRAM spill {cal.ms_per_dram_mb:.4f} ms/MB "
                        f"beyond {cal.cache_mb:g} MB; training fit: {100 * f['train_within_10pct']:.0f}% within 10%, "
                        f"{100 * f['train_within_25pct']:.0f}% within 25%; leave-one-model-out median error "
                        f"{100 * f['cv_median_abs_rel_error']:.1f}%; saved {path}")

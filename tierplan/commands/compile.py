"""`tierplan compile PLAN --out DIR [--tune-trials N] [--backend B] [--json]`: build every piece for its device."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tierplan.console import PROGRESS_HELP

__all__ = ["register", "render"]


def _ms(v) -> str:
    return "-" if v is None else (f"{v:.2f}" if v < 100 else f"{v:.0f}")


def render(manifest: dict, out_dir: Path) -> None:
    """Print the manifest as a rich table: the chosen backend per piece and the alternatives."""
    from tierplan.console import console
    from rich.table import Table

    con = console()
    arts = manifest["artifacts"]
    t = Table(title=f"compiled {len(arts)} artifact(s) into {out_dir}/ in {manifest['compile_s']:.1f} s "
                    f"({manifest['cached']} cached, {manifest['built']} built)", title_justify="left")
    for col in ("piece", "site", "CHOSEN", "ms", "verified", "max |diff|", "alternatives"):
        t.add_column(col, justify="right" if col in ("ms", "max |diff|") else "left")
    notes: list[str] = []
    for a in arts:
        alts = []
        for alt in a["alternatives"]:
            if alt["chosen"]:
                continue
            if alt.get("predicted_ms") is not None:
                alts.append(f"{alt['backend']} ~{_ms(alt['predicted_ms'])}")
            else:
                alts.append(f"{alt['backend']} {_ms(alt['latency_ms'])}" if alt["ok"] else f"{alt['backend']} "
                            + ("n/a" if alt.get("key") is None else "failed"))
        if a["verified"]:
            ver = "[green]yes[/]"
        else:
            note = a.get("verify_note") or "not checked"
            if note not in notes:
                notes.append(note)
            ver = f"[yellow]no[/] [{notes.index(note) + 1}]"
        pred = "" if str(a.get("latency_source", "")).startswith("measured") else "~"
        diff = a.get("max_abs_diff")
        t.add_row(a["piece"], a["site"], f"[bold]{a['backend']}[/]" + ("*" if a["cached"] else ""),
                  pred + _ms(a["latency_ms"]), ver, "-" if diff is None else f"{diff:.0e}", ", ".join(alts) or "-")
    con.print(t)
    sites = dict.fromkeys(f"{a['site']} = {a['device']}" for a in arts)
    con.print(f"sites: {', '.join(sites)}; * from the store (cached); ~ predicted by the cost model "
              "(device not runnable here); alternatives in ms")
    for i, note in enumerate(notes, 1):
        con.print(f"[{i}] {note}")
    for sk in manifest.get("skipped", []):
        con.print(f"[yellow]skipped[/] {sk['piece']}@{sk['site']}: {sk['reason']}")
    for a in arts:
        if a.get("choice", "").startswith("predicted fastest"):
            con.print(f"[dim]{a['piece']}@{a['site']}: {a['choice']}[/dim]", highlight=False)
        if a.get("fallback_reason"):
            con.print(f"[yellow]fallback[/] {a['piece']}@{a['site']}: {a['fallback_reason']}")
        tune = a.get("tune") or {}
        if tune.get("tasks_selected"):
            con.print(f"TVM tuning {a['piece']}@{a['site']}: {len(tune['tasks_tuned'])} task(s) tuned, "
                      f"{len(tune['tasks_reused'])} from the database, {tune['trials_per_task']} trials/task, "
                      f"{tune['tune_s']:.1f} s")
    con.print(f"manifest: {out_dir / 'manifest.json'}")


def register(app: typer.Typer) -> None:
    @app.command("compile")
    def compile_cmd(
        plan_path: Path = typer.Argument(..., metavar="PLAN", help="plan.json written by `tierplan plan`."),
        out: Path = typer.Option(Path("artifacts"), "--out", help="Artifact store directory (manifest.json inside)."),
        tune_trials: int = typer.Option(0, "--tune-trials", min=0,
                                        help="Meta-schedule trials per TVM task (>= 16 to help); 0 = none."),
        tune_tasks: int = typer.Option(None, "--tune-tasks", min=1, help="Tune only the K heaviest tasks per piece."),
        tune_db: Path = typer.Option(None, "--tune-db", help="Tuning database folder (default OUT/tuning)."),
        backend: list[str] = typer.Option(None, "--backend", help="Only these backends (tvm, onnxruntime, litert)."),
        runs: int = typer.Option(10, "--runs", min=1, help="Timed runs per candidate (median)."),
        threads: int = typer.Option(0, "--threads", min=0, help="onnxruntime/LiteRT threads (0 = every core)."),
        as_json: bool = typer.Option(False, "--json", help="Print manifest.json to stdout."),
        show_progress: bool = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
    ) -> None:
        """Build every piece of a plan for its site's device (TVM, onnxruntime, LiteRT), check it, store it."""
        from tierplan.planner.plan import Plan
        from tierplan.runtime.compile import CompileOptions, compile_plan
        from tierplan.console import progress_wanted

        plan = Plan.load(plan_path)   # its embedded fleet gives every site's device
        res = compile_plan(plan, out, tune_trials=tune_trials, backends=backend or None,
                           progress=progress_wanted(show_progress, as_json),
                           tune_tasks=tune_tasks, tune_db=tune_db,
                           base_dir=plan_path.resolve().parent, options=CompileOptions(measure_runs=runs, threads=threads))
        if as_json:
            print(json.dumps(res.manifest, indent=1, default=str))
        else:
            render(res.manifest, out)

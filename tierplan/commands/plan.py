"""`tierplan plan APP [--fleet FLEET]`: place the app's pieces on the fleet (CP-SAT) and show why."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tierplan.errors import finite_flag

from tierplan.console import PROGRESS_HELP, solver_progress

__all__ = ["register", "prepare_calibration"]


def prepare_calibration(fleet, calibration: Path | None, progress: bool = True) -> None:
    """`--calibration FILE` for this process's cost models; and when the fleet uses `local`, a quick
    calibration of this machine first if none fits its CPU (devices.calibrate.ensure_local_calibration)."""
    if calibration is not None:
        from tierplan.devices.calibstore import use_calibration_file
        use_calibration_file(calibration)
    if any(_device_name(s) == "local" for s in fleet.sites.values()):
        from tierplan.devices.calibrate import ensure_local_calibration
        ensure_local_calibration(progress=progress)


def _not_met_message(plan) -> str:
    """One line per (class, sink) missing its SLO: planned, best achievable and the fix."""
    total = sum(c.devices for c in plan.coverage.values()) or 1
    missing = sum(c.devices for c in plan.coverage.values() if not c.meets_slo)
    lines = [f"the SLO is not met on {missing:,} of {total:,} devices ({100 * missing / total:.0f}%); "
             f"the plan serves them at the best latency the capacity left allows (--allow-partial: exit 0)"]
    for x in plan.not_met:
        lines.append(f"{x['edge_class']} ({int(x['devices']):,} devices), sink {x['sink']!r}: planned "
                     f"{float(x['planned_ms']):.1f} ms > SLO {float(x['slo_ms']):g} ms, best achievable alone "
                     f"{float(x['best_alone_ms']):.1f} ms ({x['why']}). To fix: {x['fix']}")
    return "\n".join(lines)


def _device_name(site) -> str | None:
    dev = getattr(site, "device", None)
    return dev if isinstance(dev, str) else getattr(dev, "name", None)


def register(app: typer.Typer) -> None:
    @app.command("plan")
    def plan_cmd(
        app_path: Path = typer.Argument(..., metavar="APP", help="app.yaml, or a folder holding app.yaml (and fleet.yaml)."),
        fleet_path: Path = typer.Option(None, "--fleet", help="fleet.yaml (default: the one beside app.yaml)."),
        objective: str = typer.Option(None, "--objective", help="cost, latency or energy (default: app.yaml's)."),
        out: Path = typer.Option(None, "--out", help="Write plan.json here."),
        html: Path = typer.Option(None, "--html", help="Write a self-contained plan.html here."),
        pareto: bool = typer.Option(False, "--pareto", help="Also trace the cost-latency frontier."),
        from_plan: Path = typer.Option(None, "--from", help="Old plan.json: warm start, list the pieces that move."),
        move_cost: float = typer.Option(0.0, "--move-cost", help="With --from: ms of latency charged in the objective per segment placed off the old plan's site (prefer few moves; latency objectives)."),
        max_coverage: bool = typer.Option(True, "--max-coverage/--no-max-coverage", help="When shared capacity cannot serve every class within its SLO: cover the most devices, then the objective (default); --no-max-coverage: exit 1 naming the binding constraint instead."),
        allow_partial: bool = typer.Option(False, "--allow-partial", help="Exit 0 even when some devices miss their SLO (the plan lists them in not_met); default: exit 1."),
        time_limit: float = typer.Option(10.0, "--time-limit", callback=finite_flag("--time-limit", "10", 0.1), help="Solver time limit, seconds."),
        pieces_dir: Path = typer.Option(None, "--pieces-dir", help="Where partitioned pieces are cached."),
        calibration: Path = typer.Option(None, "--calibration", help="Calibration file (default: the user's cache; "
                                         "for `local`, keyed by this CPU and made on first use)."),
        as_json: bool = typer.Option(False, "--json", help="Print plan.json to stdout instead of tables."),
        show_progress: bool = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
    ) -> None:
        """Decide where each piece runs (device, base station, cloud); show latency, cost and coverage."""
        from tierplan.planner.api import plan_app
        from tierplan.planner.html import write_html
        from tierplan.planner.plan import Plan
        from tierplan.console import progress_wanted
        from tierplan.errors import InfeasibleError, InputError
        from tierplan.loader import load_app, load_fleet
        from tierplan.devices.catalog import load_catalog
        from tierplan.validate import check

        if objective is not None and objective not in ("cost", "latency", "energy"):
            raise InputError(f"--objective: {objective!r} is not one of cost, latency, energy")
        if app_path.is_dir():
            app_path = app_path / "app.yaml"
        spec = load_app(app_path)
        if fleet_path is None:
            if not (app_path.parent / "fleet.yaml").is_file():
                raise InputError(f"{app_path}: no fleet given and no fleet.yaml beside it. To fix: add --fleet fleet.yaml")
            fleet_path = app_path.parent / "fleet.yaml"
        fleet = load_fleet(fleet_path)
        check(spec, fleet, app_path=app_path, fleet_path=fleet_path, catalog=load_catalog())
        shown = progress_wanted(show_progress, as_json)
        prepare_calibration(fleet, calibration, progress=shown)
        old = Plan.load(from_plan) if from_plan is not None else None
        from tierplan.planner.movecost import check_move_cost
        move_cost = check_move_cost(move_cost)
        try:
            with solver_progress(shown, time_limit * (2 if pareto else 1)) as hook:
                plan = plan_app(spec, fleet, objective=objective, time_limit_s=time_limit, from_plan=old,
                                pieces_dir=pieces_dir, pareto=pareto, max_coverage=max_coverage, progress=hook,
                                move_cost_ms=move_cost)
        except InfeasibleError as e:
            failed = Plan(status="infeasible", reason=str(e), objective_kind=objective or "cost",
                          app_path=str(app_path.resolve()), fleet_path=str(fleet_path.resolve()))
            if out is not None:
                failed.save(out)
            if as_json:
                print(failed.model_dump_json(indent=2))
                e.result_printed = True   # the CLI adds no {"error": ...} after the plan
            raise
        plan = plan.model_copy(update={"app_path": str(app_path.resolve()), "fleet_path": str(fleet_path.resolve())})
        if out is not None:
            plan.save(out)
        if html is not None:
            write_html(plan, html, title=f"tierplan: {spec.name} on {fleet.name}")
        if as_json:
            print(json.dumps(json.loads(plan.model_dump_json()), indent=2))
        else:
            from tierplan.planner.render import render_plan
            from tierplan.console import console
            con = console()
            render_plan(plan, con)
            for what, path in (("plan.json", out), ("plan.html", html)):
                if path is not None:
                    con.print(f"wrote {what}: {path}")
        if plan.not_met and not allow_partial:
            err = InfeasibleError(_not_met_message(plan))
            err.result_printed = True   # the plan was printed: no {"error": ...} after it
            raise err

"""`tierplan simulate APP|PLAN --fleet FLEET`: replay strategies over the fleet and compare them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Optional

import typer

from typing import TYPE_CHECKING

from tierplan.console import PROGRESS_HELP
from tierplan.errors import InputError

if TYPE_CHECKING:
    from tierplan.planner.plan import Plan
    from tierplan.simulations.config import Scenario
    from tierplan.simulations.report import SimReport
    from tierplan.spec import FleetSpec

__all__ = ["register"]


def _load_plan(target: Path, fleet_path: Path | None, objective: str | None, calibration: Path | None,
               shown: bool = False) -> Plan:
    """A plan.json as is, or an app.yaml (or an example folder's) planned on the fleet first (with the
    planner's progress bar when `shown`). The plan carries the fleet and app it was made for."""
    from tierplan.commands.plan import prepare_calibration
    from tierplan.console import solver_progress
    from tierplan.loader import load_app, load_fleet
    from tierplan.planner.api import plan_app
    from tierplan.planner.plan import Plan
    if target.is_dir():
        target = target / "app.yaml"
    if target.suffix == ".json":
        return Plan.load(target)
    if target.suffix not in (".yaml", ".yml"):
        raise InputError(f"{target}: expected an app.yaml or a plan.json")
    fleet_path = fleet_path or (target.parent / "fleet.yaml" if (target.parent / "fleet.yaml").exists() else None)
    if fleet_path is None:
        raise InputError(f"{target}: no fleet given. To fix: add --fleet fleet.yaml")
    app = load_app(target)
    fleet_spec = load_fleet(fleet_path)
    prepare_calibration(fleet_spec, calibration, progress=shown)
    with solver_progress(shown, 10.0) as hook:   # plan_app's default time limit
        return plan_app(app, fleet_spec, objective=objective, progress=hook)


def _print_table(rep: SimReport) -> None:
    from tierplan.console import console
    from rich.table import Table
    t = Table(title=f"Simulated {rep.duration_s:g} s, arrivals {rep.arrivals}, seed {rep.seed}")
    for h in ("strategy", "sink", "p50 ms", "p95 ms", "p99 ms", "SLO met", "req/s", "failed", "cost $/h",
              "busiest site", "engine", "sim req/s"):
        t.add_column(h, justify="left" if h in ("strategy", "sink", "busiest site", "engine") else "right")
    f = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    for name, r in rep.strategies.items():
        sites = {k: v for k, v in r.utilisation_max.items() if not k.startswith("link:")}
        busiest = max(sites, key=lambda k: sites[k]) if sites else None
        for i, (sink, s) in enumerate(r.sinks.items()):
            t.add_row(name if i == 0 else "", sink, f(s.p50_ms), f(s.p95_ms), f(s.p99_ms),
                      "-" if s.slo_attainment is None else f"{100 * s.slo_attainment:.1f}%",
                      f"{r.throughput_rps:.1f}", str(r.requests_failed), f"{r.cost_per_hour_usd:.3f}",
                      f"{busiest} {100 * sites[busiest]:.0f}%" if busiest else "-", r.engine,
                      f"{r.sim_requests_per_s:,.0f}")
    con = console()
    con.print(t)
    for name, why in rep.skipped.items():
        con.print(f"[yellow]not simulated[/yellow] {name}: {why}")
    for name, r in rep.strategies.items():
        if r.batch_mean:
            con.print(f"batching {name}: " + ", ".join(f"{site} mean batch {b:.2f} over {r.batches.get(site, 0)} runs"
                                                       for site, b in r.batch_mean.items()))
    for name, r in rep.strategies.items():
        for n in r.notes:
            con.print(f"[yellow]note[/yellow] {name}: {n}")


def _emit(report: Path | None, write: Callable[[Path], Path], doc: Callable[[], dict], as_json: bool) -> bool:
    """Write the HTML report when asked and print the JSON document when asked; True when printed."""
    if report is not None:
        path = write(report)
        if not as_json:
            typer.echo(f"report: {path}")
    if as_json:
        typer.echo(json.dumps(doc(), indent=2))
    return as_json


def _sweep(plan: Plan, scenario: Scenario, items: list[str], fleet: FleetSpec | None, ray_address: str | None,
           serial: bool, report: Path | None, as_json: bool, shown: bool) -> None:
    """`--sweep`: every (strategy, seed, parameter values) cell as a Ray task, one table and report."""
    from tierplan.console import progress
    from tierplan.simulations.api import strategy_assignments
    from tierplan.simulations.sweep import LOCAL, parse_sweep, run_sweep
    grid = parse_sweep(items)
    chosen, skipped = strategy_assignments(plan, scenario.strategies)
    with progress(shown) as bar:
        task = bar.add_task("sweep", total=None)
        rep = run_sweep(plan, scenario, list(chosen), grid, fleet, None if serial else (ray_address or LOCAL),
                        progress=lambda done, total: bar.update(task, completed=done, total=total))
    from tierplan.simulations.html_report import write_sweep_report
    if _emit(report, lambda out: write_sweep_report(rep, out), rep.to_json, as_json):
        return
    from rich.table import Table

    from tierplan.console import console
    names = [n for n in grid if n != "seed"]
    t = Table(title=f"Sweep: {len(rep.cells)} cells on {rep.runner} in {rep.wall_s:.1f} s "
                    f"(mean over seeds ± 95% CI)")
    for h in ("strategy", *names, "sink", "seeds", "p50 ms", "p95 ms", "SLO met", "cost $/h"):
        t.add_column(h, justify="left" if h in ("strategy", "sink") else "right")

    def ci(r: dict, m: str, k: float = 1.0) -> str:
        v, h = r[m], r[f"{m}_ci"]
        return "-" if v is None else f"{k * v:.1f}" + (f" ± {k * h:.1f}" if h is not None else "")
    for r in rep.summary():
        t.add_row(r["strategy"], *[f"{r[n]:g}" if isinstance(r[n], float) else str(r[n]) for n in names], r["sink"],
                  str(r["seeds"]), ci(r, "p50_ms"), ci(r, "p95_ms"), ci(r, "slo_attainment", 100.0),
                  ci(r, "cost_per_hour_usd"))
    con = console()
    con.print(t)
    for name, why in skipped.items():
        con.print(f"[yellow]not simulated[/yellow] {name}: {why}")


def register(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate_cmd(
        target: Path = typer.Argument(..., metavar="APP|PLAN", help="app.yaml (planned first), plan.json, or an example folder."),
        fleet: Optional[Path] = typer.Option(None, "--fleet", help="fleet.yaml to plan an app on (default: the folder's); beside a plan.json, a what-if fleet (default: the plan's own)."),
        strategies: Optional[str] = typer.Option(None, "--strategies", help="Comma list: optimal,all-device,all-cloud,best-split,greedy."),
        duration: float = typer.Option(60.0, "--duration", help="Simulated seconds of arrivals."),
        seed: int = typer.Option(0, "--seed", help="Seed of every random draw (same seed, same result)."),
        arrivals: str = typer.Option("poisson", "--arrivals", help="poisson | periodic[:JITTER_MS] | burst[:F[:ON[:OFF]]] | diurnal[:A[:PERIOD]] | trace:FILE"),
        fail: Optional[list[str]] = typer.Option(None, "--fail", help="KIND:CLASS\\[#INST]@START-END[:fail|reroute|wait] (KIND device|link|site, INST 3|0-4|25%), repeatable."),
        mobility: Optional[list[str]] = typer.Option(None, "--mobility", help="CLASS:SHARE@START[-END][>INSTANCE], repeatable."),
        link: Optional[list[str]] = typer.Option(None, "--link", help="SITE=2g|3g|4g|wifi|MBPS|trace:FILE[~CV], repeatable."),
        engine: str = typer.Option("auto", "--engine", help="auto | fast | simpy."),
        objective: Optional[str] = typer.Option(None, "--objective", help="When given an app: cost, latency or energy."),
        profile: Optional[Path] = typer.Option(None, "--profile", help="Service profile JSON (simulations.calibration.ServiceProfile.save), or a `tierplan run --json` report: replay measured node@site step times (a run report: on the fleet as that run ran it)."),
        correlation: float = typer.Option(0.0, "--service-correlation", help="Share 0..1 of service-time variance common to all stages of a request."),
        batch: str = typer.Option("auto", "--batch", help="Dynamic batching at cloud sites: auto (as the runtime deploys: 8 requests, 2 ms; with a run report as --profile, the caps that run had), MAX[:WAIT_MS], or off."),
        link_sharing: str = typer.Option("fifo", "--link-sharing", help="fifo (one transfer at a time per link direction, as the runtime's emulator) or fair (transfers share the rate)."),
        report: Optional[Path] = typer.Option(None, "--report", help="Write an HTML report with figures into this folder."),
        calibration: Optional[Path] = typer.Option(None, "--calibration", help="Calibration file (default: the user's cache; "
                                                   "for `local`, keyed by this CPU and made on first use)."),
        sweep: Optional[list[str]] = typer.Option(None, "--sweep", help="NAME=VALUES, repeatable: seed=0..4, slo=MS,..., rate=HZ,..., link=SITE=PRESET,..., scale=F,... Each (strategy, seed, values) cell is a Ray task; the report gives means and 95% CIs over seeds."),
        ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster for --sweep (default: an embedded local cluster on this machine)."),
        serial: bool = typer.Option(False, "--serial", help="Run --sweep's cells one after another in this process (no Ray)."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        show_progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
    ) -> None:
        """Replay each strategy's placement over the fleet: latency per sink, SLO attainment, cost, load."""
        from tierplan.simulations.api import simulate
        from tierplan.simulations.config import Scenario
        if not target.exists():
            raise InputError(f"{target}: file not found. To fix: check the path")
        if not (math.isfinite(duration) and duration > 0):
            raise InputError(f"--duration {duration:g}: expected a finite number of simulated seconds > 0. "
                             "To fix: pass e.g. --duration 60")
        if not 0.0 <= correlation <= 1.0:  # also refuses nan
            raise InputError(f"--service-correlation {correlation:g}: expected a share in [0, 1]. "
                             "To fix: pass e.g. --service-correlation 0.3")
        if profile is not None and not profile.exists():
            raise InputError(f"--profile {profile}: file not found. To fix: pass a file written by simulations.calibration (ServiceProfile.save)")
        if fleet is not None and not fleet.exists():
            raise InputError(f"--fleet {fleet}: file not found. To fix: check the path")
        scenario = Scenario.of(strategies=strategies, duration_s=duration, seed=seed, arrivals=arrivals,
                               failures=fail or None, mobility=mobility or None, links=link or None,
                               engine=engine, profile=profile, service_correlation=correlation,
                               batching=batch, link_sharing=link_sharing)
        from tierplan.commands.plan import prepare_calibration
        from tierplan.console import progress, progress_wanted
        from tierplan.loader import load_fleet
        shown = progress_wanted(show_progress, as_json)
        plan = _load_plan(target, fleet, objective, calibration, shown)
        if profile is not None:   # a `tierplan run --json` report: replay the fleet as that run ran it
            from tierplan.simulations.calibration import as_run
            plan = as_run(plan, profile)
        # a plan.json simulates on the fleet it carries; --fleet beside it is a what-if fleet
        what_if = load_fleet(fleet) if fleet is not None and target.suffix == ".json" else None
        if what_if is not None:
            prepare_calibration(what_if, calibration, progress=shown)
        if report is not None:
            from tierplan.commands.partition import prepare_out_dir
            prepare_out_dir(report, "--report")
        if sweep:
            _sweep(plan, scenario, sweep, what_if, ray_address, serial, report, as_json, shown)
            return
        if ray_address is not None or serial:
            raise InputError("--ray-address and --serial go with --sweep. To fix: add --sweep NAME=VALUES")
        with progress(shown) as bar:
            task = bar.add_task("simulate", total=None)

            def step(done: int, total: int, name: str) -> None:
                bar.update(task, completed=done, total=total,
                           description=f"simulate {duration:g} s: {name}" if done < total else "simulated")
            rep = simulate(plan, what_if, scenario, progress=step)
        from tierplan.simulations.html_report import write_report
        if not _emit(report, lambda out: write_report(rep, out), rep.to_json, as_json):
            _print_table(rep)

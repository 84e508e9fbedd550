"""`tierplan run EXAMPLE [--duration S] [--json]`: the whole path on localhost, with a summary."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tierplan.errors import finite_flag
from tierplan.commands._adapt import adapt_option, adapt_policy_option, link_step_option, policy_from, print_adapt

from tierplan.console import PROGRESS_HELP

__all__ = ["register", "print_report", "metrics_line", "METRICS_PORT_HELP"]

METRICS_PORT_HELP = ("Serve the Prometheus metrics (loopback only) on consecutive ports from BASE: the controller "
                     "on BASE, then each worker (printed at start); 0: free ports.")


def metrics_line(info: dict) -> str:
    """'metrics (Prometheus, loopback): controller 127.0.0.1:9100, bs 127.0.0.1:9101, ...' of describe()."""
    return "metrics (Prometheus, loopback): " + ", ".join(f"{n} {a}" for n, a in (info.get("metrics") or {}).items()
                                                         if a)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def print_report(rep) -> None:
    """Rich tables: end to end (measured vs predicted) and per stage."""
    from tierplan.console import console
    from rich.table import Table

    con = console()
    t = Table(title=f"{rep.example}: {rep.requests_ok} ok, {rep.requests_failed} failed "
                    f"({rep.plan_source})", title_justify="left")
    for col in ("", "measured p50 ms", "measured p95 ms", "predicted p50 ms", "predicted p95 ms",
                "ratio p50"):
        t.add_column(col, justify="right" if col else "left")

    def ratio(a, b):
        return f"{a / b:.2f}" if a and b else "-"

    t.add_row("measured", _ms(rep.measured_p50_ms), _ms(rep.measured_p95_ms), "", "", "")
    t.add_row("predicted here", "", "", _ms(rep.predicted_local_p50_ms),
              _ms(rep.predicted_local_p95_ms), ratio(rep.measured_p50_ms, rep.predicted_local_p50_ms))
    if getattr(rep, "measured_cpu_p50_ms", None) is not None:
        t.add_row("measured, less CPU waits", _ms(rep.measured_cpu_p50_ms), _ms(rep.measured_cpu_p95_ms), "", "",
                  ratio(rep.measured_cpu_p50_ms, rep.predicted_local_p50_ms))
    if getattr(rep, "replayed_p50_ms", None) is not None:
        t.add_row("replayed (measured steps)", "", "", _ms(rep.replayed_p50_ms), _ms(rep.replayed_p95_ms),
                  ratio(rep.measured_p50_ms, rep.replayed_p50_ms))
    t.add_row("predicted, fleet", "", "", _ms(rep.predicted_p50_ms),
              _ms(rep.predicted_p95_ms), ratio(rep.measured_p50_ms, rep.predicted_p50_ms))
    t.add_row("client view", _ms(rep.client_p50_ms), _ms(rep.client_p95_ms),
              "", "", "")
    con.print(t)
    con.print("measured: from the moment the input is on its source site to the last sink; predicted here: the "
              "plan's placement with every site computing at this machine's speed (links emulated as declared), "
              "scheduled as the runtime runs a request (one piece at a time per site, fan-out items queueing on "
              "each link, link jitter drawn) plus the runtime's own time per step and hop measured on this host; "
              "measured, less CPU waits: each request less the time its steps waited for a CPU; replayed: the "
              "same schedule with each step's measured p50; predicted, fleet: the plan's own figure on the "
              "fleet's devices; client view adds the local client's feed of the inputs.", style="dim")
    if rep.load_average_1m is not None and rep.cpus and rep.load_average_1m > rep.cpus:
        con.print(f"this machine was busy during the run (load average {rep.load_average_1m:.1f} on {rep.cpus} CPUs): "
                  "measured times include waiting for a CPU; predicted here is for an unloaded core.", style="yellow")
    s = Table(title="per stage", title_justify="left")
    for col in ("kind", "stage", "calls", "measured p50 ms", "measured p95 ms", "predicted here ms",
                "predicted on device ms"):
        s.add_column(col, justify="left" if col in ("kind", "stage") else "right", no_wrap=col in ("kind", "stage"))
    for r in rep.stages:
        s.add_row(r.kind, r.name, str(r.count), _ms(r.measured_p50_ms), _ms(r.measured_p95_ms),
                  _ms(r.predicted_local_ms), _ms(r.predicted_ms))
    con.print(s)
    _print_fleet(con, rep)
    for e in rep.errors:
        con.print(f"[red]error:[/red] {e}")
    if (rep.sites or {}).get("metrics"):
        con.print(metrics_line(rep.sites) + " (closed with the run)", highlight=False)


def _print_fleet(con, rep) -> None:
    """Per device class (measured vs predicted here, SLO) and per site (workers, load, queue, batch)."""
    from rich.table import Table

    rows = getattr(rep, "classes", None) or []
    if rows:
        t = Table(title=f"per device class ({rep.load}: "
                        + ("each class at its sources' rates" + (f" x {rep.rate_scale:g}" if rep.rate_scale != 1 else "")
                           if rep.load == "rate" else "one request at a time")
                        + f"; {rep.devices_per_class} device(s) per class)", title_justify="left")
        for col in ("class", "sinks", "req/s", "ok", "failed", "measured p50", "measured p95", "predicted here p50",
                    "predicted here p95", "ratio p50", "on device ms", "SLO ms", "SLO met here", "plan meets"):
            t.add_column(col, justify="left" if col in ("class", "sinks") else "right")
        for r in rows:
            ratio = f"{r.measured_p50_ms / r.predicted_local_p50_ms:.2f}" if r.measured_p50_ms and \
                r.predicted_local_p50_ms else "-"
            yn = {True: "yes", False: "no", None: "-"}
            t.add_row(r.device_class or "-", ",".join(r.sinks), f"{r.rate_hz:.2f}", str(r.requests - r.failed),
                      str(r.failed), _ms(r.measured_p50_ms), _ms(r.measured_p95_ms), _ms(r.predicted_local_p50_ms),
                      _ms(r.predicted_local_p95_ms), ratio, _ms(r.predicted_ms), _ms(r.slo_ms), yn[r.slo_met],
                      yn[r.plan_meets_slo])
        con.print(t)
    ran = getattr(rep, "classes_run", None)
    if ran:
        con.print(f"classes run: {', '.join(ran)}" + (f"; not run: {', '.join(rep.classes_not_run)}"
                                                     if rep.classes_not_run else ""), highlight=False)
    sites = getattr(rep, "site_rows", None) or []
    if sites:
        t = Table(title="per site", title_justify="left")
        for col in ("site", "tier", "workers", "classes", "runs", "utilisation", "mean queue", "mean batch", "workers: why"):
            t.add_column(col, justify="left" if col in ("site", "tier", "classes", "workers: why") else "right")
        for r in sites:
            t.add_row(r.site, r.tier, str(r.workers), ",".join(r.classes) or "-", str(r.runs),
                      "-" if r.utilisation is None else f"{100 * r.utilisation:.0f}%",
                      "-" if r.mean_queue is None else f"{r.mean_queue:.2f}",
                      "-" if r.mean_batch is None else f"{r.mean_batch:.2f}", r.scaling)
        con.print(t)


def replicas_option():
    """--replicas, shared by run and deploy."""
    return typer.Option(None, "--replicas", min=1, help="Workers per base-station and cloud site (default: the plan's "
                        "instances scaled to the devices that run); a request lost with one is retried on another.")


def class_option():
    """--class NAME[,NAME], shared by run and deploy."""
    return typer.Option(None, "--class", metavar="NAME[,NAME]", help="Only these edge device classes of the plan "
                        "(default: every class, each with the shared sites it uses).")


def devices_option():
    """--devices-per-class N, shared by run and deploy."""
    return typer.Option(1, "--devices-per-class", min=1, help="Edge agents started per class (local); the shared "
                        "sites' workers scale with them.")


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        example: str = typer.Argument(..., help="Example name under examples/ (or a directory with app.yaml and fleet.yaml)."),
        duration: float = typer.Option(10.0, "--duration", callback=finite_flag("--duration", "10", 0.1), help="Seconds to send requests for."),
        backend: list[str] = typer.Option(None, "--backend", help="Compile backends to try (default: onnxruntime)."),
        timeout: float = typer.Option(None, "--timeout", callback=finite_flag("--timeout", "5", 0.1),
                                      help="Deadline of one request, seconds (default: 10 x the largest SLO)."),
        replicas: int = replicas_option(),
        device_class: str = class_option(),
        devices_per_class: int = devices_option(),
        rate_scale: float = typer.Option(1.0, "--rate-scale", callback=finite_flag("--rate-scale", "0.5", 1e-6),
                                         help="Multiply every source's rate (each class sends at its sources' "
                                              "rate_hz x devices, Poisson arrivals)."),
        plan_out: Path = typer.Option(None, "--plan-out", help="Save the plan that runs (a plan folder), for "
                                      "`tierplan simulate PLAN --profile RUN.json` with this run's --json report."),
        sequential: bool = typer.Option(False, "--sequential", help="Send one request after another (the classes "
                                        "in turn) instead of at the sources' rates: latency without queueing."),
        allow_transforms: str = typer.Option("", "--allow-transforms", help="MODULE[,MODULE]: more modules whose "
                                             "functions may run as transforms (tierplan.transforms always may)."),
        calibration: Path = typer.Option(None, "--calibration", help="Calibration file of this machine (default: "
                                         "the user's cache, keyed by CPU; made on first use when none fits)."),
        metrics_port: int = typer.Option(0, "--metrics-port", min=0, max=65535, metavar="BASE", help=METRICS_PORT_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        show_progress: bool = typer.Option(None, "--progress/--no-progress", help=PROGRESS_HELP),
        adapt: bool = adapt_option(),
        adapt_policy: str = adapt_policy_option(),
        link_step: list[str] = link_step_option(),
        seed: int = typer.Option(0, "--seed", help="Seed of the requests' Poisson send times (the same seed, "
                                 "the same sends: another seed draws other arrivals)."),
        batch: str = typer.Option(None, "--batch", metavar="MAX[:WAIT_MS]",
                                  help="Dynamic batching at the cloud sites: up to MAX requests, waiting at most "
                                       "WAIT_MS for more (default 8:2, as deployed), or off."),
    ) -> None:
        """Plan, compile and deploy EXAMPLE's every device class on this machine, send requests, compare with the plan, tear down."""
        import sys

        from tierplan.runtime.graph import parse_modules
        from tierplan.run import run_example
        from tierplan.console import progress_wanted
        from tierplan.adapt import parse_link_step
        policy = policy_from(adapt, adapt_policy)
        steps = [parse_link_step(x) for x in link_step or []]

        def deployed(info: dict) -> None:   # on stderr: stdout is the report (or its JSON)
            if metrics_port or not as_json:
                print(metrics_line(info), file=sys.stderr, flush=True)
        rep = run_example(example, duration, backends=backend or None,
                          progress=progress_wanted(show_progress, as_json), request_timeout_s=timeout,
                          replicas=replicas, allow_transforms=parse_modules(allow_transforms),
                          calibration=calibration, metrics_port=metrics_port, on_deployed=deployed,
                          classes=device_class, devices_per_class=devices_per_class, rate_scale=rate_scale,
                          sequential=sequential, plan_out=plan_out, adapt=policy, link_steps=steps, batch=batch,
                          seed=seed)
        if as_json:
            print(json.dumps(rep.to_json(), indent=2))
        else:
            print_report(rep)
            print_adapt(rep.adapt)
        if rep.requests_ok == 0:
            from tierplan.errors import RuntimeFault
            e = RuntimeFault(f"{example}: no request succeeded" + (f" ({rep.errors[0]})" if rep.errors else ""))
            e.result_printed = as_json   # the report is the JSON result
            raise e

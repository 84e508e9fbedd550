"""`tierplan validate APP [--fleet FLEET] [--json]`: check app.yaml (and fleet.yaml) and summarise them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

import typer

from tierplan.errors import SpecError
from tierplan.spec import AppSpec, DeviceSpec, FleetSpec, ModelSpec

if TYPE_CHECKING:
    from rich.table import Table

_T = TypeVar("_T")

__all__ = ["register", "run_validate", "summary"]


def run_validate(app_path: Path, fleet_path: Path | None = None) -> tuple[AppSpec, FleetSpec | None]:
    """Load and validate both files; raise one SpecError with every problem of both."""
    from tierplan.loader import load_app, load_fleet
    from tierplan.validate import validate

    problems: list[str] = []
    app: AppSpec | None = None
    fleet: FleetSpec | None = None
    try:
        app = load_app(app_path)
    except SpecError as e:
        problems += e.problems
    if fleet_path is not None:
        try:
            fleet = load_fleet(fleet_path)
        except SpecError as e:
            problems += e.problems
    if problems or app is None:  # app is None only when loading it added problems
        raise SpecError(problems)
    from tierplan.devices.catalog import load_catalog
    problems = validate(app, fleet, app_path=app_path, fleet_path=fleet_path, catalog=load_catalog())
    if problems:
        raise SpecError(problems)
    return app, fleet


def _model_kind(m: ModelSpec) -> str:
    return "onnx" if m.onnx is not None else ("tflite" if m.tflite is not None else "profile")


def summary(app: AppSpec, fleet: FleetSpec | None) -> dict[str, Any]:
    """The machine-readable summary printed by `--json` (numbers stay numbers)."""
    out: dict[str, Any] = {
        "valid": True,
        "app": app.name,
        "models": [{"name": n, "kind": _model_kind(m), "file": m.onnx or m.tflite, "max_pieces": m.max_pieces}
                   for n, m in app.models.items()],
        "sources": [{"name": n, "at": s.at, "rate_hz": s.rate_hz, "shape": list(s.shape), "dtype": s.dtype,
                     "private": s.private} for n, s in app.sources.items()],
        "transforms": [{"name": n, "function": t.function, "cost_ms": t.cost_ms, "fanout": t.fanout}
                       for n, t in app.transforms.items()],
        "edges": [{"from": e.src, "to": e.dst} for e in app.edges],
        "sinks": [{"name": n, "from": s.src, "deliver_to": s.deliver_to,
                   "slo": [{"latency_ms": o.latency_ms, "percentile": o.percentile}
                           for o in app.slo if o.sink == n]} for n, s in app.sinks.items()],
        "objective": app.objective if isinstance(app.objective, str) else app.objective.model_dump(),
        "budget_usd_per_hour": app.budget_usd_per_hour,
        "min_throughput_rps": app.min_throughput_rps,
    }
    if fleet is not None:
        out["fleet"] = fleet.name
        out["sites"] = [{"name": n, "tier": s.tier,
                         "device": s.device.name if isinstance(s.device, DeviceSpec) else s.device,
                         "count": s.count, "attach": s.attach, "link": s.link} for n, s in fleet.sites.items()]
        out["devices_total"] = sum(s.count for s in fleet.sites.values())
    return out


ROWS_SHOWN = 50  # rows per summary table; --json lists everything


def _rows(t: Table, items: Sequence[_T], row: Callable[[_T], Sequence[str]]) -> None:
    """Add row(item) for the first ROWS_SHOWN items, then one '... and N more' row."""
    for item in items[:ROWS_SHOWN]:
        t.add_row(*row(item))
    if len(items) > ROWS_SHOWN:
        t.add_row(f"... and {len(items) - ROWS_SHOWN:,} more (--json lists all)")


def _print_summary(info: dict[str, Any]) -> None:
    from tierplan.console import console
    from rich.table import Table

    con = console()
    con.print(f"[bold green]valid[/]: app [bold]{info['app']}[/]: {len(info['models'])} model(s), "
              f"{len(info['sources'])} source(s), {len(info['transforms'])} transform(s), "
              f"{len(info['edges'])} edge(s), {len(info['sinks'])} sink(s)")
    t = Table(title="models", title_justify="left")
    for c in ("name", "kind", "file"):
        t.add_column(c)
    _rows(t, info["models"], lambda m: (m["name"], m["kind"], m["file"] or ""))
    con.print(t)
    t = Table(title="sources", title_justify="left")
    for c in ("name", "at", "rate_hz", "shape", "dtype", "private"):
        t.add_column(c)
    _rows(t, info["sources"], lambda s: (s["name"], s["at"], f"{s['rate_hz']:g}", str(s["shape"]), s["dtype"],
                                         "yes" if s["private"] else ""))
    con.print(t)
    t = Table(title="sinks", title_justify="left")
    for c in ("name", "from", "deliver_to", "slo"):
        t.add_column(c)
    _rows(t, info["sinks"], lambda s: (s["name"], s["from"], s["deliver_to"],
                                       ", ".join(f"p{o['percentile']:g} <= {o['latency_ms']:g} ms" for o in s["slo"])))
    con.print(t)
    if "sites" in info:
        t = Table(title=f"fleet {info['fleet']}: {info['devices_total']:,} sites", title_justify="left")
        for c in ("site class", "tier", "device", "count", "attach", "link"):
            t.add_column(c, justify="right" if c == "count" else "left")
        _rows(t, info["sites"], lambda s: (s["name"], s["tier"], s["device"], f"{s['count']:,}", s["attach"] or "",
                                           s["link"] or ""))
        con.print(t)


def register(app: typer.Typer) -> None:
    """Add the `validate` verb."""

    @app.command("validate")
    def validate_cmd(
        app_file: Path = typer.Argument(..., metavar="APP", help="app.yaml to check, or a folder holding app.yaml "
                                        "(and fleet.yaml)."),
        fleet: Path | None = typer.Option(None, "--fleet", help="fleet.yaml to check with it."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary (or the problems) as JSON."),
    ) -> None:
        """Check app.yaml (and fleet.yaml): structure, model files, devices, shapes. Exit 2 on bad input.

        APP may be an example folder: its app.yaml, and its fleet.yaml unless --fleet is given.
        """
        if app_file.is_dir():
            if fleet is None and (app_file / "fleet.yaml").is_file():
                fleet = app_file / "fleet.yaml"
            app_file = app_file / "app.yaml"
        try:
            app_spec, fleet_spec = run_validate(app_file, fleet)
        except SpecError as e:
            if as_json:   # the CLI's `{"error": ...}` object, with validate's own fields beside it
                shown = e.problems[:e.SHOWN]
                print(json.dumps({"valid": False, "problems": shown, "problems_total": len(e.problems),
                                  "error": {"code": e.exit_code, "problems": shown,
                                            "problems_total": len(e.problems)}}, indent=2))
                e.result_printed = True
            raise
        info = summary(app_spec, fleet_spec)
        if as_json:
            print(json.dumps(info, indent=2))
        else:
            _print_summary(info)

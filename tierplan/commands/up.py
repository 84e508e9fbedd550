"""`tierplan up --sites a,b | --fleet FLEET`: a local Ray cluster with one node per site; prints addresses."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import typer

from tierplan.errors import finite_flag

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("up")
    def up(
        sites: str = typer.Option(None, "--sites", help="Comma-separated site classes (Ray nodes) to start."),
        fleet: Path = typer.Option(None, "--fleet", help="fleet.yaml: one Ray node per base-station and cloud class."),
        duration: float = typer.Option(0.0, "--duration", callback=finite_flag("--duration", "60"), help="Stay up this many seconds (0: until Ctrl-C)."),
        as_json: bool = typer.Option(False, "--json", help="Print the addresses as JSON."),
    ) -> None:
        """Start the local cluster that `tierplan deploy PLAN --remote --ray-address ADDR` can use."""
        from tierplan.errors import InputError
        names = [s for s in (sites or "").split(",") if s]
        if fleet is not None:
            from tierplan.loader import load_fleet
            names += [n for n, s in load_fleet(fleet).sites.items() if s.tier != "edge" and n not in names]
        if not names:
            raise InputError("tierplan up: no sites. To fix: pass --sites bs,cloud or --fleet fleet.yaml")
        from tierplan.runtime.cluster import SITE_LABEL, LocalCluster, site_resource
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        cluster = LocalCluster(names, connect=False)
        try:
            per_site = {n: {"resource": site_resource(n), "label": f"{SITE_LABEL}={n}"} for n in names}
            info = {"ray_address": cluster.address, "sites": per_site}
            if as_json:
                print(json.dumps(info, indent=2), flush=True)
            else:
                from tierplan.console import console
                from rich.table import Table
                t = Table(title=f"Ray cluster at {cluster.address} (Ctrl-C to stop)", title_justify="left")
                for col in ("site", "resource", "label"):
                    t.add_column(col)
                for n, d in per_site.items():
                    t.add_row(n, d["resource"], d["label"])
                console().print(t)
            stop.wait(duration if duration > 0 else None)
        finally:
            cluster.shutdown()

"""`tierplan deploy PLAN [--local]`: run a plan as a service until Ctrl-C (front door, metrics, health)."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import typer

from tierplan.commands._adapt import adapt_option, adapt_policy_option, event_line, policy_from

from tierplan.errors import finite_flag

from tierplan.commands.run import METRICS_PORT_HELP, class_option, devices_option, metrics_line, replicas_option

__all__ = ["register", "parse_agents"]


def parse_agents(items: list[str] | None) -> dict[str, str]:
    """["phone=10.0.0.5:7001", ...] -> {"phone": "10.0.0.5:7001"}; InputError on bad items."""
    from tierplan.errors import InputError
    out = {}
    for item in items or []:
        site, sep, addr = item.partition("=")
        if not sep or ":" not in addr:
            raise InputError(f"--agent {item!r}: expected SITE=HOST:PORT (e.g. --agent phone=10.0.0.5:7001)")
        out[site] = addr
    return out


def _adapter(svc, plan, policy, as_json: bool, manifest=None):
    """--adapt: the controller's loop, each decision printed on stderr (one JSON line with --json);
    moved pieces are compiled with the backends of the deployment's manifest (--artifacts)."""
    if policy is None:
        return None
    import sys
    from tierplan.adapt import Adapter

    def show(e: dict) -> None:
        print(json.dumps({"adapt": e}) if as_json else event_line(e), file=sys.stderr, flush=True)
    return Adapter(svc, plan, policy, on_event=show, manifest=manifest).start()


def register(app: typer.Typer) -> None:
    @app.command("deploy")
    def deploy_cmd(
        plan: Path = typer.Argument(..., help="plan.json from `tierplan plan`."),
        local: bool = typer.Option(True, "--local/--remote", help="Start a Ray cluster and agents on this machine, "
                                   "or use an existing cluster (--ray-address) and agents (--agent)."),
        artifacts: Path = typer.Option(None, "--artifacts", help="Output folder of `tierplan compile` (manifest.json)."),
        ray_address: str = typer.Option(None, "--ray-address", help="Existing Ray cluster (with --remote)."),
        agent: list[str] = typer.Option(None, "--agent", help="SITE=HOST:PORT of an edge agent (repeatable)."),
        tls_dir: Path = typer.Option(None, "--tls-dir", help="Folder from `tierplan certs`: its controller/ bundle "
                                     "(or the whole --out folder on a local deployment). Mutual TLS + token."),
        front_door: str = typer.Option("127.0.0.1:0", "--listen", help="Front door host:port (gRPC, runtime.proto); "
                                       "beyond loopback it needs --tls-dir (or --insecure)."),
        insecure: bool = typer.Option(False, "--insecure", help="Let --listen go beyond loopback without TLS (warns)."),
        allow_transforms: str = typer.Option("", "--allow-transforms", help="MODULE[,MODULE]: more modules whose "
                                             "functions the sites started here may run as transforms."),
        duration: float = typer.Option(0.0, "--duration", callback=finite_flag("--duration", "60"), help="Serve this many seconds, then stop (0: until Ctrl-C)."),
        replicas: int = replicas_option(),
        device_class: str = class_option(),
        devices_per_class: int = devices_option(),
        metrics_port: int = typer.Option(0, "--metrics-port", min=0, max=65535, metavar="BASE", help=METRICS_PORT_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print the addresses as JSON."),
        adapt: bool = adapt_option(),
        adapt_policy: str = adapt_policy_option(),
    ) -> None:
        """Deploy PLAN and serve it: prints the front door, the sites and their metrics endpoints."""
        from tierplan.planner.plan import Plan
        from tierplan.runtime.deploy import deploy
        from tierplan.runtime.fleetrun import parse_classes
        from tierplan.runtime.graph import parse_modules
        allowed = parse_modules(allow_transforms)
        p = Plan.load(plan)
        classes = parse_classes(p, device_class)
        policy = policy_from(adapt, adapt_policy)
        manifest = None
        if artifacts is not None:
            from tierplan.runtime.compile import load_manifest
            manifest = load_manifest(artifacts)
        stop = threading.Event()
        with deploy(plan, local=local, manifest=manifest, manifest_root=artifacts, ray_address=ray_address,
                    agents=parse_agents(agent), tls_dir=tls_dir, front_door=front_door, replicas=replicas,
                    allow_transforms=allowed, insecure=insecure, metrics_port=metrics_port, classes=classes,
                    devices_per_class=devices_per_class) as svc:
            for sig in (signal.SIGTERM, signal.SIGINT):   # after Ray's own handlers: stop cleanly, exit 0
                signal.signal(sig, lambda *_: stop.set())
            info = svc.describe()
            if as_json:
                print(json.dumps(info, indent=2), flush=True)
            else:
                from tierplan.console import console
                from rich.table import Table
                t = Table(title=f"deployed {plan} ({len(p.pieces)} nodes); front door {info['front_door']}; "
                                "Ctrl-C to stop", title_justify="left")
                for col in ("site", "up", "worker", "pid", "metrics"):
                    t.add_column(col)
                for s, h in info["sites"].items():
                    t.add_row(s, "yes" if h["up"] else "no", h["address"], str(h["pid"]), h["metrics"])
                console().print(t)
                fl = info.get("fleet") or {}
                if fl.get("classes"):
                    console().print(f"device classes: {', '.join(fl['classes'])} ({fl['devices_per_class']} device(s) "
                                    "each; predict(..., device_class=NAME) picks one, the first by default)",
                                    highlight=False)
                    for site, why in (fl.get("scaling") or {}).items():
                        console().print(f"  {site}: {fl['workers'].get(site, 1)} worker(s): {why}", highlight=False)
                console().print(metrics_line(info), highlight=False)
            adapter = _adapter(svc, p, policy, as_json, manifest)
            try:
                stop.wait(duration if duration > 0 else None)
            finally:
                if adapter is not None:
                    adapter.stop()

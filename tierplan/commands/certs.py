"""`tierplan certs --out DIR --sites a,b,c`: a CA, per-site certificates and a token for mutual TLS."""

from __future__ import annotations

import json
from pathlib import Path

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("certs")
    def certs(
        out: Path = typer.Option(..., "--out", help="Folder to write ca.pem, <site>.pem/.key and token into."),
        sites: str = typer.Option(..., "--sites", help="Comma-separated site classes (a controller cert is added)."),
        hosts: str = typer.Option("", "--hosts", help="Extra DNS names / IPs every certificate is valid for."),
        as_json: bool = typer.Option(False, "--json", help="Print the files written as JSON."),
    ) -> None:
        """Make the security material for `tierplan deploy --tls-dir DIR` and `tierplan agent --tls-dir DIR`."""
        from tierplan.errors import InputError
        names = [s.strip() for s in sites.split(",") if s.strip()]
        if not names:
            raise InputError("--sites: give at least one site class (e.g. --sites phone,bs,cloud)")
        from runtime.security import make_certs
        files = make_certs(out, names, [h for h in hosts.split(",") if h])
        if as_json:
            print(json.dumps({"out": str(out), "files": [str(f) for f in files]}, indent=2))
        else:
            print(f"wrote {len(files)} files to {out}: " + ", ".join(f.name for f in files))

"""`tierplan certs --out DIR --sites a,b,c`: the operator's CA and one TLS bundle folder per site."""

from __future__ import annotations

import json
from pathlib import Path

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("certs")
    def certs(
        out: Path = typer.Option(..., "--out", help="Folder for ca/ (the operator's CA key: keep it off the hosts) "
                                 "and one bundle per site, SITE/ (copy it to that site's host only)."),
        sites: str = typer.Option(..., "--sites", help="Comma-separated site classes (a controller bundle is added)."),
        hosts: str = typer.Option("", "--hosts", help="Extra DNS names / IPs every certificate is valid for."),
        as_json: bool = typer.Option(False, "--json", help="Print the folders and files written as JSON."),
    ) -> None:
        """Make the security material for `tierplan deploy --tls-dir` and `tierplan agent --tls-dir`.

        An existing OUT/ca/ is reused (its CA and token), so sites can be added later."""
        from tierplan.errors import InputError
        names = [s.strip() for s in sites.split(",") if s.strip()]
        if not names:
            raise InputError("--sites: give at least one site class. To fix: e.g. --sites phone,bs,cloud")
        from tierplan.runtime.security import CA_DIR, CONTROLLER, make_certs
        files = make_certs(out, names, [h for h in hosts.split(",") if h])
        bundles = {n: str(out / n) for n in dict.fromkeys([*names, CONTROLLER])}
        if as_json:
            print(json.dumps({"out": str(out), "ca": str(out / CA_DIR), "bundles": bundles,
                              "files": [str(f) for f in files]}, indent=2))
        else:
            print(f"wrote {len(files)} files to {out}: keep {out / CA_DIR} (ca.key) with you; copy each bundle "
                  "folder to its host only: " + ", ".join(
                      f"{n}/ -> " + ("the host running `tierplan deploy`" if n == CONTROLLER else f"the {n} host")
                      for n in bundles))

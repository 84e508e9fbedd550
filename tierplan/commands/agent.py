"""`tierplan agent --site NAME --listen HOST:PORT`: the edge agent (no Ray) on an edge host."""

from __future__ import annotations

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("agent")
    def agent(
        site: str = typer.Option(..., "--site", help="Site class this host serves (as in fleet.yaml)."),
        listen: str = typer.Option("127.0.0.1:0", "--listen", help="host:port to listen on."),
        controller: str = typer.Option(None, "--controller", help="Controller host:port to register with."),
        tls_dir: str = typer.Option(None, "--tls-dir", help="Folder from `tierplan certs` (mutual TLS + token)."),
    ) -> None:
        """Serve one edge site's pieces; prints `READY host:port`, stops on Ctrl-C / SIGTERM."""
        from tierplan.errors import InputError
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise InputError(f"--listen {listen!r}: expected HOST:PORT (e.g. 127.0.0.1:7001)")
        from runtime.agent import run_agent
        run_agent(site, listen, controller, tls_dir)

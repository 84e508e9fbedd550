"""`tierplan agent --site NAME --listen HOST:PORT`: the edge agent (no Ray) on an edge host."""

from __future__ import annotations

import typer

from tierplan.errors import finite_flag

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("agent")
    def agent(
        site: str = typer.Option(..., "--site", help="Site class this host serves (as in fleet.yaml)."),
        listen: str = typer.Option("127.0.0.1:0", "--listen", help="host:port to listen on; beyond loopback "
                                   "it needs --tls-dir (or --insecure)."),
        controller: str = typer.Option(None, "--controller", help="Controller host:port to register with."),
        tls_dir: str = typer.Option(None, "--tls-dir", help="This site's bundle folder from `tierplan certs` "
                                    "(ca.pem, SITE.pem, SITE.key, token): mutual TLS + token."),
        insecure: bool = typer.Option(False, "--insecure", help="Listen beyond loopback without TLS (warns): "
                                      "anyone who reaches the port can use this site."),
        allow_transforms: str = typer.Option("", "--allow-transforms", help="MODULE[,MODULE]: more modules whose "
                                             "functions may run as transforms (tierplan.transforms always may)."),
        cache_max_mb: float = typer.Option(4096, "--cache-max-mb", callback=finite_flag("--cache-max-mb", "4096", 1), help="Size limit of the piece cache, MiB."),
        metrics_port: int = typer.Option(0, "--metrics-port", min=0, max=65535, metavar="PORT",
                                         help="Serve this site's Prometheus metrics on 127.0.0.1:PORT (loopback "
                                              "only; 0: a free port). Printed at start."),
        replica: int = typer.Option(0, "--replica", min=0, help="Which device of its class this host is "
                                    "(0, 1, ...) when the deployment runs several of the class (deploy "
                                    "--devices-per-class)."),
    ) -> None:
        """Serve one edge site's pieces; prints `READY host:port metrics=127.0.0.1:PORT`, stops on Ctrl-C / SIGTERM."""
        from tierplan.runtime.agent import run_agent
        from tierplan.runtime.graph import parse_modules
        run_agent(site, listen, controller, tls_dir, insecure=insecure,
                  allow_transforms=parse_modules(allow_transforms), cache_limit_bytes=int(cache_max_mb * 2**20),
                  metrics_port=metrics_port, replica=replica)

"""The edge agent: a plain Python process (no Ray) hosting one edge site's stage worker.

    python -m tierplan.runtime.agent --site phone --listen 127.0.0.1:7001 [--controller HOST:PORT] [--tls-dir DIR]
                            [--insecure] [--allow-transforms MODULE,...] [--cache-max-mb N]

It listens for the controller's `Configure` (plan, peers, piece files) and runs the pieces the
plan puts on its site. With `--controller` it registers its address on start, so a restarted
agent rejoins the deployment by itself. `AgentProcess` is the launcher the local deployment uses.
A listen address beyond loopback needs `--tls-dir` (or `--insecure`); transforms come only from
`tierplan.transforms` and the modules of `--allow-transforms` (see SECURITY.md).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tierplan.runtime.graph import DEFAULT_TRANSFORM_MODULES, parse_modules
from tierplan.runtime.piececache import DEFAULT_CACHE_LIMIT_BYTES
from tierplan.errors import InputError, RuntimeFault, TierplanError

__all__ = ["run_agent", "AgentProcess", "main"]

_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
_START_TIMEOUT_S = 60.0
_STOP_GRACE_S = 3.0


def run_agent(site: str, listen: str, controller: str | None = None, tls_dir: str | None = None,
              ready: threading.Event | None = None, stop: threading.Event | None = None, *,
              insecure: bool = False, allow_transforms: tuple[str, ...] = DEFAULT_TRANSFORM_MODULES,
              cache_limit_bytes: int = DEFAULT_CACHE_LIMIT_BYTES, metrics_port: int = 0, replica: int = 0) -> None:
    """Serve one site until SIGTERM/SIGINT (or `stop` is set); prints `READY host:port
    metrics=127.0.0.1:PORT` when listening (its Prometheus endpoint stays on loopback: `metrics_port`,
    0 a free one). `replica`: which device of its class this agent is (0, 1, ...: a request stays on one).

    InputError (exit 2 on the command line) for a listen address that is not loopback without TLS
    or `insecure`, or that this host cannot bind."""
    from tierplan.runtime.security import TlsConfig, check_listen
    from tierplan.runtime.stage import StageWorker
    tls = TlsConfig.from_dir(tls_dir, site) if tls_dir else None
    check_listen(listen, tls_dir, insecure)
    worker = StageWorker(site, listen, tls=tls, controller=controller, allow_transforms=allow_transforms,
                         cache_limit_bytes=cache_limit_bytes, insecure=insecure, metrics_port=metrics_port,
                         replica=replica)
    try:
        address = worker.start()
    except (RuntimeError, OSError) as e:   # lost a race for the port since check_listen
        worker.stop()
        raise InputError(f"--listen {listen}: cannot listen there ({e}). To fix: use a free port") from None
    except InputError:   # the metrics port is taken
        worker.stop()
        raise
    print(f"READY {address} metrics={worker.metrics_address}", flush=True)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    if ready is not None:
        ready.set()
    stop.wait()
    worker.stop()


class AgentProcess:
    """A local edge agent started as a subprocess (the embedded default's stand-in for a device)."""

    def __init__(self, site: str, controller: str, tls_dir: str | None = None, listen: str = "127.0.0.1:0",
                 allow_transforms: tuple[str, ...] = DEFAULT_TRANSFORM_MODULES, metrics_port: int = 0,
                 replica: int = 0) -> None:
        self.site = site
        self.replica = replica
        self.metrics_port = metrics_port
        self.allow_transforms = tuple(allow_transforms)
        self.controller = controller
        self.tls_dir = tls_dir
        self.listen = listen
        self.proc: subprocess.Popen | None = None
        self.address = ""

    def start(self) -> str:
        """Start the process and wait for its READY line; returns its address."""
        cmd = [sys.executable, "-m", "tierplan.runtime.agent", "--site", self.site, "--listen", self.listen,
               "--controller", self.controller]
        if self.tls_dir:
            cmd += ["--tls-dir", self.tls_dir]
        if self.metrics_port:
            cmd += ["--metrics-port", str(self.metrics_port)]
        if self.replica:
            cmd += ["--replica", str(self.replica)]
        extra = [m for m in self.allow_transforms if m not in DEFAULT_TRANSFORM_MODULES]
        if extra:
            cmd += ["--allow-transforms", ",".join(extra)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        deadline = time.time() + _START_TIMEOUT_S
        line = ""
        out = self.proc.stdout
        assert out is not None   # stdout=PIPE
        while time.time() < deadline:
            line = out.readline()
            if line.startswith("READY "):
                self.address = line.split()[1]
                return self.address
            if not line and self.proc.poll() is not None:
                break
            if line.startswith("FAILED "):   # the agent's own error: `FAILED <exit code> <message>`
                self.kill()
                code, _, why = line[len("FAILED "):].strip().partition(" ")
                raise (InputError if code == "2" else RuntimeFault)(f"edge agent for site {self.site!r}: {why}")
        self.kill()
        raise RuntimeFault(f"edge agent for site {self.site!r} did not start ({line.strip() or 'no output'})")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a device failure (no goodbye)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; always reaps the process."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tierplan.runtime.agent", description=__doc__.splitlines()[0])
    ap.add_argument("--site", required=True, help="Site class this agent serves (as in fleet.yaml).")
    ap.add_argument("--listen", default="127.0.0.1:0", help="host:port to listen on.")
    ap.add_argument("--controller", default=None, help="Controller host:port to register with.")
    ap.add_argument("--tls-dir", default=None, help="This site's bundle from `tierplan certs` (mutual TLS + token).")
    ap.add_argument("--insecure", action="store_true", help="Allow a non-loopback --listen without TLS (warns).")
    ap.add_argument("--allow-transforms", default="", help="More modules whose functions may run as transforms.")
    ap.add_argument("--metrics-port", type=int, default=0,
                    help="Loopback port of the Prometheus metrics (0: a free one).")
    ap.add_argument("--replica", type=int, default=0,
                    help="Which device of its class this agent is (0, 1, ...), when a class runs several.")
    ap.add_argument("--cache-max-mb", type=float, default=DEFAULT_CACHE_LIMIT_BYTES / 2**20,
                    help="Size limit of the piece cache, MiB.")
    a = ap.parse_args(argv)
    try:
        run_agent(a.site, a.listen, a.controller, a.tls_dir, insecure=a.insecure,
                  allow_transforms=parse_modules(a.allow_transforms), cache_limit_bytes=int(a.cache_max_mb * 2**20),
                  metrics_port=a.metrics_port, replica=a.replica)
    except TierplanError as e:
        print(f"error: {e}", file=sys.stderr)
        print(f"FAILED {e.exit_code} {' '.join(str(e).split())}", flush=True)   # for AgentProcess
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()

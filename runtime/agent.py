"""The edge agent: a plain Python process (no Ray) hosting one edge site's stage worker.

    python -m runtime.agent --site phone --listen 127.0.0.1:7001 [--controller HOST:PORT] [--tls-dir DIR]

It listens for the controller's `Configure` (plan, peers, piece files) and runs the pieces the
plan puts on its site. With `--controller` it registers its address on start, so a restarted
agent rejoins the deployment by itself. `AgentProcess` is the launcher the local deployment uses.
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

from tierplan.errors import RuntimeFault

__all__ = ["run_agent", "AgentProcess", "main"]

_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
_START_TIMEOUT_S = 60.0
_STOP_GRACE_S = 3.0


def run_agent(site: str, listen: str, controller: str | None = None, tls_dir: str | None = None,
              ready: threading.Event | None = None, stop: threading.Event | None = None) -> None:
    """Serve one site until SIGTERM/SIGINT (or `stop` is set); prints `READY host:port` when listening."""
    from runtime.security import TlsConfig
    from runtime.stage import StageWorker
    tls = TlsConfig.from_dir(tls_dir, site) if tls_dir else None
    worker = StageWorker(site, listen, tls=tls, controller=controller)
    address = worker.start()
    print(f"READY {address}", flush=True)
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

    def __init__(self, site: str, controller: str, tls_dir: str | None = None, listen: str = "127.0.0.1:0") -> None:
        self.site = site
        self.controller = controller
        self.tls_dir = tls_dir
        self.listen = listen
        self.proc: subprocess.Popen | None = None
        self.address = ""

    def start(self) -> str:
        """Start the process and wait for its READY line; returns its address."""
        cmd = [sys.executable, "-m", "runtime.agent", "--site", self.site, "--listen", self.listen,
               "--controller", self.controller]
        if self.tls_dir:
            cmd += ["--tls-dir", self.tls_dir]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        deadline = time.time() + _START_TIMEOUT_S
        line = ""
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("READY "):
                self.address = line.split()[1]
                return self.address
            if not line and self.proc.poll() is not None:
                break
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
    ap = argparse.ArgumentParser(prog="python -m runtime.agent", description=__doc__.splitlines()[0])
    ap.add_argument("--site", required=True, help="Site class this agent serves (as in fleet.yaml).")
    ap.add_argument("--listen", default="127.0.0.1:0", help="host:port to listen on.")
    ap.add_argument("--controller", default=None, help="Controller host:port to register with.")
    ap.add_argument("--tls-dir", default=None, help="Directory from `tierplan certs` (mutual TLS + token).")
    a = ap.parse_args(argv)
    run_agent(a.site, a.listen, a.controller, a.tls_dir)


if __name__ == "__main__":
    main()

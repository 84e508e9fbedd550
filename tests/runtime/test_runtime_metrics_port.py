"""`--metrics-port BASE`: the controller and every worker serve Prometheus metrics on consecutive loopback ports."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from rt_helpers import processes_with_env, three_tier_fleet
from test_runtime_cli import APP_YAML, FLEET_YAML   # the one-model app `run` serves there

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def free_base(n: int, tries: int = 50) -> int:
    """A base port whose next `n` ports are all free on 127.0.0.1 now: above one the kernel hands out."""
    for _ in range(tries):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1] + 7
        if base + n >= 65535:
            continue
        try:
            held = []
            for p in range(base, base + n):
                s = socket.socket()
                held.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    pytest.skip("no free run of ports on 127.0.0.1")


def scrape(address: str) -> str:
    """GET http://ADDRESS/metrics (loopback)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        return r.read().decode()


def _env(marker: str) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), TIERPLAN_TEST_MARK=marker)


def _no_strays(marker: str) -> None:
    deadline = time.time() + 15
    while processes_with_env(marker) and time.time() < deadline:
        time.sleep(0.5)
    assert processes_with_env(marker) == [], "stray processes"


def test_deploy_serves_metrics_on_consecutive_ports(tmp_path, sq_files):
    """`deploy --metrics-port B --json`: controller on B, the sites on B+1, B+2; each answers with tierplan_ metrics."""
    from tierplan.runtime.handplan import chain_plan
    chain_plan(sq_files, ["phone", "bs", "bs"], "phone", fleet=three_tier_fleet()).save(tmp_path / "plan.json")
    base = free_base(3)
    marker = uuid.uuid4().hex
    err = open(tmp_path / "stderr.txt", "w+")   # a file: an unread pipe could stall deploy
    proc = subprocess.Popen([sys.executable, "-m", "tierplan", "deploy", str(tmp_path / "plan.json"), "--json",
                             "--metrics-port", str(base), "--duration", "120"], stdout=subprocess.PIPE,
                            stderr=err, text=True, env=_env(marker), cwd=REPO)
    try:
        text = ""
        for line in proc.stdout:   # the JSON document ends with a "}" line
            text += line
            if line.rstrip() == "}":
                break
        assert text, open(tmp_path / "stderr.txt").read()[-2000:]
        info = json.loads(text)
        ports = {int(a.rsplit(":", 1)[1]) for a in info["metrics"].values()}
        assert ports == {base, base + 1, base + 2} and info["metrics"]["controller"] == f"127.0.0.1:{base}"
        assert all(a.startswith("127.0.0.1:") for a in info["metrics"].values())
        assert "tierplan_requests_total" in scrape(info["metrics"]["controller"])
        for site in info["sites"]:
            assert "tierplan_stage_latency_seconds" in scrape(info["metrics"][site])
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    assert rc == 0, open(tmp_path / "stderr.txt").read()[-2000:]
    _no_strays(marker)


def test_deploy_refuses_a_taken_metrics_port(tmp_path, sq_files):
    """A port of the range already taken on loopback: exit 2 before anything starts, naming the port and the flag."""
    from tierplan.runtime.handplan import chain_plan
    chain_plan(sq_files, ["phone", "bs", "bs"], "phone", fleet=three_tier_fleet()).save(tmp_path / "plan.json")
    base = free_base(3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", base + 1))
        s.listen()
        r = subprocess.run([sys.executable, "-m", "tierplan", "deploy", str(tmp_path / "plan.json"), "--json",
                            "--metrics-port", str(base), "--duration", "1"], capture_output=True, text=True,
                           env=_env(uuid.uuid4().hex), cwd=REPO, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "--metrics-port" in r.stderr and str(base + 1) in r.stderr
    assert json.loads(r.stdout)["error"]["code"] == 2


def test_run_prints_and_serves_its_metrics_ports(tmp_path, sq_model):
    """`run --metrics-port B --progress`: the endpoints printed at start answer on B.., the bar is on stderr, the report lists them."""
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "app.yaml").write_text(APP_YAML.format(model=sq_model))
    (d / "fleet.yaml").write_text(FLEET_YAML)
    base = free_base(4)
    marker = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-m", "tierplan", "run", str(d), "--duration", "8", "--json",
                             "--progress", "--metrics-port", str(base)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(marker), cwd=REPO)
    err = ""
    scraped: dict[str, str] = {}
    try:
        for line in proc.stderr:   # read stderr as it comes (the bar keeps writing to it)
            err += line
            m = re.search(r"metrics \(Prometheus, loopback\): (.*)", line)
            if m and not scraped:
                for item in m.group(1).split(", "):
                    name, addr = item.split(" ")
                    scraped[addr] = scrape(addr)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert scraped, err[-2000:]
    ports = sorted(int(a.rsplit(":", 1)[1]) for a in scraped)
    assert ports == list(range(base, base + len(ports))) and all("tierplan_" in t for t in scraped.values())
    assert re.search(r"tiny: \d+ ok, 0 failed", err) and "━" in err   # the requests' bar
    rep = json.loads(out)
    assert sorted(int(a.rsplit(":", 1)[1]) for a in rep["sites"]["metrics"].values()) == ports
    _no_strays(marker)

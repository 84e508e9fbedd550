"""Multi-host use on one machine: `ray start` nodes with site labels, `tierplan agent`, `tierplan deploy --remote`, mutual TLS."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tierplan.runtime.proto import runtime_pb2 as pb
from tierplan.runtime.proto import runtime_pb2_grpc as pbg
from tierplan.runtime.security import TlsConfig, channel
from tierplan.runtime.wire import GRPC_OPTIONS, tensor_to_pb

from rt_helpers import processes_with_env, three_tier_fleet

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def _free_port() -> int:
    """A free port below the kernel's ephemeral range: a port that bind(0) hands out can be taken by any
    outgoing connection before the server binds it (the Ray head's GCS once lost its port so under load)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]) \
        if Path("/proc/sys/net/ipv4/ip_local_port_range").exists() else 32768
    rng = np.random.default_rng()
    for _ in range(200):
        port = int(rng.integers(max(1024, low - 12000), low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_remote_deploy_over_ray_start_and_a_tls_agent(tmp_path, sq_files):
    """A head from `ray start --resources --labels`, an agent from `tierplan agent --tls-dir` and `tierplan deploy
    --remote --tls-dir` (started at once: it waits for the head) answer a front-door request over mutual TLS, each
    with its own certificate bundle; stopping them exits 0 and leaves no process behind."""
    from tierplan.runtime.handplan import chain_plan
    from tierplan.runtime.security import make_certs
    make_certs(tmp_path / "certs", ["phone", "cloud"])
    chain_plan(sq_files, ["phone", "cloud", "cloud"], "phone", fleet=three_tier_fleet()).save(tmp_path / "plan.json")
    marker = uuid.uuid4().hex
    env = dict(os.environ, PYTHONPATH=str(REPO), TIERPLAN_TEST_MARK=marker, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    ray_port, agent_port = _free_port(), _free_port()
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(ray_port),
         "--num-cpus", "1", "--resources", json.dumps({"site:cloud": 1}), "--labels", "tierplan-site=cloud",
         "--include-dashboard", "false", "--disable-usage-stats"],
        env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT)
    agent = subprocess.Popen(
        [sys.executable, "-m", "tierplan", "agent", "--site", "phone", "--listen", f"127.0.0.1:{agent_port}",
         "--tls-dir", str(tmp_path / "certs" / "phone")], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert agent.stdout.readline().startswith("READY 127.0.0.1:")
        # no wait for the head: `deploy --remote` itself waits until the cluster is ready
        # stderr goes to a file: a pipe nobody reads while it runs could fill up and stall the deploy
        err_file = open(tmp_path / "deploy.err", "w+")
        deploy = subprocess.Popen(
            [sys.executable, "-m", "tierplan", "deploy", str(tmp_path / "plan.json"), "--remote",
             "--ray-address", f"127.0.0.1:{ray_port}", "--agent", f"phone=127.0.0.1:{agent_port}",
             "--tls-dir", str(tmp_path / "certs" / "controller"), "--duration", "120", "--json"],
            stdout=subprocess.PIPE, stderr=err_file, text=True, env=env, cwd=REPO)
        try:
            text = ""
            while True:   # the addresses, printed as indented JSON once every site is up
                line = deploy.stdout.readline()
                assert line, ((tmp_path / "deploy.err").read_text()[-3000:]
                              + f"\nhead exit code {head.poll()}: " + (tmp_path / "head.log").read_text()[-2000:])
                text += line
                if line.startswith("}"):
                    break
            info = json.loads(text)
            assert info["sites"]["phone"]["up"] and info["sites"]["phone"]["address"] == f"127.0.0.1:{agent_port}"
            assert info["sites"]["cloud"]["up"]
            tls = TlsConfig.from_dir(tmp_path / "certs" / "controller", "controller")
            ch = channel(info["front_door"], tls, GRPC_OPTIONS)
            x = np.random.default_rng(0).random((1, 3, 224, 224)).astype(np.float32)
            reply = pbg.FrontDoorStub(ch).Predict(
                pb.PredictRequest(inputs={"input": tensor_to_pb("input", x)}, timeout_ms=20000), timeout=30)
            ch.close()
            assert reply.error == "" and reply.outputs["output"].items[0].tensors[0].name == "softmaxout_1"
        finally:
            _stop(deploy)
            deploy.stdout.close()
            err_file.close()
            assert deploy.returncode == 0, (tmp_path / "deploy.err").read_text()[-3000:]
    finally:
        _stop(agent)
        agent.stdout.close()
        _stop(head)
    deadline = time.time() + 20
    while processes_with_env(marker) and time.time() < deadline:
        time.sleep(0.5)
    assert processes_with_env(marker) == []

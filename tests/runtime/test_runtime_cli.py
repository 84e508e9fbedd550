"""The runtime's CLI verbs end to end: `tierplan run` on a small app, `certs`, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from rt_helpers import processes_with_env

pytestmark = pytest.mark.integration   # `tierplan run` starts Ray, agents and gRPC

REPO = Path(__file__).resolve().parents[2]
STRAY_WAIT_S = 15.0

APP_YAML = """\
name: tiny-vision
models:
  classifier:
    onnx: {model}
sources:
  camera:
    at: edge
    rate_hz: 2
    shape: [1, 3, 224, 224]
sinks:
  label:
    from: classifier
edges:
  - {{from: camera, to: classifier}}
slo:
  - {{sink: label, latency_ms: 2000}}
objective: latency
"""

FLEET_YAML = """\
name: tiny-fleet
sites:
  phone: {tier: edge, device: pixel-8, count: 10, attach: bs, link: radio}
  tablet: {tier: edge, device: galaxy-a54, count: 5, attach: bs, link: radio}
  bs: {tier: base_station, device: mec-t4, count: 1, attach: cloud, link: backhaul}
  cloud: {tier: cloud, device: aws-g5-xlarge, count: 1, max_instances: 2}
links:
  radio: {uplink_mbps: 100, downlink_mbps: 200, rtt_ms: 10}
  backhaul: {uplink_mbps: 1000, downlink_mbps: 1000, rtt_ms: 4}
"""


def _cli(args: list[str], env_extra: dict | None = None, timeout_s: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "tierplan", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout_s)


@pytest.fixture(scope="module")
def tiny_example(tmp_path_factory, sq_model) -> Path:
    d = tmp_path_factory.mktemp("tiny-vision")
    (d / "app.yaml").write_text(APP_YAML.format(model=sq_model))
    (d / "fleet.yaml").write_text(FLEET_YAML)
    return d


@pytest.mark.integration
def test_run_serves_requests_reports_json_and_leaves_no_processes(tiny_example):
    """`tierplan run DIR --json` plans, deploys, serves, reports the DESIGN.md fields, and leaves no stray process."""
    marker = uuid.uuid4().hex
    r = _cli(["run", str(tiny_example), "--duration", "3", "--json"], {"TIERPLAN_TEST_MARK": marker})
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    for key in ("requests_ok", "requests_failed", "measured_p50_ms", "measured_p95_ms", "predicted_p50_ms",
                "predicted_p95_ms", "stages"):
        assert key in out
    assert out["requests_ok"] > 0 and out["requests_failed"] == 0
    assert out["measured_p50_ms"] > 0 and out["predicted_p50_ms"] > 0
    assert any(s["kind"] == "compute" for s in out["stages"])
    # the placement re-costed for this machine: every compute step has a local prediction
    assert out["predicted_local_p50_ms"] > 0
    assert all(s["predicted_local_ms"] is not None and s["predicted_local_ms"] > 0
               for s in out["stages"] if s["kind"] == "compute")
    # the schedule replayed with the measured steps, the steps' CPU time (never above their wall time), the
    # request less its CPU waits, and the runtime's own time measured on this host
    assert out["replayed_p50_ms"] > 0 and 0 < out["measured_cpu_p50_ms"] <= out["measured_p50_ms"] + 1e-9
    assert all(0 <= s["measured_cpu_p50_ms"] <= s["measured_p50_ms"] + 1e-9
               for s in out["stages"] if s["kind"] == "compute")
    assert not any(s["kind"] == "cpu" for s in out["stages"])
    assert {"step_ms", "hop_ms", "request_ms", "run_ms"} <= set(out["overhead"])
    # every device class ran at its source's rate, each measured against its own prediction; every site reported
    assert out["classes_run"] == ["phone", "tablet"] and out["classes_not_run"] == []
    rows = {c["device_class"]: c for c in out["classes"]}
    assert set(rows) == {"phone", "tablet"} and all(r["requests"] > 0 and r["rate_hz"] == 2 for r in rows.values())
    assert all(r["measured_p50_ms"] > 0 and r["predicted_local_p50_ms"] > 0 and r["slo_ms"] == 2000
               for r in rows.values())
    sites = {s["site"]: s for s in out["site_rows"]}
    assert {"phone", "tablet"} <= set(sites) and all(s["workers"] >= 1 and s["scaling"] for s in sites.values())
    assert any(s["utilisation"] for s in sites.values())
    assert len(out["traces"]) == out["requests_ok"]
    assert {t["device_class"] for t in out["traces"]} == {"phone", "tablet"}
    deadline = time.time() + STRAY_WAIT_S
    while processes_with_env(marker) and time.time() < deadline:
        time.sleep(0.5)
    assert processes_with_env(marker) == [], "stray processes after `tierplan run`"


def test_run_unknown_class_is_bad_input(tiny_example):
    """--class naming no class of the plan exits 2 with one line naming the plan's classes, before deploying."""
    r = _cli(["run", str(tiny_example), "--duration", "1", "--class", "phone,laptop"], timeout_s=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'laptop' is not a device class" in r.stderr and "phone, tablet" in r.stderr and "To fix" in r.stderr


def test_run_unknown_example_is_bad_input():
    """An example that does not exist exits 2 with one line naming it and the known examples."""
    r = _cli(["run", "no-such-example", "--duration", "1"], timeout_s=60)
    assert r.returncode == 2
    assert "no-such-example" in r.stderr and "Traceback" not in r.stderr


def test_certs_verb_writes_files(tmp_path):
    """`tierplan certs --out DIR --sites a,b --json` lists the CA, site and controller files it wrote."""
    r = _cli(["certs", "--out", str(tmp_path / "c"), "--sites", "a,b", "--json"], timeout_s=60)
    assert r.returncode == 0, r.stderr
    files = {Path(f).name for f in json.loads(r.stdout)["files"]}
    assert {"ca.pem", "a.pem", "b.key", "controller.pem", "token"} <= files


def test_agent_verb_rejects_a_bad_listen_address():
    """`tierplan agent --listen nonsense` exits 2 naming the flag and the expected form."""
    r = _cli(["agent", "--site", "phone", "--listen", "nonsense"], timeout_s=60)
    assert r.returncode == 2 and "--listen" in r.stderr

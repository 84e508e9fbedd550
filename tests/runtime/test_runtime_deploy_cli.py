"""`tierplan deploy PLAN --local` serves a plan.json and tears everything down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from rt_helpers import processes_with_env, three_tier_fleet

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_deploy_verb_serves_a_plan_file_then_leaves_no_processes(tmp_path, sq_files):
    """`tierplan deploy plan.json --duration 2 --json` prints every site up with its metrics endpoint and exits clean."""
    from tierplan.runtime.handplan import chain_plan
    plan = chain_plan(sq_files, ["phone", "bs", "bs"], "phone", fleet=three_tier_fleet())
    plan.save(tmp_path / "plan.json")
    marker = uuid.uuid4().hex
    env = dict(os.environ, PYTHONPATH=str(REPO), TIERPLAN_TEST_MARK=marker)
    r = subprocess.run([sys.executable, "-m", "tierplan", "deploy", str(tmp_path / "plan.json"), "--duration", "2",
                        "--json"], capture_output=True, text=True, env=env, cwd=REPO, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads(r.stdout)
    assert set(info["sites"]) == {"phone", "bs"} and all(s["up"] for s in info["sites"].values())
    assert info["front_door"].startswith("127.0.0.1:") and info["metrics"]["bs"].startswith("127.0.0.1:")
    deadline = time.time() + 15
    while processes_with_env(marker) and time.time() < deadline:
        time.sleep(0.5)
    assert processes_with_env(marker) == []


def test_up_verb_starts_labelled_nodes_and_stops_clean():
    """`tierplan up --sites bs,cloud --json` prints the Ray address and each site's resource and label, then stops clean."""
    marker = uuid.uuid4().hex
    env = dict(os.environ, PYTHONPATH=str(REPO), TIERPLAN_TEST_MARK=marker)
    r = subprocess.run([sys.executable, "-m", "tierplan", "up", "--sites", "bs,cloud", "--duration", "1", "--json"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads(r.stdout)
    assert info["ray_address"].startswith("127.0.0.1:")
    assert info["sites"]["cloud"] == {"resource": "site:cloud", "label": "tierplan-site=cloud"}
    deadline = time.time() + 15
    while processes_with_env(marker) and time.time() < deadline:
        time.sleep(0.5)
    assert processes_with_env(marker) == []

"""The Python API is quiet unless asked: Ray's and gRPC's logging stays at WARNING (tierplan.logs)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration   # starts Ray and an agent

ROOT = Path(__file__).resolve().parents[2]

# SqueezeNet in 3 pieces: two on the phone (an agent, no Ray), one on bs (a Ray node): Ray forks
# processes while gRPC runs, which is what made gRPC's C core print fork_posix.cc notices
SCRIPT = textwrap.dedent("""
    import sys, tempfile
    from pathlib import Path
    import numpy as np
    import tierplan
    from rt_helpers import CUTS, SQUEEZENET, three_tier_fleet
    from tierplan.runtime.handplan import chain_plan, split_chain
    files = split_chain(SQUEEZENET, CUTS, Path(tempfile.mkdtemp()), "sq")
    fleet = three_tier_fleet()
    plan = chain_plan(files, ["phone", "phone", "bs"], "phone", fleet=fleet)
    with tierplan.deploy(plan) as svc:
        y = svc.predict({"input": np.zeros((1, 3, 224, 224), np.float32)})
    assert y
""")


def test_quiet_by_default_sets_grpc_and_ray_levels_unless_asked(monkeypatch) -> None:
    """WARNING for the Ray and gRPC loggers and GRPC_VERBOSITY=ERROR by default; TIERPLAN_LOG_LEVEL and a user's GRPC_VERBOSITY win."""
    from tierplan.logs import log_level, quiet_by_default
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    monkeypatch.delenv("TIERPLAN_LOG_LEVEL", raising=False)
    quiet_by_default()
    assert os.environ["GRPC_VERBOSITY"] == "ERROR" and log_level() == logging.WARNING
    assert logging.getLogger("ray").level == logging.getLogger("grpc").level == logging.WARNING
    monkeypatch.setenv("GRPC_VERBOSITY", "DEBUG")
    monkeypatch.setenv("TIERPLAN_LOG_LEVEL", "info")
    quiet_by_default()
    assert os.environ["GRPC_VERBOSITY"] == "DEBUG" and logging.getLogger("ray").level == logging.INFO
    monkeypatch.delenv("TIERPLAN_LOG_LEVEL")
    quiet_by_default()


@pytest.mark.integration
def test_python_api_deploy_prints_nothing(tmp_path: Path) -> None:
    """import tierplan and a local deploy (agent + Ray node) with one request print nothing on stdout or stderr."""
    script = tmp_path / "api_deploy.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("GRPC_VERBOSITY", "TIERPLAN_LOG_LEVEL", "RAY_DEDUP_LOGS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests" / "runtime")])
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout == "" and r.stderr == "", (r.stdout[-2000:], r.stderr[-2000:])

"""Replicas per Ray site: deliveries spread over them, and a replica killed mid-run loses no request."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request

import numpy as np
import pytest

from tierplan.runtime.deploy import deploy
from tierplan.runtime.handplan import chain_plan
from tierplan.runtime.stage import pick_address, rotating
from tierplan.errors import InputError, RuntimeFault

from rt_helpers import three_tier_fleet

REQUEST_TIMEOUT_S = 15.0    # generous: a replica's death is noticed by the health loop, then retried
CLIENTS = 3


def test_requests_spread_over_replicas_and_retries_move_to_the_next():
    """pick_address sends a request to one replica by its id (spread over all); each retry asks the next one."""
    peers = "a:1,b:2,c:3"
    picks = {pick_address(peers, f"req-{i}") for i in range(60)}
    assert picks == {"a:1", "b:2", "c:3"}
    assert pick_address("a:1", "x") == "a:1" and pick_address("", "x") is None and pick_address(None, "x") is None
    resolve = rotating(lambda: peers, "req-7")
    seq = [resolve() for _ in range(4)]
    assert seq[0] == pick_address(peers, "req-7") and len(set(seq[:3])) == 3 and seq[3] == seq[0]


def test_replicas_must_be_whole_numbers_of_at_least_one(sq_files):
    """deploy refuses replicas=0 with an InputError saying what to pass, before starting anything."""
    fleet = three_tier_fleet()
    plan = chain_plan(sq_files, ["phone", "bs", "cloud"], "phone", fleet=fleet)
    with pytest.raises(InputError, match="replicas"):
        deploy(plan, replicas={"bs": 0})


def _runs(metrics_address: str) -> float:
    text = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("tierplan_stage_runs_total{") and 'status="ok"' in line)


@pytest.mark.integration
def test_killing_one_replica_mid_run_completes_every_request(ray_cluster, sq_files, sq_input, sq_reference):
    """Two workers per Ray site share the load; SIGKILL to one bs replica mid-run: every request still completes
    correctly within its deadline (lost ones are retried on the other replica), and the replica rejoins."""
    fleet = three_tier_fleet()
    plan = chain_plan(sq_files, ["phone", "bs", "cloud"], "phone", fleet=fleet)
    with deploy(plan, cluster=ray_cluster, request_timeout_s=REQUEST_TIMEOUT_S, replicas=2) as svc:
        h = svc.health()
        assert set(h) == {"phone", "bs", "bs#1", "cloud", "cloud#1"} and all(s["up"] for s in h.values())
        assert len({s["pid"] for s in h.values()}) == 5
        for _ in range(12):
            svc.predict(sq_input)
        assert _runs(h["bs"]["metrics"]) > 0 and _runs(h["bs#1"]["metrics"]) > 0   # both replicas work

        results: list[str] = []
        durations: list[float] = []
        killed_at: list[float] = []
        lock = threading.Lock()

        def client():
            while not killed_at or time.time() < killed_at[0] + 2.0:
                t0 = time.time()
                try:
                    out = svc.predict(sq_input)
                    ok = np.allclose(out["output"]["softmaxout_1"], sq_reference, rtol=1e-5, atol=1e-6)
                    r = "ok" if ok else "wrong"
                except RuntimeFault as e:
                    r = f"error: {e}"
                with lock:
                    results.append(r)
                    durations.append(time.time() - t0)

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        victim = h["bs#1"]["pid"]
        os.kill(victim, signal.SIGKILL)
        killed_at.append(time.time())
        for t in threads:
            t.join(timeout=4 * REQUEST_TIMEOUT_S)
        assert not any(t.is_alive() for t in threads), "a request hung"
        assert results and results.count("ok") == len(results), [r for r in results if r != "ok"][:3]
        assert max(durations) <= REQUEST_TIMEOUT_S + 1.0

        deadline = time.time() + 60      # Ray restarts the actor; it registers again and is reconfigured
        while time.time() < deadline:
            h2 = svc.health()
            if h2["bs#1"]["up"] and h2["bs#1"]["pid"] not in (0, victim):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the killed replica did not rejoin")
        out = svc.predict(sq_input)
        np.testing.assert_allclose(out["output"]["softmaxout_1"], sq_reference, rtol=1e-5, atol=1e-6)


@pytest.mark.integration
def test_deploy_restarts_a_site_node_that_died_before_its_actor_started(ray_cluster, sq_files, sq_input, sq_reference):
    """A site's raylet killed (as the OS or a missed health check would) before deploy: deploy notices the dead
    node while its actor waits, starts a fresh node for the site and serves correct results."""
    fleet = three_tier_fleet()
    plan = chain_plan(sq_files, ["phone", "bs", "cloud"], "phone", fleet=fleet)
    ray_cluster.ensure_sites(["bs", "cloud"])
    ray_cluster.nodes["bs"].kill_raylet()
    assert not ray_cluster.site_alive("bs")
    t0 = time.time()
    with deploy(plan, cluster=ray_cluster, request_timeout_s=REQUEST_TIMEOUT_S) as svc:
        out = svc.predict(sq_input)
        np.testing.assert_allclose(out["output"]["softmaxout_1"], sq_reference, rtol=1e-5, atol=1e-6)
    assert ray_cluster.site_alive("bs")
    assert time.time() - t0 < 55, "the dead node should be noticed at a poll, not after the 60 s start timeout"

"""A plan deployed for real: Ray nodes per site, an edge agent process, gRPC between sites."""

from __future__ import annotations

import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest

from tierplan.runtime.deploy import deploy
from tierplan.runtime.handplan import chain_plan
from tierplan.runtime.proto import runtime_pb2 as pb
from tierplan.runtime.proto import runtime_pb2_grpc as pbg
from tierplan.runtime.wire import GRPC_OPTIONS, pb_to_tensor, tensor_to_pb
from tierplan.errors import RuntimeFault

from rt_helpers import three_tier_fleet

pytestmark = pytest.mark.integration

REQUEST_TIMEOUT_S = 4.0
KILL_DETECT_S = 20.0      # generous: the CPU is shared by many processes while these tests run
RECOVERY_S = 120.0


@pytest.fixture(scope="module")
def service(ray_cluster, sq_files):
    """SqueezeNet piece 0 on the phone (agent), piece 1 on bs, piece 2 on cloud (Ray actors)."""
    fleet = three_tier_fleet()
    plan = chain_plan(sq_files, ["phone", "bs", "cloud"], "phone", fleet=fleet)
    with deploy(plan, cluster=ray_cluster, request_timeout_s=REQUEST_TIMEOUT_S,
                front_door="127.0.0.1:0") as svc:
        yield svc


def test_three_site_pipeline_matches_the_whole_model(service, sq_input, sq_reference):
    """Pieces on three sites (agent + two Ray nodes) give the whole model's output."""
    out = service.predict(sq_input)
    np.testing.assert_allclose(out["output"]["softmaxout_1"], sq_reference, rtol=1e-5, atol=1e-6)


def test_each_site_runs_in_its_own_process_on_its_own_ray_node(service, ray_cluster):
    """Every site's worker is a distinct process; Ray sites sit on the node carrying their label."""
    import ray
    h = service.health()
    assert all(s["up"] for s in h.values())
    assert len({s["pid"] for s in h.values()}) == 3
    assert service.agents["phone"].alive and service.agents["phone"].proc.pid == h["phone"]["pid"]
    nodes = {n["NodeID"]: n.get("Labels", {}) for n in ray.nodes() if n["Alive"]}
    for site in ("bs", "cloud"):
        node = ray.get(service.actors[site].node_id.remote(), timeout=10)
        assert nodes[node]["tierplan-site"] == site


def test_trace_shows_compute_and_link_steps(service, sq_input):
    """A request's trace lists each piece on its site and each cross-site transfer, paced by the emulated link."""
    _, trace = service.predict_traced(sq_input)
    names = [name for _, name, _ in trace.steps]
    for expected in ("m/p0@phone", "m/p1@bs", "m/p2@cloud", "phone->bs", "bs->cloud", "cloud->phone"):
        assert expected in names
    # the 1.55 MB tensor crossed the emulated 800 Mbit/s, 2 ms RTT radio link: >= 15.5 + 1 ms
    radio_ms = next(ms for kind, name, ms in trace.steps if name == "phone->bs")
    assert radio_ms >= 0.95 * (1_548_800 * 8 / 800e6 * 1e3 + 1.0)
    assert trace.latency_ms > radio_ms


def test_predict_batch_returns_one_result_per_item(service, sq_input, sq_reference):
    """predict_batch over a leading batch axis returns each item's own output."""
    x = sq_input["input"]
    batch = np.concatenate([x, x[:, :, ::-1].copy(), x])
    outs = service.predict_batch({"input": batch})
    assert len(outs) == 3
    np.testing.assert_allclose(outs[0]["output"]["softmaxout_1"], sq_reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outs[2]["output"]["softmaxout_1"], sq_reference, rtol=1e-5, atol=1e-6)
    assert not np.allclose(outs[1]["output"]["softmaxout_1"], sq_reference)


def test_predict_async_keeps_requests_in_flight_from_one_thread(service, sq_input, sq_reference):
    """predict_async returns at once with a Future; eight in flight from one thread all resolve to the
    whole model's output (traced: with their trace); an impossible deadline resolves to a RuntimeFault
    within the health interval, and an observer's error to that error, not a hang."""
    x = sq_input["input"]
    flipped = {"input": x[:, :, ::-1].copy()}
    futs = [service.predict_async(sq_input if i % 2 == 0 else flipped, traced=i == 0) for i in range(8)]
    outs = [f.result(timeout=60) for f in futs]
    first, trace = outs[0]
    np.testing.assert_allclose(first["output"]["softmaxout_1"], sq_reference, rtol=1e-5, atol=1e-6)
    assert "m/p2@cloud" in [name for _, name, _ in trace.steps]
    np.testing.assert_allclose(outs[2]["output"]["softmaxout_1"], sq_reference, rtol=1e-5, atol=1e-6)
    assert not np.allclose(outs[1]["output"]["softmaxout_1"], sq_reference)
    late = service.predict_async(sq_input, timeout_s=1e-6)
    with pytest.raises(RuntimeFault, match="deadline"):
        late.result(timeout=10)

    def broken(trace) -> None:
        raise ValueError("an observer broke")
    service.observers.append(broken)     # an error on the thread that resolves it still reaches the Future
    try:
        with pytest.raises(ValueError, match="observer broke"):
            service.predict_async(sq_input).result(timeout=60)
    finally:
        service.observers.remove(broken)


def test_front_door_serves_grpc_clients(service, sq_input, sq_reference):
    """The FrontDoor gRPC service (runtime.proto) answers Predict with the sink's tensors."""
    ch = grpc.insecure_channel(service.front_door_address, options=GRPC_OPTIONS)
    stub = pbg.FrontDoorStub(ch)
    req = pb.PredictRequest(inputs={"input": tensor_to_pb("input", sq_input["input"])}, timeout_ms=4000)
    reply = stub.Predict(req, timeout=10)
    ch.close()
    assert reply.error == ""
    got = pb_to_tensor(reply.outputs["output"].items[0].tensors[0])
    np.testing.assert_allclose(got, sq_reference, rtol=1e-5, atol=1e-6)


def test_metrics_per_stage_and_link_are_exported(service, sq_input):
    """Each site serves Prometheus metrics: stage latency histogram, queue depth, bytes sent per link."""
    service.predict(sq_input)
    text = urllib.request.urlopen(f"http://{service.health()['bs']['metrics']}/metrics", timeout=5).read().decode()
    assert 'tierplan_stage_latency_seconds_count{node="m/p1",site="bs"}' in text
    assert "tierplan_stage_queue_depth" in text
    line = next(l for l in text.splitlines() if l.startswith('tierplan_link_bytes_sent_total{link="bs->cloud"}'))
    assert float(line.split()[-1]) >= 259584    # the 260 KB tensor crossed at least once


def test_bad_inputs_are_refused_with_the_expected_names(service):
    """predict with no known source name raises InputError naming the plan's sources."""
    from tierplan.errors import InputError
    with pytest.raises(InputError, match="input"):
        service.predict({"nope": np.zeros(3)})


def _kill(service, ray_cluster, site: str) -> None:
    if site == "phone":
        service.agents["phone"].kill()          # the device dies (SIGKILL, no goodbye)
    else:
        ray_cluster.kill_site(site)              # the site's Ray node goes away


def _revive(service, ray_cluster, site: str) -> None:
    if site == "phone":
        service.agents["phone"].start()          # the device comes back
    else:
        ray_cluster.add_site(site)               # the node returns: the actor restarts there


@pytest.mark.parametrize("site", ["phone", "bs"])
def test_killed_site_fails_in_flight_requests_clearly_then_recovers(service, ray_cluster, sq_input, sq_reference, site):
    """Killing a site mid-run (the edge agent, or the bs Ray node) ends every in-flight request in time, with a
    result or an error naming the site; when the site returns the service serves correct results again."""
    results: list[str] = []
    durations: list[float] = []
    first_done = threading.Event()
    killed_at: list[float] = []

    def client():
        # keep sending until 2 s after the kill, so the kill always lands mid-run whatever the machine's speed
        while not killed_at or time.time() < killed_at[0] + 2.0:
            t0 = time.time()
            try:
                service.predict(sq_input)
                results.append("ok")
            except RuntimeFault as e:
                results.append(f"error: {e}")
            durations.append(time.time() - t0)
            first_done.set()

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    assert first_done.wait(RECOVERY_S), "no request ended before the kill"   # the clients are running
    _kill(service, ray_cluster, site)
    killed_at.append(time.time())
    for t in threads:
        t.join(timeout=3 * 5 * KILL_DETECT_S)
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert len(results) == len(durations) >= 3                      # none vanished: every call returned or raised
    assert max(durations) <= REQUEST_TIMEOUT_S + 1.5                 # none outlived its deadline by much
    errors = [r for r in results if r.startswith("error")]
    assert errors and all(site in e or "deadline" in e for e in errors), errors[-3:]
    _revive(service, ray_cluster, site)
    deadline = time.time() + RECOVERY_S
    out = None
    while time.time() < deadline:
        try:
            out = service.predict(sq_input)
            break
        except RuntimeFault:
            time.sleep(0.3)
    assert out is not None, f"no recovery: {service.health()}"
    np.testing.assert_allclose(out["output"]["softmaxout_1"], sq_reference, rtol=1e-5, atol=1e-6)

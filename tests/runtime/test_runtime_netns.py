"""Kernel-shaped links (runtime.netns): veth pairs in namespaces with tbf, measured with tierplan's own gRPC transport."""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from tierplan.runtime.links import LinkEmulator
from tierplan.runtime.netns import NetnsError, probe_argv, probe_env, read_port, remove_stale_pairs, veth_pair, wire_rate_mbps
from tierplan.runtime.proto import runtime_pb2 as pb
from tierplan.runtime.stage import Sender, delivery_handlers
from tierplan.runtime.wire import GRPC_OPTIONS, RAW_STAGE_METHOD, RAW_STAGE_ONE_METHOD, Delivery

pytestmark = pytest.mark.integration

RATE_MBPS = 20.0
NBYTES = 4 << 20


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


@pytest.fixture(scope="module", autouse=True)
def _namespaces_allowed():
    """Skip this module, saying why, on a machine that refuses network namespaces (no CAP_NET_ADMIN)."""
    name = f"tierplan-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"network namespaces unavailable (`ip netns add` says: {(r.stderr or r.stdout).strip()}); "
                    "these tests need root or CAP_NET_ADMIN and CAP_SYS_ADMIN")
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture(scope="module")
def shaped():
    """One veth pair (a -> b shaped) with a probe Stage server listening in namespace b; torn down after."""
    with veth_pair(rate_mbps=RATE_MBPS) as pair:
        srv = pair.popen(1, probe_argv("serve", "--listen", f"{pair.addresses[1]}:0"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=probe_env())
        yield pair, f"{pair.addresses[1]}:{read_port(srv)}"


def _kernel_send_s(pair, address: str, nbytes: int = NBYTES) -> float:
    """Seconds one delivery of nbytes takes from namespace a to the server in b (runtime.stage.Sender, no emulation)."""
    r = subprocess.run(pair.exec_argv(0, probe_argv("send", "--to", address, "--bytes", str(nbytes))),
                       capture_output=True, text=True, env=probe_env(), timeout=60)
    if r.returncode != 0:
        raise AssertionError(f"probe send failed: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout)["seconds"]


def _loopback_server() -> tuple[grpc.Server, str]:
    """A Stage delivery endpoint on 127.0.0.1 acknowledging every delivery (runtime.stage's handlers)."""
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=GRPC_OPTIONS)
    srv.add_generic_rpc_handlers(delivery_handlers(RAW_STAGE_METHOD, RAW_STAGE_ONE_METHOD,
                                                   lambda d, context: pb.Ack(ok=True)))
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    return srv, f"127.0.0.1:{port}"


def _emulated_send_s(bandwidth_mbps: float, nbytes: int = NBYTES) -> float:
    """Seconds one delivery of nbytes takes over loopback through the user-space emulator at bandwidth_mbps."""
    srv, addr = _loopback_server()
    emu = LinkEmulator({"a|b": [{"link_id": "a->b", "bandwidth_mbps": bandwidth_mbps, "delay_ms": 0.0}]})
    sender = Sender("a", None, lambda: emu)
    try:
        warm = Delivery("w", "x", "y", {"t": np.zeros(1024, np.uint8)}, deadline_unix_ms=(time.time() + 30) * 1e3)
        assert sender.send(lambda: addr, warm, "") == ""
        d = Delivery("r", "x", "y", {"t": np.zeros(nbytes, np.uint8)}, deadline_unix_ms=(time.time() + 60) * 1e3)
        t0 = time.perf_counter()
        assert sender.send(lambda: addr, d, "b") == ""
        return time.perf_counter() - t0
    finally:
        sender.close()
        srv.stop(0)


def test_kernel_tbf_link_moves_4mib_at_the_shaped_rate(shaped):
    """4 MiB from one namespace to a gRPC Stage server in the other over a 20 Mbit/s tbf link achieves the rate within 10%."""
    pair, address = shaped
    pair.set_rate(0, RATE_MBPS)
    assert "tbf" in pair.qdisc(0) and "rate 20Mbit" in pair.qdisc(0)
    achieved_mbps = NBYTES * 8 / _kernel_send_s(pair, address) / 1e6
    assert achieved_mbps == pytest.approx(RATE_MBPS, rel=0.10), achieved_mbps


def test_user_space_emulator_and_kernel_shaper_agree_on_a_declared_link(shaped):
    """A declared 20 Mbit/s link: emulator and kernel tbf move 4 MiB in the same time (5%; 10% without header allowance)."""
    pair, address = shaped
    emulated_s = _emulated_send_s(RATE_MBPS)
    pair.set_rate(0, RATE_MBPS)
    kernel_raw_s = _kernel_send_s(pair, address)
    pair.set_rate(0, wire_rate_mbps(RATE_MBPS))   # tbf counts headers; the declared bandwidth is payload
    kernel_s = _kernel_send_s(pair, address)
    assert kernel_s == pytest.approx(emulated_s, rel=0.05), (kernel_s, emulated_s)
    assert kernel_raw_s == pytest.approx(emulated_s, rel=0.10), (kernel_raw_s, emulated_s)


def test_pair_is_torn_down_with_its_processes_even_on_error():
    """An error inside veth_pair still ends its processes and deletes both namespaces and the veth pair."""
    with pytest.raises(RuntimeError, match="boom"):
        with veth_pair(rate_mbps=5.0) as pair:
            names, devices = pair.namespaces, pair.devices
            assert all(n in _namespaces() for n in names)
            proc = pair.popen(1, ["sleep", "60"])
            raise RuntimeError("boom")
    assert proc.poll() is not None
    assert not any(n in _namespaces() for n in names)
    assert not any(d in _links() for d in devices)


def test_parallel_pairs_get_distinct_names_and_subnets():
    """Two pairs open at once never share a namespace, device name or address."""
    with veth_pair() as p1, veth_pair() as p2:
        assert set(p1.namespaces).isdisjoint(p2.namespaces) and set(p1.devices).isdisjoint(p2.devices)
        assert all(len(d) <= 15 for d in p1.devices + p2.devices)
        assert p1.addresses != p2.addresses


def test_refusal_is_reported_as_a_netns_error_naming_the_command():
    """A command the kernel refuses (a tbf rate of 0 bit/s) raises NetnsError naming it, and nothing is left behind."""
    before = _namespaces()
    with pytest.raises(NetnsError, match=r"tc qdisc add .* failed"):
        with veth_pair(rate_mbps=1e-9):
            pass
    assert _namespaces() == before


def test_stale_pairs_of_dead_owners_are_removed_and_live_ones_kept():
    """remove_stale_pairs deletes namespaces whose owning pid is gone and leaves a live pair alone."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"tierplan-{dead.pid:06x}0abc-a"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with veth_pair() as live:
            removed = remove_stale_pairs()
            assert stale in removed and stale not in _namespaces()
            assert all(n in _namespaces() for n in live.namespaces) and not set(live.namespaces) & set(removed)
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)

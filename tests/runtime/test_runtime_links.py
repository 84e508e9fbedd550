"""Unit rules of the link emulator: jitter and loss draws, their seeds, and the old behaviour without them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tierplan.devices.fleet import resolve_fleet
from tierplan.runtime.links import PACKET_PAYLOAD_BYTES, EmulatedHop, LinkEmulator, route_table
from tierplan.spec import FleetSpec

N_DRAWS = 4000


def _emu(seed: int | None = 0, **hop) -> LinkEmulator:
    spec = {"link_id": "a->b", "bandwidth_mbps": 80.0, "delay_ms": 20.0, **hop}
    return LinkEmulator({"a|b": [spec]}, seed=seed)


def _delays_ms(emu: LinkEmulator, n: int = N_DRAWS, nbytes: int = 0) -> np.ndarray:
    """Arrival minus start of n sends, each starting when the link is free (no queueing)."""
    out, t = [], 0.0
    for _ in range(n):
        t += 10.0  # far apart: the bucket is always free
        out.append((emu.arrival_s("a", "b", nbytes, now_s=t) - t) * 1e3)
    return np.array(out)


def _fleet(**radio) -> FleetSpec:
    return FleetSpec.model_validate({
        "sites": {"phone": {"tier": "edge", "device": "pixel-8", "attach": "bs", "link": "radio"},
                  "bs": {"tier": "base_station", "device": "mec-t4", "attach": "cloud", "link": "backhaul"},
                  "cloud": {"tier": "cloud", "device": "aws-g5-xlarge"}},
        "links": {"radio": {"uplink_mbps": 8, "downlink_mbps": 40, "rtt_ms": 40, **radio},
                  "backhaul": {"uplink_mbps": 1000, "downlink_mbps": 1000, "rtt_ms": 10, "jitter_ms": 1}}})


def test_without_jitter_or_loss_arrival_is_delay_plus_bytes_over_bandwidth():
    """A link declaring neither jitter nor loss behaves exactly as before: RTT/2 + bytes/bandwidth, deterministic."""
    emu = _emu()
    d = _delays_ms(emu, n=50, nbytes=1_000_000)
    assert np.allclose(d, 20.0 + 1_000_000 * 8 / 80e6 * 1e3, atol=1e-6)


def test_old_route_dicts_without_jitter_or_loss_still_load():
    """Route dicts of three keys (link_id, bandwidth_mbps, delay_ms) load with jitter and loss 0."""
    emu = LinkEmulator({"a|b": [{"link_id": "a->b", "bandwidth_mbps": 8.0, "delay_ms": 5.0}]})
    hop = emu.route("a", "b")[0]
    assert hop.jitter_ms == 0.0 and hop.loss_rate == 0.0
    assert emu.transfer_ms("a", "b", 1000) == pytest.approx(5.0 + 1.0)


def test_jitter_draws_have_the_declared_mean_and_std():
    """delay = max(0, rtt/2 + N(0, jitter)): 4000 draws have mean rtt/2 and std jitter within 3 standard errors."""
    d = _delays_ms(_emu(jitter_ms=5.0))
    se_mean = 5.0 / math.sqrt(N_DRAWS)
    assert abs(d.mean() - 20.0) < 3 * se_mean
    assert abs(d.std() - 5.0) < 3 * 5.0 / math.sqrt(2 * N_DRAWS)


def test_jitter_larger_than_the_delay_is_clipped_at_zero_as_the_simulator_does():
    """With jitter above RTT/2 no delay is negative and the draws match the clipped normal's mean and std."""
    emu = _emu(delay_ms=5.0, jitter_ms=12.0)
    hop = emu.route("a", "b")[0]
    d = _delays_ms(emu)
    assert d.min() >= 0.0 and (d == 0.0).mean() > 0.2          # P(N(5, 12) < 0) = 0.34
    assert hop.expected_delay_ms > 5.0 and hop.delay_std_ms < 12.0
    assert abs(d.mean() - hop.expected_delay_ms) < 3 * hop.delay_std_ms / math.sqrt(N_DRAWS)
    assert abs(d.std() - hop.delay_std_ms) < 0.05 * hop.delay_std_ms


def test_draws_are_reproducible_from_the_seed():
    """Two emulators with the same seed draw the same delays; another seed draws different ones."""
    a, b, c = (_delays_ms(_emu(seed=s, jitter_ms=5.0, loss_rate=0.1), n=200, nbytes=100_000) for s in (7, 7, 8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_links_draw_from_independent_streams():
    """Draws on one link do not depend on traffic on another link of the same emulator."""
    routes = {"a|b": [{"link_id": "a->b", "bandwidth_mbps": 80.0, "delay_ms": 20.0, "jitter_ms": 5.0}],
              "c|d": [{"link_id": "c->d", "bandwidth_mbps": 80.0, "delay_ms": 20.0, "jitter_ms": 5.0}]}
    alone, busy = LinkEmulator(routes, seed=3), LinkEmulator(routes, seed=3)
    for i in range(20):
        busy.arrival_s("c", "d", 0, now_s=float(i))
    assert [alone.arrival_s("a", "b", 0, now_s=100.0 + i) for i in range(20)] == \
           [busy.arrival_s("a", "b", 0, now_s=100.0 + i) for i in range(20)]


def test_loss_reduces_goodput_by_the_loss_rate():
    """With loss p every lost packet is sent again: mean wire time is bytes / (bandwidth x (1 - p)), never faster than lossless."""
    nbytes = 1 << 20
    d = _delays_ms(_emu(delay_ms=0.0, loss_rate=0.2), n=1000, nbytes=nbytes)
    lossless_ms = nbytes * 8 / 80e6 * 1e3
    assert d.min() >= lossless_ms
    assert d.mean() == pytest.approx(lossless_ms / 0.8, rel=0.01)
    packets = math.ceil(nbytes / PACKET_PAYLOAD_BYTES)
    # resends are NB(packets, 0.8): std of the time is sqrt(packets * 0.2) / 0.8 packet times
    expected_std = math.sqrt(packets * 0.2) / 0.8 * lossless_ms / packets
    assert d.std() == pytest.approx(expected_std, rel=0.15)


def test_lost_packets_occupy_the_link_for_the_next_sender():
    """A delivery queued behind a lossy one waits for its resends too: the bucket counts the resent bytes."""
    emu = _emu(delay_ms=0.0, loss_rate=0.3)
    first = emu.arrival_s("a", "b", 1 << 20, now_s=0.0)
    second = emu.arrival_s("a", "b", 1, now_s=0.0)
    assert first > (1 << 20) * 8 / 80e6 * 1.2
    assert second >= first


def test_route_table_carries_the_links_jitter_and_loss():
    """Each hop of a route carries its link's jitter_ms and loss_rate; RTT/2 stays the delay."""
    routes = route_table(resolve_fleet(_fleet(jitter_ms=12, loss_rate=0.02)), ["phone", "bs", "cloud"])
    up = routes["phone|cloud"]
    assert [(h["link_id"], h["jitter_ms"], h["loss_rate"]) for h in up] == [("phone->bs", 12, 0.02), ("bs->cloud", 1, 0.0)]
    assert up[0]["delay_ms"] == 20 and routes["cloud|phone"][1]["bandwidth_mbps"] == 40
    assert LinkEmulator(routes).route("phone", "cloud") == [EmulatedHop(**h) for h in up]


def test_expected_transfer_time_adds_loss_and_clipping_to_the_cost_model_formula():
    """expected_transfer_ms equals transfer_ms without jitter or loss, and exceeds it by the goodput loss with loss."""
    plain = LinkEmulator(route_table(resolve_fleet(_fleet()), ["phone", "bs"]))
    assert plain.expected_transfer_ms("phone", "bs", 10**6) == pytest.approx(plain.transfer_ms("phone", "bs", 10**6))
    lossy = LinkEmulator(route_table(resolve_fleet(_fleet(loss_rate=0.5)), ["phone", "bs"]))
    assert lossy.transfer_ms("phone", "bs", 10**6) == pytest.approx(20 + 1000)
    assert lossy.expected_transfer_ms("phone", "bs", 10**6) == pytest.approx(20 + 2000)


def test_multi_hop_jitter_adds_in_variance():
    """Two hops with independent jitter give a total delay whose variance is the sum of the hops' variances."""
    routes = route_table(resolve_fleet(_fleet(jitter_ms=6)), ["phone", "cloud"])
    emu = LinkEmulator(routes, seed=1)
    d = []
    for i in range(N_DRAWS):
        t = 10.0 * (i + 1)
        d.append((emu.arrival_s("phone", "cloud", 0, now_s=t) - t) * 1e3)
    d = np.array(d)
    assert d.mean() == pytest.approx(20 + 5, abs=3 * math.sqrt(37 / N_DRAWS))
    assert d.std() == pytest.approx(math.sqrt(36 + 1), rel=0.05)


_RESERVE = """
import json, sys
from tierplan.runtime.links import LinkEmulator
routes = {"a|b": [{"link_id": "a->b", "bandwidth_mbps": 8.0, "delay_ms": 0.0}]}
emu = LinkEmulator(routes, shared_dir=sys.argv[1])
t0, n = float(sys.argv[2]), int(sys.argv[3])
print(json.dumps([emu.arrival_s("a", "b", 10_000, now_s=t0) for _ in range(n)]))
"""


def _reserve_in_processes(shared_dir, t0: float, n: int, procs: int) -> list[float]:
    """Arrival times of n 10 kB sends at t0 from each of `procs` concurrent Python processes sharing shared_dir."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    ps = [subprocess.Popen([sys.executable, "-c", _RESERVE, str(shared_dir), repr(t0), str(n)],
                           stdout=subprocess.PIPE, text=True, env=env) for _ in range(procs)]
    out = []
    for p in ps:
        stdout, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        out += json.loads(stdout)
    return out


def test_processes_sharing_a_dir_share_the_links_bandwidth(tmp_path):
    """Two processes sending 50 x 10 kB each over one 8 Mbit/s link through a shared dir queue behind each other."""
    import time
    t0 = time.monotonic() + 100.0           # CLOCK_MONOTONIC is one clock for every process of the host
    arrivals = sorted(_reserve_in_processes(tmp_path, t0, 50, 2))
    slot_s = 10_000 * 8 / 8e6
    # 100 reservations, none overlapping: exactly one every 10 ms, the last at 1 s
    assert np.allclose(np.diff([t0] + arrivals), slot_s, rtol=1e-6)
    # the same sends without a shared dir: each process has the link to itself
    alone = LinkEmulator({"a|b": [{"link_id": "a->b", "bandwidth_mbps": 8.0, "delay_ms": 0.0}]})
    assert max(alone.arrival_s("a", "b", 10_000, now_s=t0) for _ in range(50)) == pytest.approx(t0 + 50 * slot_s)


def test_shared_dir_must_exist(tmp_path):
    """A shared_dir that is not a directory is refused at construction, naming the path and the fix."""
    from tierplan.errors import InputError
    with pytest.raises(InputError, match="not a directory. To fix"):
        LinkEmulator({}, shared_dir=tmp_path / "missing")

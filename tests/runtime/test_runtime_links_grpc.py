"""Real gRPC sends over the link emulator (runtime.stage.Sender, loopback): jitter and loss as declared."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from tierplan.runtime.links import LinkEmulator
from tierplan.runtime.netns import recording_server
from tierplan.runtime.transport import Sender
from tierplan.runtime.wire import Delivery

pytestmark = pytest.mark.integration

DELAY_MS, JITTER_MS = 20.0, 5.0
N_SENDS = 80
# what one loopback hop may add on top of the emulated delay on a busy 2-core machine, ms
OVERHEAD_MS = 3.0
IQR_PER_STD = 1.349   # interquartile range of a normal distribution, in standard deviations
TRIM_SHARE = 0.05     # share of the lowest and of the highest measurements left out of the mean


def _trimmed_mean(x: np.ndarray, share: float = TRIM_SHARE) -> float:
    """Mean of x without its lowest and highest `share` of values."""
    k = int(len(x) * share)
    return float(np.sort(x)[k:len(x) - k].mean())


def _send_all(hop: dict, payload: np.ndarray, n: int, seed: int = 0) -> tuple[list[float], float]:
    """Send n deliveries one after another over a one-hop emulated route; per-delivery latency (ms) and total s."""
    srv, addr, received = recording_server()
    emu = LinkEmulator({"a|b": [{"link_id": "a->b", **hop}]}, seed=seed)
    sender = Sender("a", None, lambda: emu)
    try:
        warm = Delivery("warm-up", "x", "y", {"t": payload[:1]}, deadline_unix_ms=(time.time() + 30) * 1e3)
        assert sender.send(lambda: addr, warm, "") == ""   # connect first: not part of any link's time
        lat, t0 = [], time.perf_counter()
        for i in range(n):
            d = Delivery(f"r{i}", "x", "y", {"t": payload}, deadline_unix_ms=(time.time() + 30) * 1e3)
            assert sender.send(lambda: addr, d, "b") == ""
            lat.append((received[f"r{i}"] - d.sent_unix_ms / 1e3) * 1e3)
        total_s = time.perf_counter() - t0
    finally:
        sender.close()
        srv.stop(0)
    return lat, total_s


def test_measured_delays_over_grpc_have_the_declared_mean_and_std():
    """80 real sends over a link of RTT 40 ms, jitter 5 ms: measured one-way delay has mean 20 ms and std 5 ms."""
    hop = {"bandwidth_mbps": 1000.0, "delay_ms": DELAY_MS, "jitter_ms": JITTER_MS}
    lat, _ = _send_all(hop, np.zeros(256, np.float32), N_SENDS, seed=11)
    lat = np.array(lat)
    # a scheduling hiccup on the shared 2-core machine can add tens of ms to one send: the estimators
    # below (5%-trimmed mean, interquartile std) are the declared mean and std, robust to a few of those
    se_mean = JITTER_MS / math.sqrt(N_SENDS)
    mean = _trimmed_mean(lat)
    assert DELAY_MS - 3 * se_mean < mean < DELAY_MS + 3 * se_mean + OVERHEAD_MS, mean
    q25, q75 = np.percentile(lat, [25, 75])
    robust_std = (q75 - q25) / IQR_PER_STD
    assert abs(robust_std - JITTER_MS) < 0.25 * JITTER_MS, robust_std
    # each measured delay is the emulator's own draw (same seed) plus the hop's overhead
    replay = LinkEmulator({"a|b": [{"link_id": "a->b", **hop}]}, seed=11)
    drawn = np.array([(replay.arrival_s("a", "b", 1024, now_s=10.0 * i) - 10.0 * i) * 1e3 for i in range(N_SENDS)])
    assert np.median(np.abs(lat - drawn)) < OVERHEAD_MS


def test_measured_throughput_over_grpc_is_the_goodput_left_by_loss():
    """1 MiB deliveries over a 100 Mbit/s link losing 25% of packets move at 75 Mbit/s (within 8%)."""
    hop = {"bandwidth_mbps": 100.0, "delay_ms": 0.0, "loss_rate": 0.25}
    n, payload = 8, np.zeros((1 << 20) // 4, np.float32)
    _, total_s = _send_all(hop, payload, n)
    achieved_mbps = n * payload.nbytes * 8 / total_s / 1e6
    assert achieved_mbps == pytest.approx(100.0 * 0.75, rel=0.08)

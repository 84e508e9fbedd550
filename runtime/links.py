"""Network links emulated in user space: routes between site classes, bandwidth, delay, jitter and loss.

A tensor sent from site class a to site class b crosses the links of `devices.fleet.Fleet.route`
(the plan's fleet: up the attach chain from a to the first common ancestor, then down to b; the
route the planner and the simulator charge). Each hop is store-and-forward, as the cost model counts it: the bytes wait for the
hop's bandwidth (a token bucket per link and direction, shared by every sender thread of the
process) and then its one-way delay before the next hop starts. The sender paces itself; the
receiver acts when the stream ends, so measured latency reflects the declared network.

Per delivery and per hop (the link's `LinkSpec` fields, see docs/ARCHITECTURE.md "Link emulation"):

- delay: ``max(0, rtt_ms / 2 + N(0, jitter_ms))``, the simulator's draw (simulations/world.py);
  its mean is ``rtt_ms / 2`` unless the clipping at 0 bites (`EmulatedHop.expected_delay_ms`).
- loss: each packet (`PACKET_PAYLOAD_BYTES` of payload) is lost with probability `loss_rate` and
  sent again until it arrives (selective repeat, pipelined: no extra round trip). The number of
  resends of a delivery's n packets is drawn from the negative binomial NB(n, 1 - loss_rate), and
  the link is occupied for the resent bytes too, so goodput is ``bandwidth * (1 - loss_rate)`` on
  average (`EmulatedHop.goodput_bytes_per_s`). Timeouts of TCP's loss recovery are not modelled.

Draws come from one seeded generator per link direction (seed, link id), so a run with the same
seed and the same sends draws the same delays. By default senders in different processes keep
separate buckets, so contention between two sites sending over one link is not modelled; give
every process of a deployment the same `shared_dir` and each link direction's bucket lives in a
file there (its next-free time, CLOCK_MONOTONIC seconds, updated under flock), so processes on one
host share the link's bandwidth as the sites would share the real one.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import struct
import threading
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tierplan.errors import InputError
from tierplan.devices.fleet import Fleet

__all__ = ["EmulatedHop", "route_table", "LinkEmulator", "PACKET_PAYLOAD_BYTES", "DEFAULT_SEED"]

# Payload of one packet when the emulator counts losses: TCP's MSS on an Ethernet MTU of 1500
# bytes (1500 - 20 IP - 32 TCP with timestamps), what Linux uses on such links (RFC 6691).
PACKET_PAYLOAD_BYTES = 1448
# Seed of the delay and loss draws when the caller gives none: runs are reproducible by default.
DEFAULT_SEED = 0


@dataclass(frozen=True)
class EmulatedHop:
    """One link crossed in one direction."""

    link_id: str            # "<child>-><parent>" going up, "<parent>-><child>" going down
    bandwidth_mbps: float
    delay_ms: float         # one-way: rtt / 2
    jitter_ms: float = 0.0  # standard deviation of the one-way delay
    loss_rate: float = 0.0  # fraction of packets lost (and sent again), 0..1

    @property
    def bytes_per_s(self) -> float:
        return self.bandwidth_mbps * 1e6 / 8.0

    @property
    def goodput_bytes_per_s(self) -> float:
        """Payload rate once lost packets are sent again: bandwidth x (1 - loss_rate)."""
        return self.bytes_per_s * (1.0 - self.loss_rate)

    @property
    def expected_delay_ms(self) -> float:
        """Mean of max(0, delay + N(0, jitter)): the clipped normal's mean (= delay_ms when jitter is 0)."""
        return _clipped_normal(self.delay_ms, self.jitter_ms)[0]

    @property
    def delay_std_ms(self) -> float:
        """Standard deviation of the drawn delay (= jitter_ms unless the clipping at 0 bites)."""
        return _clipped_normal(self.delay_ms, self.jitter_ms)[1]


def _clipped_normal(mu: float, sigma: float) -> tuple[float, float]:
    """Mean and standard deviation of max(0, X) for X ~ N(mu, sigma)."""
    if sigma <= 0:
        return max(mu, 0.0), 0.0
    a = mu / sigma
    pdf = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + math.erf(a / math.sqrt(2)))
    mean = mu * cdf + sigma * pdf
    second = (mu * mu + sigma * sigma) * cdf + mu * sigma * pdf
    return mean, math.sqrt(max(second - mean * mean, 0.0))


def _hops(fleet: Fleet, a: str, b: str) -> list[EmulatedHop]:
    """The emulator's hops of `fleet.hops(a, b)` (the one fleet model's route), each named by the
    two site classes it joins (`child->parent` going up, `parent->child` going down), so every
    class's access link is a link of its own."""
    return [EmulatedHop(link_id=f"{h.child}->{h.parent}" if h.direction == "up" else f"{h.parent}->{h.child}",
                bandwidth_mbps=h.link.uplink_mbps if h.direction == "up" else h.link.downlink_mbps,
                delay_ms=h.link.rtt_ms / 2.0, jitter_ms=h.link.jitter_ms, loss_rate=h.link.loss_rate)
            for h in fleet.hops(a, b)]


def route_table(fleet: Fleet, sites: list[str]) -> dict[str, list[dict]]:
    """Routes between every pair of the given site classes (devices.fleet.Fleet.route), as JSON-ready
    dicts keyed "a|b", for the pairs that have a route (classes under different roots never exchange
    tensors: a plan does not send any between them). A site class the fleet does not have is an
    InputError (Fleet's own)."""
    out: dict[str, list[dict]] = {}
    for a in sites:
        for b in sites:
            if a == b:
                out[f"{a}|{b}"] = []
            elif fleet.reachable(a, b):
                out[f"{a}|{b}"] = [asdict(h) for h in _hops(fleet, a, b)]
    return out


class _SharedClock:
    """A link direction's next-free time in a file every process of a deployment opens (flock'd)."""

    _FMT = "d"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def occupy(self, start_s: float, seconds: float) -> float:
        """Occupy the link for `seconds` from `start_s` or when free (across processes); returns the end."""
        size = struct.calcsize(self._FMT)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(self.fd, size, 0)
            next_free = struct.unpack(self._FMT, raw)[0] if len(raw) == size else 0.0
            end = max(start_s, next_free) + seconds
            os.pwrite(self.fd, struct.pack(self._FMT, end), 0)
            return end
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


def _bucket_file(shared_dir: Path, link_id: str) -> Path:
    """A file name for a link id: its safe characters and a checksum (ids differ only in unsafe ones)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", link_id)[:80]
    return shared_dir / f"{safe}-{zlib.crc32(link_id.encode()):08x}.bucket"


class _Bucket:
    """One link direction: bandwidth reservations (when the link is next free) and its random draws."""

    def __init__(self, hop: EmulatedHop, seed: int, shared: _SharedClock | None = None) -> None:
        self.hop = hop
        self.next_free_s = 0.0
        self.lock = threading.Lock()
        self.rng = np.random.default_rng([seed, zlib.crc32(hop.link_id.encode())])
        self.shared = shared

    def _occupy(self, start_s: float, seconds: float) -> float:
        """End of `seconds` on the link from `start_s` or when free; call with self.lock held."""
        if self.shared is not None:
            self.next_free_s = self.shared.occupy(start_s, seconds)
        else:
            self.next_free_s = max(start_s, self.next_free_s) + seconds
        return self.next_free_s

    def reserve(self, start_s: float, seconds: float) -> float:
        """Occupy the link for `seconds` from `start_s` or when free; returns the end time."""
        with self.lock:
            return self._occupy(start_s, seconds)

    def cross(self, start_s: float, nbytes: int) -> float:
        """Send `nbytes` from `start_s`: wire time (resends included) then the drawn delay; returns arrival."""
        hop = self.hop
        with self.lock:
            sent = float(nbytes)
            if hop.loss_rate > 0 and nbytes > 0:
                packets = math.ceil(nbytes / PACKET_PAYLOAD_BYTES)
                resent = int(self.rng.negative_binomial(packets, 1.0 - hop.loss_rate))
                sent = nbytes + resent * nbytes / packets
            delay_ms = hop.delay_ms
            if hop.jitter_ms > 0:
                delay_ms = max(0.0, delay_ms + float(self.rng.normal(0.0, hop.jitter_ms)))
            return self._occupy(start_s, sent / hop.bytes_per_s) + delay_ms / 1e3


class LinkEmulator:
    """Arrival times of transfers over emulated routes (one per process; thread-safe; seeded draws)."""

    def __init__(self, routes: dict[str, list[dict]] | None = None, seed: int | None = None,
                 shared_dir: str | os.PathLike | None = None) -> None:
        """`shared_dir`: an existing directory shared by every process of one deployment on this host
        (their buckets are shared through it; the deployment removes it); None keeps them per process."""
        self.routes = {k: [EmulatedHop(**h) for h in v] for k, v in (routes or {}).items()}
        self.seed = DEFAULT_SEED if seed is None else seed
        self.shared_dir = None if shared_dir is None else Path(shared_dir)
        if self.shared_dir is not None and not self.shared_dir.is_dir():
            raise InputError(f"link emulator: shared_dir {str(self.shared_dir)!r} is not a directory. "
                             "To fix: create it (one per deployment) before starting the senders")
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def route(self, a: str, b: str) -> list[EmulatedHop]:
        return self.routes.get(f"{a}|{b}", [])

    def _bucket(self, hop: EmulatedHop) -> _Bucket:
        with self._lock:
            b = self._buckets.get(hop.link_id)
            if b is None:
                shared = None if self.shared_dir is None else _SharedClock(_bucket_file(self.shared_dir, hop.link_id))
                b = self._buckets[hop.link_id] = _Bucket(hop, self.seed, shared)
            return b

    def close(self) -> None:
        """Close the shared bucket files (the emulator keeps working, per process, afterwards)."""
        with self._lock:
            for b in self._buckets.values():
                with b.lock:
                    if b.shared is not None:
                        b.shared.close()
                        b.shared = None

    def arrival_s(self, a: str, b: str, nbytes: int, now_s: float | None = None) -> float:
        """Reserve the route's links for `nbytes` sent now; the monotonic time the last byte arrives.

        Each hop draws its delay (jitter) and resends (loss) for this delivery; see the module doc.
        """
        t = time.monotonic() if now_s is None else now_s
        for hop in self.route(a, b):
            t = self._bucket(hop).cross(t, nbytes)
        return t

    def transfer_ms(self, a: str, b: str, nbytes: int) -> float:
        """Unloaded transfer time over the route as the cost model counts it: sum of RTT/2 + bytes/bandwidth.

        Jitter's clipping and loss are left out, as in `devices.costmodel.CostModel.transfer_ms`;
        `expected_transfer_ms` is the emulator's own mean.
        """
        return sum(h.delay_ms + nbytes / h.bytes_per_s * 1e3 for h in self.route(a, b))

    def expected_transfer_ms(self, a: str, b: str, nbytes: int) -> float:
        """Mean unloaded transfer time under this emulator: sum of mean delay + bytes/goodput."""
        return sum(h.expected_delay_ms + nbytes / h.goodput_bytes_per_s * 1e3 for h in self.route(a, b))

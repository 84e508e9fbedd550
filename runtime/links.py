"""Network links emulated in user space: routes between site classes, token-bucket bandwidth, delay.

A tensor sent from site class a to site class b crosses the links of `FleetSpec` up the attach
chain from a to the first common ancestor, then down to b (the same route the cost model
charges). Each hop is store-and-forward, as the cost model counts it: the bytes wait for the
hop's bandwidth (a token bucket per link and direction, shared by every sender thread of the
process) and then its one-way delay (RTT/2) before the next hop starts. The sender paces
itself; the receiver acts when the stream ends, so measured latency reflects the declared
network. Jitter is not emulated. Senders in different processes keep separate buckets, so
contention between two sites sending over one link is not modelled.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from tierplan.spec import FleetSpec

__all__ = ["Hop", "route_table", "LinkEmulator"]


@dataclass(frozen=True)
class Hop:
    """One link crossed in one direction."""

    link_id: str            # "<child>-><parent>" going up, "<parent>-><child>" going down
    bandwidth_mbps: float
    delay_ms: float         # one-way: rtt / 2

    @property
    def bytes_per_s(self) -> float:
        return self.bandwidth_mbps * 1e6 / 8.0


def _chain(fleet: FleetSpec, site: str) -> list[str]:
    out = [site]
    while fleet.sites[out[-1]].attach is not None:
        out.append(fleet.sites[out[-1]].attach)
    return out


def _route(fleet: FleetSpec, a: str, b: str) -> list[Hop]:
    if a == b:
        return []
    up, down = _chain(fleet, a), _chain(fleet, b)
    common = next((s for s in up if s in down), None)
    hops: list[Hop] = []
    if common is None:  # two trees: go to both roots and across with no declared link
        common_up, common_down = up, down
    else:
        common_up, common_down = up[:up.index(common) + 1], down[:down.index(common) + 1]
    for child in common_up[:-1]:
        spec = fleet.sites[child]
        link = fleet.links[spec.link]
        hops.append(Hop(f"{child}->{spec.attach}", link.uplink_mbps, link.rtt_ms / 2.0))
    for child in reversed(common_down[:-1]):
        spec = fleet.sites[child]
        link = fleet.links[spec.link]
        hops.append(Hop(f"{spec.attach}->{child}", link.downlink_mbps, link.rtt_ms / 2.0))
    return hops


def route_table(fleet: FleetSpec | None, sites: list[str]) -> dict[str, list[dict]]:
    """Routes between every pair of the given site classes, as JSON-ready dicts keyed "a|b"."""
    out: dict[str, list[dict]] = {}
    if fleet is None:
        return out
    known = [s for s in sites if s in fleet.sites]
    for a in known:
        for b in known:
            out[f"{a}|{b}"] = [h.__dict__ for h in _route(fleet, a, b)]
    return out


class _Bucket:
    """Bandwidth reservations on one link direction: when the link is next free."""

    def __init__(self) -> None:
        self.next_free_s = 0.0
        self.lock = threading.Lock()

    def reserve(self, start_s: float, seconds: float) -> float:
        """Occupy the link for `seconds` from `start_s` or when free; returns the end time."""
        with self.lock:
            begin = max(start_s, self.next_free_s)
            self.next_free_s = begin + seconds
            return self.next_free_s


class LinkEmulator:
    """Arrival times of transfers over emulated routes (one per process; thread-safe)."""

    def __init__(self, routes: dict[str, list[dict]] | None = None) -> None:
        self.routes = {k: [Hop(**h) for h in v] for k, v in (routes or {}).items()}
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def route(self, a: str, b: str) -> list[Hop]:
        return self.routes.get(f"{a}|{b}", [])

    def _bucket(self, link_id: str) -> _Bucket:
        with self._lock:
            return self._buckets.setdefault(link_id, _Bucket())

    def arrival_s(self, a: str, b: str, nbytes: int, now_s: float | None = None) -> float:
        """Reserve the route's links for `nbytes` sent now; the monotonic time the last byte arrives."""
        t = time.monotonic() if now_s is None else now_s
        for hop in self.route(a, b):
            t = self._bucket(hop.link_id).reserve(t, nbytes / hop.bytes_per_s) + hop.delay_ms / 1e3
        return t

    def transfer_ms(self, a: str, b: str, nbytes: int) -> float:
        """Unloaded transfer time over the route (no reservation): sum of delay + bytes/bandwidth."""
        return sum(h.delay_ms + nbytes / h.bytes_per_s * 1e3 for h in self.route(a, b))

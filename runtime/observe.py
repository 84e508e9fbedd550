"""Rolling estimates of a running deployment's links and pieces, from the traces its requests return.

Every finished request's trace (runtime.service.Trace) carries its `transfer` steps (`a->b`, ms
from send to arrival over the emulated or real route) and its `compute` steps (`node@site`, ms).
`Observer` keeps those of the last `window_s` seconds and estimates:

- per link (the attach link of a site class: up and down goodput, RTT): each transfer crosses the
  links of its route (devices.fleet.Fleet.route), one RTT/2 + bytes / goodput each. The least
  queued transfers tell the link's own figures: a request's fan-out items cross one after another
  (each waits for the ones before it), so per request and route its fastest transfer counts (the
  mean where the tensor is tiny: it does not queue, and the minimum of jittered delays would read
  a shorter RTT), and per route the window's `quantile` (default the 25th percentile) of those is one sample
  (where a request's transfers over a one-link route queued behind each other and their gaps stand
  clear of the jitter, the sample is the link's delay plus the median gap: the wire time without the
  wait before the first, which would read a backlogged link as slower than it is); the
  links' (RTT/2, 1/goodput up, 1/goodput down) are the least-squares fit of those samples, pulled
  towards the planned figures where the samples cannot tell them apart (ridge); a link's RTT is
  shared by both directions (a small tensor's route tells it);
- a step is caught from the latest transfers, not the window's mean: when a route's last
  `min_run` (default 2) per-request samples are all off the planned time of that route by more than
  the threshold, by `min_effect_ms` and by twice the route's jitter (the links' delay deviations
  added: a run of two such draws by chance is ~1 in 2000), in one direction, only that run of samples estimates the
  route, and the figures it feeds carry `since_s` (when the run began): the detector's sustain time
  counts from there. A step is thus flagged a few requests after it, whatever the window's length;
- a host starved of CPU is not a slower link: each compute step's trace carries its wall and CPU
  time, and a request whose steps on a transfer's two sites took `starved_ratio` (default 1.25) times
  their CPU time or more waited for a core; its sender's and receiver's threads woke late too. Its
  transfer times are moved towards the plan by the host's delay: how late its tiny transfers came
  (no wire time, nothing to queue behind: only the links' delay and the hosts' late threads), else
  its whole wait for a CPU on the two sites. What a link step adds beyond that delay still counts;
  the gaps between queued transfers keep the wire time (the late threads delay each item alike). On a
  quiet host (wall about its CPU time) nothing is discounted. Before this, a loaded machine's
  scheduling delays read as an RTT of 104 ms for a planned 50 and moved a piece for nothing;
- per piece and site: the median compute time over `compute_window_s` (at least 5 runs), against a
  reference (the first full compute window after start, since the plan's times are for the fleet's devices, not this host).

The figures go to the shared policy (planner.adaptpolicy.DriftDetector).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from tierplan.devices.fleet import Fleet
from tierplan.planner.adaptpolicy import Figure, link_figures, route_links
from tierplan.planner.plan import Plan

__all__ = ["Observer", "transfer_sizes"]

_RIDGE_DELAY = 0.05    # weight of the planned RTT/2 against one route's samples
_RIDGE_RATE = 1e-6     # ... and of the planned goodput (only where no sample tells it: bandwidth is what drifts)
_MIN_COMPUTE_SAMPLES = 5  # runs of a piece in the compute window before its median counts
_MIN_LINK_SAMPLES = 3  # requests with a transfer over a route in the window before it counts (a run off: min_run)


def _strip(node: str) -> str:
    """The plan node of an executable id (`gN~`, `CLASS/` prefixes dropped)."""
    head, sep, rest = node.partition("~")
    if sep and head.startswith("g") and head[1:].isdigit():
        node = rest
    return node


def _site_times(steps: list[tuple[str, str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per site, the wall and the CPU time of a request's compute steps that have both (runtime.stage
    traces a `cpu` step beside each `compute` step: wall - CPU is the time it waited for a core)."""
    cpu_of: dict[str, float] = {}
    for kind, name, ms in steps:
        if kind == "cpu":
            cpu_of[name] = cpu_of.get(name, 0.0) + ms
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    seen: set[str] = set()
    for kind, name, ms in steps:
        if kind == "compute" and name in cpu_of:
            site = name.rpartition("@")[2]
            wall[site] = wall.get(site, 0.0) + ms
            if name not in seen:      # a node's cpu steps were summed once for all its compute steps
                seen.add(name)
                cpu[site] = cpu.get(site, 0.0) + cpu_of[name]
    return wall, cpu


def transfer_sizes(exe: Plan) -> dict[str, list[int]]:
    """"a->b" (site classes) -> the sizes of the tensors the executable plan sends from a to b."""
    sites = dict(exe.assignment)
    out: dict[str, set[int]] = {}
    for e in exe.edges:
        a, b = sites.get(e.src), sites.get(e.dst)
        if a and b and a != b:
            out.setdefault(f"{a}->{b}", set()).add(int(e.nbytes))
    return {k: sorted(v) for k, v in out.items()}


@dataclass
class _Sample:
    t: float
    kind: str       # "transfer" | "compute"
    name: str
    ms: float
    request: int = 0
    stall_ms: float = 0.0   # transfer: its request's wait for a CPU on the two sites when starved (else 0)


class Observer:
    """Collects finished requests' steps and estimates the figures (thread-safe)."""

    def __init__(self, plan: Plan, exe: Plan, window_s: float = 2.0, quantile: float = 25.0, *,
                 threshold: float = 0.3, min_effect_ms: float = 10.0, min_run: int = 2,
                 compute_window_s: float | None = None, starved_ratio: float = 1.25) -> None:
        """`plan`: the plan as planned (its fleet gives the planned link figures); `exe`: what runs
        (runtime.fleetrun; its edges give the sizes sent between sites); `threshold`, `min_effect_ms`:
        when one transfer is off its planned time (the policy's); `min_run`: that many in a row
        estimate a route on their own; `compute_window_s`: the compute medians' window (default `window_s`);
        `starved_ratio`: wall / CPU time of a request's compute steps on a transfer's sites from which
        the host counts as starved (its transfers discounted by the wait, see the module doc)."""
        self.fleet: Fleet = plan.fleet_model()
        self.window_s = window_s
        self.compute_window_s = window_s if compute_window_s is None else compute_window_s
        self.quantile = quantile
        self.threshold = threshold
        self.min_effect_ms = min_effect_ms
        self.min_run = max(1, int(min_run))
        self.starved_ratio = starved_ratio
        self.sizes = transfer_sizes(exe)
        self._samples: deque[_Sample] = deque()
        self._lat: deque[tuple[float, str, float]] = deque()    # (t, class, ms) per request
        self._lock = threading.Lock()
        self._reference: dict[str, float] = {}
        self._requests = 0
        self.started_s = time.monotonic()

    def set_exe(self, exe: Plan, now_s: float | None = None) -> None:
        """What runs changed (a live move) or the compute times were acted on: sizes between sites
        follow it; compute references start over from a full compute window of runs after now (a
        window spanning the move or the old level would be a wrong reference)."""
        with self._lock:
            self.sizes = {k: sorted(set(self.sizes.get(k, [])) | set(v)) for k, v in transfer_sizes(exe).items()}
            self._reference.clear()
            self._samples = deque(s for s in self._samples if s.kind != "compute")
            self.started_s = time.monotonic() if now_s is None else now_s

    # ------------------------------------------------------------------ input
    def add(self, steps: Iterable, latency_ms: float | None = None, device_class: str | None = None,
            now_s: float | None = None) -> None:
        """One finished request's steps ([kind, name, ms]); `latency_ms`: its end-to-end latency."""
        t = time.monotonic() if now_s is None else now_s
        steps = [(str(kind), str(name), float(ms)) for kind, name, ms in steps]
        wall, cpu = _site_times(steps)
        with self._lock:
            self._requests += 1
            for kind, name, ms in steps:
                if kind in ("transfer", "compute"):
                    stall = self._stall(name, wall, cpu) if kind == "transfer" else 0.0
                    self._samples.append(_Sample(t, kind, name, ms, self._requests, stall))
            if latency_ms is not None:
                self._lat.append((t, device_class or "", float(latency_ms)))
            self._trim(t)

    def _stall(self, route: str, wall: dict[str, float], cpu: dict[str, float]) -> float:
        """The request's wait for a CPU (wall - CPU time of its compute steps) on the route's two
        sites when they took `starved_ratio` times their CPU time or more; else 0."""
        a, _, b = route.partition("->")
        w = wall.get(a, 0.0) + (wall.get(b, 0.0) if b != a else 0.0)
        c = cpu.get(a, 0.0) + (cpu.get(b, 0.0) if b != a else 0.0)
        return w - c if c > 0 and w >= self.starved_ratio * c else 0.0

    def _trim(self, now_s: float) -> None:
        while self._samples and self._samples[0].t < now_s - max(self.window_s, self.compute_window_s):
            self._samples.popleft()
        while self._lat and self._lat[0][0] < now_s - max(self.window_s, 10.0):
            self._lat.popleft()

    # ------------------------------------------------------------------ estimates
    def latency_p95(self, now_s: float | None = None, span_s: float | None = None) -> dict[str, float]:
        """Class -> p95 of its requests' latency over the last `span_s` (default the window)."""
        t = time.monotonic() if now_s is None else now_s
        span = self.window_s if span_s is None else span_s
        with self._lock:
            per: dict[str, list[float]] = {}
            for at, cls, ms in self._lat:
                if at >= t - span:
                    per.setdefault(cls, []).append(ms)
        return {c: float(np.percentile(v, 95)) for c, v in per.items() if v}

    def link_estimates(self, now_s: float | None = None, since_s: float | None = None) -> dict[str, Figure]:
        """`link:SITE:up_mbps|down_mbps|rtt_ms` -> Figure, for the links the window's transfers tell
        (only those that ended at `since_s` or later when given: the figures since a drift began);
        a route whose latest samples are a run off its planned time counts that run only (`since_s`
        of its figures: when the run began)."""
        t = time.monotonic() if now_s is None else now_s
        with self._lock:
            self._trim(t)
            per_request: dict[tuple[str, int], list[float]] = {}    # (route, request) -> its transfers
            ended: dict[tuple[str, int], float] = {}
            stalled: dict[tuple[str, int], float] = {}              # ... -> its wait for a CPU (starved)
            for s in self._samples:
                if s.kind == "transfer" and s.t >= t - self.window_s and (since_s is None or s.t >= since_s):
                    per_request.setdefault((s.name, s.request), []).append(s.ms)
                    ended[(s.name, s.request)] = s.t
                    if s.stall_ms > 0:
                        stalled[(s.name, s.request)] = s.stall_ms
            sizes = dict(self.sizes)
        by_route: dict[str, list[tuple[float, float]]] = {}    # route -> (ended, sample) in arrival order
        gaps: dict[str, list[tuple[float, float]]] = {}         # route -> (ended, gap between queued transfers)
        # a starved request's host delay: how late its tiny transfers came (no wire time, nothing to
        # queue behind: only the links' delay and the two hosts' threads waking), else its CPU wait
        late: dict[int, list[float]] = {}
        for (route, req), times in per_request.items():
            planned = self.planned_ms(route, sizes)
            if (route, req) in stalled and planned is not None and not self._queues(route, sizes):
                late.setdefault(req, []).append(max(float(np.mean(times)) - planned, 0.0))
        for (route, req), times in per_request.items():
            stall = float(np.mean(late[req])) if req in late and (route, req) in stalled else stalled.get((route, req), 0.0)
            if len(times) >= 2 and self._queues(route, sizes):
                # gaps: fan-out items sent back to back arrive one wire time apart (a host's late threads
                # delay each item alike: its gaps keep the wire time)
                ordered = sorted(times)
                gaps.setdefault(route, []).extend((ended[(route, req)], y - x) for x, y in zip(ordered, ordered[1:]))
            # a request's transfers of a size that takes the link a while queue behind each other: its
            # fastest is the link's own time; tiny ones (under 1 ms of wire) do not queue: their mean
            # is the delay, which the minimum of several jittered draws would understate
            ms = min(times) if self._queues(route, sizes) else float(np.mean(times))
            by_route.setdefault(route, []).append((ended[(route, req)], self._discount(route, ms, stall, sizes)))
        run_since: dict[str, float] = {}
        for route, samples in by_route.items():
            samples.sort()
            begun = self._run_start(route, samples, sizes)
            if begun is not None:
                by_route[route] = [x for x in samples if x[0] >= begun]
                run_since[route] = begun
        rows: list[tuple[list[tuple[str, str]], float, float, int]] = []   # (links, bytes, ms, n)
        began_of: dict[str, float] = {}     # link site -> when the earliest off run over it began
        for route, timed in by_route.items():
            times = [ms for _, ms in timed]
            a, _, b = route.partition("->")
            least = min(_MIN_LINK_SAMPLES, self.min_run) if route in run_since else _MIN_LINK_SAMPLES
            if a not in self.fleet.classes or b not in self.fleet.classes or len(times) < least:
                continue
            size = sizes.get(route)
            if not size:
                continue
            # one size: the sample is that size's; several: the smallest (the least queued transfers
            # are most likely the small ones), an approximation the docs state
            hops = route_links(self.fleet, a, b)
            ms = float(np.percentile(times, self.quantile))
            wire = self._wire_from_gaps(route, hops, size, [g for at, g in gaps.get(route, [])
                                                            if route not in run_since or at >= run_since[route]])
            if wire is not None:     # the link's own time: its planned delay and the wire time the gaps read
                ms = link_figures(self.fleet, hops[0][0])["rtt_ms"] / 2.0 + wire
            rows.append((hops, float(size[0]), ms, len(times)))
            if route in run_since:
                for site, _ in hops:
                    began_of[site] = min(began_of.get(site, run_since[route]), run_since[route])
        if not rows:
            return {}
        links = sorted({site for r in rows for site, _ in r[0]})
        # unknowns per link: half RTT (ms), ms per byte up, ms per byte down
        idx = {(site, k): 3 * i + j for i, site in enumerate(links) for j, k in enumerate(("d", "up", "down"))}
        prior = np.zeros(3 * len(links))
        scale = np.zeros(3 * len(links))
        for site in links:
            f = link_figures(self.fleet, site)
            prior[idx[(site, "d")]] = f["rtt_ms"] / 2.0
            prior[idx[(site, "up")]] = 8.0 / (f["up_mbps"] * 1e3)
            prior[idx[(site, "down")]] = 8.0 / (f["down_mbps"] * 1e3)
            scale[idx[(site, "d")]] = max(f["rtt_ms"] / 2.0, 1.0)
            scale[idx[(site, "up")]] = prior[idx[(site, "up")]]
            scale[idx[(site, "down")]] = prior[idx[(site, "down")]]
        a_rows, b_rows, used = [], [], set()
        for hops, nbytes, ms, n in rows:
            row = np.zeros(len(prior))
            for site, way in hops:
                row[idx[(site, "d")]] += 1.0
                row[idx[(site, way)]] += nbytes
                used.add((site, way))
                used.add((site, "d"))
            norm = max(ms, 1.0) / np.sqrt(n)   # relative errors (a slow route does not outweigh a fast one), by samples
            a_rows.append(row / norm)
            b_rows.append(ms / norm)
        for k in range(len(prior)):
            row = np.zeros(len(prior))
            w = np.sqrt(_RIDGE_DELAY if k % 3 == 0 else _RIDGE_RATE)
            row[k] = w / scale[k]
            a_rows.append(row)
            b_rows.append(w * prior[k] / scale[k])
        x, *_ = np.linalg.lstsq(np.array(a_rows), np.array(b_rows), rcond=None)
        n_of = {site: sum(r[3] for r in rows if any(s == site for s, _ in r[0])) for site in links}
        biggest = {(site, way): max(r[1] for r in rows if (site, way) in r[0]) for site, way in used if way != "d"}
        out: dict[str, Figure] = {}
        for site in links:
            f = link_figures(self.fleet, site)
            n = n_of[site]
            if (site, "d") in used:
                rtt = max(2 * x[idx[(site, "d")]], 0.0)
                out[f"link:{site}:rtt_ms"] = Figure(f"link:{site}:rtt_ms", f["rtt_ms"], rtt, n, abs(rtt - f["rtt_ms"]) / 2,
                                                    began_of.get(site))
            for way, key in (("up", "up_mbps"), ("down", "down_mbps")):
                if (site, way) in used:
                    spb = x[idx[(site, way)]]
                    mbps = 8.0 / (spb * 1e3) if spb > 0 else float("inf")
                    effect = biggest[(site, way)] * abs(spb - 8.0 / (f[key] * 1e3))   # on its biggest transfer
                    out[f"link:{site}:{key}"] = Figure(f"link:{site}:{key}", f[key], mbps, n, effect, began_of.get(site))
        return out

    def _wire_from_gaps(self, route: str, hops: list[tuple[str, str]], size: list[int],
                        route_gaps: list[float]) -> float | None:
        """The wire time of the route's tensor read from the gaps between a request's transfers that
        queued behind each other (fan-out items sent back to back arrive one wire time apart,
        whatever waited before them), or None: a route of one link and one size, at least 3 gaps,
        and a median gap above the noise (3 x the difference of two jittered delays)."""
        if len(hops) != 1 or len(size) != 1 or len(route_gaps) < 3:
            return None
        link = self.fleet.classes[hops[0][0]].link
        noise = 3.0 * np.sqrt(2.0) * float(link.jitter_ms or 0.0) if link is not None else 0.0
        wire = float(np.median(route_gaps))
        return wire if wire > max(noise, 1.0) else None

    def _discount(self, route: str, ms: float, stall_ms: float, sizes: dict[str, list[int]]) -> float:
        """A transfer time moved towards the route's planned time by its request's wait for a CPU
        (at most to it): the part of its deviation a starved host's late threads explain."""
        planned = self.planned_ms(route, sizes) if stall_ms > 0 else None
        if planned is None:
            return ms
        return planned + float(np.sign(ms - planned)) * max(abs(ms - planned) - stall_ms, 0.0)

    def planned_ms(self, route: str, sizes: dict[str, list[int]] | None = None) -> float | None:
        """The planned time of the route's (smallest) tensor: RTT/2 + bytes / goodput per link."""
        a, _, b = route.partition("->")
        listed = (sizes if sizes is not None else self.sizes).get(route)
        size = listed[0] if listed else None
        if size is None or a not in self.fleet.classes or b not in self.fleet.classes:
            return None
        total = 0.0
        for site, way in route_links(self.fleet, a, b):
            f = link_figures(self.fleet, site)
            if f:
                total += f["rtt_ms"] / 2.0 + size * 8.0 / (f["up_mbps" if way == "up" else "down_mbps"] * 1e3)
        return total

    def _run_start(self, route: str, samples: list[tuple[float, float]], sizes: dict[str, list[int]]) -> float | None:
        """When the run of the route's latest samples that are all off its planned time (one way, past
        the threshold and the least effect) began; None when the last `min_run` are not all off."""
        planned = self.planned_ms(route, sizes)
        if not planned or len(samples) < self.min_run:
            return None
        limit = np.log1p(self.threshold)
        a, _, b = route.partition("->")
        links = [self.fleet.classes[site].link for site, _ in route_links(self.fleet, a, b)]
        least = max(self.min_effect_ms, 2.0 * float(np.sqrt(sum((ln.jitter_ms or 0.0) ** 2 for ln in links if ln))))

        def way(ms: float) -> int:
            if ms <= 0 or abs(ms - planned) < least or abs(np.log(ms / planned)) <= limit:
                return 0
            return 1 if ms > planned else -1
        last = way(samples[-1][1])
        if last == 0:
            return None
        k = len(samples) - 1
        while k > 0 and way(samples[k - 1][1]) == last:
            k -= 1
        return samples[k][0] if len(samples) - k >= self.min_run else None

    def _queues(self, route: str, sizes: dict[str, list[int]]) -> bool:
        """True when the route's (smallest) tensor takes at least 1 ms of planned wire time."""
        a, _, b = route.partition("->")
        size = (sizes.get(route) or [0])[0]
        if a not in self.fleet.classes or b not in self.fleet.classes:
            return False
        wire = 0.0
        for site, way in route_links(self.fleet, a, b):
            f = link_figures(self.fleet, site)
            if f:
                wire += size * 8.0 / (f["up_mbps" if way == "up" else "down_mbps"] * 1e3)
        return wire >= 1.0

    def compute_estimates(self, now_s: float | None = None) -> dict[str, Figure]:
        """`compute:NODE@SITE` -> Figure: the window's median against the reference median (the first
        full window's, or the last one a live move left)."""
        t = time.monotonic() if now_s is None else now_s
        with self._lock:
            self._trim(t)
            per: dict[str, list[float]] = {}
            for s in self._samples:
                if s.kind == "compute" and s.t >= t - self.compute_window_s:
                    node, _, site = s.name.rpartition("@")
                    per.setdefault(f"compute:{_strip(node)}@{site}", []).append(s.ms)
            full = t - self.started_s >= self.compute_window_s
            out = {}
            for key, ms in per.items():
                med = float(np.median(ms))
                if key not in self._reference:
                    if full and len(ms) >= _MIN_COMPUTE_SAMPLES:
                        self._reference[key] = med
                    continue
                if len(ms) < _MIN_COMPUTE_SAMPLES:
                    continue
                out[key] = Figure(key, self._reference[key], med, len(ms), abs(med - self._reference[key]))
        return out

    def figures(self, now_s: float | None = None) -> list[Figure]:
        t = time.monotonic() if now_s is None else now_s
        return [*self.link_estimates(t).values(), *self.compute_estimates(t).values()]

"""The simulated world both engines share: instances, mobility, outages, bandwidth and random draws.

Every random number of a run is drawn here, up front and vectorised, from one numpy Generator
seeded by the run's seed, so the SimPy engine and the fast numpy engine replay the very same
sample path (same arrivals, same service multipliers, same jitter) and a seed fixes the result.
Arrivals and fan-out counts are shared by all strategies (common random numbers: differences
between strategies are not noise); per-stage draws come from a per-strategy child stream.

Instances: device d of an edge class with N devices is served by base-station instance d mod M
(M instances), which uplinks to cloud instance (d mod M) mod K, and so on up the chain; mobility
events move a share of a class's devices to other base-station instances for a time window.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Callable, Sequence
from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np

from tierplan.devices.fleet import Fleet
from tierplan.simulations.calibration import OVERHEAD_KEY, ServiceProfile
from tierplan.simulations.journey import Journey, Stage, chain
from tierplan.simulations.scenario import (ArrivalSpec, FailureWindow, LinkVariation, MobilityEvent,
                                  bandwidth_factor_series)
from tierplan.errors import InputError
from tierplan.spec import LinkSpec

__all__ = ["World", "ArrivalDraws", "StageDraws", "FailureOutcome", "strategy_rng", "block_rng"]

_MS = 1000.0          # ms per second
_BITS = 8.0           # bits per byte
_KBIT_PER_MBIT = 1000.0  # Mbit/s = 1000 bit/ms


@dataclass
class ArrivalDraws:
    """Requests of one (origin class, source): arrival times (ms, sorted), device, fan-out counts."""

    t_ms: np.ndarray
    device: np.ndarray
    k: dict[float, np.ndarray] = field(default_factory=dict)  # rate factor -> invocations per request

    def invocations(self, rate_factor: float) -> np.ndarray | None:
        """Invocations per request for a rate factor (None means exactly one each)."""
        return None if rate_factor == 1.0 else self.k[rate_factor]


@dataclass
class StageDraws:
    """Per stage, per request: work (ms of service, or bytes), whether it runs, one-way delay (ms)."""

    work: list[np.ndarray]
    runs: list[np.ndarray | None]      # None: every request runs the stage
    delay_ms: list[np.ndarray | None]  # link stages: propagation + jitter; None for none


@dataclass
class FailureOutcome:
    """What outages did to the requests reaching one stage."""

    t_ms: np.ndarray
    inst: np.ndarray
    failed: np.ndarray
    rerouted: np.ndarray
    delayed: np.ndarray


def strategy_rng(seed: int, name: str, block: int = 0) -> np.random.Generator:
    """The child random stream of one strategy in one time block (stable across runs and Python versions)."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode()), block]))


_ARRIVALS_TAG = 0x41525256   # "ARRV": arrival streams are keyed apart from strategy streams
_SETUP_TAG = 0x53455455      # "SETU": per-class set-up draws (periodic phases, burst schedules)


def block_rng(seed: int, block: int) -> np.random.Generator:
    """The arrival stream of one time block: a run drawn in blocks is the same whatever the window size."""
    return np.random.default_rng(np.random.SeedSequence([seed, _ARRIVALS_TAG, block]))


def _key_rng(seed: int, key: tuple[str, str]) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _SETUP_TAG, zlib.crc32("/".join(key).encode())]))


@dataclass
class _Mobility:
    start_ms: float
    end_ms: float
    moved: np.ndarray          # bool per device
    target: np.ndarray         # int per device: instance it moves to


class World:
    """Fleet, replicas, outages, mobility and link variation, resolved against one seed."""

    def __init__(self, fleet: Fleet, replicas: dict[str, int], duration_s: float,
                 seed: int, failures: Sequence[FailureWindow] = (),
                 mobility: Sequence[MobilityEvent] = (), links: dict[str, LinkVariation] | None = None,
                 service_dist: str = "lognormal", service_cv: float = 0.1, *,
                 service_correlation: float = 0.0, profile: ServiceProfile | None = None,
                 host_cores: int | None = None):
        self.fleet = fleet
        self.replicas = dict(replicas)
        self.duration_s = float(duration_s)
        self.seed = int(seed)
        self.rng = rng = np.random.default_rng(seed)   # set-up draws: outage shares, mobility, bandwidth
        self._setup: dict[tuple[str, str, str], Any] = {}
        self.service_dist = service_dist
        self.service_cv = float(service_cv)
        if not 0.0 <= service_correlation <= 1.0:
            raise InputError(f"simulate: service_correlation must be in [0, 1], got {service_correlation}")
        if host_cores is not None and int(host_cores) < 1:
            raise InputError(f"simulate: colocate (cores of the shared host) must be >= 1, got {host_cores}")
        if service_correlation > 0 and service_dist != "lognormal":
            raise InputError("simulate: service_correlation needs service_dist='lognormal' (it mixes log-normal draws)")
        self.service_correlation = float(service_correlation)
        self.profile = profile
        self.host_cores = None if host_cores is None else int(host_cores)
        if service_dist not in ("lognormal", "exponential", "deterministic"):
            raise InputError(f"simulate: service_dist must be lognormal, exponential or deterministic, got {service_dist!r}")
        self._chains: dict[str, list[str]] = {}
        self.failures = [self._resolve_failure(w) for w in failures]
        self._handover: dict[str, list] = {}  # site class -> its reroute outages (handled as handovers)
        for item in self.failures:
            if item[0].kind == "site" and item[0].policy == "reroute":
                self._handover.setdefault(item[0].target, []).append(item)
        self.mobility: dict[str, list[_Mobility]] = {}
        for ev in mobility:
            self._add_mobility(ev)
        self.bandwidth: dict[str, tuple[list[float], list[float], np.ndarray, np.ndarray]] = {}
        for site, var in (links or {}).items():
            if site not in fleet.classes or fleet.classes[site].link is None:
                raise InputError(f"--link {site}: not a site class with a link in the fleet "
                                 f"(classes with links: {', '.join(n for n, c in fleet.classes.items() if c.link)})")
            link = self._link(site)
            times_s, factor = bandwidth_factor_series(var, link.uplink_mbps, self.duration_s * 4 + 60.0, rng)
            self.bandwidth[site] = (list(times_s * _MS), list(factor), times_s * _MS, factor)

    # ------------------------------------------------------------------ set-up
    def _resolve_failure(self, w: FailureWindow) -> tuple[FailureWindow, np.ndarray | None, float, float]:
        if w.target not in self.fleet.classes:
            raise InputError(f"--fail {w.kind}:{w.target}: unknown site class (fleet has {', '.join(self.fleet.classes)})")
        cls = self.fleet.classes[w.target]
        if w.kind == "link" and cls.link is None:
            raise InputError(f"--fail link:{w.target}: {w.target!r} has no uplink in the fleet")
        inst = None
        if w.instances is not None:
            bad = [i for i in w.instances if not 0 <= i < cls.count]
            if bad:
                raise InputError(f"--fail {w.kind}:{w.target}#{bad[0]}: instance out of range 0..{cls.count - 1}")
            inst = np.array(sorted(w.instances), dtype=np.int64)
        elif w.share is not None:
            n = max(1, int(math.ceil(w.share * cls.count)))
            inst = np.sort(self.rng.choice(cls.count, size=n, replace=False)).astype(np.int64)
        return (w, inst, w.start_s * _MS, w.end_s * _MS)

    def _add_mobility(self, ev: MobilityEvent) -> None:
        fc = self.fleet.classes.get(ev.edge_class)
        if fc is None or fc.tier != "edge":
            raise InputError(f"--mobility {ev.edge_class}: not an edge site class of the fleet")
        if fc.attach is None:
            raise InputError(f"--mobility {ev.edge_class}: the class attaches to no base station")
        m = self.fleet.classes[fc.attach].count
        if ev.to_instance is not None and not 0 <= ev.to_instance < m:
            raise InputError(f"--mobility {ev.edge_class}>{ev.to_instance}: instance out of range 0..{m - 1}")
        n = fc.count
        moved = np.zeros(n, dtype=bool)
        moved[self.rng.permutation(n)[: int(round(ev.share * n))]] = True
        home = np.arange(n) % m
        if ev.to_instance is not None:
            target = np.full(n, ev.to_instance, dtype=np.int64)
        elif m > 1:
            target = (home + self.rng.integers(1, m, size=n)) % m
        else:
            target = home
        end = ev.end_s * _MS if ev.end_s is not None else math.inf
        self.mobility.setdefault(ev.edge_class, []).append(_Mobility(ev.start_s * _MS, end, moved, target))

    # ------------------------------------------------------------------ instances
    def _chain(self, origin: str) -> list[str]:
        return chain(self.fleet, origin)

    def parent(self, site: str) -> str:
        return self.fleet.classes[site].attach  # type: ignore[return-value]

    def instance(self, site: str, origin: str, device: np.ndarray, t_ms: np.ndarray,
                 handover: bool = True) -> np.ndarray:
        """Instance of `site` serving each request (device of `origin`, at time t_ms); with `handover`,
        requests leave instances of the chain that a reroute outage has taken down."""
        if site == origin:
            return device
        chain = self._chain(origin)
        if site not in chain:
            return device % self.fleet.classes[site].count
        idx = device
        for lvl in range(1, chain.index(site) + 1):
            new = idx % self.fleet.classes[chain[lvl]].count
            if lvl == 1:
                for mv in self.mobility.get(origin, ()):
                    on = mv.moved[device] & (t_ms >= mv.start_ms) & (t_ms < mv.end_ms)
                    new = np.where(on, mv.target[device], new)
            if handover and chain[lvl] in self._handover:
                new = self._hand_over(chain[lvl], new, t_ms)
            idx = new
        return idx

    def _hand_over(self, site: str, inst: np.ndarray, t_ms) -> np.ndarray:
        """Requests whose instance of `site` is down under a reroute outage move to the next live one
        (devices hand over to a neighbouring base station); where none is live they stay (and fail)."""
        wins = self._handover[site]
        count = self.fleet.classes[site].count
        t = np.broadcast_to(np.asarray(t_ms, dtype=np.float64), np.shape(inst))

        def down(ii, tt):
            m = np.zeros(len(ii), dtype=bool)
            for _, ws, a, b in wins:
                m |= (tt >= a) & (tt < b) & (np.isin(ii, ws) if ws is not None else True)
            return m

        inst = np.array(inst, dtype=np.int64, copy=True).reshape(-1)
        t = t.reshape(-1)
        todo = np.flatnonzero(down(inst, t))
        base = inst[todo].copy()
        for j in range(1, count):
            if not len(todo):
                break
            cand = (base + j) % count
            ok = ~down(cand, t[todo])
            inst[todo[ok]] = cand[ok]
            todo, base = todo[~ok], base[~ok]
        return inst

    def instance1(self, site: str, origin: str, device: int, t_ms: float, handover: bool = True) -> int:
        """Scalar `instance` (the SimPy path's per-event call; same rule, no arrays)."""
        if site == origin:
            return device
        chain = self._chains.get(origin)
        if chain is None:
            chain = self._chains[origin] = self._chain(origin)
        if site not in chain:
            return device % self.fleet.classes[site].count
        idx = device
        for lvl in range(1, chain.index(site) + 1):
            new = idx % self.fleet.classes[chain[lvl]].count
            if lvl == 1:
                for mv in self.mobility.get(origin, ()):
                    if mv.moved[device] and mv.start_ms <= t_ms < mv.end_ms:
                        new = int(mv.target[device])
            if handover and chain[lvl] in self._handover:
                new = int(self._hand_over(chain[lvl], np.array([new]), t_ms)[0])
            idx = new
        return idx

    def stage_instance1(self, stage: Stage, origin: str, device: int, t_ms: float, handover: bool = True) -> int:
        """Scalar `stage_instance`."""
        return self.instance1(self.parent(stage.site) if stage.shared else stage.site, origin, device, t_ms, handover)

    def stage_instance(self, stage: Stage, origin: str, device: np.ndarray, t_ms: np.ndarray,
                       handover: bool = True) -> np.ndarray:
        """The queue instance a stage visit joins: the site's instance, or the parent's for a shared link."""
        site = self.parent(stage.site) if stage.shared else stage.site
        return self.instance(site, origin, device, t_ms, handover)

    def hands_over(self, stage: Stage, origin: str) -> bool:
        """Whether a reroute outage can move this stage's instance (some class up to it has one)."""
        site = self.parent(stage.site) if stage.shared else stage.site
        chain = self._chain(origin)
        if site not in chain:
            return False
        return any(c in self._handover for c in chain[1: chain.index(site) + 1])

    def servers(self, stage: Stage) -> int:
        """Identical servers behind one instance of the stage's resource (links: one)."""
        return max(1, int(self.replicas.get(stage.site, 1))) if stage.kind == "compute" else 1

    def host_binds(self, journeys: list[Journey]) -> bool:
        """Whether the shared host's cores can hold jobs back: fewer cores than compute servers on it.

        With every site on one host (`host_cores` set), a compute job needs its site's server and
        one of the host's cores. When the sites' servers together are no more than the cores,
        a core is always free for a server that is, and the host changes nothing."""
        if self.host_cores is None:
            return False
        sites = {st.site for j in journeys for st in j.stages if st.kind == "compute"}
        servers = sum(self.fleet.classes[s].count * self.servers(Stage(0, "compute", s)) for s in sites)
        return servers > self.host_cores

    def instance_count(self, stage: Stage) -> int:
        return self.fleet.classes[self.parent(stage.site) if stage.shared else stage.site].count

    # ------------------------------------------------------------------ links
    def link_rate_mbps(self, stage: Stage) -> float:
        """Payload rate of a link stage: the declared rate less lost-and-resent packets (x (1 - loss_rate)),
        as the cost model and the runtime's link emulator count it."""
        link = self._link(stage.site)
        rate = link.capacity_mbps if stage.shared else (link.uplink_mbps if stage.direction == "up" else link.downlink_mbps)
        return float(rate or 0.0) * (1.0 - float(link.loss_rate or 0.0))

    def _link(self, site: str) -> LinkSpec:
        """The uplink of a site class (journeys only cross classes that have one)."""
        link = self.fleet.classes[site].link
        if link is None:
            raise InputError(f"fleet: site class {site!r} has no link to its parent")
        return link

    def bandwidth_factor(self, site: str, t_ms: np.ndarray) -> np.ndarray | float:
        """Multiplier of the nominal rate at t_ms (1 where the link does not vary)."""
        bw = self.bandwidth.get(site)
        if bw is None:
            return 1.0
        idx = np.clip(np.searchsorted(bw[2], t_ms, side="right") - 1, 0, len(bw[3]) - 1)
        return bw[3][idx]

    def bandwidth_factor_at(self, site: str, t_ms: float) -> float:
        """Scalar bandwidth_factor (the SimPy path's per-event call)."""
        bw = self.bandwidth.get(site)
        if bw is None:
            return 1.0
        i = min(max(bisect_right(bw[0], t_ms) - 1, 0), len(bw[1]) - 1)
        return bw[1][i]

    def transfer_ms(self, stage: Stage, nbytes: np.ndarray | float, t_ms) -> np.ndarray | float:
        """Time the link is busy sending nbytes at the bandwidth in force at t_ms."""
        rate = self.link_rate_mbps(stage)
        f: np.ndarray | float
        if isinstance(t_ms, float):
            f = self.bandwidth_factor_at(stage.site, t_ms)
        else:
            f = self.bandwidth_factor(stage.site, t_ms)
        return nbytes * _BITS / (rate * f * _KBIT_PER_MBIT)

    # ------------------------------------------------------------------ failures
    def windows_for(self, stage: Stage) -> list[tuple[FailureWindow, np.ndarray | None, float, float]]:
        """Outages that hit this stage's resource."""
        out = []
        for item in self.failures:
            w = item[0]
            if stage.kind == "compute":
                hit = w.kind in ("site", "device") and w.target == stage.site
            elif stage.shared:
                hit = (w.kind == "link" and w.target == stage.site) or (w.kind == "site" and w.target == self.parent(stage.site))
            else:
                hit = w.kind in ("link", "device") and w.target == stage.site
            if hit:
                out.append(item)
        return out

    def apply_failures(self, stage: Stage, windows, inst: np.ndarray, t_ms: np.ndarray) -> FailureOutcome:
        """Fail, reroute or delay the visits that reach a down resource (vectorised; policies per window)."""
        t, inst = t_ms.copy(), inst.copy()
        n = len(t)
        failed, rerouted, delayed = (np.zeros(n, dtype=bool) for _ in range(3))
        count = self.instance_count(stage)

        def down(ii, tt, only_site=False):
            m = np.zeros(len(ii), dtype=bool)
            for w, ws, a, b in windows:
                if only_site and w.kind == "link":
                    continue
                m |= (tt >= a) & (tt < b) & (np.isin(ii, ws) if ws is not None else True)
            return m

        for _ in range(len(windows) + 1):
            changed = False
            for w, ws, a, b in windows:
                act = ~failed & (t >= a) & (t < b) & (np.isin(inst, ws) if ws is not None else True)
                if not act.any():
                    continue
                changed = True
                reroutable = w.policy == "reroute" and stage.kind == "compute" and count > 1
                if w.policy == "wait":
                    t[act] = b
                    delayed |= act
                elif not reroutable:
                    failed |= act
                else:
                    idx = np.flatnonzero(act)
                    cand_ok = np.zeros(len(idx), dtype=bool)
                    new = inst[idx].copy()
                    for j in range(1, count):
                        todo = ~cand_ok
                        if not todo.any():
                            break
                        cand = (inst[idx][todo] + j) % count
                        ok = ~down(cand, t[idx][todo], only_site=True)
                        sel = np.flatnonzero(todo)[ok]
                        new[sel] = cand[ok]
                        cand_ok[sel] = True
                    inst[idx] = new
                    rerouted[idx[cand_ok]] = True
                    failed[idx[~cand_ok]] = True
            if not changed:
                break
        return FailureOutcome(t, inst, failed, rerouted, delayed)

    # ------------------------------------------------------------------ draws
    def draw_arrivals(self, key: tuple[str, str], rate_hz: float, spec: ArrivalSpec, rate_factors: set[float],
                      t0_s: float, t1_s: float, rng: np.random.Generator) -> ArrivalDraws:
        """Arrivals in [t0_s, t1_s) of one (origin class, source): the superposition of its devices.

        Drawn block by block (`rng` is the block's stream, simulations.world.block_rng); what spans
        blocks (periodic phases, burst on/off schedules) is drawn once per class from the seed."""
        origin = key[0]
        n_dev = self.fleet.classes[origin].count
        T = t1_s - t0_s
        lam = n_dev * rate_hz  # class-wide rate, requests/s
        if spec.kind == "poisson":
            t = t0_s + np.sort(rng.uniform(0.0, T, rng.poisson(lam * T)))
        elif spec.kind == "periodic":
            period = 1.0 / rate_hz
            phase = self._setup_draw(key, "phase", lambda r: r.uniform(0.0, period, n_dev))
            first = np.ceil((t0_s - phase) / period).astype(np.int64)      # first k with phase + k P >= t0
            first = np.maximum(first, 0)
            count = np.maximum(np.ceil((t1_s - phase) / period).astype(np.int64) - first, 0)
            dev = np.repeat(np.arange(n_dev, dtype=np.int64), count)
            k = np.repeat(first, count) + (np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count))
            t = phase[dev] + period * k
            if spec.jitter_ms > 0:   # kept inside the block, so blocks stay in time order
                t = np.clip(t + rng.normal(0.0, spec.jitter_ms / _MS, len(t)), t0_s, np.nextafter(t1_s, t0_s))
            keep = t < self.duration_s
            t, dev = t[keep], dev[keep]
            order = np.argsort(t, kind="stable")
            return self._with_fanout(t[order] * _MS, dev[order], rate_factors, rng)
        elif spec.kind == "diurnal":
            top = lam * (1 + spec.amplitude)
            cand = t0_s + np.sort(rng.uniform(0.0, T, rng.poisson(top * T)))
            keep = rng.uniform(0.0, 1.0, len(cand)) * (1 + spec.amplitude) < 1 + spec.amplitude * np.sin(2 * np.pi * cand / spec.period_s)
            t = cand[keep]
        elif spec.kind == "burst":
            starts, ons = self._setup_draw(key, "burst", lambda r: self._burst_schedule(spec, r))
            p_on = spec.burst_on_s / (spec.burst_on_s + spec.burst_off_s)
            lo = lam / (p_on * spec.burst_factor + (1 - p_on))
            ends = np.r_[starts[1:], np.inf]
            chunks = []
            for a, b, on in zip(starts, ends, ons):
                a, b = max(a, t0_s), min(b, t1_s)
                if b > a:
                    r = lo * (spec.burst_factor if on else 1.0)
                    chunks.append(rng.uniform(a, b, rng.poisson(r * (b - a))))
            t = np.sort(np.concatenate(chunks)) if chunks else np.zeros(0)
        else:  # trace
            ts = [x for x, c in spec.trace if (c is None or c in (origin, f"{origin}/{key[1]}")) and t0_s <= x < t1_s]
            t = np.array(ts, dtype=np.float64)
        device = rng.integers(0, n_dev, size=len(t)).astype(np.int64)
        return self._with_fanout(t * _MS, device, rate_factors, rng)

    def _setup_draw(self, key: tuple[str, str], what: str, draw: Callable[[np.random.Generator], Any]) -> Any:
        """A per-class draw shared by every block (cached)."""
        k = (key[0], key[1], what)
        if k not in self._setup:
            self._setup[k] = draw(_key_rng(self.seed, (key[0], f"{key[1]}/{what}")))
        return self._setup[k]

    def _burst_schedule(self, spec: ArrivalSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Start times (s) and on/off states of the class's 2-state Markov modulation over the run."""
        p_on = spec.burst_on_s / (spec.burst_on_s + spec.burst_off_s)
        starts, ons, now, on = [], [], 0.0, bool(rng.uniform() < p_on)
        while now < self.duration_s:
            starts.append(now)
            ons.append(on)
            now += rng.exponential(spec.burst_on_s if on else spec.burst_off_s)
            on = not on
        return np.array(starts), np.array(ons, dtype=bool)

    @staticmethod
    def _with_fanout(t_ms: np.ndarray, device: np.ndarray, rate_factors: set[float],
                     rng: np.random.Generator) -> ArrivalDraws:
        """Invocations per request for each fan-out rate factor: floor(rf) plus one with prob frac(rf)."""
        n = len(t_ms)
        k = {}
        for rf in sorted(rate_factors - {1.0}):
            base = math.floor(rf)
            k[rf] = (base + (rng.uniform(0.0, 1.0, n) < rf - base)).astype(np.int32)
        return ArrivalDraws(t_ms, device, k)

    def draw_stages(self, journey: Journey, arr: ArrivalDraws, rng: np.random.Generator) -> StageDraws:
        """Per-stage work and delays for one journey's requests (one strategy's child stream).

        With a measured profile or a service correlation, one standard normal per request (the
        request's shared slowdown) is drawn first and mixed into every compute stage's draw; a
        profile's per-request overhead (time outside the measured steps) delays the request's roots."""
        n = len(arr.t_ms)
        correlated = self.profile is not None or self.service_correlation > 0
        z_req = rng.standard_normal(n) if correlated else None
        work: list[np.ndarray] = []
        runs: list[np.ndarray | None] = []
        delay: list[np.ndarray | None] = []
        for st in journey.stages:
            all_one = all(w.rate_factor == 1.0 for w in st.work)
            if all_one:  # one invocation of everything: constant work, every request runs it
                total = np.full(n, float(sum(w.amount for w in st.work)))
                inv = None
            else:
                total = np.zeros(n)
                inv = np.zeros(n, dtype=np.int64)
                for w in st.work:
                    k = arr.invocations(w.rate_factor)
                    total += w.amount * (1 if k is None else k)
                    inv += 1 if k is None else k
            per_node = st.kind == "compute" and any(
                w.sigma is not None or (self.profile is not None and self.profile.has(w.node, st.site)) for w in st.work)
            if per_node:
                total = self._spread_work(st, arr, n, rng, z_req)
                delay.append(None)
            elif st.kind == "compute":
                total = total * self._multiplier(n, rng, z_req)
                delay.append(None)
            elif st.shared:
                delay.append(None)
            else:
                link = self._link(st.site)
                d = np.full(n, link.rtt_ms / 2.0)
                if link.jitter_ms > 0:
                    d = np.maximum(0.0, d + rng.normal(0.0, link.jitter_ms, n))
                delay.append(d)
            work.append(total)
            if st.lane >= 0:  # one item of a fan-out: runs when the request has more than `lane` items
                k_lane = arr.invocations(st.lane_rate_factor)
                runs.append(np.ones(n, dtype=bool) if k_lane is None else k_lane > st.lane)
            else:
                runs.append(None if all_one and st.work else (inv > 0 if inv is not None else np.zeros(n, dtype=bool)))
        if self.profile is not None and self.profile.overhead_ms is not None:  # drawn last: stage draws stay put
            overhead = self.profile.from_normal(*OVERHEAD_KEY, self.profile.mix(z_req, rng.standard_normal(n),
                                                                                self.profile.shift_at(arr.t_ms)))
            for st in journey.stages:
                if not st.preds:  # a root of the request: its dispatch overhead before it moves on
                    prev = delay[st.index]
                    delay[st.index] = overhead if prev is None else prev + overhead
        if self.profile is not None and self.profile.result_host_ms is not None:   # drawn last, as the overhead
            host = np.quantile(self.profile.result_host_ms, rng.uniform(0.0, 1.0, n))   # one per request
            for st in journey.stages:
                if st.result and delay[st.index] is not None:   # arrives at the later of its route and the host
                    route = self._route_delay(journey, st, delay)
                    delay[st.index] = delay[st.index] + np.maximum(0.0, host - route)
        return StageDraws(work, runs, delay)

    @staticmethod
    def _route_delay(journey: Journey, st: Stage, delay: list[np.ndarray | None]) -> np.ndarray:
        """The drawn delays of a result's route: its last hop and the link hops before it back to the compute
        stage that sent it (shared-capacity stages carry none)."""
        total = np.array(delay[st.index], dtype=np.float64)
        preds = st.preds
        while len(preds) == 1 and journey.stages[preds[0]].kind == "link":
            prev = journey.stages[preds[0]]
            d = delay[prev.index]
            if d is not None:
                total = total + d
            preds = prev.preds
        return total

    @staticmethod
    def _mix(z_req: np.ndarray | None, rho: float, n: int, rng: np.random.Generator) -> np.ndarray:
        """A standard normal per request: sqrt(rho) x the request's shared draw + sqrt(1 - rho) x its own."""
        own = rng.standard_normal(n)
        if z_req is None or rho == 0.0:
            return own
        return math.sqrt(rho) * z_req + math.sqrt(1.0 - rho) * own

    def _spread_work(self, st: Stage, arr: ArrivalDraws, n: int, rng: np.random.Generator,
                     z_req: np.ndarray | None) -> np.ndarray:
        """Compute work node by node. A node the profile measured on this site: each invocation drawn
        from its measured times (inverse empirical CDF at a normal mixed with the request's shared
        draw, the profile's correlation); a node with its own spread: log-normal, mean preserved, k
        invocations sum to k x mean with the coefficient of variation over sqrt(k); else the run's
        service distribution. A profile measured over time (`tierplan run`) also shifts every draw by the
        run's slowdown at the request's time (ServiceProfile.mix), so slow seconds slow requests together."""
        total = np.zeros(n)
        for w in st.work:
            k = arr.invocations(w.rate_factor)
            kf = np.ones(n) if k is None else k.astype(np.float64)
            if self.profile is not None and self.profile.has(w.node, st.site):
                shift = self.profile.shift_at(arr.t_ms)    # the run's slowdown at the request's time
                for j in range(int(kf.max()) if n else 0):
                    x = self.profile.from_normal(w.node, st.site, self.profile.mix(z_req, rng.standard_normal(n), shift))
                    x = x + self.profile.glue_at(st.site)   # the runtime's own time around the step, on the site's thread
                    total += x if k is None else np.where(kf > j, x, 0.0)
                continue
            if w.sigma is None:
                mult = self._multiplier(n, rng, z_req)
            else:
                cv2 = np.expm1(w.sigma ** 2) / np.maximum(kf, 1.0)
                s2 = np.log1p(cv2)
                mult = np.exp(self._mix(z_req, self.service_correlation, n, rng) * np.sqrt(s2) - s2 / 2)
            total += w.amount * kf * mult
        return total

    def _multiplier(self, n: int, rng: np.random.Generator, z_req: np.ndarray | None = None) -> np.ndarray:
        """Service-time multipliers (mean 1) of the run's distribution; log-normal ones share the
        request's draw by `service_correlation`."""
        if self.service_dist == "deterministic" or (self.service_dist == "lognormal" and self.service_cv == 0):
            return np.ones(n)
        if self.service_dist == "exponential":
            return rng.exponential(1.0, n)
        s2 = math.log1p(self.service_cv ** 2)
        if z_req is None or self.service_correlation == 0.0:
            return rng.lognormal(-s2 / 2, math.sqrt(s2), n)
        return np.exp(self._mix(z_req, self.service_correlation, n, rng) * math.sqrt(s2) - s2 / 2)

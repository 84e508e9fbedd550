"""Streaming fast path: windows change nothing, quantile sketch within its error, busy bins exact, memory bounded."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from sim_builders import make_fleet, make_plan

from tierplan.simulations.api import simulate
from tierplan.simulations.engine_fast import ps_departures
from tierplan.simulations.stats import REL_ERROR, LatencySketch, busy_per_bin

CYCLE = {"det/p0": "cams", "det/p1": "bs", "cls/p0": "cams"}
CASES = {
    "chain, replicas, jitter": (dict(rate_hz=8.0), dict(cams=60, bs=3, bs_max=2, jitter_ms=3.0), {}),
    "fan-out, shared cell capacity": (dict(fanout=2.6), dict(cams=40, capacity_mbps=80.0), {}),
    "varying link, outage with wait, mobility": (
        dict(rate_hz=4.0), dict(cams=50, bs=4, bs_max=2),
        dict(links={"cams": "4g~0.4"}, failures=["site:bs#1@5-8:wait"], mobility=["cams:0.5@10>0"])),
    "handover, link failures": (dict(rate_hz=6.0), dict(cams=40, bs=4, bs_max=2, capacity_mbps=300.0),
                                dict(failures=["site:bs#1-2@4-9:reroute", "link:cams#10%@2-6:fail"])),
    "requests come back to the device": (dict(rate_hz=12.0, assign=CYCLE), dict(cams=30, bs=2, jitter_ms=2.0),
                                         dict(strategies=["optimal"])),
    "fair links": (dict(rate_hz=8.0), dict(cams=60, bs=3, bs_max=2, jitter_ms=3.0, uplink_mbps=20.0),
                   dict(link_sharing="fair")),
    "batching at an overloaded cloud": (dict(rate_hz=30.0, assign={"det/p0": "cams", "det/p1": "cloud", "cls/p0": "cloud"}),
                                        dict(cams=60, bs=3), dict(batching="8:2", strategies=["optimal"])),
    "batching on a cycle": (dict(rate_hz=12.0, assign={"det/p0": "cams", "det/p1": "cloud", "cls/p0": "cams"}),
                            dict(cams=30, bs=2), dict(batching="4:2", strategies=["optimal"])),
    "fair links on a cycle": (dict(rate_hz=10.0, assign=CYCLE), dict(cams=20, bs=2, uplink_mbps=6.0, jitter_ms=1.0),
                              dict(link_sharing="fair", strategies=["optimal"])),
}


def _flat(d, pre=""):
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in _flat(val, f"{pre}/{key}").items()}
    if isinstance(d, list):
        return {k: v for i, val in enumerate(d) for k, v in _flat(val, f"{pre}/{i}").items()}
    return {pre: d}


@pytest.mark.parametrize("case", list(CASES))
def test_windows_give_the_one_window_result(case):
    """Solving the run 700 requests at a time (queues, batches, cycles and fair links carried over the
    horizons) gives the report of solving it at once, to float rounding."""
    p, f, kw = CASES[case]
    kw = dict(duration_s=20, seed=11, fast=True, block_requests=400, **kw)
    whole = simulate(make_plan(**p), make_fleet(**f), window_requests=10 ** 9, **kw).to_json()
    windows = simulate(make_plan(**p), make_fleet(**f), window_requests=700, **kw).to_json()
    a, b = _flat(whole), _flat(windows)
    assert a.keys() == b.keys()
    for k, v in a.items():
        if k.endswith(("/wall_s", "/sim_requests_per_s")):
            continue
        if isinstance(v, float):
            assert b[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
        else:
            assert b[k] == v, k
    assert whole["strategies"]["optimal"]["requests"] > 5 * 700


@settings(max_examples=30, deadline=None)
@given(seed=hs.integers(0, 10_000), n=hs.integers(1, 3000), shape=hs.floats(0.3, 3.0))
def test_sketch_quantiles_are_within_the_relative_error(seed, n, shape):
    """Every folded quantile lies within REL_ERROR of an order statistic at or next to its rank."""
    x = np.random.default_rng(seed).lognormal(3.0, shape, n)
    s = LatencySketch(exact_limit=0)
    for chunk in np.array_split(x, 7):
        s.add(chunk)
    q = np.array([0.0, 0.1, 0.5, 0.9, 0.95, 0.99, 1.0])
    got = s.quantiles(q)
    xs = np.sort(x)
    for qi, g in zip(q, got):
        lo, hi = xs[int(math.floor(qi * (n - 1)))], xs[int(math.ceil(qi * (n - 1)))]
        assert lo * (1 - REL_ERROR) - 1e-12 <= g <= hi * (1 + REL_ERROR) + 1e-12, (qi, g, lo, hi)
    assert s.n == n and s.mean == pytest.approx(x.mean())


def test_p95_from_the_sketch_is_within_half_a_percent_of_exact():
    """A run whose latencies all fold into the sketch reports p50/p95/p99 within 0.5% of the exact run."""
    kw = dict(strategies=["optimal"], duration_s=30, seed=4, fast=True)
    exact = simulate(make_plan(rate_hz=8.0), make_fleet(cams=200, bs=4, bs_max=2), **kw).strategies["optimal"]
    sk = simulate(make_plan(rate_hz=8.0), make_fleet(cams=200, bs=4, bs_max=2), exact_quantiles=0, **kw)
    s = sk.strategies["optimal"].sinks["labels"]
    assert s.exact_quantiles is False and exact.sinks["labels"].exact_quantiles is True
    for m in ("p50_ms", "p95_ms", "p99_ms"):
        assert getattr(s, m) == pytest.approx(getattr(exact.sinks["labels"], m), rel=0.005)


@settings(max_examples=40, deadline=None)
@given(seed=hs.integers(0, 10_000), n=hs.integers(1, 300), nbins=hs.integers(1, 30))
def test_busy_per_bin_matches_a_loop(seed, n, nbins):
    """The vectorised busy time per bin equals clipping every job against every bin."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(-5.0, 105.0, n)
    end = start + rng.exponential(rng.choice([0.5, 5.0, 40.0]), n)
    step = 100.0 / nbins
    want = [sum(max(0.0, min(e, (b + 1) * step) - max(s, b * step)) for s, e in zip(start, end)) for b in range(nbins)]
    assert np.allclose(busy_per_bin(start, end, step, nbins), want, atol=1e-9)


def _ps_reference(a, s):
    """Processor sharing by small time steps' exact event loop: remaining work shared equally."""
    left = {}
    out = [0.0] * len(a)
    order = sorted(range(len(a)), key=lambda i: a[i])
    t, k = 0.0, 0
    while k < len(order) or left:
        nxt = a[order[k]] if k < len(order) else math.inf
        if left:
            share = 1.0 / len(left)
            fin = t + min(left.values()) / share
        else:
            fin = math.inf
        if nxt <= fin and k < len(order):
            for i in left:
                left[i] -= (nxt - t) * (1.0 / len(left)) if left else 0
            t = nxt
            left[order[k]] = s[order[k]]
            k += 1
        else:
            for i in left:
                left[i] -= (fin - t) * share
            t = fin
            for i in [i for i, v in left.items() if v <= 1e-9]:
                out[i] = t
                del left[i]
    return out


@settings(max_examples=60, deadline=None)
@given(seed=hs.integers(0, 10_000), n=hs.integers(1, 40), load=hs.floats(0.2, 3.0))
def test_processor_sharing_queue_matches_a_plain_event_loop(seed, n, load):
    """ps_departures (FIFO busy periods + virtual time) equals a remaining-work event loop, per job."""
    rng = np.random.default_rng(seed)
    a = np.sort(rng.uniform(0, 100, n))
    s = rng.exponential(load * 100 / n, n)
    got, _ = ps_departures(a, s, np.zeros(n, dtype=np.int64))
    assert np.allclose(got, _ps_reference(a.tolist(), s.tolist()), rtol=1e-9, atol=1e-7)


@settings(max_examples=16, deadline=None)
@given(seed=hs.integers(0, 10_000), cams=hs.integers(5, 40), rate=hs.floats(1.0, 20.0),
       mbps=hs.floats(3.0, 60.0), jitter=hs.floats(0.0, 5.0), capacity=hs.sampled_from([None, 40.0, 200.0]),
       strategy=hs.sampled_from(["optimal", "all-cloud", "best-split"]), cycle=hs.booleans())
def test_fair_links_fast_path_matches_simpy(seed, cams, rate, mbps, jitter, capacity, strategy, cycle):
    """On random fleets, loads and links, fair sharing on the fast path (windowed; the cycle scan when
    requests come back to the device) gives SimPy's report."""
    p = make_plan(rate_hz=rate, assign=CYCLE if cycle else None)
    f = make_fleet(cams=cams, uplink_mbps=mbps, jitter_ms=jitter, capacity_mbps=capacity)
    kw = dict(strategies=[strategy], duration_s=6, seed=seed, link_sharing="fair", block_requests=200)
    slow = simulate(p, f, fast=False, **kw).strategies[strategy]
    fast = simulate(p, f, fast=True, window_requests=300, **kw).strategies[strategy]
    assert slow.engine == "simpy" and fast.engine == "fast" and slow.requests == fast.requests
    for m in ("mean_ms", "p50_ms", "p95_ms", "p99_ms"):
        assert getattr(fast.sinks["labels"], m) == pytest.approx(getattr(slow.sinks["labels"], m), rel=1e-6)
    for k, v in slow.utilisation.items():
        assert fast.utilisation[k] == pytest.approx(v, rel=1e-6, abs=1e-9)


@pytest.mark.slow
def test_memory_stays_bounded_as_requests_grow():
    """Peak traced memory of a run held in small windows does not grow with its length (4x the requests,
    at most 1.5x the peak), and stays far below holding the run at once."""
    def peak(duration_s: float, window: int) -> tuple[int, int]:
        tracemalloc.start()
        r = simulate(make_plan(rate_hz=5.0), make_fleet(cams=2000, bs=20, bs_max=4), strategies=["optimal"],
                     duration_s=duration_s, seed=1, fast=True, window_requests=window, block_requests=5000,
                     exact_quantiles=0)
        out = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return out, r.strategies["optimal"].requests
    short, n_short = peak(20.0, 20_000)
    long, n_long = peak(80.0, 20_000)
    whole, _ = peak(80.0, 10 ** 9)
    assert n_long > 3.5 * n_short
    assert long < 1.5 * short and long < 0.5 * whole


@pytest.mark.parametrize("assign", [{"det/p0": "cloud", "det/p1": "cloud", "cls/p0": "cloud"},
                                    {"det/p0": "cams", "det/p1": "bs", "cls/p0": "bs"}])
def test_an_overloaded_class_does_not_make_windows_carry_its_backlog(assign, monkeypatch):
    """Behind an overloaded FIFO class the next stages take visits up to its servers' next-free time,
    so the requests carried from window to window do not grow with the run (4x the run, same carry)."""
    from tierplan.simulations import stream
    carried: list[int] = []
    complete = stream.Requests.complete

    def counted(self):
        done = complete(self)
        carried.append(int((~done).sum()))
        return done
    monkeypatch.setattr(stream.Requests, "complete", counted)
    peaks = []
    for duration_s in (20, 80):
        carried.clear()
        r = simulate(make_plan(rate_hz=10.0, assign=assign), make_fleet(cams=100, bs=2, uplink_mbps=200),
                     strategies=["optimal"], duration_s=duration_s, seed=1, fast=True, window_requests=2000,
                     block_requests=500, replicas={"cloud": 1, "bs": 1}).strategies["optimal"]
        assert any(n.startswith("overloaded") for n in r.notes) and len(carried) >= 10
        peaks.append(max(carried))
    assert peaks[1] <= 1.5 * peaks[0] + 50 and peaks[1] < 1000

"""Exact evaluation of one assignment: the latency semantics, cost, energy and feasibility.

This is the reference the CP-SAT model encodes and the brute-force enumerator, the baselines
and every report use. Latency semantics (what the runtime does), per edge class and request:

- Each site runs the request's compute nodes one after another, in the problem's topological
  order: node v starts when all its inputs are on its site and the node before it in that
  order on the same site has finished (fixed-order list schedule; no two pieces of one request
  run in parallel on one site).
- A tensor item produced on site a and consumed on site b != a is sent once per consuming
  site, when its producer ends; it occupies every link on the route a -> b for the sum of the
  per-hop times (RTT/2 + bytes/bandwidth + serialisation + the jitter margin of the SLO
  percentile). Items crossing one link go one after another in item order (they share it).
- Only branches on different sites (or links) overlap. Sources start at 0; a sink's latency
  is the time its input arrives on the sink's site.
- Separate connected components of the app graph (e.g. a camera pipeline and a microphone
  pipeline) are separate requests: they do not wait for each other (their sharing of a site
  shows up in its utilisation, and the simulator measures the queueing).
Because the order on every site and link is fixed, the earliest start times are the longest
paths of an acyclic constraint graph: the schedule is unique and minimises every start time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from planner.problem import COMPUTE_KINDS, Assignment, ClassData, Problem
from planner.units import us_to_ms

__all__ = ["ClassEval", "Evaluation", "evaluate", "evaluate_class_latency"]


@dataclass(frozen=True)
class ClassEval:
    """Schedule and figures of one edge class under an assignment."""

    name: str
    start_us: tuple[int, ...]
    end_us: tuple[int, ...]
    sink_us: dict[int, int]                     # sink node -> latency (us)
    breakdown_us: dict[int, dict[str, int]]     # sink node -> {"compute.<site>" | "transfer.<a>-><b>": us}
    energy_uj: int
    egress_uusd_h: int
    slo_ok: bool


@dataclass(frozen=True)
class Evaluation:
    """Figures of a whole assignment (all classes), and whether it satisfies every constraint."""

    classes: dict[str, ClassEval]
    instances: dict[str, int]                   # site -> instances needed (rentable sites)
    load_ppm: dict[str, int]
    memory_kb: dict[str, int]
    link_bps: dict[str, int]
    cost_uusd_h: int                            # rented instances + egress (what the objective sees)
    latency_term: int                           # sum_e w_e sum_sinks L (us)
    energy_term: int                            # sum_e w_e E_e (uJ)
    objective: int
    violations: tuple[str, ...] = field(default_factory=tuple)

    @property
    def feasible(self) -> bool:
        return not self.violations


def _schedule(problem: Problem, c: ClassData, sites: tuple[str, ...]):
    """Forward pass of the fixed-order schedule; returns starts, ends, arrivals and causes."""
    n = len(problem.nodes)
    start = [0] * n
    end = [0] * n
    cause: list[tuple | None] = [None] * n    # what determined start: ("node", u) | ("item", i, b)
    site_clock: dict[tuple[int, str], tuple[int, int | None]] = {}   # (group, site) -> (time, last node)
    link_clock: dict[tuple[int, str], tuple[int, tuple | None]] = {}
    arrival: dict[tuple[int, str], int] = {}
    item_start: dict[tuple[int, str], int] = {}
    item_cause: dict[tuple[int, str], tuple] = {}
    consumed_by: dict[int, list[int]] = {v: [] for v in range(n)}
    produced_by: dict[int, list[int]] = {v: [] for v in range(n)}
    for k, it in enumerate(problem.items):
        produced_by[it.producer].append(k)
        for v in it.consumers:
            consumed_by[v].append(k)
    for v, node in enumerate(problem.nodes):
        s = sites[v]
        t, why = 0, None
        for k in consumed_by[v]:
            u = problem.items[k].producer
            if sites[u] == s:
                cand, cwhy = end[u], ("node", u)
            else:
                cand, cwhy = arrival[(k, s)], ("item", k, s)
            if cand > t or why is None:
                if cand >= t:
                    t, why = cand, cwhy
        if node.kind in COMPUTE_KINDS:
            ct, last = site_clock.get((node.group, s), (0, None))
            if ct > t:
                t, why = ct, ("node", last)
        start[v] = t
        end[v] = t + (c.compute_us[v][s] if node.kind in COMPUTE_KINDS else 0)
        cause[v] = why
        if node.kind in COMPUTE_KINDS:
            site_clock[(node.group, s)] = (end[v], v)
        for k in produced_by[v]:
            it = problem.items[k]
            for b in c.chain:
                if b == s or not any(sites[w] == b for w in it.consumers):
                    continue
                hops = c.hops[(s, b)]
                st, iwhy = end[v], ("node", v)
                for h in hops:
                    lt, last = link_clock.get((node.group, h.key), (0, None))
                    if lt > st:
                        st, iwhy = lt, ("link", last)
                en = st + c.xfer_us(k, s, b)
                for h in hops:
                    link_clock[(node.group, h.key)] = (en, (k, b))
                arrival[(k, b)] = en
                item_start[(k, b)] = st
                item_cause[(k, b)] = iwhy
    return start, end, cause, arrival, item_start, item_cause


def _breakdown(problem: Problem, c: ClassData, sites, sink: int, start, end, cause,
               arrival, item_start, item_cause) -> dict[str, int]:
    """Walk the critical chain back from a sink; the segments sum to its latency exactly."""
    out: dict[str, int] = {}
    ref: tuple | None = cause[sink]
    guard = 0
    while ref is not None and guard < 10 * (len(problem.nodes) + len(problem.items) + 1):
        guard += 1
        if ref[0] == "node":
            u = ref[1]
            if problem.nodes[u].kind in COMPUTE_KINDS:
                key = f"compute.{sites[u]}"
                out[key] = out.get(key, 0) + end[u] - start[u]
            ref = cause[u]
        else:  # an item transfer (reached directly or by waiting on a link)
            k, b = (ref[1], ref[2]) if ref[0] == "item" else ref[1]
            a = sites[problem.items[k].producer]
            key = f"transfer.{a}->{b}"
            out[key] = out.get(key, 0) + arrival[(k, b)] - item_start[(k, b)]
            ref = item_cause[(k, b)]
    return out


def evaluate_class_latency(problem: Problem, c: ClassData, sites: tuple[str, ...]) -> ClassEval:
    """Schedule, sink latencies, breakdown and energy of one class under `sites` (per node)."""
    start, end, cause, arrival, item_start, item_cause = _schedule(problem, c, sites)
    sink_us = {v: start[v] for v in problem.sink_nodes}
    breakdown = {v: _breakdown(problem, c, sites, v, start, end, cause, arrival, item_start,
                               item_cause) for v in problem.sink_nodes}
    energy = sum(c.energy_uj[v][sites[v]] for v in problem.compute_nodes)
    egress = 0
    for (k, b) in arrival:
        a = sites[problem.items[k].producer]
        energy += c.radio_uj.get((k, a, b), 0)
        egress += c.egress_uusd_h.get((k, a, b), 0)
    slo_ok = all(sink_us[v] <= lim for v, lim in c.slo_us.items())
    return ClassEval(c.name, tuple(start), tuple(end), sink_us, breakdown, energy, egress, slo_ok)


def evaluate(problem: Problem, assignment: Assignment) -> Evaluation:
    """Evaluate `assignment` (class -> site per node) exactly as the CP-SAT model counts it."""
    violations: list[str] = []
    classes: dict[str, ClassEval] = {}
    load: dict[str, int] = {s: 0 for s in problem.sites}
    hosted: dict[str, set[int]] = {s: set() for s in problem.sites}
    link: dict[str, int] = {k: 0 for k in problem.link_cap_bps}
    for c in problem.classes:
        sites = tuple(assignment[c.name])
        bad = [f"{c.name}: {problem.nodes[v].id} may not run on {s}"
               for v, s in enumerate(sites) if s not in c.allowed[v]]
        if bad:
            violations += bad
            continue
        for k, it in enumerate(problem.items):
            if it.private and any(sites[w] != sites[it.producer] for w in it.consumers):
                violations.append(f"{c.name}: private data {', '.join(it.tensors) or problem.nodes[it.producer].id} "
                                  f"would leave {sites[it.producer]}")
        for v in problem.compute_nodes:
            load[sites[v]] += c.load_ppm[v][sites[v]]
        for v, s in enumerate(sites):
            if problem.nodes[v].kind in COMPUTE_KINDS:
                hosted[s].add(v)
        ce = evaluate_class_latency(problem, c, sites)
        classes[c.name] = ce
        for (v, lim) in c.slo_us.items():
            if ce.sink_us[v] > lim:
                violations.append(f"{c.name}: {problem.nodes[v].id} takes {us_to_ms(ce.sink_us[v]):.1f} ms "
                                  f"> SLO {us_to_ms(lim):g} ms")
        for k, it in enumerate(problem.items):
            a = sites[it.producer]
            for b in c.chain:
                if b != a and any(sites[w] == b for w in it.consumers):
                    for h in c.hops[(a, b)]:
                        for key in h.cap_keys:
                            link[key] += c.bits_per_s[k]
    if any("may not run" in x for x in violations):
        return Evaluation(classes, {}, load, {}, link, 0, 0, 0, 0, tuple(violations))
    instances: dict[str, int] = {}
    cost = 0
    for s, sd in problem.sites.items():
        need = math.ceil(load[s] / sd.util_cap_ppm) if sd.util_cap_ppm > 0 else (0 if load[s] == 0 else 10**18)
        if sd.fixed_instances:
            if load[s] > sd.util_cap_ppm * sd.max_instances:
                violations.append(f"compute at {s}: utilisation {load[s] / max(sd.max_instances, 1) / 1e4:.0f}% "
                                  f"> cap {sd.util_cap_ppm / 1e4:.0f}%")
            continue
        instances[s] = need
        if need > sd.max_instances:
            violations.append(f"compute at {s}: needs {need} instances, at most {sd.max_instances}")
        cost += need * sd.price_uusd_per_h
    memory = {s: sum(problem.nodes[v].mem_kb for v in vs) for s, vs in hosted.items()}
    for s, m in memory.items():
        if m > problem.sites[s].memory_kb:
            violations.append(f"memory at {s}: {m} KB > {problem.sites[s].memory_kb} KB")
    for key, used in link.items():
        if used > problem.link_cap_bps[key]:
            violations.append(f"link {key}: {used / 1e6:.2f} Mbit/s > {problem.link_cap_bps[key] / 1e6:.2f} Mbit/s")
    cost += sum(ce.egress_uusd_h for ce in classes.values())
    if problem.budget_uusd_h is not None and cost > problem.budget_uusd_h:
        violations.append(f"budget: {cost / 1e6:.2f} $/h > {problem.budget_uusd_h / 1e6:.2f} $/h")
    weights = {c.name: c.weight for c in problem.classes}
    lat = sum(weights[n] * sum(ce.sink_us[v] for v in problem.latency_nodes) for n, ce in classes.items())
    en = sum(weights[n] * ce.energy_uj for n, ce in classes.items())
    obj = problem.coef_cost * cost + problem.coef_latency * lat + problem.coef_energy * en
    return Evaluation(classes, instances, load, memory, link, cost, lat, en, obj, tuple(violations))

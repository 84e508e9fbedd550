"""Exact evaluation of one assignment: the latency semantics, cost, energy and feasibility.

This is the reference the CP-SAT model encodes and the brute-force enumerator, the baselines
and every report use. Latency semantics, per edge class, per request and per sink k:

    L_k = sum over the compute nodes v that k depends on of  rate_factor(v) * ms(v, site(v))
        + sum over the tensor items i feeding those nodes (or k) of the transfer time from the
          producer's site to each distinct consuming site b (once per consuming site),
          T = sum over the links crossed of RTT/2 + bytes/bandwidth + serialisation + z_p * jitter
        + sum over the sites s running a node k depends on of the queueing wait there,
          W_s = w_p(level of s) * J_s  (planner.queueing: the M/G/1 p-quantile wait at the
          utilisation level s is planned at; J_s the largest work any sink of the class has on s)

This is the "sum" model (Problem.latency_model), used for chains. DAG apps use the "overlap"
model (`schedule`): start times, branches on different sites overlapping, one site running a
request's nodes one at a time in the plan's order, a sink's latency its start plus the waits.

Under the sum model, everything a result depends on happens one after another: one site runs a request's
pieces one after another, tensors crossing one link share its bandwidth (their times add up),
and nothing the result depends on overlaps. This is exact for chains of pieces (each model cut
into a chain, ensembles that are trees of chains) and an upper bound where a result depends on
parallel branches placed on different sites (they could overlap): plans are conservative and
the runtime and the simulator measure what overlap really gives. Nodes a sink does not depend
on (another model's branch, another source's pipeline) never add to its latency; their load
shows up in the sites' utilisation instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from typing import Mapping

from tierplan.planner.problem import COMPUTE_KINDS, Assignment, ClassData, Problem, SiteData
from tierplan.planner.queueing import wait_us
from tierplan.planner.units import us_to_ms

__all__ = ["ClassEval", "Evaluation", "evaluate", "evaluate_class_latency", "ancestors", "sink_items",
           "site_level", "level_options", "schedule"]


@dataclass(frozen=True)
class ClassEval:
    """Latencies and figures of one edge class under an assignment."""

    name: str
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
    levels: dict[str, int] = field(default_factory=dict)     # site -> utilisation level index
    wait_factors: dict[str, int] = field(default_factory=dict)  # site -> wait per unit of work (1/1000)

    @property
    def feasible(self) -> bool:
        return not self.violations


def ancestors(problem: Problem) -> dict[int, frozenset[int]]:
    """Every node's ancestors (nodes are in topological order)."""
    preds: dict[int, set[int]] = {v: set() for v in range(len(problem.nodes))}
    for it in problem.items:
        for w in it.consumers:
            preds[w].add(it.producer)
    out: dict[int, frozenset[int]] = {}
    for v in range(len(problem.nodes)):
        acc: set[int] = set()
        for u in preds[v]:
            acc.add(u)
            acc |= out[u]
        out[v] = frozenset(acc)
    return out


def schedule(problem: Problem, c: ClassData, sites: tuple[str, ...]) -> tuple[dict[int, int], dict[int, dict[str, int]]]:
    """The overlap semantics of one request (DAG apps): earliest start of every node, and per sink
    the breakdown of its critical path (compute per site, transfers), which adds up to its start.

    A node starts when every input has arrived (its producer finished, plus the transfer when they
    run on different sites) and every earlier node of the same request on its site has finished
    (one site runs them one at a time in the plan's order); branches on different sites overlap.
    """
    inputs: dict[int, list[tuple[int, int]]] = {}
    for k, it in enumerate(problem.items):
        for w in it.consumers:
            inputs.setdefault(w, []).append((k, it.producer))
    start: dict[int, int] = {}
    last: dict[tuple[int, str], int] = {}     # (request, site) -> node finishing last there so far
    why: dict[int, tuple[int, int | None] | None] = {}   # node -> (predecessor, item) that set its start
    dur = [c.compute_us[v].get(sites[v], 0) if problem.nodes[v].kind in COMPUTE_KINDS else 0
           for v in range(len(problem.nodes))]
    for v in range(len(problem.nodes)):     # nodes are in topological order
        best = 0
        arg: tuple[int, int | None] | None = None
        for k, u in inputs.get(v, ()):
            t = start[u] + dur[u] + c.xfer_us(k, sites[u], sites[v])
            if t > best or arg is None:
                best, arg = t, (u, k)
        key = (problem.nodes[v].group, sites[v])
        if problem.nodes[v].kind in COMPUTE_KINDS and key in last:
            u = last[key]               # the latest finish of the earlier nodes on this site
            if start[u] + dur[u] > best:
                best, arg = start[u] + dur[u], (u, None)
        start[v], why[v] = best, arg
        if problem.nodes[v].kind in COMPUTE_KINDS and (key not in last or
                                                       start[v] + dur[v] >= start[last[key]] + dur[last[key]]):
            last[key] = v
    breakdown: dict[int, dict[str, int]] = {}
    for k in problem.sink_nodes:
        bd: dict[str, int] = {}
        v = k
        while why.get(v) is not None:
            u, item = why[v]  # type: ignore[misc]
            if dur[u]:
                bd[f"compute.{sites[u]}"] = bd.get(f"compute.{sites[u]}", 0) + dur[u]
            if item is not None and sites[u] != sites[v]:
                hop = f"transfer.{sites[u]}->{sites[v]}"
                bd[hop] = bd.get(hop, 0) + c.xfer_us(item, sites[u], sites[v])
            v = u
        breakdown[k] = bd
    return start, breakdown


def sink_items(problem: Problem, anc: frozenset[int], sink: int) -> list[tuple[int, tuple[int, ...]]]:
    """Items a sink depends on, each with its consumers among the sink's dependencies."""
    into = anc | {sink}
    out = []
    for k, it in enumerate(problem.items):
        if it.producer in into:
            cons = tuple(w for w in it.consumers if w in into)
            if cons:
                out.append((k, cons))
    return out


def evaluate_class_latency(problem: Problem, c: ClassData, sites: tuple[str, ...],
                           anc: dict[int, frozenset[int]] | None = None,
                           wait_factors: Mapping[str, int] | None = None) -> ClassEval:
    """Sink latencies, their breakdown, energy and egress of one class under `sites` (per node).

    `wait_factors[s]` is the p-quantile wait at site s per unit of job (planner.queueing): a
    sink whose request runs something on s waits that times the class's largest sink work on s
    (the job it may queue behind); None: no waiting (service times only).
    """
    anc = anc if anc is not None else ancestors(problem)
    wait_factors = wait_factors or {}
    sink_us, breakdown = {}, {}
    # each sink's work per site, and the largest of them per site (the job a request queues behind)
    work: dict[int, dict[str, int]] = {k: {} for k in problem.sink_nodes}
    for k in problem.sink_nodes:
        for v in anc[k]:
            if problem.nodes[v].kind in COMPUTE_KINDS and c.compute_us[v][sites[v]]:
                work[k][sites[v]] = work[k].get(sites[v], 0) + c.compute_us[v][sites[v]]
    job: dict[str, int] = {}
    for per in work.values():
        for s, w in per.items():
            job[s] = max(job.get(s, 0), w)
    overlap = schedule(problem, c, sites)[1] if problem.latency_model == "overlap" else None
    for k in problem.sink_nodes:
        bd: dict[str, int] = {}
        if overlap is not None:
            bd = dict(overlap[k])      # the critical path: it adds up to the sink's start
        for v in (anc[k] if overlap is None else ()):
            if problem.nodes[v].kind in COMPUTE_KINDS:
                key = f"compute.{sites[v]}"
                bd[key] = bd.get(key, 0) + c.compute_us[v][sites[v]]
        for i, cons in (sink_items(problem, anc[k], k) if overlap is None else ()):
            a = sites[problem.items[i].producer]
            for b in sorted({sites[w] for w in cons} - {a}, key=c.chain.index):
                key = f"transfer.{a}->{b}"
                bd[key] = bd.get(key, 0) + c.xfer_us(i, a, b)
        for s in sorted(work[k], key=c.chain.index):
            w = wait_us(wait_factors.get(s, 0), job[s])
            if w:
                bd[f"queue.{s}"] = w
        sink_us[k] = sum(bd.values())
        breakdown[k] = bd
    energy = sum(c.energy_uj[v][sites[v]] for v in problem.compute_nodes)
    egress = 0
    for i, it in enumerate(problem.items):
        a = sites[it.producer]
        for b in {sites[w] for w in it.consumers} - {a}:
            energy += c.radio_uj.get((i, a, b), 0)
            egress += c.egress_uusd_h.get((i, a, b), 0)
    slo_ok = all(sink_us[v] <= lim for v, lim in c.slo_us.items())
    return ClassEval(c.name, sink_us, breakdown, energy, egress, slo_ok)


def site_level(sd: SiteData, load_ppm: int, level: int | None = None) -> tuple[int, int]:
    """(level index, instances) of a site at `load_ppm`: owned sites take the lowest level the load
    fits under; rented ones rent ceil(load / level) instances at the given level, or the fewest
    instances (cap) and the lowest level they reach when `level` is None."""
    lv = sd.levels()
    if sd.fixed_instances:
        fit = [j for j, (r, _) in enumerate(lv) if load_ppm <= r * sd.max_instances]
        return (fit[0] if fit else len(lv) - 1), sd.max_instances
    if level is not None:
        r = lv[level][0]
        return level, (math.ceil(load_ppm / r) if r > 0 else (0 if load_ppm == 0 else 10**18))
    cap = sd.util_cap_ppm
    need = math.ceil(load_ppm / cap) if cap > 0 else (0 if load_ppm == 0 else 10**18)
    fit = [j for j, (r, _) in enumerate(lv) if load_ppm <= r * need]
    return (fit[0] if fit else len(lv) - 1), need


def level_options(sd: SiteData, load_ppm: int) -> list[int]:
    """Levels of a rented site worth trying at `load_ppm`: the lowest one per distinct instance count
    within max_instances (a higher level renting as many instances only waits longer)."""
    if sd.fixed_instances or load_ppm == 0 or not sd.queues:
        return [site_level(sd, load_ppm)[0]]
    out, seen = [], set()
    for j in range(len(sd.levels())):
        _, need = site_level(sd, load_ppm, j)
        if need <= sd.max_instances and need not in seen:
            seen.add(need)
            out.append(j)
    return out or [len(sd.levels()) - 1]


def evaluate(problem: Problem, assignment: Assignment, levels: Mapping[str, int] | None = None) -> Evaluation:
    """Evaluate `assignment` (class -> site per node) exactly as the CP-SAT model counts it.

    `levels` (site -> utilisation level index, rented sites) is what the solver chose; sites not
    in it rent the fewest instances (see site_level).
    """
    levels = levels or {}
    violations: list[str] = []
    classes: dict[str, ClassEval] = {}
    load: dict[str, int] = {s: sd.base_load_ppm for s, sd in problem.sites.items()}
    hosted: dict[str, set[int]] = {s: set() for s in problem.sites}
    link: dict[str, int] = {k: 0 for k in problem.link_cap_bps}
    anc = ancestors(problem)
    placed: list[tuple[ClassData, tuple[str, ...]]] = []
    for c in problem.classes:
        sites = tuple(assignment[c.name])
        bad = [f"{c.name}: {problem.nodes[v].id} may not run on {s}"
               for v, s in enumerate(sites) if s not in c.allowed[v]]
        if bad:
            violations += bad
            continue
        placed.append((c, sites))
        for k, it in enumerate(problem.items):
            if it.private and any(sites[w] != sites[it.producer] for w in it.consumers):
                violations.append(f"{c.name}: private data {', '.join(it.tensors) or problem.nodes[it.producer].id} "
                                  f"would leave {sites[it.producer]}")
        for v in problem.compute_nodes:
            load[sites[v]] += c.load_ppm[v][sites[v]]
        for v, s in enumerate(sites):
            if problem.nodes[v].kind in COMPUTE_KINDS:
                hosted[s].add(v)
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
    chosen: dict[str, int] = {}
    factors: dict[str, int] = {}
    cost = 0
    for s, sd in problem.sites.items():
        lvl, need = site_level(sd, load[s], levels.get(s))
        chosen[s] = lvl
        factors[s] = sd.levels()[lvl][1]
        if sd.fixed_instances:
            if load[s] > sd.util_cap_ppm * sd.max_instances:
                violations.append(f"compute at {s}: utilisation {load[s] / max(sd.max_instances, 1) / 1e4:.0f}% "
                                  f"> cap {sd.util_cap_ppm / 1e4:.0f}%")
            continue
        instances[s] = need
        if need > sd.max_instances:
            violations.append(f"compute at {s}: needs {need} instances, at most {sd.max_instances}")
        cost += need * sd.price_uusd_per_h
    for c, sites in placed:
        ce = evaluate_class_latency(problem, c, sites, anc, factors)
        classes[c.name] = ce
        for (v, lim) in c.slo_us.items():
            if ce.sink_us[v] > lim:
                violations.append(f"{c.name}: {problem.nodes[v].id} takes {us_to_ms(ce.sink_us[v]):.1f} ms "
                                  f"> SLO {us_to_ms(lim):g} ms")
    memory = {s: sum(problem.nodes[v].mem_kb for v in vs) for s, vs in hosted.items()}
    for s, m in memory.items():
        if m > problem.sites[s].memory_kb:
            violations.append(f"memory at {s}: {m} KB > {problem.sites[s].memory_kb} KB")
    for key, used in link.items():
        if used > problem.link_cap_bps[key]:
            violations.append(f"link {key}: {used / 1e6:.2f} Mbit/s > {problem.link_cap_bps[key] / 1e6:.2f} Mbit/s")
    for model, cuts in problem.cuts_used(assignment).items():
        g = next(x for x in problem.segments if x.model == model)
        if len(cuts) + 1 > g.max_pieces:
            violations.append(f"pieces of {model}: {len(cuts) + 1} > max_pieces {g.max_pieces}")
    cost += sum(ce.egress_uusd_h for ce in classes.values())
    if problem.budget_uusd_h is not None and cost > problem.budget_uusd_h:
        violations.append(f"budget: {cost / 1e6:.2f} $/h > {problem.budget_uusd_h / 1e6:.2f} $/h")
    weights = {c.name: c.weight for c in problem.classes}
    lat = sum(weights[n] * sum(ce.sink_us[v] for v in problem.latency_nodes) for n, ce in classes.items())
    en = sum(weights[n] * ce.energy_uj for n, ce in classes.items())
    obj = problem.coef_cost * cost + problem.coef_latency * lat + problem.coef_energy * en
    return Evaluation(classes, instances, load, memory, link, cost, lat, en, obj, tuple(violations),
                      levels=chosen, wait_factors=factors)

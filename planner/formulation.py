"""Placement of app nodes on site classes by CP-SAT, per edge class (the exact formulation).

Sets (see planner.problem): nodes V in topological order, compute nodes P in V, transfer
items I (prod(i), cons(i)), edge classes E, chain(e) the sites requests of class e may use,
A(k) the nodes sink k depends on, I(k) the items feeding A(k) or k.

Variables (per edge class e; classes share only capacities and the objective)
    x[e,v,s] in {0,1}     node v of class-e requests runs on site s in allowed(e, v)
    p[e,i,w,a,b] in {0,1} producer of i on a and its consumer w on b   (x[prod,a] AND x[w,b])
    y[e,i,b] in {0,1}     some consumer of item i runs on b            (OR_w x[e,w,b])
    z[e,i,a,b] in {0,1}   item i is sent from a to b != a              (x[prod,a] AND y[b])
    q[e,k,i,a,b] in {0,1} item i is sent a -> b for sink k             (OR_{w in A(k)} p[i,w,a,b])
    inst[s] in [0, max_instances(s)]  instances rented at a shared site
    m[v,s] in {0,1}       some class runs v on s (its instances hold v's weights)

Constraints (one comment per constraint in the code)
    sum_s x[e,v,s] = 1; sources and sinks pinned (allowed has one site)
    sum_b p[e,i,w,a,b] = x[e,prod(i),a];  sum_a p[e,i,w,a,b] = x[e,w,b]   (transportation linking)
    private items: p[e,i,w,a,b] = 0 for a != b (raw data never leaves its site)
    z >= p;  z <= x[prod,a];  z <= y;  y >= x[w,b];  y <= sum_w x[w,b]
    latency:     L[e,k] = sum_{v in A(k)} sum_s d[e,v,s] x[e,v,s] + sum_{i in I(k), a != b} T[e,i,a,b] q[e,k,i,a,b]
    SLO:         L[e,k] <= slo[e,k] for sinks k of covered classes
    utilisation: sum_e sum_v load[e,v,s] x[e,v,s] <= util_cap(s) * inst[s]   (edge devices: fixed count)
    memory:      m[v,s] >= x[e,v,s];  sum_v mem(v) m[v,s] <= memory(s)
    links:       sum_{e,i,a,b: h in hops} bits[e,i] z[e,i,a,b] <= capacity(h)
    budget:      cost <= budget
    queueing:    L[e,k] += W[e,k,s] per site s sink k visits; W >= w_p(level of s) x J[e,s] reified on
                 (visit, level); an owned site's level is the lowest its load fits under; redundant
                 LP cuts: W >= sum_l w_p(r_l) x j[e,k,s,l], the sink's own work on s split per level
                 (each copy <= the work whose load fits under r_l)   (see _wait_cuts)
Objective
    min  coef_cost * (sum_s price(s) inst[s] + sum egress[e,i,a,b] z[e,i,a,b])
       + coef_latency * sum_e w_e sum_k L[e,k] + coef_energy * sum_e w_e (energy of x and z)
The latency semantics are planner.evaluate's; with the transportation linking the LP relaxation
of a chain's latency is a shortest path, which is why large apps are proven optimal quickly.
`solve` hands classes that share nothing, and parts of a group split at a cloud site, to
planner.decompose (exact); `solve_coverage` maximises covered devices, then the objective.
"""

from __future__ import annotations

import math
import os
import time
from fractions import Fraction

from ortools.sat.python import cp_model

from tierplan.planner.decompose import solve_groups
from tierplan.planner.result import SolveResult
from tierplan.planner.evaluate import ancestors, sink_items
from tierplan.planner.problem import COMPUTE_KINDS, Problem
from tierplan.planner.progress import solve_cp
from tierplan.planner.queueing import FACTOR_SCALE, wait_us

__all__ = ["SolveResult", "solve", "solve_model", "solve_coverage", "tie_break", "STATUS_NAMES"]

STATUS_NAMES: dict[cp_model.CpSolverStatus, str] = {   # what CpSolver.Solve returns -> its name
    cp_model.OPTIMAL: "optimal",
    cp_model.FEASIBLE: "feasible",
    cp_model.INFEASIBLE: "infeasible",
    cp_model.MODEL_INVALID: "invalid",
    cp_model.UNKNOWN: "unknown",
}


_DEFAULT_WORKERS = 8  # CP-SAT's full portfolio (LP, core, LNS workers): measured 4x faster proofs than 4


def _workers() -> int:
    """Search workers (TIERPLAN_SOLVER_WORKERS overrides): the portfolio, even when cores are fewer."""
    env = os.environ.get("TIERPLAN_SOLVER_WORKERS")
    if env:
        return max(1, int(env))
    return _DEFAULT_WORKERS


class _Model:
    """Builds the CP-SAT model of `problem` (data, variables, constraints, objective)."""

    def __init__(self, problem: Problem, fractional: frozenset[str] = frozenset(), soft_slo: bool = False,
                 free: frozenset[str] = frozenset(), assume: bool = False):
        self.p = problem
        self.m = cp_model.CpModel()
        # assume: every capacity, budget and SLO constraint holds only under its own assumption
        # literal (planner.diagnose asks CP-SAT which of them make the model infeasible)
        self.assume = assume
        self.assumptions: dict[str, cp_model.IntVar] = {}
        self.limits: dict[str, tuple] = {}   # assumption key -> (expression, its limit): how far over it is
        # soft_slo: a class's SLOs hold only where its `covered` literal is true (coverage mode)
        self.covered: dict[str, cp_model.IntVar] = (
            {c.name: self.m.new_bool_var(f"covered[{c.name}]") for c in problem.classes if c.slo_us}
            if soft_slo else {})
        # rented sites priced per busy fraction of an instance (a relaxation, planner.decompose):
        # the objective is then in units of 1/scale
        self.fractional = frozenset(s for s in fractional if s in problem.sites
                                    and not problem.sites[s].fixed_instances
                                    and len(problem.sites[s].levels()) == 1)
        self.scale = math.lcm(*(problem.sites[s].util_cap_ppm for s in self.fractional)) if self.fractional else 1
        # rented sites whose instances cost nothing here (another part pays for them, decompose)
        self.free = frozenset(s for s in free if s in problem.sites and not problem.sites[s].fixed_instances
                              and len(problem.sites[s].levels()) == 1) - self.fractional
        self.frac_terms: list = []
        self.x: dict[tuple[str, int, str], cp_model.IntVar] = {}
        self.y: dict[tuple[str, int, str], cp_model.IntVar] = {}
        self.z: dict[tuple[str, int, str, str], cp_model.IntVar] = {}
        self.inst: dict[str, cp_model.IntVar] = {}
        self.level: dict[str, list[cp_model.IntVar]] = {}
        self.sink_lat: dict[tuple[str, int], list[cp_model.LinearExprT]] = {}   # a sink's latency terms
        self.sink_terms: list = []
        self.cost_terms: list = []
        self.energy_terms: list = []
        self.latency_expr = 0
        self._build()

    def _guard(self, key: str, ct, expr=None, limit: int | None = None) -> None:
        """Make constraint `ct` (expr <= limit) hold under assumption `key` (diagnosis mode); else it always holds."""
        if not self.assume:
            return
        if expr is not None and limit is not None:
            self.limits[key] = (expr, limit)
        if key not in self.assumptions:
            self.assumptions[key] = self.m.new_bool_var(f"assume[{key}]")
        ct.OnlyEnforceIf(self.assumptions[key])

    # ------------------------------------------------------------------ per class
    def _build_class(self, c) -> None:
        p, m = self.p, self.m
        n = c.name
        # variables: placement
        for v, node in enumerate(p.nodes):
            lits = []
            for s in c.allowed[v]:
                lit = m.new_bool_var(f"x[{n},{node.id},{s}]")
                self.x[(n, v, s)] = lit
                lits.append(lit)
            # each node runs on exactly one site (pinned nodes have one allowed site)
            m.add_exactly_one(lits)
        pairs: dict[tuple[int, int, str, str], cp_model.IntVar] = {}
        for k, it in enumerate(p.items):
            u = it.producer
            for w in it.consumers:
                for a in c.allowed[u]:
                    for b in c.allowed[w]:
                        lit = m.new_bool_var(f"p[{n},{k},{p.nodes[w].id},{a},{b}]")
                        pairs[(k, w, a, b)] = lit
                        if it.private and a != b:
                            # private data never crosses a link: consumer on the producer's site
                            m.add(lit == 0)
                for a in c.allowed[u]:
                    # pairs of (producer site a, any consumer site) add up to x[producer, a]
                    m.add(sum(pairs[(k, w, a, b)] for b in c.allowed[w]) == self.x[(n, u, a)])
                for b in c.allowed[w]:
                    # pairs of (any producer site, consumer site b) add up to x[consumer, b]
                    m.add(sum(pairs[(k, w, a, b)] for a in c.allowed[u]) == self.x[(n, w, b)])
            for b in c.chain:
                cons = [w for w in it.consumers if b in c.allowed[w]]
                srcs = [a for a in c.allowed[u] if a != b]
                if not cons or not srcs:
                    continue
                yb = m.new_bool_var(f"y[{n},{k},{b}]")
                self.y[(n, k, b)] = yb
                # y = OR of the consumers on b
                for w in cons:
                    m.add_implication(self.x[(n, w, b)], yb)
                m.add_bool_or([self.x[(n, w, b)] for w in cons]).OnlyEnforceIf(yb)
                for a in srcs:
                    za = m.new_bool_var(f"z[{n},{k},{a},{b}]")
                    self.z[(n, k, a, b)] = za
                    # z = x[producer on a] AND y[b]; every pair (a, b) implies it
                    m.add_implication(za, self.x[(n, u, a)])
                    m.add_implication(za, yb)
                    for w in cons:
                        m.add_implication(pairs[(k, w, a, b)], za)
                    egress = c.egress_uusd_h.get((k, a, b), 0)
                    if egress:
                        self.cost_terms.append(egress * za)
                    radio = c.radio_uj.get((k, a, b), 0)
                    if radio:
                        self.energy_terms.append(c.weight * radio * za)
        if p.latency_model == "overlap":
            self._schedule(c, pairs)
        # latency of each sink: everything it depends on, one after another
        for v in (p.sink_nodes if p.latency_model == "sum" else ()):
            anc = self.ancestors[v]
            terms = [c.compute_us[w][s] * self.x[(n, w, s)] for w in sorted(anc)
                     if p.nodes[w].kind in COMPUTE_KINDS for s in c.allowed[w] if c.compute_us[w][s]]
            for k, readers in sink_items(p, anc, v):
                it = p.items[k]
                for a in c.allowed[it.producer]:
                    for b in c.chain:
                        lits = [pairs[(k, w, a, b)] for w in readers if (k, w, a, b) in pairs]
                        t_us = c.xfer_us(k, a, b)
                        if a == b or not lits or not t_us:
                            continue
                        if len(lits) == 1:
                            q = lits[0]
                        else:
                            q = m.new_bool_var(f"q[{n},{p.nodes[v].id},{k},{a},{b}]")
                            # the item is sent a -> b (once) when any dependency on b reads it
                            for lit in lits:
                                m.add_implication(lit, q)
                        terms.append(t_us * q)
            self.sink_lat[(n, v)] = terms
        for v in p.compute_nodes:
            for s in c.allowed[v]:
                if c.energy_uj[v][s]:
                    self.energy_terms.append(c.weight * c.energy_uj[v][s] * self.x[(n, v, s)])

    def _schedule(self, c, pairs: dict) -> None:
        """Latency with overlap (DAG apps, planner.evaluate.schedule): per request, start times S[v];
        a node starts after each input has arrived (its producer's finish plus the transfer when
        they run apart, through the pair variables) and after every earlier node of the same
        request that runs on the same site (in the plan's order); a sink's latency is its S."""
        p, m, n = self.p, self.m, c.name
        dur = {v: sum(c.compute_us[v][s] * self.x[(n, v, s)] for s in c.allowed[v] if c.compute_us[v].get(s))
               for v in range(len(p.nodes))}
        horizon = (sum(max((c.compute_us[v].get(s, 0) for s in c.allowed[v]), default=0) for v in range(len(p.nodes)))
                   + sum(max((c.xfer_us(k, a, b) for a in c.allowed[it.producer] for w in it.consumers
                              for b in c.allowed[w]), default=0) for k, it in enumerate(p.items)))
        start = {v: m.new_int_var(0, horizon, f"S[{n},{p.nodes[v].id}]") for v in range(len(p.nodes))}
        for v, node in enumerate(p.nodes):
            if node.kind == "source":
                # a request starts when its source produces it
                m.add(start[v] == 0)
        for k, it in enumerate(p.items):
            u = it.producer
            for w in it.consumers:
                delay = [c.xfer_us(k, a, b) * pairs[(k, w, a, b)] for a in c.allowed[u] for b in c.allowed[w]
                         if a != b and c.xfer_us(k, a, b)]
                # w starts after u has finished and its input has crossed to w's site
                m.add(start[w] >= start[u] + dur[u] + sum(delay))
        # one site runs a request's nodes one at a time, in the plan's order: a clock per (request,
        # site) holds the latest finish of the nodes so far that run there (O(nodes x sites), the
        # same as every earlier pair: an earlier node v depends on has finished before v anyway)
        for g in sorted({p.nodes[v].group for v in p.compute_nodes}):
            for s in c.chain:
                clock = None
                for v in p.compute_nodes:
                    if p.nodes[v].group != g or s not in c.allowed[v]:
                        continue
                    on = self.x[(n, v, s)]
                    if clock is not None:
                        # v starts after every earlier node on s has finished
                        m.add(start[v] >= clock).OnlyEnforceIf(on)
                    nxt = m.new_int_var(0, horizon, f"C[{n},{s},{p.nodes[v].id}]")
                    if clock is not None:
                        m.add(nxt >= clock)
                    # the clock moves to v's finish when v runs on s
                    m.add(nxt >= start[v] + c.compute_us[v].get(s, 0)).OnlyEnforceIf(on)
                    clock = nxt
        for v in p.sink_nodes:
            self.sink_lat[(n, v)] = [start[v]]

    # ------------------------------------------------------------------ shared
    def _build(self) -> None:
        p, m = self.p, self.m
        self.ancestors = ancestors(p)
        for c in p.classes:
            self._build_class(c)
        for s, sd in p.sites.items():
            terms = [c.load_ppm[v][s] * self.x[(c.name, v, s)]
                     for c in p.classes for v in p.compute_nodes if (c.name, v, s) in self.x
                     and c.load_ppm[v][s]]
            levels = sd.levels()
            queues = sd.queues and bool(terms) and len(levels) > 1
            if sd.queues and terms and len(levels) == 1:
                self.level[s] = []      # one level: a constant wait factor, nothing to choose
            if queues:
                u = [m.new_bool_var(f"u[{s},{j}]") for j in range(len(levels))]
                # one utilisation level per site (planner.queueing): its wait applies to visits
                m.add_exactly_one(u)
                self.level[s] = u
            if sd.fixed_instances:
                if terms and queues:
                    # utilisation of owned devices under the chosen level (each serves its own requests)
                    self._guard(f"compute:{s}", m.add(sum(terms) + sd.base_load_ppm
                                <= sum(r * sd.max_instances * lit for (r, _), lit in zip(levels, u))),
                                sum(terms) + sd.base_load_ppm, sd.util_cap_ppm * sd.max_instances)
                    for (r_below, _), lit in zip(levels, u[1:]):
                        # the level is the lowest the load fits under (a higher one only waits longer)
                        m.add(sum(terms) + sd.base_load_ppm >= r_below * sd.max_instances + 1).OnlyEnforceIf(lit)
                elif terms:
                    # utilisation of owned devices: each device serves its own requests
                    self._guard(f"compute:{s}",
                                m.add(sum(terms) + sd.base_load_ppm <= sd.util_cap_ppm * sd.max_instances),
                                sum(terms) + sd.base_load_ppm, sd.util_cap_ppm * sd.max_instances)
                continue
            if not terms and not sd.base_load_ppm:
                continue
            if s in self.free:
                # relaxation: instances paid elsewhere, within the instances there are
                m.add(sum(terms) + sd.base_load_ppm <= sd.util_cap_ppm * sd.max_instances)
                continue
            if s in self.fractional:
                # relaxation: the busy fraction of instances is paid, within the instances there are
                m.add(sum(terms) + sd.base_load_ppm <= sd.util_cap_ppm * sd.max_instances)
                per_ppm = sd.price_uusd_per_h * (self.scale // sd.util_cap_ppm)
                self.frac_terms += [per_ppm * t for t in terms] + [per_ppm * sd.base_load_ppm]
                continue
            most = sd.max_instances
            if self.assume:
                # diagnosis: instances beyond max_instances exist, allowed only without the assumption
                full = sum(c.load_ppm[v][s] for c in p.classes for v in p.compute_nodes if (c.name, v, s) in self.x)
                most = max(most, -(-(full + sd.base_load_ppm) // max(1, min(r for r, _ in levels))))
            inst = m.new_int_var(0, most, f"inst[{s}]")
            self.inst[s] = inst
            if most > sd.max_instances:
                self._guard(f"compute:{s}", m.add(inst <= sd.max_instances), inst, sd.max_instances)
            if queues:
                per = [m.new_int_var(0, most, f"inst[{s},{j}]") for j in range(len(levels))]
                for lit, n_j in zip(u, per):
                    # instances are counted under the chosen level only
                    m.add(n_j == 0).OnlyEnforceIf(lit.Not())
                m.add(inst == sum(per))
                # utilisation of a shared site <= chosen level * rented instances
                m.add(sum(terms) + sd.base_load_ppm <= sum(r * n_j for (r, _), n_j in zip(levels, per)))
            else:
                # utilisation of a shared site at the offered load <= cap * rented instances
                m.add(sum(terms) + sd.base_load_ppm <= sd.util_cap_ppm * inst)
            if sd.price_uusd_per_h:
                self.cost_terms.append(sd.price_uusd_per_h * inst)
        for s, sd in p.sites.items():
            users: dict[int, list[cp_model.IntVar]] = {}   # node -> its placement literals on s
            for c in p.classes:
                for v in p.compute_nodes:
                    if (c.name, v, s) in self.x and p.nodes[v].mem_kb:
                        users.setdefault(v, []).append(self.x[(c.name, v, s)])
            if sum(p.nodes[v].mem_kb for v in users) <= sd.memory_kb:
                continue
            mem_terms = []
            for v, lits in users.items():
                if len(lits) == 1:
                    mv = lits[0]
                else:
                    mv = m.new_bool_var(f"m[{p.nodes[v].id},{s}]")
                    for lit in lits:
                        m.add_implication(lit, mv)
                mem_terms.append(p.nodes[v].mem_kb * mv)
            # memory of one instance holds the weights of every node any class runs there
            self._guard(f"memory:{s}", m.add(sum(mem_terms) <= sd.memory_kb), sum(mem_terms), sd.memory_kb)
        link_terms: dict[str, list[tuple[int, cp_model.IntVar]]] = {}   # (bits/s, item sent) per link
        for c in p.classes:
            for (n, k, a, b), za in self.z.items():
                if n != c.name:
                    continue
                for h in c.hops[(a, b)]:
                    for key in h.cap_keys:
                        link_terms.setdefault(key, []).append((c.bits_per_s[k], za))
        for key, flows in link_terms.items():
            cap = p.link_cap_bps[key]
            if sum(bits for bits, _ in flows) <= cap:
                continue
            # link bandwidth: all traffic of all classes crossing this link class
            self._guard(f"link:{key}", m.add(sum(bits * za for bits, za in flows) <= cap),
                        sum(bits * za for bits, za in flows), cap)
        self._pieces()
        self._waits()
        for c in p.classes:
            for v in p.sink_nodes:
                lat_terms = self.sink_lat[(c.name, v)]
                lat = sum(lat_terms) if lat_terms else 0
                if v in c.slo_us and c.name in self.covered:
                    # SLO of the sink, for a class counted as covered (coverage mode)
                    m.add(lat <= c.slo_us[v]).OnlyEnforceIf(self.covered[c.name])
                elif v in c.slo_us:
                    # SLO of the sink (classes that cannot meet it were dropped before the solve)
                    self._guard(f"slo:{c.name}:{v}", m.add(lat <= c.slo_us[v]))
                if v in p.latency_nodes and lat_terms:
                    self.sink_terms.append(c.weight * lat)
        self.cost_expr = sum(self.cost_terms)
        if p.budget_uusd_h is not None:
            # budget: rented instances + egress within the app's $/h budget
            self._guard("budget", m.add(self.cost_expr <= p.budget_uusd_h))
        self.latency_expr = sum(self.sink_terms)
        self.energy_expr = sum(self.energy_terms)
        self.objective = (p.coef_cost * self.cost_expr + p.coef_latency * self.latency_expr
                          + p.coef_energy * self.energy_expr)
        if p.move_penalty:
            # a warm-started re-plan charges each node placed off the old plan's site (planner.movecost)
            self.objective += p.coef_latency * sum(w * self.x[k] for k, w in p.move_penalty.items() if k in self.x)
        if self.fractional:
            # every term in units of 1/scale; fractional sites add price x busy instances
            self.cost_expr = self.scale * self.cost_expr + sum(self.frac_terms)
            self.objective = self.scale * self.objective + p.coef_cost * sum(self.frac_terms)

    def _pieces(self) -> None:
        """Cuts chosen with the placement: a model given as segments is cut between segments j and
        j+1 when any class runs them on different sites, at most max_pieces - 1 times."""
        p, m = self.p, self.m
        for g in p.segments:
            if not g.binds:
                continue
            used = []
            for j, (a, b) in enumerate(zip(g.nodes, g.nodes[1:])):
                cut = m.new_bool_var(f"cut[{g.model},{j}]")
                used.append(cut)
                for c in p.classes:
                    for s in c.allowed[a]:
                        # a on s and b elsewhere: the model is cut there
                        m.add(cut >= self.x[(c.name, a, s)] - self.x.get((c.name, b, s), 0))
            # at most max_pieces pieces per model, over every class's placement
            m.add(sum(used) <= g.max_pieces - 1)

    def _waits(self) -> None:
        """Queueing wait per (class, sink, site visited): w_p(level of s) x J[e,s], where J[e,s]
        >= the work of each of the class's sinks on s (the largest job a request queues behind).

        With one level (rented sites) the factor is a constant; otherwise the wait is enforced
        per level (reified on the sink visiting s and the level being chosen).
        """
        p, m = self.p, self.m
        for s, u in self.level.items():
            levels = self.p.sites[s].levels()
            f_max = max(f for _, f in levels)
            for c in p.classes:
                if s not in c.chain:
                    continue
                per_sink = {}
                for v in p.sink_nodes:
                    deps = [(c.compute_us[w][s], self.x[(c.name, w, s)]) for w in sorted(self.ancestors[v])
                            if (c.name, w, s) in self.x and p.nodes[w].kind in COMPUTE_KINDS
                            and c.compute_us[w][s]]
                    if deps:
                        per_sink[v] = deps
                if not per_sink:
                    continue
                j_max = max(sum(t for t, _ in deps) for deps in per_sink.values())
                if len(per_sink) == 1:
                    job = sum(t * lit for t, lit in next(iter(per_sink.values())))
                else:
                    job = m.new_int_var(0, j_max, f"J[{c.name},{s}]")
                    for deps in per_sink.values():
                        # the largest job of this class on s: a request may queue behind it
                        m.add(job >= sum(t * lit for t, lit in deps))
                w_max = wait_us(f_max, j_max)
                for v, deps in per_sink.items():
                    wk = m.new_int_var(0, w_max, f"W[{c.name},{p.nodes[v].id},{s}]")
                    self.sink_lat[(c.name, v)].append(wk)
                    if len(per_sink) == 1 and not u:
                        # one sink, one level: it waits w_p(cap) x its work there
                        m.add(FACTOR_SCALE * wk >= levels[0][1] * job)
                        continue
                    self._wait_cuts(c, s, wk, deps, levels, u)
                    if len(deps) == 1:
                        vis = deps[0][1]
                    else:
                        vis = m.new_bool_var(f"vis[{c.name},{p.nodes[v].id},{s}]")
                        for _, lit in deps:
                            # the sink's request visits s when a piece it depends on runs there
                            m.add_implication(lit, vis)
                    level_lits: list[cp_model.IntVar | None] = [*u] if u else [None]   # one level: none
                    for (_, f), ulit in zip(levels, level_lits):
                        if f:
                            # it waits w_p(level) x J there (ceil, as planner.queueing.wait_us)
                            m.add(FACTOR_SCALE * wk >= f * job).OnlyEnforceIf([vis] + ([ulit] if ulit is not None else []))

    def _wait_cuts(self, c, s: str, wk, deps: list, levels: tuple, u: list) -> None:
        """Redundant linear bounds on one sink's wait at s that tighten the LP relaxation.

        The exact wait (w_p(level) x J when the sink visits s and the level is chosen) is reified,
        which the LP relaxation barely sees. Two consequences hold in every integer solution: the
        sink's own work j_k on s is 0 unless it visits s, and j_k <= J, so wait >= f(level) x j_k.
        With one level that is linear. With levels, j_k is split into copies j_k,l (j_k,l = j_k
        under the chosen level, else 0) and wait >= sum_l f_l x j_k,l; on an owned site a copy is
        also at most the work that fits under its level (load <= r_l x devices), so the LP sees
        the convex envelope of the step function f(level(j)) x j instead of nothing.
        """
        m, sd = self.m, self.p.sites[s]
        jk = sum(t * lit for t, lit in deps)
        jk_max = sum(t for t, _ in deps)
        if not u:
            # one level: the sink's own work there waits at least w_p(cap) x that work
            m.add(FACTOR_SCALE * wk >= levels[0][1] * jk)
            return
        fits = [jk_max] * len(levels)
        if sd.fixed_instances and not self.assume:   # (diagnosis: capacity is an assumption, not implied here)
            ratio = self._min_load_ratio(c, s, deps)
            room = [r * sd.max_instances - sd.base_load_ppm for r, _ in levels]
            # a copy holds at most the work whose load fits under its level (LP bound of that knapsack)
            fits = [max(0, min(jk_max, int(Fraction(max(rm, 0)) / ratio) if ratio else jk_max)) for rm in room]
        parts = []
        for j, ((_, f), lit, cap) in enumerate(zip(levels, u, fits)):
            part = m.new_int_var(0, max(cap, 0), f"jl[{c.name},{s},{j},{id(wk)}]")
            # the copy of j_k under level j: 0 unless j is the chosen level
            m.add(part <= max(cap, 0) * lit)
            parts.append((f, part))
        # the copies add up to j_k (exactly one is non-zero in an integer solution)
        m.add(sum(part for _, part in parts) == jk)
        # wait >= w_p(level) x j_k, linear in the copies
        m.add(FACTOR_SCALE * wk >= sum(f * part for f, part in parts if f))

    def _min_load_ratio(self, c, s: str, deps: list) -> Fraction:
        """Least load (ppm) per us of work among a sink's pieces on s; 0 when one loads nothing."""
        lits = {id(lit) for _, lit in deps}
        ratios = [Fraction(c.load_ppm[v][s], c.compute_us[v][s]) for (n, v, site), lit in self.x.items()
                  if n == c.name and site == s and id(lit) in lits and c.compute_us[v][s]]
        return min(ratios, default=Fraction(0))

    def hint(self, assignment: dict[str, tuple[str, ...]]) -> None:
        """Hand a known assignment (greedy, an old plan) to CP-SAT as a starting point."""
        for (n, v, s), lit in self.x.items():
            if n in assignment and v < len(assignment[n]):
                self.m.add_hint(lit, int(assignment[n][v] == s))


def solve(problem: Problem, time_limit_s: float = 10.0, hint: dict | None = None,
          latency_max: int | None = None, objective_max: int | None = None,
          secondary: str | None = None, seed: int = 0, secondary_share: float = 1.0,
          decompose: bool = True) -> SolveResult:
    """Solve `problem` with CP-SAT; never hides the solver status.

    `latency_max` bounds the weighted latency term (epsilon-constraint for the Pareto front);
    `secondary` ("latency" or "cost") re-solves with the primary objective fixed at its optimum
    to break ties (reported objective stays the primary one), within `secondary_share` of the limit.
    Edge classes that share nothing (planner.decompose) are solved group by group, exactly
    (`decompose=False`: one model of everything, the reference the tests compare with).
    """
    if (decompose and latency_max is None and objective_max is None and problem.budget_uusd_h is None
            and not problem.pieces_bound):
        return solve_groups(problem, solve_model, tie_break, time_limit_s, hint=hint, secondary=secondary, seed=seed,
                            secondary_share=secondary_share)
    return solve_model(problem, time_limit_s, hint, latency_max, objective_max, secondary, seed,
                       secondary_share)


def solve_model(problem: Problem, time_limit_s: float, hint: dict | None = None, latency_max: int | None = None,
                objective_max: int | None = None, secondary: str | None = None, seed: int = 0,
                secondary_share: float = 1.0, fractional: frozenset[str] = frozenset(),
                free: frozenset[str] = frozenset(), deterministic_s: float | None = None) -> SolveResult:
    """One CP-SAT model of the whole `problem` (see solve). Sites in `fractional` (rented, one
    level) are priced per busy fraction of an instance, sites in `free` not at all: relaxations
    (objective and bound in units of 1/scale) that planner.decompose uses to split classes
    sharing such a site. `deterministic_s`: one worker and that much of CP-SAT's deterministic time
    (its work count, not the clock): the same answer on a busy machine as on an idle one, as long
    as `time_limit_s` is not reached first (planner.refine's local solves)."""
    t0 = time.perf_counter()
    mdl = _Model(problem, fractional, free=free)
    m = mdl.m
    if latency_max is not None:
        m.add(mdl.latency_expr <= latency_max)
    if objective_max is not None:
        m.add(mdl.objective <= objective_max)
    m.minimize(mdl.objective)
    if hint:
        mdl.hint(hint)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit_s)
    solver.parameters.num_workers = _workers() if deterministic_s is None else 1
    if deterministic_s is not None:
        solver.parameters.max_deterministic_time = float(deterministic_s)
    solver.parameters.random_seed = seed
    code = solve_cp(solver, m)
    status = STATUS_NAMES.get(code, "unknown")
    if status not in ("optimal", "feasible"):
        return SolveResult(status, solve_s=time.perf_counter() - t0)
    assignment, levels = _read(problem, mdl, solver)
    proof_s = time.perf_counter() - t0
    obj = int(round(solver.ObjectiveValue()))
    bound = int(round(solver.BestObjectiveBound()))
    lat = int(round(solver.Value(mdl.latency_expr))) if not isinstance(mdl.latency_expr, int) else 0
    left = min(time_limit_s - (time.perf_counter() - t0), secondary_share * time_limit_s)
    if secondary and status == "optimal" and left > 0.2:
        expr = {"latency": mdl.latency_expr, "cost": mdl.cost_expr, "energy": mdl.energy_expr}[secondary]
        if not isinstance(expr, int):
            m.add(mdl.objective <= obj)
            m.minimize(expr)
            m.clear_hints()
            for (n, v, s), lit in mdl.x.items():
                m.add_hint(lit, int(assignment[n][v] == s))
            solver2 = cp_model.CpSolver()
            solver2.parameters.max_time_in_seconds = left
            solver2.parameters.num_workers = _workers()
            solver2.parameters.random_seed = seed
            code2 = solve_cp(solver2, m)
            if code2 in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                assignment, levels = _read(problem, mdl, solver2)
                lat = int(round(solver2.Value(mdl.latency_expr))) if not isinstance(mdl.latency_expr, int) else 0
    return SolveResult(status, assignment, obj, bound, time.perf_counter() - t0, lat, levels, mdl.scale, proof_s)


def solve_coverage(problem: Problem, time_limit_s: float, hint: dict | None = None,
                   seed: int = 0) -> tuple[SolveResult, frozenset[str]]:
    """Lexicographic: the most devices whose class meets its SLOs, then the least objective.

    Each class with an SLO gets a `covered` literal that enforces its SLOs; phase 1 maximises
    the devices of covered classes, phase 2 fixes that coverage and minimises the objective
    (hinted with phase 1's placement). Returns the result (optimal only when both phases are
    proven; the objective and bound are phase 2's) and the classes covered.
    """
    t0 = time.perf_counter()
    mdl = _Model(problem, soft_slo=True)
    m = mdl.m
    counts = {c.name: c.count for c in problem.classes}
    devices = sum(counts[n] * lit for n, lit in mdl.covered.items())
    m.maximize(devices)
    if hint:
        mdl.hint(hint)
    solver = _solver(time_limit_s / 2, seed)
    code = solve_cp(solver, m)
    first = STATUS_NAMES.get(code, "unknown")
    if first not in ("optimal", "feasible"):
        return SolveResult(first, solve_s=time.perf_counter() - t0), frozenset()
    best = int(round(solver.ObjectiveValue()))
    start, _ = _read(problem, mdl, solver)
    # phase 2: at least that many devices covered, least objective
    m.add(devices >= best)
    m.minimize(mdl.objective)
    m.clear_hints()
    mdl.hint(start)
    solver2 = _solver(max(0.2, time_limit_s - (time.perf_counter() - t0)), seed)
    code2 = solve_cp(solver2, m)
    second = STATUS_NAMES.get(code2, "unknown")
    if second not in ("optimal", "feasible"):
        return SolveResult("unknown", solve_s=time.perf_counter() - t0), frozenset()
    assignment, levels = _read(problem, mdl, solver2)
    covered = frozenset(n for n, lit in mdl.covered.items() if solver2.BooleanValue(lit))
    covered |= frozenset(c.name for c in problem.classes if not c.slo_us)
    status = "optimal" if first == second == "optimal" else "feasible"
    lat = int(round(solver2.Value(mdl.latency_expr))) if not isinstance(mdl.latency_expr, int) else 0
    return SolveResult(status, assignment, int(round(solver2.ObjectiveValue())),
                       int(round(solver2.BestObjectiveBound())), time.perf_counter() - t0, lat, levels,
                       proof_s=time.perf_counter() - t0), covered


def _solver(time_limit_s: float, seed: int) -> cp_model.CpSolver:
    """A CP-SAT solver with the planner's workers, seed and time limit."""
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit_s)
    solver.parameters.num_workers = _workers()
    solver.parameters.random_seed = seed
    return solver


def tie_break(problem: Problem, result: SolveResult, secondary: str, time_limit_s: float,
              seed: int = 0) -> SolveResult:
    """Among placements as good as `result` for the primary objective, the best for `secondary`
    found within the limit (hinted with result's): its status, objective and bound stay result's."""
    if not result.assignment or time_limit_s <= 0.2:
        return result
    t0 = time.perf_counter()
    mdl = _Model(problem)
    expr = {"latency": mdl.latency_expr, "cost": mdl.cost_expr, "energy": mdl.energy_expr}[secondary]
    if isinstance(expr, int):
        return result
    m = mdl.m
    # the primary objective stays at its optimum (or the incumbent's value)
    m.add(mdl.objective <= result.objective)
    m.minimize(expr)
    mdl.hint(result.assignment)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit_s)
    solver.parameters.num_workers = _workers()
    solver.parameters.random_seed = seed
    code = solve_cp(solver, m)
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return result
    assignment, levels = _read(problem, mdl, solver)
    lat = int(round(solver.Value(mdl.latency_expr))) if not isinstance(mdl.latency_expr, int) else 0
    return SolveResult(result.status, assignment, result.objective, result.bound,
                       result.solve_s + time.perf_counter() - t0, lat, levels, result.scale, result.proof_s)


def _read(problem: Problem, mdl: _Model,
          solver: cp_model.CpSolver) -> tuple[dict[str, tuple[str, ...]], dict[str, int]]:
    out = {}
    for c in problem.classes:
        out[c.name] = tuple(next(s for s in c.allowed[v] if solver.BooleanValue(mdl.x[(c.name, v, s)]))
                            for v in range(len(problem.nodes)))
    levels = {s: next(j for j, lit in enumerate(u) if solver.BooleanValue(lit))
              for s, u in mdl.level.items() if u and not problem.sites[s].fixed_instances}
    return out, levels

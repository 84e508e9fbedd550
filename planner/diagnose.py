"""Why no plan meets every constraint, from the solver itself, and what each class could reach.

`binding_constraints` builds the CP-SAT model with every capacity, memory, link, budget and SLO
constraint guarded by its own assumption literal and asks CP-SAT for a set of assumptions
sufficient for infeasibility; deletion then shrinks it to constraints that each matter (drop one
and the rest is feasible). `diagnose` names them, says how far over them the least overshooting
plan goes and, for one class, how many of its devices the fleet can serve, all in the fleet's own
figures (no widened capacities, so nothing is clipped). `best_latency`, `slo_message` and
`uplink_needed` say what one class could reach on its own.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Callable

from ortools.sat.python import cp_model

from tierplan.planner.evaluate import evaluate
from tierplan.planner.formulation import _Model, solve
from tierplan.planner.problem import ClassData, Problem
from tierplan.planner.units import us_to_ms, uusd_to_usd

__all__ = ["binding_constraints", "describe_constraint", "diagnose", "describe_assignment", "best_latency",
           "slo_message", "uplink_needed"]

_SCALE_MAX = 1000.0    # largest bandwidth multiplier tried for "what uplink would it need"
_BISECT_STEPS = 7


def _solve_under(mdl: _Model, keys: list[str], time_limit_s: float, workers: int = 1) -> tuple[int, cp_model.CpSolver]:
    """Solve `mdl` (feasibility) with the assumptions `keys` held; (status, solver)."""
    mdl.m.clear_assumptions()
    mdl.m.add_assumptions([mdl.assumptions[k] for k in keys])
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.05, float(time_limit_s))
    solver.parameters.num_workers = workers
    return solver.Solve(mdl.m), solver


def binding_constraints(problem: Problem, time_limit_s: float = 5.0) -> list[str] | None:
    """Keys ("compute:<site>", "memory:<site>", "link:<key>", "budget", "slo:<class>:<sink index>")
    of constraints that together make `problem` infeasible, each needed (dropping any one of them
    leaves a feasible rest, when the time allowed proved it); None when the problem is feasible or
    the solver could not decide in time."""
    t0 = time.perf_counter()
    mdl = _Model(problem, assume=True)
    keys = sorted(mdl.assumptions)
    code, solver = _solve_under(mdl, keys, time_limit_s / 2)
    if code != cp_model.INFEASIBLE:
        return None
    by_index = {mdl.assumptions[k].Index(): k for k in keys}
    core = [by_index[i] for i in solver.SufficientAssumptionsForInfeasibility() if i in by_index]
    if not core:   # infeasible without any assumption: placement rules alone (pins, privacy)
        return []
    # deletion: a constraint whose removal keeps the rest infeasible is not needed to explain it
    for k in list(core):
        left = time_limit_s - (time.perf_counter() - t0)
        if left <= 0.05 or len(core) == 1:
            break
        rest = [x for x in core if x != k]
        code, _ = _solve_under(mdl, rest, min(left, max(0.5, time_limit_s / (len(core) + 1))), workers=8)
        if code == cp_model.INFEASIBLE:
            core = rest
    return sorted(core, key=lambda k: (not k.startswith("slo:"), k))


def describe_constraint(problem: Problem, key: str, sink_name: Callable[[int], str] = str) -> str:
    """A binding constraint in words, with the fleet's figures ("compute capacity at stations_north
    (at most 80 instances)")."""
    kind, _, rest = key.partition(":")
    if kind == "compute":
        sd = problem.sites[rest]
        if sd.fixed_instances:
            return (f"compute capacity of the {rest} devices themselves ({sd.max_instances:,} devices at "
                    f"{sd.util_cap_ppm / 1e4:g}% utilisation at most)")
        return f"compute capacity at {rest} (at most {sd.max_instances:,} instances)"
    if kind == "memory":
        return f"memory at {rest} ({problem.sites[rest].memory_kb:,} KB per instance)"
    if kind == "link":
        return f"link {rest} ({problem.link_cap_bps[rest] / 1e6:,.2f} Mbit/s)"
    if kind == "budget":
        return f"the budget (${uusd_to_usd(problem.budget_uusd_h or 0):g}/h)"
    cname, _, v = rest.rpartition(":")
    c = next(x for x in problem.classes if x.name == cname)
    return f"the SLO of {cname} for sink {sink_name(int(v))!r} ({us_to_ms(c.slo_us[int(v)]):g} ms)"


def _scaled(c: ClassData, f: float) -> ClassData:
    """Class `c` with its device count (and so its loads, traffic and egress) times f."""
    return replace(c, count=max(1, int(c.count * f)),
                   load_ppm=tuple({s: math.ceil(x * f) for s, x in per.items()} for per in c.load_ppm),
                   bits_per_s=tuple(math.ceil(b * f) for b in c.bits_per_s),
                   egress_uusd_h={k: math.ceil(x * f) for k, x in c.egress_uusd_h.items()},
                   requests_per_s=c.requests_per_s * f)


def most_devices(problem: Problem, cname: str, time_limit_s: float) -> tuple[int, int] | None:
    """(lo, hi): the fleet serves lo devices of class `cname` within every constraint and not hi
    (hi - lo within 1% when the time allowed it; the other classes as they are; bisection on the
    class's device count, feasibility only). None when not even one device fits."""
    c0 = next(c for c in problem.classes if c.name == cname)
    deadline = time.perf_counter() + time_limit_s

    def fits(n: int) -> bool:
        f = n / c0.count
        sub = problem.with_classes(tuple(_scaled(c, f) if c.name == cname else c for c in problem.classes))
        mdl = _Model(replace(sub, segments=()))
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = max(0.1, min(1.0, deadline - time.perf_counter()))
        solver.parameters.num_workers = 8
        return solver.Solve(mdl.m) in (cp_model.OPTIMAL, cp_model.FEASIBLE)

    if not fits(1):
        return None
    if fits(c0.count):
        return c0.count, c0.count
    lo, hi = 1, c0.count
    while hi - lo > max(1, lo // 100) and time.perf_counter() < deadline:
        mid = (lo + hi) // 2 if hi < 4 * lo else int(math.sqrt(lo * hi))   # far apart: bisect the exponent
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, hi


def diagnose(problem: Problem, time_limit_s: float, sink_name: Callable[[int], str] = str) -> str:
    """One message: the binding constraints (from the solver) and what it would take, e.g.
    "bind together: compute capacity at stations_north (at most 80 instances); ...; the fleet serves
    at most 2,140 of the 3,000 legacy_cams devices; the least it would take: compute at
    stations_north: needs 93 instances, at most 80. To fix: ..."."""
    t0 = time.perf_counter()
    core = binding_constraints(problem, max(3.0, time_limit_s * 0.6))
    if core is None:
        return (f"the solver could not decide within {time_limit_s:.1g} s which constraints bind. "
                "To fix: --time-limit longer, relax the SLO or add capacity")
    if not core:
        return ("the placement rules alone (pins, private data, memory per node) admit no plan. "
                "To fix: check `at:` pins, `private:` sources and `deliver_to`")
    names = [describe_constraint(problem, k, sink_name) for k in core]
    head = ("binds: " if len(core) == 1 else "bind together: ") + "; ".join(names)
    need = _needs(problem, core, max(0.5, time_limit_s - (time.perf_counter() - t0)))
    fix = _fix(core)
    served = ""
    if len(problem.classes) == 1 and not any(k.startswith("slo:") for k in core):
        c = problem.classes[0]
        got = most_devices(problem.without_slo(), c.name, max(2.0, time_limit_s / 2))
        if got is None:
            served = f"; not even one {c.name} device can be served"
        elif got[1] - got[0] <= max(1, got[0] // 100):
            served = f"; the fleet serves at most {got[0]:,} of the {c.count:,} {c.name} devices"
        else:
            served = f"; the fleet serves {got[0]:,} but not {got[1]:,} of the {c.count:,} {c.name} devices"
    return (f"{head}{served}{'; the least it would take: ' + need if need else ''}"
            f". To fix: {fix}")


def _needs(problem: Problem, core: list[str], time_limit_s: float) -> str:
    """How far over its limit each binding capacity must go when the largest overshoot (relative to
    its own limit) is as small as it can be, every capacity free to overshoot, in the fleet's figures ("compute at stations_north: needs 93 instances,
    at most 80"); the SLOs stay enforced."""
    mdl = _Model(problem, assume=True)
    # every capacity may overshoot (the core is one infeasible set; others may bind as well), SLOs hold
    soft = [k for k in mdl.assumptions if k in mdl.limits]
    mdl.m.add_assumptions([lit for k, lit in mdl.assumptions.items() if k not in soft])
    worst = mdl.m.new_int_var(0, 10**12, "worst_overshoot_permille")
    for k in soft:
        expr, limit = mdl.limits[k]
        unit = max(1, limit // 10**6)        # overshoot counted in units of ~1e-6 of the limit (no overflow)
        slack = mdl.m.new_int_var(0, min(2**40, 2**62 // unit), f"over[{k}]")
        mdl.m.add(slack * unit >= expr - limit)
        # the overshoot of every binding constraint, in thousandths of its own limit, is at most `worst`
        mdl.m.add(worst * max(1, limit // unit) >= 1000 * slack)
    mdl.m.minimize(worst)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.1, time_limit_s)
    solver.parameters.num_workers = 8
    if solver.Solve(mdl.m) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return ""
    asg = {c.name: tuple(next(s for s in c.allowed[v] if solver.BooleanValue(mdl.x[(c.name, v, s)]))
                         for v in range(len(problem.nodes))) for c in problem.classes}
    ev = evaluate(problem, asg)
    prefix = {"compute": "compute at {}:", "memory": "memory at {}:", "link": "link {}:", "budget": "budget:"}
    wanted = tuple(prefix[k.partition(":")[0]].format(k.partition(":")[2]) for k in soft)
    return "; ".join([x for x in ev.violations if x.startswith(wanted)][:4]) if wanted else ""


def _fix(core: list[str]) -> str:
    kinds = {k.partition(":")[0] for k in core}
    out = []
    if "compute" in kinds:
        out.append("raise max_instances or count of " + ", ".join(k[8:] for k in core if k.startswith("compute:")))
    if "memory" in kinds:
        out.append("use devices with more memory or cut the models into more pieces")
    if "link" in kinds:
        out.append("a faster link for " + ", ".join(k[5:] for k in core if k.startswith("link:")))
    if "budget" in kinds:
        out.append("raise budget_usd_per_hour")
    if "slo" in kinds:
        out.append("or relax the SLO")
    return "; ".join(out) or "relax the SLO or add capacity"


# ----------------------------------------------------------------------------- one class's best
def describe_assignment(problem: Problem, sites: tuple[str, ...]) -> str:
    """'all pieces in eu-1' or '3 pieces on cam, 2 on cloud' for one class's placement."""
    used: dict[str, int] = {}
    for v in problem.compute_nodes:
        used[sites[v]] = used.get(sites[v], 0) + 1
    if len(used) == 1:
        return f"all pieces in {next(iter(used))}"
    return ", ".join(f"{n} piece{'s' if n > 1 else ''} on {s}" for s, n in used.items())


def best_latency(problem: Problem, sink: int, time_limit_s: float) -> tuple[int, tuple[str, ...]] | None:
    """Least latency of one sink for a one-class problem without its SLO (the fleet to itself)."""
    c = problem.classes[0]
    sub = problem.without_slo().with_objective("latency", 0, 1, 0).with_latency_sinks((sink,))
    sub = replace(sub, budget_uusd_h=None)
    r = solve(sub, time_limit_s)
    if r.status not in ("optimal", "feasible"):
        return None
    return evaluate(sub, r.assignment, r.levels).classes[c.name].sink_us[sink], r.assignment[c.name]


def slo_message(problem: Problem, cname: str, time_limit_s: float, sink_name: Callable[[int], str],
                percentile: float) -> tuple[str, str, dict[str, float]]:
    """(message, note, best ms per sink) for a class that cannot meet its SLO even alone:
    'SLO 50 ms for sink 'x' cannot be met on cams: the best possible p95 is 73 ms (all pieces in eu-1)'."""
    sub = problem.only_class(cname)
    c = sub.classes[0]
    parts, notes, best = [], [], {}
    for v, lim in c.slo_us.items():
        got = best_latency(sub, v, time_limit_s)
        name = sink_name(v)
        if got is None:
            continue
        us, sites = got
        best[name] = us_to_ms(us)
        if us > lim:
            parts.append(f"SLO {us_to_ms(lim):g} ms for sink {name!r} cannot be met on {cname}: the best "
                         f"possible p{percentile:g} is {us_to_ms(us):.1f} ms ({describe_assignment(sub, sites)})")
            notes.append(f"{name}: best p{percentile:g} {us_to_ms(us):.1f} ms > SLO {us_to_ms(lim):g} ms "
                         f"({describe_assignment(sub, sites)})")
    if not parts:
        parts.append(f"the SLOs of {cname} cannot all be met at once")
        notes.append("its SLOs cannot all be met at once")
    return "; ".join(parts), "; ".join(notes), best


def uplink_needed(feasible_at: Callable[[float], bool], uplink_mbps: float | None, rtt_ms: float) -> str:
    """What a class would need: the smallest multiple of its own link's bandwidth at which
    `feasible_at(scale)` holds (bisection on a log scale)."""
    if uplink_mbps is None:
        return "a faster device (it has no link to offload over)"
    if not feasible_at(_SCALE_MAX):
        return f"a faster device or a site closer than {rtt_ms:g} ms RTT (no uplink bandwidth is enough)"
    lo, hi = 1.0, _SCALE_MAX
    for _ in range(_BISECT_STEPS):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if feasible_at(mid) else (mid, hi)
    return f"uplink >= {uplink_mbps * hi:.3g} Mbit/s (now {uplink_mbps:g})"

"""Terminal view of a Plan (rich tables); printing is separate from planning and comes last.

Columns come from tierplan.console.column: names (classes, pieces, sites, strategies) never
wrap and no header word is cut; the Console's width policy (tierplan.console) lets piped
output take the width the tables need.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from tierplan.planner.plan import Plan
from tierplan.console import column, console as make_console, print_table

__all__ = ["render_plan", "TIER_ORDER"]

TIER_ORDER = ("edge", "base_station", "cloud")


def _fmt(x: float | None, nd: int = 1) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:,.{nd}f}"


def _split(breakdown: dict[str, float]) -> tuple[dict[str, float], float, float]:
    compute = {t: breakdown.get(f"compute.{t}", 0.0) for t in TIER_ORDER}
    transfer = sum(v for k, v in breakdown.items() if k.startswith("transfer."))
    queue = sum(v for k, v in breakdown.items() if k.startswith("queue."))
    return compute, transfer, queue


def render_plan(plan: Plan, console: Console | None = None, max_classes: int = 12) -> None:
    """Print the plan: header, latency per sink, placement, baselines, coverage, money, moves, frontier."""
    con = console or make_console()
    gap = "-" if plan.gap is None else f"{100 * plan.gap:.2f}%"
    con.print(f"[bold]plan[/]: status [bold]{plan.status}[/], objective {plan.objective_kind} = "
              f"{_fmt(plan.objective, 4)}, gap {gap}, solved in {plan.solve_s:.2f} s")
    if plan.reason:
        con.print(f"[yellow]{plan.reason}[/]")
    con.print(f"cost ${plan.cost_per_hour_usd:,.4f}/h, ${plan.cost_per_1k_requests_usd:,.6f} per 1,000 requests, "
              f"{plan.requests_per_hour:,.0f} requests/h; energy {_fmt(plan.energy_j_per_request, 4)} J/request")
    classes = list(plan.class_sinks or {"": plan.sinks})
    sink_names = list(next(iter(plan.class_sinks.values())).keys()) if plan.class_sinks else list(plan.sinks)
    for sink in sink_names:
        t = Table(title=f"sink {sink}: latency p{plan.percentile:g} (ms)", title_justify="left")
        column(t, "edge class", ident=True)
        for col in ("latency", "SLO", "meets", "compute edge", "compute bs", "compute cloud", "transfers", "queue"):
            column(t, col)
        for cname in classes[:max_classes]:
            s = (plan.class_sinks.get(cname) or plan.sinks)[sink]
            compute, transfer, queue = _split(s.breakdown)
            ok = "-" if s.meets_slo is None else ("[green]yes[/]" if s.meets_slo else "[red]no[/]")
            t.add_row(cname, _fmt(s.latency_ms), _fmt(s.slo_ms), ok, *(_fmt(compute[x]) for x in TIER_ORDER),
                      _fmt(transfer), _fmt(queue))
        if len(classes) > max_classes:
            t.add_row(f"... {len(classes) - max_classes} more classes", *[""] * 8)
        print_table(con, t)
    if plan.per_class:
        shown = classes[:min(max_classes, 6)]
        t = Table(title="placement (site class per piece)", title_justify="left")
        column(t, "piece", ident=True)
        for c in shown:
            column(t, c, ident=True)
        for piece in next(iter(plan.per_class.values())):
            t.add_row(piece, *(plan.per_class[c].get(piece, "-") for c in shown))
        print_table(con, t)
    if plan.baselines:
        t = Table(title="plan beside baselines (same cost model)", title_justify="left")
        # objective: what the solver minimises (same evaluation for all rows); latency ms: the
        # mean of each class's slowest sink, which a mean-latency optimum need not minimise
        column(t, "strategy", ident=True)
        for col in ("objective", "latency ms", "$/h", "SLO coverage", "feasible", "CHOSEN"):
            column(t, col)
        lat = plan.latency_ms if plan.latency_ms is not None else _mean_latency(plan)
        t.add_row("cp-sat (this plan)", _fmt(plan.objective, 4), _fmt(lat), f"{plan.cost_per_hour_usd:,.4f}",
                  _pct(plan.coverage_share), "yes", "[bold green]*[/]")
        for name, b in plan.baselines.items():
            t.add_row(name, _fmt(b.objective, 4), _fmt(b.latency_ms), _fmt(b.cost_per_hour_usd, 4),
                      _pct(b.coverage_share), "yes" if b.feasible else "[red]no[/]", "")
        print_table(con, t)
        for name, b in plan.baselines.items():
            if not b.feasible and b.reason:
                con.print(f"  {name}: {b.reason.split('; ')[0]}")
    if plan.coverage:
        t = Table(title="SLO coverage per edge class", title_justify="left")
        column(t, "edge class", ident=True)
        column(t, "devices")
        column(t, "mode", ident=True)
        column(t, "latency ms")
        column(t, "meets", justify="left")
        column(t, "note", justify="left")
        for name, cov in list(plan.coverage.items())[:max(max_classes, 20)]:
            t.add_row(name, f"{cov.devices:,}", cov.mode, _fmt(cov.latency_ms), "yes" if cov.meets_slo else "[red]no[/]",
                      cov.note)
        print_table(con, t)
        con.print(plan.coverage_summary)
    if plan.not_met:
        t = Table(title="SLO not met: planned, best achievable, what would fix it", title_justify="left")
        column(t, "edge class", ident=True)
        column(t, "devices")
        column(t, "sink", ident=True)
        column(t, "SLO ms")
        column(t, "planned ms")
        column(t, "best alone ms")
        column(t, "fix", justify="left")
        for x in plan.not_met:
            t.add_row(str(x["edge_class"]), f"{int(x['devices']):,}", str(x["sink"]), _fmt(float(x["slo_ms"])),
                      _fmt(float(x["planned_ms"])), _fmt(float(x["best_alone_ms"])), str(x["fix"]))
        print_table(con, t)
    if plan.monthly_cost_usd_by_tier:
        t = Table(title="monthly cost (730 h)", title_justify="left")
        column(t, "tier", ident=True)
        column(t, "$/month")
        column(t, "instances")
        for tier, usd in plan.monthly_cost_usd_by_tier.items():
            sites = [f"{s}: {n}" for s, n in plan.instances.items() if plan.site_tiers.get(s) == tier and n]
            t.add_row(tier, f"{usd:,.2f}", ", ".join(sites))
        t.add_row("[bold]total[/]", f"[bold]{sum(plan.monthly_cost_usd_by_tier.values()):,.2f}[/]", "")
        print_table(con, t)
    if plan.moves:
        t = Table(title=f"replanning: {len(plan.moves)} piece placements move"
                  + (f" ({plan.move_cost_ms:g} ms charged per segment moved)" if plan.move_cost_ms else ""),
                  title_justify="left")
        for col in ("edge class", "piece", "from", "to"):
            column(t, col, ident=True)
        for m in plan.moves[:50]:
            t.add_row(m.edge_class, m.piece, m.from_site or "(new)", m.to_site or "(cut away)")
        print_table(con, t)
    if plan.pareto:
        t = Table(title="cost-latency frontier (epsilon-constraint)", title_justify="left")
        column(t, "mean latency ms")
        column(t, "$/h")
        column(t, "status", ident=True)
        for p in plan.pareto:
            t.add_row(_fmt(p.latency_ms, 2), f"{p.cost_per_hour_usd:,.4f}", p.status)
        print_table(con, t)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _mean_latency(plan: Plan) -> float:
    """Device-weighted mean over classes of the slowest sink (what baselines report)."""
    if plan.coverage:
        tot = sum(c.devices for c in plan.coverage.values()) or 1
        return sum(c.devices * c.latency_ms for c in plan.coverage.values()) / tot
    return max((s.latency_ms for s in plan.sinks.values()), default=0.0)

"""plan.html: a self-contained offline page (inline SVG and CSS, no script, no network).

Draws the piece graph coloured by tier for each edge class (up to `max_classes`), the latency
breakdown of every sink as stacked bars, the plan beside the baselines, the SLO coverage per
class and the monthly cost per tier.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from planner.plan import Plan

__all__ = ["render_html", "write_html", "TIER_COLOURS"]

TIER_COLOURS = {"edge": "#2e7d32", "base_station": "#ef6c00", "cloud": "#1565c0", "": "#757575"}
_TRANSFER_COLOUR = "#8e24aa"
_NODE_W, _NODE_H, _GAP_X, _GAP_Y, _PAD = 170, 46, 60, 18, 20


def _layers(plan: Plan) -> dict[str, int]:
    """Layer of each node: longest path (in edges) from a source, for a left-to-right layout."""
    preds: dict[str, list[str]] = {p.id: [] for p in plan.pieces}
    for e in plan.edges:
        preds.setdefault(e.dst, []).append(e.src)
    layer: dict[str, int] = {}
    for n in plan.order or [p.id for p in plan.pieces]:
        layer[n] = 1 + max((layer.get(u, 0) for u in preds.get(n, [])), default=-1)
    return layer


def _graph_svg(plan: Plan, cname: str) -> str:
    layer = _layers(plan)
    kinds = {p.id: p.kind for p in plan.pieces}
    placement = plan.per_class.get(cname, plan.assignment)
    sinks = plan.class_sinks.get(cname, plan.sinks)
    cols: dict[int, list[str]] = {}
    for n in plan.order or list(layer):
        cols.setdefault(layer[n], []).append(n)
    pos = {}
    for x, names in cols.items():
        for y, n in enumerate(names):
            pos[n] = (_PAD + x * (_NODE_W + _GAP_X), _PAD + y * (_NODE_H + _GAP_Y))
    width = _PAD * 2 + (max(cols, default=0) + 1) * (_NODE_W + _GAP_X)
    height = _PAD * 2 + max((len(v) for v in cols.values()), default=1) * (_NODE_H + _GAP_Y)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="piece graph of {escape(cname)}">',
           '<defs><marker id="arr" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto">'
           '<path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker></defs>']
    for e in plan.edges:
        if e.src not in pos or e.dst not in pos:
            continue
        x1, y1 = pos[e.src][0] + _NODE_W, pos[e.src][1] + _NODE_H / 2
        x2, y2 = pos[e.dst][0], pos[e.dst][1] + _NODE_H / 2
        crosses = _site(plan, cname, e.src, placement, sinks) != _site(plan, cname, e.dst, placement, sinks)
        colour = _TRANSFER_COLOUR if crosses else "#555"
        dash = ' stroke-dasharray="6,4"' if crosses else ""
        out.append(f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="{colour}" '
                   f'stroke-width="{2.5 if crosses else 1.2}"{dash} marker-end="url(#arr)">'
                   f'<title>{escape(e.src)} -> {escape(e.dst)}: {e.nbytes:,} bytes</title></line>')
    for n, (x, y) in pos.items():
        site = _site(plan, cname, n, placement, sinks)
        tier = plan.site_tiers.get(site, "")
        fill = TIER_COLOURS.get(tier, TIER_COLOURS[""])
        kind = kinds.get(n, "piece")
        rx = 22 if kind in ("source", "sink") else 6
        ms = next((p.latency_ms.get(site) for p in plan.pieces if p.id == n), None)
        sub = f"{site}" + (f" · {ms:.1f} ms" if ms else "")
        out.append(f'<g><rect x="{x}" y="{y}" width="{_NODE_W}" height="{_NODE_H}" rx="{rx}" fill="{fill}" '
                   f'stroke="#222" stroke-width="1"><title>{escape(n)} ({kind}) on {escape(site)}</title></rect>'
                   f'<text x="{x + 8}" y="{y + 19}" fill="#fff" font-size="13" font-family="sans-serif">'
                   f'{escape(_short(n))}</text>'
                   f'<text x="{x + 8}" y="{y + 37}" fill="#fff" font-size="11" font-family="sans-serif">'
                   f'{escape(sub)}</text></g>')
    out.append("</svg>")
    return "".join(out)


def _site(plan: Plan, cname: str, node: str, placement: dict, sinks) -> str:
    if node in placement:
        return placement[node]
    return plan.pins.get(cname, {}).get(node, cname)   # sources and sinks: where they are pinned


def _short(n: str, width: int = 22) -> str:
    return n if len(n) <= width else n[: width - 1] + "…"


def _bars(plan: Plan, cname: str) -> str:
    sinks = plan.class_sinks.get(cname, plan.sinks)
    scale_ms = max([s.latency_ms for s in sinks.values()] + [s.slo_ms or 0 for s in sinks.values()] + [1e-9])
    width, bar_h = 640, 22
    rows = []
    for i, (name, s) in enumerate(sinks.items()):
        y = 10 + i * (bar_h + 26)
        x = 120.0
        rows.append(f'<text x="4" y="{y + 16}" font-size="13" font-family="sans-serif">{escape(name)}</text>')
        for key, ms in s.breakdown.items():
            if key.startswith("site:") or ms <= 0:
                continue
            w = ms / scale_ms * (width - 140)
            tier = key.split(".", 1)[1] if key.startswith("compute.") else None
            colour = TIER_COLOURS.get(tier, _TRANSFER_COLOUR) if tier else _TRANSFER_COLOUR
            rows.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}" '
                        f'stroke="#fff"><title>{escape(key)}: {ms:.2f} ms</title></rect>')
            x += w
        rows.append(f'<text x="{x + 6:.1f}" y="{y + 16}" font-size="12" font-family="sans-serif">'
                    f'{s.latency_ms:.1f} ms</text>')
        if s.slo_ms:
            sx = 120 + s.slo_ms / scale_ms * (width - 140)
            rows.append(f'<line x1="{sx:.1f}" y1="{y - 4}" x2="{sx:.1f}" y2="{y + bar_h + 4}" stroke="#c62828" '
                        f'stroke-width="2"><title>SLO {s.slo_ms:g} ms</title></line>')
    height = 20 + len(sinks) * (bar_h + 26)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 80}" height="{height}">'
            + "".join(rows) + "</svg>")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(plan: Plan, max_classes: int = 4, title: str = "tierplan plan") -> str:
    """The page as a string (no external resource of any kind)."""
    legend = "".join(f'<span class="chip" style="background:{c}">{escape(t)}</span>'
                     for t, c in TIER_COLOURS.items() if t) + \
        f'<span class="chip" style="background:{_TRANSFER_COLOUR}">transfer</span>'
    gap = "-" if plan.gap is None else f"{100 * plan.gap:.2f}%"
    parts = [f"<h1>{escape(title)}</h1>",
             f"<p>status <b>{escape(plan.status)}</b>, objective {escape(plan.objective_kind)} = "
             f"{'-' if plan.objective is None else f'{plan.objective:,.4f}'}, gap {gap}, solve {plan.solve_s:.2f} s; "
             f"cost ${plan.cost_per_hour_usd:,.4f}/h, ${plan.cost_per_1k_requests_usd:,.6f} per 1,000 requests</p>",
             f"<p>{escape(plan.coverage_summary)}</p>", f"<p>{legend}</p>"]
    if plan.reason:
        parts.append(f"<p class='warn'>{escape(plan.reason)}</p>")
    classes = list(plan.per_class or {"": plan.assignment})
    for cname in classes[:max_classes]:
        parts.append(f"<h2>edge class {escape(cname)}</h2>")
        parts.append(f"<div class='svg'>{_graph_svg(plan, cname)}</div>")
        parts.append(f"<h3>latency p{plan.percentile:g} per sink</h3><div class='svg'>{_bars(plan, cname)}</div>")
    if len(classes) > max_classes:
        parts.append(f"<p>{len(classes) - max_classes} more edge classes: see plan.json.</p>")
    rows = [["cp-sat (this plan)", "-" if plan.objective is None else f"{plan.objective:.4f}",
             f"{plan.latency_ms or 0:.1f}", f"{plan.cost_per_hour_usd:,.4f}",
             _pct(plan.coverage_share), "yes", "<b>*</b>"]]
    for name, b in plan.baselines.items():
        rows.append([escape(name), "-" if b.objective is None else f"{b.objective:.4f}", f"{b.latency_ms:.1f}",
                     f"{b.cost_per_hour_usd:,.4f}", _pct(b.coverage_share),
                     "yes" if b.feasible else "no: " + escape((b.reason or "")[:80]), ""])
    parts.append("<h2>plan beside baselines</h2>" +
                 _table(["strategy", "objective", "latency ms", "$/h", "SLO coverage", "feasible", "CHOSEN"], rows))
    if plan.coverage:
        parts.append("<h2>SLO coverage per edge class</h2>" + _table(
            ["edge class", "devices", "mode", "latency ms", "meets SLO", "note"],
            [[escape(n), f"{c.devices:,}", c.mode, f"{c.latency_ms:.1f}", "yes" if c.meets_slo else "no",
              escape(c.note)] for n, c in plan.coverage.items()]))
    if plan.monthly_cost_usd_by_tier:
        parts.append("<h2>monthly cost</h2>" + _table(
            ["tier", "$/month"], [[escape(t), f"{v:,.2f}"] for t, v in plan.monthly_cost_usd_by_tier.items()]))
    if plan.moves:
        parts.append("<h2>pieces that move</h2>" + _table(
            ["edge class", "piece", "from", "to"],
            [[escape(m.edge_class), escape(m.piece), escape(m.from_site or "(new)"), escape(m.to_site)]
             for m in plan.moves]))
    css = ("body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}"
           "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
           ".chip{color:#fff;padding:2px 8px;margin-right:6px;border-radius:4px}.svg{overflow-x:auto}"
           ".warn{color:#b71c1c}")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{css}</style></head><body>{''.join(parts)}</body></html>")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def write_html(plan: Plan, path: str | Path, **kw) -> Path:
    """Write plan.html atomically."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(render_html(plan, **kw))
    tmp.replace(path)
    return path

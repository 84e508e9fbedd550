"""plan.html: a self-contained offline page (inline SVG and CSS, no script, no network).

The page fits a 1,400 px window without sideways scrolling and follows the reader's light or
dark scheme. It shows, top to bottom:
- the plan beside the baselines as bars ($/h, mean latency, SLO coverage), and the cost-latency
  frontier with this plan marked (with `--pareto`; otherwise the monthly cost per tier);
- the SLO coverage per edge class (every class named; latency as a share of each sink's SLO);
- per edge class, the piece chain as boxes that wrap: runs of consecutive pieces on one site fold
  into one box that opens on click (<details>), and every move of data between sites is drawn
  as a marked hop with its bytes; then the latency of every sink split into compute per tier,
  transfer and queueing, each with its own colour and legend entry;
- the tables: plan beside baselines (with the reasons), coverage, monthly cost, moves, frontier.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import TypeGuard

from tierplan.planner.plan import Plan, SinkLatency

__all__ = ["render_html", "write_html", "TIER_COLOURS", "TRANSFER_COLOUR", "QUEUE_COLOUR"]

TIER_COLOURS = {"edge": "#2e7d32", "base_station": "#ef6c00", "cloud": "#1565c0", "": "#757575"}
TRANSFER_COLOUR = "#8e24aa"
QUEUE_COLOUR = "#607d8b"            # drawn striped (url(#queue)), so it never reads as a tier
_QUEUE_STRIPE = "#9fb3bd"
_TIERS = ("edge", "base_station", "cloud")
_COST_BAR, _LAT_BAR, _MET, _MISSED = "#00897b", "#5c6bc0", "#2e9e8f", "#c62828"
_PAGE_W = 1320                      # content width in px: 1,400 px window less margins and scrollbar
_HALF_W = 620                       # a half-width card's content at 1,400 px
_FONT = "system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"


# ---------------------------------------------------------------------------------------- helpers

def _site(plan: Plan, cname: str, node: str) -> str:
    """Site class running `node` for requests of class `cname` (sources/sinks: where they are pinned)."""
    placement = plan.per_class.get(cname, plan.assignment)
    if node in placement:
        return placement[node]
    return plan.pins.get(cname, {}).get(node, cname)


def _tier(plan: Plan, site: str) -> str:
    return plan.site_tiers.get(site, "")


def _colour(plan: Plan, site: str) -> str:
    return TIER_COLOURS.get(_tier(plan, site), TIER_COLOURS[""])


def _bytes(n: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{n:.0f} B"


def _num(x: float | None, nd: int = 1) -> str:
    return "-" if x is None or x != x else f"{x:,.{nd}f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _finite(x: float | None) -> TypeGuard[float]:
    return x is not None and math.isfinite(x)


def _svg(width: int, height: int, label: str, body: list[str]) -> str:
    """An inline SVG that is `width` px wide at 1,400 px and shrinks (never overflows) below."""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0f}" '
            f'viewBox="0 0 {width} {height:.0f}" role="img" aria-label="{escape(label)}">'
            + "".join(body) + "</svg>")


def _text(x: float, y: float, s: str, cls: str = "", anchor: str = "start", title: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    a = f' text-anchor="{anchor}"' if anchor != "start" else ""
    t = f"<title>{escape(title)}</title>" if title else ""
    return f'<text x="{x:.1f}" y="{y:.1f}"{c}{a}>{t}{escape(s)}</text>'


# ---------------------------------------------------------------------------- latency components

def _components(plan: Plan, s: SinkLatency) -> list[tuple[str, str, float, str]]:
    """(label, fill, ms, detail) per latency component: compute per tier, transfer, queueing."""
    bd = s.breakdown
    tiers = [t for t in _TIERS] + sorted({k.split(".", 1)[1] for k in bd if k.startswith("compute.")} - set(_TIERS))
    out = []
    for t in tiers:
        ms = bd.get(f"compute.{t}", 0.0)
        if ms > 0:
            sites = ", ".join(f"{k.split('.', 1)[1]} {v:.1f} ms" for k, v in bd.items()
                              if k.startswith("site:compute.") and _tier(plan, k.split(".", 1)[1]) == t)
            out.append((f"compute {t}", TIER_COLOURS.get(t, TIER_COLOURS[""]), ms, sites))
    for label, prefix, fill in (("transfer", "transfer.", TRANSFER_COLOUR), ("queueing", "queue.", "url(#queue)")):
        parts = {k[len(prefix):]: v for k, v in bd.items() if k.startswith(prefix) and v > 0}
        if parts:
            detail = ", ".join(f"{k} {v:.1f} ms" for k, v in parts.items())
            out.append((label, fill, sum(parts.values()), detail))
    return out


def _legend(plan: Plan) -> str:
    chips = [(f"compute {t}", f"background:{TIER_COLOURS[t]}") for t in _TIERS]
    chips.append(("transfer", f"background:{TRANSFER_COLOUR}"))
    chips.append(("queueing", f"background:repeating-linear-gradient(45deg,{QUEUE_COLOUR} 0 4px,{_QUEUE_STRIPE} 4px 8px)"))
    items = "".join(f'<span class="key"><i style="{st}"></i>{escape(n)}</span>' for n, st in chips)
    items += '<span class="key"><i class="hopkey">&#10140;</i>data moves between sites</span>'
    items += f'<span class="key"><i style="background:{_MISSED};width:3px"></i>SLO</span>'
    return f'<div class="legend" aria-label="legend">{items}</div>'


# ------------------------------------------------------------------------- plan beside baselines

def _baselines_chart(plan: Plan) -> str:
    rows = [("cp-sat (this plan)", plan.cost_per_hour_usd, plan.latency_ms, plan.coverage_share, True, True)]
    rows += [(n, b.cost_per_hour_usd, b.latency_ms, b.coverage_share, b.feasible, False)
             for n, b in plan.baselines.items()]
    label_w, panel_w, gap, row_h, top = 136, 166, 14, 30, 34
    cost_hi = max([r[1] for r in rows if _finite(r[1])] + [1e-9])
    lat_hi = max([r[2] for r in rows if _finite(r[2])] + [1e-9])
    x_cost, x_lat = label_w, label_w + panel_w + gap
    x_cov = x_lat + panel_w + gap
    body = [_text(x_cost, 14, "$ per hour", "head"), _text(x_lat, 14, "mean latency ms", "head"),
            _text(x_cov, 14, "SLO coverage", "head")]
    for i, (name, cost, lat, cov, feasible, chosen) in enumerate(rows):
        y = top + i * row_h
        if chosen:
            body.append(f'<rect x="0" y="{y - 4}" width="{_HALF_W}" height="{row_h - 2}" class="band"/>')
        body.append(_text(4, y + 15, name, "strong" if chosen else ""))
        op = "" if feasible else ' opacity="0.45"'
        for x0, v, hi, fill, fmt in ((x_cost, cost, cost_hi, _COST_BAR, "{:,.2f}"), (x_lat, lat, lat_hi, _LAT_BAR, "{:,.0f}")):
            if not _finite(v):
                body.append(_text(x0, y + 15, "-", "muted"))
                continue
            w = max(1.0, v / hi * (panel_w - 56))
            body.append(f'<rect x="{x0}" y="{y}" width="{w:.1f}" height="20" fill="{fill}"{op}>'
                        f'<title>{escape(name)}: {fmt.format(v)}</title></rect>')
            body.append(_text(x0 + w + 4, y + 15, fmt.format(v), "small"))
        body.append(_text(x_cov, y + 15, _pct(cov) + ("" if feasible else " · infeasible"),
                          "small" if feasible else "small bad"))
    height = top + len(rows) * row_h + 4
    return _svg(_HALF_W, height, "plan beside baselines: cost, latency and coverage", body)


def _frontier_chart(plan: Plan) -> str:
    """Cost-latency frontier (epsilon-constraint points) with this plan marked."""
    pts = [(p.latency_ms, p.cost_per_hour_usd) for p in plan.pareto]
    me = (plan.latency_ms, plan.cost_per_hour_usd) if _finite(plan.latency_ms) else None
    xs = [x for x, _ in pts] + ([me[0]] if me else [])
    ys = [y for _, y in pts] + ([me[1]] if me else [])
    w, h, left, right, top, bottom = _HALF_W, 300, 64, 16, 14, 44
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(ys), max(ys)
    pad_x = (x_hi - x_lo) * 0.08 or max(x_hi * 0.05, 1.0)
    pad_y = (y_hi - y_lo) * 0.1 or max(y_hi * 0.05, 0.01)
    x_lo, x_hi, y_lo, y_hi = max(0.0, x_lo - pad_x), x_hi + pad_x, max(0.0, y_lo - pad_y), y_hi + pad_y

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * (w - left - right)

    def py(y: float) -> float:
        return h - bottom - (y - y_lo) / (y_hi - y_lo) * (h - top - bottom)

    body = []
    for t in _ticks_between(x_lo, x_hi):
        body.append(f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{h - bottom}" class="grid"/>')
        body.append(_text(px(t), h - bottom + 16, f"{t:,.4g}", "small muted", "middle"))
    for t in _ticks_between(y_lo, y_hi):
        body.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{w - right}" y2="{py(t):.1f}" class="grid"/>')
        body.append(_text(left - 6, py(t) + 4, f"{t:,.4g}", "small muted", "end"))
    body.append(_text((left + w - right) / 2, h - 8, "mean latency ms (request-weighted, slowest sink per class)",
                      "small", "middle"))
    body.append(f'<text class="small" transform="translate(14,{(top + h - bottom) / 2:.0f}) rotate(-90)" '
                f'text-anchor="middle">$ per hour</text>')
    if pts:
        body.append('<polyline class="front" fill="none" points="' +
                    " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts) + '"/>')
    for p in plan.pareto:
        body.append(f'<circle cx="{px(p.latency_ms):.1f}" cy="{py(p.cost_per_hour_usd):.1f}" r="5" class="dot">'
                    f'<title>{p.latency_ms:,.1f} ms, ${p.cost_per_hour_usd:,.4f}/h ({escape(p.status)})</title></circle>')
    if me:
        cx, cy = px(me[0]), py(me[1])
        body.append(f'<path d="M{cx:.1f},{cy - 10:.1f} L{cx + 10:.1f},{cy:.1f} L{cx:.1f},{cy + 10:.1f} '
                    f'L{cx - 10:.1f},{cy:.1f} Z" fill="{_MISSED}" stroke="#fff" stroke-width="1.5">'
                    f'<title>this plan: {me[0]:,.1f} ms, ${me[1]:,.4f}/h</title></path>')
        anchor = "end" if cx > w / 2 else "start"
        dx = -14 if anchor == "end" else 14
        body.append(_text(cx + dx, cy - 8, f"this plan ({me[0]:,.0f} ms, ${me[1]:,.2f}/h)", "strong halo", anchor))
    return _svg(w, h, "cost-latency frontier with this plan marked", body)


def _ticks_between(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _monthly_chart(plan: Plan) -> str:
    items = [(t, v) for t, v in plan.monthly_cost_usd_by_tier.items() if v > 0] or [("none", 0.0)]
    hi = max(v for _, v in items) or 1.0
    body, row_h, top = [], 30, 8
    for i, (tier, usd) in enumerate(items):
        y = top + i * row_h
        w = max(1.0, usd / hi * (_HALF_W - 260))
        fill = TIER_COLOURS.get(tier, TRANSFER_COLOUR if tier == "egress" else TIER_COLOURS[""])
        body.append(_text(4, y + 15, tier))
        body.append(f'<rect x="130" y="{y}" width="{w:.1f}" height="20" fill="{fill}"/>')
        body.append(_text(134 + w, y + 15, f"${usd:,.0f}/month", "small"))
    return _svg(_HALF_W, top + len(items) * row_h, "monthly cost per tier", body)


# ------------------------------------------------------------------------------------- coverage

def _coverage_chart(plan: Plan, limit: int = 60) -> str:
    """One row per (class, sink): latency as a share of the sink's SLO, green when met; devices per class."""
    classes = list(plan.class_sinks or {"": plan.sinks})[:limit]
    rows: list[tuple[str, str, SinkLatency]] = []
    for c in classes:
        for sink, s in (plan.class_sinks.get(c) or plan.sinks).items():
            rows.append((c, sink, s))
    ratios = [s.latency_ms / s.slo_ms for _, _, s in rows if s.slo_ms]
    hi = min(3.0, max(ratios + [1.2]) * 1.05)
    label_w, bar_x, bar_w, row_h, top = 360, 370, 760, 24, 26
    total = sum(c.devices for c in plan.coverage.values()) or 0
    body = [_text(bar_x, 14, "p%g latency as a share of the SLO (tick = SLO)" % plan.percentile, "head")]
    y = top
    last = None
    for c, sink, s in rows:
        if c != last and last is not None:
            y += 6
        if c != last:
            cov = plan.coverage.get(c)
            who = f"{c}" + (f" · {cov.devices:,} devices · {cov.mode}" if cov else "")
            body.append(_text(4, y + 15, who, "strong" if cov and not cov.meets_slo else ""))
        last = c
        body.append(_text(label_w - 6, y + 15, sink, "small muted", "end"))
        met = s.meets_slo is not False
        if s.slo_ms:
            r = s.latency_ms / s.slo_ms
            w = min(r, hi) / hi * bar_w
            body.append(f'<rect x="{bar_x}" y="{y + 2}" width="{max(w, 1):.1f}" height="16" '
                        f'fill="{_MET if met else _MISSED}"><title>{escape(c)} {escape(sink)}: '
                        f'{s.latency_ms:,.1f} ms, SLO {s.slo_ms:,.0f} ms</title></rect>')
            sx = bar_x + 1.0 / hi * bar_w
            body.append(f'<line x1="{sx:.1f}" y1="{y}" x2="{sx:.1f}" y2="{y + 20}" stroke="{_MISSED}" stroke-width="2"/>')
            body.append(_text(bar_x + bar_w + 8, y + 15,
                              f"{s.latency_ms:,.0f} of {s.slo_ms:,.0f} ms {'meets' if met else 'misses'}",
                              "small" if met else "small bad"))
        else:
            body.append(_text(bar_x, y + 15, f"{s.latency_ms:,.1f} ms (no SLO)", "small muted"))
        y += row_h
    if total:
        y += 10
        body.append(_text(4, y + 15, f"devices ({total:,})", "head"))
        x = float(bar_x)
        for c, cov in list(plan.coverage.items())[:limit]:
            w = cov.devices / total * bar_w
            body.append(f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="18" fill="{_MET if cov.meets_slo else _MISSED}" '
                        f'class="seg"><title>{escape(c)}: {cov.devices:,} devices, '
                        f'{"meets" if cov.meets_slo else "misses"} the SLO</title></rect>')
            if w > 8 * len(c) + 8:
                body.append(_text(x + 4, y + 15, c, "on"))
            x += w
        body.append(_text(bar_x + bar_w + 8, y + 15, f"{_pct(plan.coverage_share)} covered", "small"))
        y += row_h
    more = len(plan.class_sinks) - len(classes)
    if more > 0:
        body.append(_text(4, y + 15, f"{more} more edge classes: see plan.json", "muted"))
        y += row_h
    return _svg(_PAGE_W, y + 6, "SLO coverage per edge class", body)


# ---------------------------------------------------------------------------------- piece chain

def _groups(plan: Plan, cname: str) -> list[tuple[str, list[str]]]:
    """Consecutive nodes (topological order) on one site, sources and sinks alone: [(site, nodes)]."""
    kinds = {p.id: p.kind for p in plan.pieces}
    out: list[tuple[str, list[str]]] = []
    for n in plan.order or [p.id for p in plan.pieces]:
        site = _site(plan, cname, n)
        alone = kinds.get(n) in ("source", "sink")
        if out and not alone and out[-1][0] == site and kinds.get(out[-1][1][-1]) not in ("source", "sink"):
            out[-1][1].append(n)
        else:
            out.append((site, [n]))
    return out


def _run_name(nodes: list[str]) -> str:
    a, b = nodes[0], nodes[-1]
    pa, _, _ = a.rpartition("/")
    pb, _, tail = b.rpartition("/")
    return f"{a} … {tail}" if pa and pa == pb else f"{a} … {b}"


def _flow(plan: Plan, cname: str) -> str:
    pieces = {p.id: p for p in plan.pieces}
    groups = _groups(plan, cname)
    where = {n: i for i, (_, nodes) in enumerate(groups) for n in nodes}
    into: dict[int, dict[tuple[str, str], int]] = {}      # group -> (from site, to site) -> bytes
    local_in: set[int] = set()
    sent: set[tuple[str, tuple[str, ...], str]] = set()
    for e in plan.edges:
        if e.src not in where or e.dst not in where:
            continue
        g = where[e.dst]
        a, b = _site(plan, cname, e.src), _site(plan, cname, e.dst)
        if a == b:
            if where[e.src] == g - 1:
                local_in.add(g)
            continue
        key = (e.src, tuple(e.tensors), b)             # a tensor crosses once per consuming site
        if key in sent:
            continue
        sent.add(key)
        into.setdefault(g, {})
        into[g][(a, b)] = into[g].get((a, b), 0) + e.nbytes
    out = []
    for i, (site, nodes) in enumerate(groups):
        if i:
            if i in into:
                hops = "".join(f'<span>{escape(a)} &#8594; {escape(b)}</span><span class="b">{_bytes(n)}</span>'
                               for (a, b), n in into[i].items())
                tip = "; ".join(f"{a} ({_tier(plan, a) or '?'}) -> {b} ({_tier(plan, b) or '?'}): {n:,} bytes"
                                for (a, b), n in into[i].items())
                out.append(f'<div class="hop move" title="{escape(tip)}"><i>&#10140;</i>{hops}</div>')
            elif i in local_in:
                out.append('<div class="hop">&#8594;</div>')
            else:
                out.append('<div class="hop gap" title="no data flows here: a parallel branch starts">&#8942;</div>')
        colour = _colour(plan, site)
        tier = _tier(plan, site) or "?"
        kind = pieces[nodes[0]].kind if nodes[0] in pieces else "piece"
        ms = [pieces[n].latency_ms.get(site, 0.0) if n in pieces else 0.0 for n in nodes]
        shape = " end" if kind in ("source", "sink") else ""
        if len(nodes) == 1:
            sub = f"{site}" + (f" · {ms[0]:,.1f} ms" if ms[0] else "")
            out.append(f'<div class="node{shape}" style="background:{colour}" title="{escape(nodes[0])} ({kind}) '
                       f'on {escape(site)} ({escape(tier)})"><b>{escape(nodes[0])}</b><span>{escape(sub)}</span></div>')
            continue
        items = "".join(f"<li><span>{escape(n)}</span><span>{m:,.1f} ms</span></li>" for n, m in zip(nodes, ms))
        out.append(f'<details class="node run" style="background:{colour}"><summary title="{len(nodes)} nodes on '
                   f'{escape(site)} ({escape(tier)}): click to list them"><b>{escape(_run_name(nodes))}</b>'
                   f'<span>{len(nodes)} nodes · {escape(site)} · {sum(ms):,.1f} ms</span></summary>'
                   f'<ol>{items}</ol></details>')
    return f'<div class="flow">{"".join(out)}</div>'


def _latency_bars(plan: Plan, cname: str, scale_ms: float) -> str:
    """One stacked bar per sink: compute per tier, transfer, queueing; the SLO as a red tick."""
    sinks = plan.class_sinks.get(cname) or plan.sinks
    label_w, bar_w, row_h = 150, 900, 30
    body, notes = [], []
    for i, (name, s) in enumerate(sinks.items()):
        y = 6 + i * row_h
        body.append(_text(4, y + 15, name))
        x = float(label_w)
        parts = _components(plan, s)
        for label, fill, ms, detail in parts:
            w = ms / scale_ms * bar_w
            body.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="20" fill="{fill}" class="seg">'
                        f'<title>{escape(label)}: {ms:,.1f} ms{" (" + escape(detail) + ")" if detail else ""}'
                        f'</title></rect>')
            x += w
        body.append(_text(x + 6, y + 15, f"{s.latency_ms:,.1f} ms", "strong"))
        if s.slo_ms:
            sx = label_w + s.slo_ms / scale_ms * bar_w
            body.append(f'<line x1="{sx:.1f}" y1="{y - 3}" x2="{sx:.1f}" y2="{y + 23}" stroke="{_MISSED}" '
                        f'stroke-width="2"><title>SLO {s.slo_ms:g} ms</title></line>')
        figures = " · ".join(f"{escape(label)} {ms:,.1f}" for label, _, ms, _ in parts)
        slo = "" if not s.slo_ms else f" (SLO {s.slo_ms:,.0f} ms, {'met' if s.meets_slo is not False else 'missed'})"
        notes.append(f"<li><b>{escape(name)}</b>: {figures} = {s.latency_ms:,.1f} ms{slo}</li>")
    svg = _svg(_PAGE_W, 10 + len(sinks) * row_h, f"latency per sink of {cname}", body)
    return svg + f'<ul class="figs">{"".join(notes)}</ul>'


# -------------------------------------------------------------------------------------- tables

def _table(headers: list[str], rows: list[list[str]], text_cols: tuple[int, ...] = (0,)) -> str:
    head = "".join(f'<th{" class=t" if i in text_cols else ""}>{escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td{" class=t" if i in text_cols else ""}>{c}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _tables(plan: Plan) -> list[str]:
    parts = []
    rows = [["<b>cp-sat (this plan)</b>", _num(plan.objective, 4), _num(plan.latency_ms), _num(plan.cost_per_hour_usd, 4),
             _pct(plan.coverage_share), "yes", "<b>*</b>"]]
    for name, b in plan.baselines.items():
        why = "<br>".join(escape(r) for r in (b.reason or "").split("; ") if r)
        rows.append([escape(name), _num(b.objective, 4), _num(b.latency_ms), _num(b.cost_per_hour_usd, 4),
                     _pct(b.coverage_share), "yes" if b.feasible else f"<b class=bad>no</b>: {why}", ""])
    parts.append("<h2>plan beside baselines (same cost model)</h2>" + _table(
        ["strategy", "objective", "latency ms", "$/h", "SLO coverage", "feasible (why not)", "CHOSEN"], rows,
        text_cols=(0, 5)))
    if plan.coverage:
        parts.append("<h2>SLO coverage per edge class</h2>" + _table(
            ["edge class", "devices", "mode", "latency ms", "meets SLO", "note"],
            [[escape(n), f"{c.devices:,}", c.mode, _num(c.latency_ms), "yes" if c.meets_slo else "<b class=bad>no</b>",
              escape(c.note)] for n, c in plan.coverage.items()], text_cols=(0, 2, 5)))
    if plan.monthly_cost_usd_by_tier:
        rows = [[escape(t), f"{v:,.2f}", escape(", ".join(f"{s}: {n}" for s, n in plan.instances.items()
                                                          if plan.site_tiers.get(s) == t and n))]
                for t, v in plan.monthly_cost_usd_by_tier.items()]
        rows.append(["<b>total</b>", f"<b>{sum(plan.monthly_cost_usd_by_tier.values()):,.2f}</b>", ""])
        parts.append("<h2>monthly cost (730 h)</h2>" + _table(["tier", "$/month", "instances"], rows, (0, 2)))
    if plan.moves:
        parts.append(f"<h2>replanning: {len(plan.moves)} piece placements move</h2>" + _table(
            ["edge class", "piece", "from", "to"],
            [[escape(m.edge_class), escape(m.piece), escape(m.from_site or "(new)"), escape(m.to_site or "(cut away)")]
             for m in plan.moves], text_cols=(0, 1, 2, 3)))
    if plan.pareto:
        parts.append("<h2>cost-latency frontier (epsilon-constraint)</h2>" + _table(
            ["mean latency ms", "$/h", "status"],
            [[_num(p.latency_ms, 2), f"{p.cost_per_hour_usd:,.4f}", escape(p.status)] for p in plan.pareto], (2,)))
    return parts


# ---------------------------------------------------------------------------------------- page

_CSS = f"""
:root{{color-scheme:light dark;--fg:#1f2328;--bg:#ffffff;--muted:#59636e;--grid:#d8dee4;--panel:#f6f8fa;
--line:#d0d7de;--band:rgba(198,40,40,.08);--bad:#c62828;--hop:{TRANSFER_COLOUR}}}
@media (prefers-color-scheme:dark){{:root{{--fg:#e6edf3;--bg:#0d1117;--muted:#9198a1;--grid:#2a3038;
--panel:#161b22;--line:#3d444d;--band:rgba(255,123,114,.12);--bad:#ff7b72;--hop:#d28cf0}}}}
*{{box-sizing:border-box}}
html{{background:var(--bg);color:var(--fg)}}
body{{font:14px/1.45 {_FONT};margin:0;padding:16px 20px;overflow-wrap:anywhere}}
main{{max-width:{_PAGE_W}px;margin:0 auto}}
h1{{font-size:22px;margin:0 0 6px}} h2{{font-size:17px;margin:22px 0 8px}} h3{{font-size:14px;margin:12px 0 4px}}
p{{margin:4px 0}}
svg{{display:block;max-width:100%;height:auto}}
svg text{{fill:var(--fg);font:12.5px {_FONT}}}
svg text.small{{font-size:11.5px}} svg text.muted{{fill:var(--muted)}} svg text.head{{font-weight:600}}
p.small{{font-size:12.5px;color:var(--muted)}} svg text.strong{{font-weight:700}} svg text.halo{{paint-order:stroke;stroke:var(--panel);stroke-width:4px}} svg text.bad{{fill:var(--bad);font-weight:600}} svg text.on{{fill:#fff;font-size:11.5px}}
svg .grid{{stroke:var(--grid);stroke-width:1}} svg .band{{fill:var(--band)}}
svg .seg{{stroke:var(--bg);stroke-width:1}}
svg .front{{stroke:var(--muted);stroke-width:2}} svg .dot{{fill:{_LAT_BAR};stroke:var(--bg);stroke-width:1.5}}
.legend{{display:flex;flex-wrap:wrap;gap:6px 16px;margin:10px 0;padding:8px 10px;background:var(--panel);
border:1px solid var(--line);border-radius:6px}}
.key{{display:inline-flex;align-items:center;gap:6px}}
.key i{{display:inline-block;width:16px;height:14px;border-radius:3px}}
.key i.hopkey{{width:auto;height:auto;font-style:normal;font-weight:700;color:var(--hop)}}
.grid2{{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,560px),1fr));gap:12px 24px}}
.card{{background:var(--panel);border:1px solid var(--line);border-radius:6px;padding:10px 12px;min-width:0}}
.card h2{{margin-top:0}}
.cls{{border-top:1px solid var(--line);margin-top:18px;padding-top:4px}}
.cls>summary{{cursor:pointer}} .cls>summary h2{{display:inline;margin:0}}
.cls>summary .meta{{color:var(--muted);margin-left:8px}}
.flow{{display:flex;flex-wrap:wrap;align-items:flex-start;gap:8px 4px;margin:10px 0}}
.node{{color:#fff;border-radius:6px;padding:5px 10px;min-width:110px;max-width:300px;border:1px solid rgba(0,0,0,.35)}}
.node.end{{border-radius:18px}}
.node b{{display:block;font-size:13px}} .node span{{display:block;font-size:11.5px;opacity:.92}}
.node.run>summary{{cursor:pointer;list-style:none}} .node.run>summary::-webkit-details-marker{{display:none}}
.node.run>summary b::before{{content:"\\25B8  "}} .node.run[open]>summary b::before{{content:"\\25BE  "}}
.node ol{{margin:6px 0 2px;padding-left:20px;font-size:12px}}
.node li span{{display:inline;opacity:1}} .node li span+span{{margin-left:8px;opacity:.85}}
.hop{{align-self:center;color:var(--muted);font-size:18px;padding:0 2px}}
.hop.gap{{font-size:16px}}
.hop.move{{display:flex;flex-direction:column;align-items:center;color:var(--hop);font-size:11.5px;font-weight:600;
border:2px dashed var(--hop);border-radius:8px;padding:2px 8px;max-width:200px;text-align:center}}
.hop.move i{{font-style:normal;font-size:20px;line-height:1}}
.hop.move .b{{color:var(--fg);font-weight:400}}
ul.figs{{margin:4px 0 0;padding-left:18px;color:var(--muted);font-size:12.5px}} ul.figs b{{color:var(--fg)}}
table{{border-collapse:collapse;margin:6px 0;width:100%}}
td,th{{border:1px solid var(--line);padding:4px 8px;text-align:right;vertical-align:top}}
th{{background:var(--panel)}} .t{{text-align:left}}
.bad{{color:var(--bad)}} .warn{{color:var(--bad);font-weight:600}}
""".replace("\n", "")

_DEFS = (f'<svg width="0" height="0" style="position:absolute" aria-hidden="true"><defs>'
         f'<pattern id="queue" width="8" height="8" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
         f'<rect width="8" height="8" fill="{QUEUE_COLOUR}"/><rect width="4" height="8" fill="{_QUEUE_STRIPE}"/>'
         f'</pattern></defs></svg>')


def render_html(plan: Plan, max_classes: int = 50, open_classes: int = 4, title: str = "tierplan plan") -> str:
    """The page as a string (no external resource of any kind).

    Every class gets a section (up to `max_classes`; the coverage chart names the rest); the
    first `open_classes` are open, the others open on click.
    """
    gap = "-" if plan.gap is None else f"{100 * plan.gap:.2f}%"
    parts = [f"<h1>{escape(title)}</h1>",
             f"<p>status <b>{escape(plan.status)}</b>, objective {escape(plan.objective_kind)} = "
             f"{_num(plan.objective, 4)}, gap {gap}, solved in {plan.solve_s:.2f} s; "
             f"cost <b>${plan.cost_per_hour_usd:,.4f}/h</b>, ${plan.cost_per_1k_requests_usd:,.6f} per 1,000 requests"
             + (f", mean latency <b>{plan.latency_ms:,.1f} ms</b>" if _finite(plan.latency_ms) else "") + "</p>"]
    if plan.coverage_summary:
        parts.append(f"<p>{escape(plan.coverage_summary)}</p>")
    if plan.reason:
        parts.append(f"<p class='warn'>{escape(plan.reason)}</p>")
    parts.append(_legend(plan))
    right = ("<h2>cost–latency frontier</h2>" + _frontier_chart(plan)
             + "<p class='small'>points: cheapest plan under each latency bound (epsilon-constraint); "
               "diamond: this plan</p>") if plan.pareto else (
        "<h2>monthly cost per tier</h2>" + _monthly_chart(plan)
        + "<p>run <code>tierplan plan … --pareto</code> to trace the cost–latency frontier</p>")
    parts.append(f'<section class="grid2"><div class="card"><h2>plan beside baselines</h2>{_baselines_chart(plan)}'
                 f'<p>faded: infeasible under the same cost model (reasons in the table below)</p></div>'
                 f'<div class="card">{right}</div></section>')
    if plan.class_sinks or plan.sinks:
        parts.append(f"<h2>SLO coverage per edge class</h2>{_coverage_chart(plan)}")
    classes = list(plan.per_class or plan.class_sinks or {"": plan.assignment})
    all_sinks = [s for c in classes for s in (plan.class_sinks.get(c) or plan.sinks).values()]
    scale_ms = max([s.latency_ms for s in all_sinks] + [s.slo_ms or 0 for s in all_sinks] + [1e-9])
    for i, cname in enumerate(classes[:max_classes]):
        cov = plan.coverage.get(cname)
        meta = "" if cov is None else (f"{cov.devices:,} devices · {cov.mode} · "
                                       + ("meets the SLO" if cov.meets_slo else "<b class=bad>misses the SLO</b>"))
        parts.append(f'<details class="cls"{" open" if i < open_classes else ""}><summary><h2>edge class '
                     f'{escape(cname)}</h2><span class="meta">{meta}</span></summary>'
                     f'{_flow(plan, cname)}<h3>latency p{plan.percentile:g} per sink</h3>'
                     f'{_latency_bars(plan, cname, scale_ms)}</details>')
    if len(classes) > max_classes:
        parts.append(f"<p>{len(classes) - max_classes} more edge classes: see plan.json.</p>")
    parts.extend(_tables(plan))
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<meta name='color-scheme' content='light dark'><title>{escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{_DEFS}<main>{''.join(parts)}</main></body></html>")


def write_html(plan: Plan, path: str | Path, **kw) -> Path:
    """Write plan.html atomically."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(render_html(plan, **kw))
    tmp.replace(path)
    return path

"""Offline HTML report of a SimReport: a summary table and matplotlib figures as embedded PNGs.

Figures: latency CDF per sink (one line per strategy, the SLO marked), cost per hour against SLO
attainment (or p95 when no SLO is set), and utilisation over time per strategy. The page needs
no network and no JavaScript; the PNGs are also written beside it for reuse in slides.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tierplan.simulations.report import SimReport  # noqa: E402

__all__ = ["write_report", "figures"]

_DPI = 110


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _colors(names: list[str]) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {n: cycle[i % len(cycle)] for i, n in enumerate(names)}


def _cdf_figure(rep: SimReport, col: dict[str, str]) -> bytes:
    sinks = sorted({s for r in rep.strategies.values() for s in r.sinks})
    fig, axes = plt.subplots(1, max(1, len(sinks)), figsize=(6.2 * max(1, len(sinks)), 4.2), squeeze=False)
    for ax, sink in zip(axes[0], sinks):
        slo = None
        for name, r in rep.strategies.items():
            st = r.sinks.get(sink)
            if st is None or not st.cdf_ms:
                continue
            n = len(st.cdf_ms)
            share_ok = st.ok / st.requests if st.requests else 0.0
            ys = [share_ok * i / (n - 1) for i in range(n)]
            label = f"{name} (p95 {st.p95_ms:.0f} ms)"
            ax.plot(st.cdf_ms, ys, color=col[name], lw=2, label=label)
            slo = st.slo_ms if st.slo_ms is not None else slo
        if slo is not None:
            ax.axvline(slo, color="black", ls="--", lw=1)
            ax.text(slo, 0.02, f" SLO {slo:g} ms", fontsize=9, va="bottom")
        ax.set_xscale("log")
        ax.set_xlabel("end-to-end latency (ms, log scale)")
        ax.set_ylabel("share of requests delivered")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"Latency CDF: sink {sink}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def _cost_figure(rep: SimReport, col: dict[str, str]) -> bytes:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    use_slo = any(s.slo_attainment is not None for r in rep.strategies.values() for s in r.sinks.values())
    for name, r in rep.strategies.items():
        vals = [s.slo_attainment if use_slo else s.p95_ms for s in r.sinks.values()]
        vals = [v for v in vals if v is not None]
        if not vals:
            continue
        y = min(vals) * (100 if use_slo else 1)
        ax.scatter([r.cost_per_hour_usd], [y], s=90, color=col[name], zorder=3)
        ax.annotate(name, (r.cost_per_hour_usd, y), textcoords="offset points", xytext=(7, 5), fontsize=9)
    ax.set_xlabel("cost ($ per hour, simulated traffic)")
    ax.set_ylabel("SLO attainment, worst sink (%)" if use_slo else "p95 latency, worst sink (ms)")
    ax.set_title("Cost against SLO attainment" if use_slo else "Cost against p95 latency")
    if use_slo:
        ax.set_ylim(-3, 103)
    ax.grid(True, alpha=0.3)
    return _png(fig)


def _util_figure(rep: SimReport) -> bytes:
    names = list(rep.strategies)
    shown = max([sum(1 for v in r.utilisation_series.values() if max(v or [0]) >= 0.01)
                 for r in rep.strategies.values()] or [1])
    panel_h = max(2.3, 0.2 * shown + 0.4)  # room for the legend beside each panel
    fig, axes = plt.subplots(len(names), 1, figsize=(9.5, panel_h * max(1, len(names))), squeeze=False, sharex=True)
    for ax, name in zip(axes[:, 0], names):
        r = rep.strategies[name]
        for label, series in sorted(r.utilisation_series.items()):
            if max(series or [0]) < 0.01:
                continue
            ts = [(i + 0.5) * rep.series_step_s for i in range(len(series))]
            ax.plot(ts, [100 * v for v in series], lw=1.6, label=label, ls="-" if not label.startswith("link:") else ":")
        ax.set_ylabel("busy (%)")
        ax.set_title(f"{name}: utilisation over time (mean over instances)", fontsize=10)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    axes[-1, 0].set_xlabel("simulated time (s)")
    return _png(fig)


def figures(rep: SimReport) -> dict[str, bytes]:
    """The report's figures as PNG bytes, by file name."""
    col = _colors(list(rep.strategies))
    return {"latency_cdf.png": _cdf_figure(rep, col), "cost_vs_slo.png": _cost_figure(rep, col),
            "utilisation.png": _util_figure(rep)}


def _fmt(v, spec=".1f", pct=False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else format(v, spec)


def _table(rep: SimReport) -> str:
    rows = []
    for name, r in rep.strategies.items():
        for sink, s in r.sinks.items():
            rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in [
                name, sink, _fmt(s.p50_ms), _fmt(s.p95_ms), _fmt(s.p99_ms), _fmt(s.slo_attainment, pct=True),
                f"{r.throughput_rps:.1f}", f"{r.cost_per_hour_usd:.3f}", f"{r.requests_failed}",
                ", ".join(f"{k} {100 * v:.0f}%" for k, v in r.utilisation.items() if not k.startswith("link:")),
                ", ".join(f"{k} {v:.2f}" for k, v in r.batch_mean.items()) or "-", r.engine]) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ["strategy", "sink", "p50 ms", "p95 ms", "p99 ms", "SLO attained",
                                              "throughput req/s", "cost $/h", "failed", "utilisation", "mean batch",
                                              "engine"])
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def write_report(rep: SimReport, out_dir: str | Path) -> Path:
    """Write index.html (figures embedded), the PNGs and report.json into out_dir; returns index.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = figures(rep)
    for fname, data in figs.items():
        tmp = out / (fname + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(out / fname)
    imgs = "".join(f'<figure><img alt="{n}" src="data:image/png;base64,{base64.b64encode(d).decode()}"/>'
                   f"<figcaption>{n}</figcaption></figure>" for n, d in figs.items())
    skipped = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in rep.skipped.items())
    notes = "".join(f"<li>{html.escape(k)}: {html.escape(n)}</li>" for k, r in rep.strategies.items() for n in r.notes)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tierplan simulation</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#eee}}
figure{{margin:1.5em 0}}img{{max-width:100%}}</style></head><body>
<h1>tierplan simulation</h1>
<p>{rep.duration_s:g} simulated seconds, arrivals {html.escape(rep.arrivals)}, seed {rep.seed};
scenario {html.escape(json.dumps(rep.scenario))}</p>
{_table(rep)}
{f'<h3>Not simulated</h3><ul>{skipped}</ul>' if skipped else ''}
{f'<h3>Notes</h3><ul>{notes}</ul>' if notes else ''}
{imgs}
</body></html>"""
    (out / "report.json.tmp").write_text(json.dumps(rep.to_json(), indent=2))
    (out / "report.json.tmp").replace(out / "report.json")
    tmp = out / "index.html.tmp"
    tmp.write_text(page)
    tmp.replace(out / "index.html")
    return out / "index.html"

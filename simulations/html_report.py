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
from tierplan.simulations.sweep import SweepReport  # noqa: E402

__all__ = ["write_report", "figures", "write_sweep_report", "sweep_figures"]

_DPI = 110


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _colors(names: list[str]) -> dict[str, str]:
    cycle = [matplotlib.colors.to_hex(c) for c in plt.rcParams["axes.prop_cycle"].by_key()["color"]]
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
        vals = [v for v in (s.slo_attainment if use_slo else s.p95_ms for s in r.sinks.values()) if v is not None]
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


# ---------------------------------------------------------------------------- sweeps
_SWEEP_METRICS = (("p95_ms", "p95 latency (ms)"), ("slo_attainment", "SLO attainment (%)"))


def _combo(row: dict, names: list[str]) -> str:
    return ", ".join(f"{n} {row[n]:g}" if isinstance(row[n], float) else f"{n} {row[n]}" for n in names) or "-"


def sweep_figures(rep: SweepReport) -> dict[str, bytes]:
    """Per sink and metric: the mean over seeds of every (parameter values) cell, one bar per strategy,
    with its 95% confidence interval as an error bar."""
    rows = rep.summary()
    names = [n for n in rep.grid if n != "seed"]
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    col = _colors(strategies)
    out = {}
    for sink in dict.fromkeys(r["sink"] for r in rows):
        mine = [r for r in rows if r["sink"] == sink]
        combos = list(dict.fromkeys(_combo(r, names) for r in mine))
        fig, axes = plt.subplots(1, len(_SWEEP_METRICS), figsize=(max(6.4, 0.9 * len(combos) * len(strategies) + 2) * 2,
                                                                  4.4), squeeze=False)
        width = 0.8 / max(1, len(strategies))
        for ax, (metric, label) in zip(axes[0], _SWEEP_METRICS):
            scale = 100.0 if metric == "slo_attainment" else 1.0
            for k, strategy in enumerate(strategies):
                by = {_combo(r, names): r for r in mine if r["strategy"] == strategy}
                xs = [i + (k - (len(strategies) - 1) / 2) * width for i in range(len(combos))]
                ys = [(by[c][metric] or 0.0) * scale if c in by else 0.0 for c in combos]
                err = [(by[c][f"{metric}_ci"] or 0.0) * scale if c in by else 0.0 for c in combos]
                ax.bar(xs, ys, width, yerr=err, capsize=3, color=col[strategy], label=strategy)
            ax.set_xticks(range(len(combos)))
            ax.set_xticklabels(combos, rotation=30, ha="right", fontsize=8)
            ax.set_ylabel(label)
            ax.set_title(f"sink {sink}: {label}, mean over {mine[0]['seeds']} seeds, 95% CI")
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(fontsize=8)
        out[f"sweep_{sink}.png"] = _png(fig)
    return out


def _sweep_table(rep: SweepReport) -> str:
    names = [n for n in rep.grid if n != "seed"]
    heads = ["strategy", *names, "sink", "seeds", "p50 ms", "p95 ms", "p99 ms", "SLO attained", "cost $/h"]

    def ci(r: dict, m: str, pct: bool = False) -> str:
        v, h = r[m], r[f"{m}_ci"]
        if v is None:
            return "-"
        k = 100.0 if pct else 1.0
        return f"{k * v:.1f}" + (f" ± {k * h:.1f}" if h is not None else "") + ("%" if pct else "")
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in [
        r["strategy"], *[r[n] for n in names], r["sink"], r["seeds"], ci(r, "p50_ms"), ci(r, "p95_ms"),
        ci(r, "p99_ms"), ci(r, "slo_attainment", True), ci(r, "cost_per_hour_usd")]) + "</tr>" for r in rep.summary())
    return "<table><tr>" + "".join(f"<th>{h}</th>" for h in heads) + f"</tr>{body}</table>"


def write_sweep_report(rep: SweepReport, out_dir: str | Path) -> Path:
    """Write a sweep's index.html (table with 95% CIs, figures embedded), its PNGs and sweep.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = sweep_figures(rep)
    for fname, data in figs.items():
        (out / fname).write_bytes(data)
    imgs = "".join(f'<figure><img alt="{n}" src="data:image/png;base64,{base64.b64encode(d).decode()}"/>'
                   f"<figcaption>{n}</figcaption></figure>" for n, d in figs.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tierplan sweep</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#eee}}img{{max-width:100%}}</style>
</head><body><h1>tierplan simulation sweep</h1>
<p>{len(rep.cells)} cells on {html.escape(rep.runner)} in {rep.wall_s:.1f} s; grid
{html.escape(json.dumps(rep.grid))}. Each row: mean over seeds ± the 95% confidence interval (Student's t).</p>
{_sweep_table(rep)}{imgs}</body></html>"""
    (out / "sweep.json").write_text(json.dumps(rep.to_json(), indent=2))
    (out / "index.html").write_text(page)
    return out / "index.html"

"""plan.html renders offline in headless Chromium: fits a 1,400 px window, names every class, light and dark."""

from __future__ import annotations

import html as htmllib
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from tierplan.planner.api import plan_graph
from tierplan.planner.build import SloTarget
from tierplan.planner.html import QUEUE_COLOUR, TIER_COLOURS, TRANSFER_COLOUR, render_html, write_html
from tierplan.planner.plan import Plan
from planner_fixtures import chain_graph, cost_model, three_tier_fleet

WINDOW_PX = 1400
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", f"--window-size={WINDOW_PX},900"]
# written into the page only for the test: the page's width, closed and with every fold open
PROBE = ("<script>const d=document.documentElement,b=document.body;"
         "const wide=()=>[...document.querySelectorAll('body *')].filter(e=>e.getBoundingClientRect().right>innerWidth"
         "||(e.scrollWidth>e.clientWidth+1&&/auto|scroll/.test(getComputedStyle(e).overflowX))).length;"
         "b.dataset.sw=d.scrollWidth;b.dataset.wide=wide();"
         "document.querySelectorAll('details').forEach(x=>x.open=true);b.dataset.swOpen=d.scrollWidth;"
         "b.dataset.wideOpen=wide();"
         "b.dataset.bg=getComputedStyle(d).backgroundColor;"
         "const p=document.createElement('pre');p.id='probe-text';p.textContent=b.innerText;b.append(p);</script>")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("headless Chromium is required: apt-get install -y chromium")


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


def _probe(tmp_path: Path, page: str, *flags: str) -> dict[str, str]:
    """Load the page with the probe script in Chromium; its measurements and visible text."""
    path = tmp_path / "probe.html"
    path.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = _run(tmp_path, *flags, "--dump-dom", path.resolve().as_uri()).stdout
    found = dict(re.findall(r'data-(sw|sw-open|wide|wide-open|bg)="([^"]*)"', dom))
    text = re.search(r'<pre id="probe-text">(.*?)</pre>', dom, re.S)
    found["text"] = htmllib.unescape(text.group(1)) if text else ""
    return found


@pytest.fixture(scope="module")
def plan() -> Plan:
    ms = {"cam-dev0": 40.0, "cam-dev1": 80.0, "cam-dev2": 120.0, "bs-dev": 8.0, "cloud-dev": 2.0}
    g = chain_graph([ms, ms, ms], [200_000, 20_000, 1_000], input_bytes=600_000)
    return plan_graph(g, three_tier_fleet(uplink_mbps=100.0, n_edge=3), cost_model(),
                      slo={"out": SloTarget(250)}, objective="latency", pareto=True, pareto_points=3)


def _worst_case(plan: Plan, n: int = 40) -> Plan:
    """A long chain of long-named pieces where every piece sits on another site than its neighbours."""
    pieces = [p for p in plan.pieces if p.kind == "piece"]
    sites = [s for s in plan.site_tiers]
    names = [f"a_rather_long_model_name/p{i}" for i in range(n)]
    src = next(p for p in plan.pieces if p.kind == "source")
    sink = next(p for p in plan.pieces if p.kind == "sink")
    new_pieces = [src] + [pieces[0].model_copy(update={"id": nm}) for nm in names] + [sink]
    chain = [src.id, *names, sink.id]
    edges = [plan.edges[0].model_copy(update={"src": a, "dst": b, "tensors": [a]}) for a, b in zip(chain, chain[1:])]
    per_class = {c: {nm: sites[i % len(sites)] for i, nm in enumerate(names)} for c in plan.per_class}
    return plan.model_copy(update={"pieces": new_pieces, "edges": edges, "order": chain, "per_class": per_class,
                                   "assignment": next(iter(per_class.values()))})


def test_plan_html_is_self_contained(plan: Plan) -> None:
    """The page loads nothing from the network: no script, link, import or external URL; inline SVG only."""
    page = render_html(plan)
    assert "<svg" in page and "<script" not in page and "<link" not in page and "@import" not in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page


def test_plan_html_has_a_colour_and_legend_entry_per_latency_component(plan: Plan) -> None:
    """Compute per tier, transfer and queueing each have their own colour and a legend entry."""
    page = render_html(plan)
    legend = re.search(r'<div class="legend".*?</div>', page, re.S).group(0)
    for label in ("compute edge", "compute base_station", "compute cloud", "transfer", "queueing"):
        assert f"</i>{label}</span>" in legend
    colours = [TIER_COLOURS["edge"], TIER_COLOURS["base_station"], TIER_COLOURS["cloud"], TRANSFER_COLOUR, QUEUE_COLOUR]
    assert len(set(colours)) == len(colours)
    assert 'fill="url(#queue)"' in page and f'fill="{TRANSFER_COLOUR}"' in page   # queueing is not drawn as transfer


def test_plan_html_with_pareto_draws_the_frontier_with_the_plan_marked(plan: Plan) -> None:
    """With a frontier the page draws it as a plot, one dot per point, and marks this plan."""
    assert plan.pareto
    page = render_html(plan)
    assert 'aria-label="cost-latency frontier with this plan marked"' in page
    assert page.count('class="dot"') == len(plan.pareto) and "this plan (" in page
    assert 'aria-label="cost-latency frontier' not in render_html(plan.model_copy(update={"pareto": []}))


def test_plan_html_folds_runs_and_marks_moves(plan: Plan) -> None:
    """Runs of consecutive pieces on one site fold into one <details> box; data crossing sites is a marked hop."""
    one_site = {c: {k: c for k in v} for c, v in plan.per_class.items()}
    page = render_html(plan.model_copy(update={"per_class": one_site}))
    assert '<details class="node run"' in page and "3 nodes" in page
    page = render_html(_worst_case(plan))
    assert '<details class="node run"' not in page and page.count('class="hop move"') >= 40


def test_plan_html_fits_1400px_and_names_every_class(plan: Plan, tmp_path: Path) -> None:
    """At 1,400 px nothing is wider than the window or scrolls sideways (folds closed and open); every class is named."""
    for p in (plan, _worst_case(plan)):
        got = _probe(tmp_path, render_html(p))
        assert got.get("sw") and int(got["sw"]) <= WINDOW_PX, got.get("sw")
        assert int(got["sw-open"]) <= WINDOW_PX, got.get("sw-open")
        assert got["wide"] == got["wide-open"] == "0", "elements past the window's edge or scrolling sideways"
        for cname in p.per_class:
            assert f"edge class {cname}" in got["text"]


def test_plan_html_follows_dark_mode(plan: Plan, tmp_path: Path) -> None:
    """With the reader's dark scheme the page background is dark; with the light scheme it is light."""
    page = render_html(plan)
    bright = []
    for scheme in ("0", "1"):   # Blink's preferredColorScheme: 0 dark, 1 light
        bg = _probe(tmp_path, page, f"--blink-settings=preferredColorScheme={scheme}")["bg"]
        bright.append(sum(int(x) for x in re.findall(r"\d+", bg)[:3]))
    assert bright[0] < 150 < 600 < bright[1]


def test_plan_html_renders_in_headless_chromium(plan: Plan, tmp_path: Path) -> None:
    """A Chromium screenshot of plan.html is not blank and shows at least one tier colour."""
    page = write_html(plan, tmp_path / "plan.html")
    shot = tmp_path / "shot.png"
    _run(tmp_path, f"--screenshot={shot}", page.resolve().as_uri())
    assert shot.exists() and shot.stat().st_size > 0
    img = imread(shot)[..., :3]
    rgb = (img * 255).round().astype(int) if img.dtype != np.uint8 else img.astype(int)
    non_white = (rgb.sum(axis=2) < 720).mean()
    assert non_white > 0.02
    colours = {tuple(int(TIER_COLOURS[t][i:i + 2], 16) for i in (1, 3, 5)) for t in ("edge", "base_station", "cloud")}
    found = {c for c in colours if (np.abs(rgb - np.array(c)).sum(axis=2) <= 6).any()}
    assert found


def test_plan_html_renders_bare_plans() -> None:
    """An infeasible plan, a plan without classes, baselines or frontier, still renders a page."""
    from tierplan.planner.plan import SinkLatency
    bare = Plan(status="feasible", sinks={"out": SinkLatency(latency_ms=12.0, breakdown={"compute.edge": 10.0,
                                                                                      "queue.edge": 2.0})})
    for p in (Plan(status="infeasible", reason="nothing fits"), bare):
        page = render_html(p)
        assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>")
    assert "nothing fits" in render_html(Plan(status="infeasible", reason="nothing fits"))

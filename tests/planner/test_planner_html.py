"""plan.html renders offline in headless Chromium: a non-blank page with the tier colours drawn."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from matplotlib.image import imread

from planner.api import plan_graph
from planner.build import SloTarget
from planner.html import TIER_COLOURS, write_html
from planner_fixtures import chain_graph, cost_model, three_tier_fleet

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--no-first-run", "--window-size=1200,900"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("headless Chromium is required: apt-get install -y chromium")


def _plan():
    ms = {"cam-dev0": 40.0, "cam-dev1": 80.0, "bs-dev": 8.0, "cloud-dev": 2.0}
    g = chain_graph([ms, ms, ms], [200_000, 20_000, 1_000], input_bytes=600_000)
    return plan_graph(g, three_tier_fleet(uplink_mbps=100.0, n_edge=2), cost_model(),
                      slo={"out": SloTarget(250)}, objective="latency")


def test_plan_html_is_self_contained() -> None:
    """The page loads nothing from the network: no script, no external URL, inline SVG only."""
    from planner.html import render_html
    page = render_html(_plan())
    assert "<svg" in page and "<script" not in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page


def test_plan_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    """A Chromium screenshot of plan.html is not blank and shows at least one tier colour."""
    page = write_html(_plan(), tmp_path / "plan.html")
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--screenshot={shot}", page.resolve().as_uri()],
                   capture_output=True, timeout=120, cwd=tmp_path)
    assert shot.exists() and shot.stat().st_size > 0
    img = imread(shot)[..., :3]
    rgb = (img * 255).round().astype(int) if img.dtype != np.uint8 else img.astype(int)
    non_white = (rgb.sum(axis=2) < 720).mean()
    assert non_white > 0.02
    colours = {tuple(int(TIER_COLOURS[t][i:i + 2], 16) for i in (1, 3, 5)) for t in ("edge", "base_station", "cloud")}
    found = {c for c in colours if (np.abs(rgb - np.array(c)).sum(axis=2) <= 6).any()}
    assert found

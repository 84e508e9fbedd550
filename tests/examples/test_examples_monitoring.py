"""examples/monitoring: the scrape config and the Grafana dashboard match what the runtime exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
MON = REPO / "examples" / "monitoring"


def _exported() -> set[str]:
    """Metric names the runtime registers (controller and workers), read from its source."""
    names = set()
    for f in ("runtime/service.py", "runtime/stage.py"):
        names |= set(re.findall(r'(?:Counter|Gauge|Histogram|Summary)\(\s*"(tierplan_\w+)"', (REPO / f).read_text()))
    return names


def test_prometheus_config_scrapes_consecutive_loopback_ports():
    """prometheus.yml: the controller on the base port and the workers on the next ports, all on 127.0.0.1."""
    cfg = yaml.safe_load((MON / "prometheus.yml").read_text())
    targets = [t for job in cfg["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert all(t.startswith("127.0.0.1:") for t in targets)
    ports = [int(t.rsplit(":", 1)[1]) for t in targets]
    assert ports == list(range(ports[0], ports[0] + len(ports)))


def test_dashboard_queries_only_exported_metrics_and_covers_them():
    """Every tierplan_ metric a panel queries is exported by the runtime, and every exported metric has a panel."""
    dash = json.loads((MON / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"tierplan_\w+", e)}
    exported = _exported()
    assert exported and used <= exported and exported <= used
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and all(p["datasource"]["uid"] == "${datasource}" for p in dash["panels"])

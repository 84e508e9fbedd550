"""Sweeps: cells deterministic per seed, a 3-node local Ray cluster gives the serial sweep's results."""

from __future__ import annotations

import os

import pytest
from sim_builders import make_fleet, make_plan

from tierplan.errors import InputError
from tierplan.simulations.config import Scenario
from tierplan.simulations.sweep import parse_sweep, run_sweep, sweep_cells


def _plan():
    return make_plan(rate_hz=6.0).model_copy(update={"fleet": make_fleet(cams=30, bs=3).model_dump(
        mode="json", by_alias=True, exclude_none=True)})


GRID = {"seed": (0, 1, 2), "slo": (60.0, 120.0), "scale": (0.5, 1.0)}
BASE = Scenario(duration_s=4.0)


def _results(rep):
    return [c.model_dump(exclude={"wall_s", "node"}) for c in rep.cells]


def test_parse_sweep_reads_ranges_lists_and_refuses_bad_names():
    """seed=0..4 is five seeds, lists are numbers or links; an unknown name or a bad value is one InputError."""
    g = parse_sweep(["seed=0..4", "slo=100,150", "link=cams=4g,cams=3g+bs=wifi"])
    assert g == {"seed": (0, 1, 2, 3, 4), "slo": (100.0, 150.0), "link": ("cams=4g", "cams=3g+bs=wifi")}
    for bad in (["speed=1"], ["slo=fast"], ["rate=-1"], ["link=cams=5x"], ["seed=a..b"]):
        with pytest.raises(InputError):
            parse_sweep(bad)
    cells = sweep_cells(["optimal", "all-cloud"], g)
    assert len(cells) == 2 * 5 * 2 * 2 and len(set(cells)) == len(cells)


def test_serial_sweep_cells_follow_their_parameters():
    """A tighter SLO is met by fewer requests, a larger fleet makes more requests; seeds differ."""
    rep = run_sweep(_plan(), BASE, ["optimal"], GRID, ray_address=None)
    by = {(c.seed, c.params["slo"], c.params["scale"]): c for c in rep.cells}
    assert len(rep.cells) == 12 and rep.runner == "serial"
    for seed in GRID["seed"]:
        tight, loose = by[(seed, 60.0, 1.0)], by[(seed, 120.0, 1.0)]
        assert tight.sinks["labels"]["slo_attainment"] < loose.sinks["labels"]["slo_attainment"]
        assert by[(seed, 120.0, 0.5)].requests < 0.6 * loose.requests
    assert len({by[(s, 120.0, 1.0)].sinks["labels"]["p95_ms"] for s in GRID["seed"]}) == 3
    rows = rep.summary()
    assert len(rows) == 4 and all(r["seeds"] == 3 and r["p95_ms_ci"] > 0 for r in rows)


@pytest.fixture(scope="module")
def three_nodes():
    """A real Ray cluster on loopback: a head without CPUs and three 1-CPU worker nodes (DESIGN.md pitfalls)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, include_dashboard=False,
                                                                 node_ip_address="127.0.0.1"))
    for _ in range(3):
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_sweep_on_a_three_node_cluster_equals_the_serial_sweep(three_nodes):
    """Every cell (strategy x seed x SLO x scale) comes back from the Ray workers exactly as run serially."""
    plan = _plan()
    strategies = ["optimal", "all-cloud"]
    serial = run_sweep(plan, BASE, strategies, GRID, ray_address=None)
    spread = run_sweep(plan, BASE, strategies, GRID, ray_address=three_nodes.address)
    assert spread.runner.startswith("Ray") and "3 CPUs" in spread.runner
    assert _results(spread) == _results(serial)
    import ray
    workers = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")}
    used = {c.node for c in spread.cells}
    assert len(workers) == 3 and used <= workers and len(used) >= 2   # the cells really spread over the nodes


def test_rate_and_link_parameters_reach_the_cells():
    """rate=2,8 sets every source's rate (4x the requests), link=cams=3g,cams=wifi the radio (3G slower)."""
    rep = run_sweep(_plan(), BASE, ["optimal"], {"rate": (2.0, 8.0), "link": ("cams=3g", "cams=wifi")},
                    ray_address=None)
    by = {(c.params["rate"], c.params["link"]): c for c in rep.cells}
    assert len(by) == 4
    for link in ("cams=3g", "cams=wifi"):
        assert 3.0 < by[(8.0, link)].requests / by[(2.0, link)].requests < 5.0
    for rate in (2.0, 8.0):
        assert by[(rate, "cams=3g")].sinks["labels"]["p50_ms"] > by[(rate, "cams=wifi")].sinks["labels"]["p50_ms"] + 50

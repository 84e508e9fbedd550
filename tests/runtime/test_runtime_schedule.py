"""runtime.schedule (the request schedule behind `tierplan run`'s "predicted here") against hand
computations, and the runtime-overhead probe's plan and cache (runtime.overhead). Nothing here is timed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tierplan.planner.plan import Plan, PlanEdge, PlanPiece
from tierplan.runtime.graph import SINK_PREFIX, ExecGraph
from tierplan.runtime.links import EmulatedHop
from tierplan.runtime.schedule import fanout_calls, request_ms

# phone -> cloud: 8 Mbit/s = 1e6 B/s, 25 ms one way; cloud -> phone: 80 Mbit/s = 1e7 B/s, 5 ms one way
_ROUTES = {("phone", "cloud"): [EmulatedHop("phone->cloud", 8.0, 25.0)], ("cloud", "phone"): [EmulatedHop("cloud->phone", 80.0, 5.0)]}


def _route(a: str, b: str) -> list[EmulatedHop]:
    return _ROUTES.get((a, b), [])


def _fanout_graph() -> ExecGraph:
    """camera (phone) -> crops (phone, fan-out transform) -> cls (cloud) -> sink on the phone."""
    pieces = [PlanPiece(id="camera", kind="source"), PlanPiece(id="crops", kind="transform"),
              PlanPiece(id="cls", kind="piece"), PlanPiece(id=SINK_PREFIX + "out", kind="sink")]
    edges = [PlanEdge(src="camera", dst="crops", nbytes=1000),
             PlanEdge(src="crops", dst="cls", nbytes=30_000),       # 3 items x 10,000 bytes
             PlanEdge(src="cls", dst=SINK_PREFIX + "out", nbytes=1000)]
    assignment = {"camera": "phone", "crops": "phone", "cls": "cloud", SINK_PREFIX + "out": "phone"}
    return ExecGraph.from_plan(Plan(status="feasible", assignment=assignment, pieces=pieces, edges=edges))


def test_fanout_items_queue_on_the_shared_link_and_the_join_waits_for_the_last():
    """Three crops leave the phone together: the k-th waits for the ones before it on the 8 Mbit/s uplink
    (10 ms each), the cloud runs them one at a time as they arrive, the request ends with the last result."""
    g = _fanout_graph()
    ms = request_ms(g, {"crops": 2.0, "cls": 5.0}, _route, items={"crops": 3},
                    item_nbytes={("crops", "cls"): 10_000})
    # crops ends at 2; item k off the uplink at 2 + 10k, on the cloud at 27 + 10k (37, 47, 57);
    # cls 37-42, 47-52, 57-62; results back 1000 B / 1e7 B/s = 0.1 ms + 5 ms: 47.1, 57.1, 67.1
    assert ms == pytest.approx(67.1)
    # counting each route once (the old figure) gives 2 + 3 x 5 + 35 + 5.1 = 57.1: the queueing is missed
    assert ms > 57.1 + 9.9
    # one item: no queueing, 2 + 10 + 25 + 5 + 0.1 + 5
    assert request_ms(g, {"crops": 2.0, "cls": 5.0}, _route, items={"crops": 1},
                      item_nbytes={("crops", "cls"): 10_000}) == pytest.approx(47.1)


def test_step_and_hop_overheads_add_where_the_runtime_spends_them():
    """Every node a site runs gets the step overhead (sources do not), every delivery between processes
    (another site, the controller) the hop overhead."""
    g = _fanout_graph()
    ms = request_ms(g, {"crops": 2.0, "cls": 5.0}, _route, items={"crops": 3},
                    item_nbytes={("crops", "cls"): 10_000}, step_overhead_ms=0.5, hop_overhead_ms=1.0)
    # crops ends at 2.5; items on the cloud at 37.5 + 1, 48.5, 58.5; cls (5.5 ms) ends 44, 54, 64;
    # the last result reaches the phone at 64 + 0.1 + 5 + 1
    assert ms == pytest.approx(70.1)


def test_a_site_runs_one_piece_at_a_time_and_sites_overlap():
    """Two branches of one source: on one site they add up; on two sites they overlap."""
    pieces = [PlanPiece(id="s", kind="source"), PlanPiece(id="a", kind="piece"), PlanPiece(id="b", kind="piece"),
              PlanPiece(id=SINK_PREFIX + "a", kind="sink"), PlanPiece(id=SINK_PREFIX + "b", kind="sink")]
    # s hands its output to b first (sent at once, a sender thread carries it), then runs a on its own thread
    edges = [PlanEdge(src="s", dst="b", nbytes=0), PlanEdge(src="s", dst="a", nbytes=0),
             PlanEdge(src="a", dst=SINK_PREFIX + "a", nbytes=0), PlanEdge(src="b", dst=SINK_PREFIX + "b", nbytes=0)]

    def graph(site_b: str) -> ExecGraph:
        assignment = {"s": "phone", "a": "phone", "b": site_b, SINK_PREFIX + "a": "phone", SINK_PREFIX + "b": site_b}
        return ExecGraph.from_plan(Plan(status="feasible", assignment=assignment, pieces=pieces, edges=edges))

    times = {"a": 10.0, "b": 10.0}
    assert request_ms(graph("phone"), times, _route) == pytest.approx(20.0)
    assert request_ms(graph("cloud"), times, _route) == pytest.approx(25.0 + 10.0)   # b's 25 ms hop, then 10 ms
    # in the other edge order the phone runs a (10 ms) before it hands the input to b, as StageWorker._emit does
    edges[:2] = edges[1::-1]
    assert [e.dst for e in edges[:2]] == ["a", "b"]
    assert request_ms(graph("cloud"), times, _route) == pytest.approx(10.0 + 25.0 + 10.0)


def test_jitter_draws_are_seeded_and_never_below_zero_delay():
    """With a generator each hop's delay is max(0, RTT/2 + N(0, jitter)), reproducible by seed."""
    jittery = {("phone", "cloud"): [EmulatedHop("phone->cloud", 8.0, 25.0, jitter_ms=12.0)],
               ("cloud", "phone"): [EmulatedHop("cloud->phone", 80.0, 5.0, jitter_ms=12.0)]}
    g = _fanout_graph()

    def draw(seed):
        return request_ms(g, {"crops": 2.0, "cls": 5.0}, lambda a, b: jittery.get((a, b), []), items={"crops": 3},
                          item_nbytes={("crops", "cls"): 10_000}, rng=np.random.default_rng(seed))
    xs = [draw(k) for k in range(200)]
    assert draw(7) == draw(7)
    # the floor: no delay at all, 2 + 3 x 10 of uplink, the last item's 5 ms and 0.1 ms back
    assert min(xs) >= 2 + 30 + 5 + 0.1 - 1e-9
    # the join waits for the slowest of three draws: its mean is above the mean-delay figure
    assert np.mean(xs) > 67.1


def test_fanout_calls_count_items_from_the_trace():
    """Outputs per call of a fan-out transform: its consumers' runs over its own runs in the request's trace."""
    g = _fanout_graph()
    steps = [["compute", "crops@phone", 2.0]] + [["compute", "cls@cloud", 5.0]] * 5 + [["cpu", "cls@cloud", 4.0]] * 5
    assert fanout_calls(g, steps, {"crops": 4.0}) == {"crops": 5}
    assert fanout_calls(g, [], {"crops": 4.0}) == {"crops": 4}       # not in the trace: the declared fanout
    empty = [["compute", "crops@phone", 2.0]]
    assert fanout_calls(g, empty, {"crops": 4.0}) == {"crops": 0}
    # no items: the empty result still crosses to the cloud and back (the runtime sends an empty delivery)
    assert request_ms(g, {"crops": 2.0, "cls": 5.0}, _route, items={"crops": 0}) == pytest.approx(2 + 25 + 5)


def test_overhead_probe_plan_has_the_chains_its_differences_need():
    """x: 2 steps on a; z: 2 + n on a; y: 2 on a then n alternating b, a (n hops)."""
    from tierplan.runtime.overhead import probe_plan
    plan = probe_plan("relu.onnx", n=8)
    g = ExecGraph.from_plan(plan)
    for src, steps, hops in (("x", 2, 0), ("z", 10, 0), ("y", 10, 8)):
        chain = [p.id for p in plan.pieces if p.kind == "piece" and p.id.startswith(src + "/")]
        sites = ["a"] + [g.sites[n] for n in chain]
        assert len(chain) == steps
        assert sum(1 for u, v in zip(sites, sites[1:]) if u != v) == hops
        assert g.sites[SINK_PREFIX + src] == "a"


def test_overheads_come_from_the_host_cache_without_measuring(tmp_path, monkeypatch):
    """A cached figure of this CPU is used as it is; a missing one is measured and cached."""
    from tierplan.devices import host
    from tierplan.devices.calibstore import host_figures_path
    from tierplan.runtime import overhead

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("TIERPLAN_CACHE", raising=False)
    host.clear_cache()
    path = host_figures_path("runtime-overhead")
    assert str(path).startswith(str(tmp_path))
    calls = []

    def fake_measure():
        calls.append(1)
        return overhead.Overheads(step_ms=0.01, hop_ms=0.3, request_ms=0.1, run_ms=0.02)
    monkeypatch.setattr(overhead, "measure", fake_measure)
    first = overhead.load_or_measure(progress=False)
    again = overhead.load_or_measure(progress=False)
    assert calls == [1] and path.is_file()
    assert (again.step_ms, again.hop_ms, again.request_ms, again.run_ms) == (0.01, 0.3, 0.1, 0.02)
    assert first.path == again.path == str(path)
    assert json.loads(path.read_text())["hop_ms"] == 0.3

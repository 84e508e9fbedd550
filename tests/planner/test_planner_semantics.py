"""The latency, transfer and money semantics of the evaluator (which the CP-SAT model encodes)."""

from __future__ import annotations

import itertools

import networkx as nx

from tierplan.planner.build import SloTarget, build_problem
from tierplan.planner.evaluate import evaluate
from tierplan.planner.formulation import solve
from tierplan.planner.units import ms_to_us, us_to_ms
from planner_fixtures import _add_sink, _add_source, _piece, chain_graph, cost_model, three_tier_fleet
from tierplan.spec import ObjectiveSpec

DEVS = ("cam-dev0", "bs-dev", "cloud-dev")


def _ms(edge: float, bs: float, cloud: float) -> dict[str, float]:
    return dict(zip(DEVS, (edge, bs, cloud)))


def _diamond(split_tensors: bool = True) -> nx.DiGraph:
    """camera -> a -> (b, c) -> d -> sink; a sends b and c different tensors (or one shared one)."""
    g = nx.DiGraph()
    _add_source(g, "camera", 200_000)
    for i, (name, ms) in enumerate([("m/p0", _ms(10, 5, 1)), ("m/p1", _ms(60, 4, 2)), ("m/p2", _ms(30, 6, 3)),
                                    ("m/p3", _ms(5, 2, 1))]):
        g.add_node(name, kind="piece", piece=_piece(name, "m", i, 100_000, ms), model="m", rate_factor=1.0,
                   source="camera")
    g.add_edge("camera", "m/p0", nbytes=200_000, tensors=["camera"], private=False)
    g.add_edge("m/p0", "m/p1", nbytes=100_000, tensors=["t1" if split_tensors else "t"], private=False)
    g.add_edge("m/p0", "m/p2", nbytes=100_000, tensors=["t2" if split_tensors else "t"], private=False)
    g.add_edge("m/p1", "m/p3", nbytes=1_000, tensors=["u1"], private=False)
    g.add_edge("m/p2", "m/p3", nbytes=1_000, tensors=["u2"], private=False)
    _add_sink(g, "out", "m/p3", "camera")
    return g


def _problem(g, **kw):
    """Service-time semantics only (queueing waits are checked in test_planner_queueing.py), the
    sum model (everything a sink depends on adds up; the overlap model: test_planner_overlap.py)."""
    return build_problem(g, three_tier_fleet(**kw), cost_model(), weights=ObjectiveSpec(latency=1),
                         queueing=False, latency_model="sum")[0]


def _asg(problem, sites_by_id: dict[str, str], cls: str = "cam0"):
    order = [n.id for n in problem.nodes]
    c = problem.classes[0]
    return {cls: tuple(sites_by_id.get(n, c.allowed[i][0]) for i, n in enumerate(order))}


def test_branches_on_one_site_run_one_after_another() -> None:
    """All four pieces on the device: the sink's latency is the sum of their compute times."""
    p = _problem(_diamond())
    ev = evaluate(p, _asg(p, {}))
    c = p.classes[0]
    total = sum(c.compute_us[v][c.chain[0]] for v in p.compute_nodes)
    assert ev.classes["cam0"].sink_us[p.sink_nodes[0]] == total


def test_a_result_waits_for_everything_it_depends_on() -> None:
    """With one branch in the cloud, the latency is all four pieces' compute plus the crossing transfers."""
    p = _problem(_diamond(), uplink_mbps=1000.0)
    ev = evaluate(p, _asg(p, {"m/p2": "cloud"}))
    c = p.classes[0]
    idx = {n.id: i for i, n in enumerate(p.nodes)}
    k_t2 = next(k for k, it in enumerate(p.items) if it.tensors == ("t2",))
    k_u2 = next(k for k, it in enumerate(p.items) if it.tensors == ("u2",))
    expected = (sum(c.compute_us[idx[x]]["cam0"] for x in ("m/p0", "m/p1", "m/p3")) + c.compute_us[idx["m/p2"]]["cloud"]
                + c.xfer_us(k_t2, "cam0", "cloud") + c.xfer_us(k_u2, "cloud", "cam0"))
    assert ev.classes["cam0"].sink_us[p.sink_nodes[0]] == expected


def test_pieces_a_result_does_not_depend_on_do_not_add() -> None:
    """Two sinks on two branches: each sink's latency leaves out the other branch's piece."""
    g = _diamond()
    g.remove_node("m/p3")
    g.remove_node("sink:out")
    _add_sink(g, "left", "m/p1", "camera")
    _add_sink(g, "right", "m/p2", "camera")
    p = _problem(g)
    ev = evaluate(p, _asg(p, {}))
    c = p.classes[0]
    idx = {n.id: i for i, n in enumerate(p.nodes)}
    left = ev.classes["cam0"].sink_us[idx["sink:left"]]
    assert left == c.compute_us[idx["m/p0"]]["cam0"] + c.compute_us[idx["m/p1"]]["cam0"]


def test_transfers_on_one_link_share_it() -> None:
    """Two tensors a result depends on cross one link: their transfer times add up."""
    p = _problem(_diamond(split_tensors=True), uplink_mbps=1.0)
    ev = evaluate(p, _asg(p, {"m/p1": "cloud", "m/p2": "cloud", "m/p3": "cloud"}))
    c = p.classes[0]
    k1 = next(k for k, it in enumerate(p.items) if it.tensors == ("t1",))
    k2 = next(k for k, it in enumerate(p.items) if it.tensors == ("t2",))
    bd = ev.classes["cam0"].breakdown_us[p.sink_nodes[0]]
    assert bd["transfer.cam0->cloud"] == c.xfer_us(k1, "cam0", "cloud") + c.xfer_us(k2, "cam0", "cloud")


def test_a_tensor_crosses_once_per_consuming_site() -> None:
    """One tensor read by two pieces in the cloud is sent (and counted against the link) once."""
    shared = _problem(_diamond(split_tensors=False), uplink_mbps=1.0)
    split = _problem(_diamond(split_tensors=True), uplink_mbps=1.0)
    where = {"m/p1": "cloud", "m/p2": "cloud", "m/p3": "cloud"}
    ev_shared, ev_split = evaluate(shared, _asg(shared, where)), evaluate(split, _asg(split, where))
    assert ev_split.link_bps["cam0:up"] == 2 * ev_shared.link_bps["cam0:up"]
    bd_shared = ev_shared.classes["cam0"].breakdown_us[shared.sink_nodes[0]]
    bd_split = ev_split.classes["cam0"].breakdown_us[split.sink_nodes[0]]
    assert 2 * bd_shared["transfer.cam0->cloud"] == bd_split["transfer.cam0->cloud"]


def test_going_back_to_the_device_pays_the_downlink() -> None:
    """device -> cloud -> device: the sink's breakdown holds both the uplink and the downlink transfer."""
    g = chain_graph([_ms(50, 20, 1), _ms(1, 1, 1)], [100_000, 1_000])
    p = _problem(g)
    ev = evaluate(p, _asg(p, {"m/p0": "cloud", "m/p1": "cam0"}))
    bd = ev.classes["cam0"].breakdown_us[p.sink_nodes[0]]
    assert bd.get("transfer.cam0->cloud", 0) > 0 and bd.get("transfer.cloud->cam0", 0) > 0


def test_breakdown_sums_to_the_latency() -> None:
    """For every assignment of a diamond, the critical-path segments add up to the sink latency exactly."""
    p = _problem(_diamond(), uplink_mbps=5.0)
    c = p.classes[0]
    for combo in itertools.product(*(c.allowed[v] for v in range(len(p.nodes)))):
        ce = evaluate(p, {"cam0": combo}).classes["cam0"]
        v = p.sink_nodes[0]
        assert sum(ce.breakdown_us[v].values()) == ce.sink_us[v]


def test_private_data_never_crosses_a_link() -> None:
    """With a private camera, the first piece stays on the device even when the cloud is far faster."""
    g = chain_graph([_ms(200, 2, 1), _ms(200, 2, 1)], [1_000, 1_000], private=True)
    fleet = three_tier_fleet(uplink_mbps=1000.0)
    p, _ = build_problem(g, fleet, cost_model(), weights=ObjectiveSpec(latency=1))
    r = solve(p, 10)
    idx = {n.id: i for i, n in enumerate(p.nodes)}
    assert r.status == "optimal"
    assert r.assignment["cam0"][idx["m/p0"]] == "cam0"
    assert r.assignment["cam0"][idx["m/p1"]] != "cam0"  # after the model the data may leave
    bad = dict(r.assignment)
    bad["cam0"] = tuple("cloud" if n == "m/p0" else s for n, s in zip(idx, r.assignment["cam0"]))
    assert any("private" in v for v in evaluate(p, bad).violations)


def test_sink_pinned_where_it_delivers() -> None:
    """A sink delivering to the cloud sits on the cloud class in every class's assignment."""
    g = chain_graph([_ms(5, 5, 5)], [1_000], deliver_to="cloud")
    p, _ = build_problem(g, three_tier_fleet(n_edge=2), cost_model())
    for c in p.classes:
        assert c.allowed[p.sink_nodes[0]] == ("cloud",)


def test_jitter_margin_grows_with_the_percentile() -> None:
    """The p99 SLO prices each crossed link's jitter higher than p50 (conservative per-hop margin)."""
    g = chain_graph([_ms(50, 20, 1)], [1_000])
    lo, _ = build_problem(g, three_tier_fleet(), cost_model(), slo={"out": SloTarget(1e4, 50.0)})
    hi, _ = build_problem(g, three_tier_fleet(), cost_model(), slo={"out": SloTarget(1e4, 99.0)})
    k = 0
    assert hi.classes[0].xfer_us(k, "cam0", "cloud") > lo.classes[0].xfer_us(k, "cam0", "cloud")


def test_units_round_trip() -> None:
    """ms -> us -> ms is exact at microsecond resolution."""
    for ms in (0.0, 0.001, 1.5, 73.25, 1234.567):
        assert us_to_ms(ms_to_us(ms)) == round(ms, 3)

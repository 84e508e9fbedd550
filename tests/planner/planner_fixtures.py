"""Builders shared by the planner tests: devices, fleets and app graphs made in the test."""

from __future__ import annotations

import random
from pathlib import Path

import networkx as nx

from tierplan.devices.costmodel import CostModel
from tierplan.devices.fleet import resolve_fleet
from tierplan.partition.types import Piece, TensorInfo
from tierplan.spec import DeviceSpec, FleetSpec, SinkSpec, SourceSpec, TransformSpec

__all__ = ["device", "fleet_spec", "chain_graph", "random_graph", "cost_model", "three_tier_fleet"]


def device(name: str, tier: str, gflops: float, price: float = 0.0, memory_gb: float = 4.0,
           battery: bool = False) -> DeviceSpec:
    """An inline device with round figures (the pieces carry measured_ms for it)."""
    return DeviceSpec(name=name, tier=tier, peak_gflops={"fp32": gflops}, memory_gb=memory_gb,
                      memory_bandwidth_gbps=20.0, power_idle_w=1.0, power_active_w=5.0 if tier == "edge" else 200.0,
                      cost_per_hour_usd=price, battery=battery, radio_nj_per_byte=50.0 if battery else 0.0)


def cost_model() -> CostModel:
    """The real cost model without calibration files (datasheet figures + measured_ms)."""
    return CostModel(calibration=False)


def fleet_spec(edges: list[dict], bs: dict | None, cloud: dict, links: dict) -> FleetSpec:
    """edges: [{name, device, count, link}], bs/cloud: {name, device, count, max_instances, link?}."""
    sites = {}
    top = cloud["name"]
    mid = bs["name"] if bs else None
    for e in edges:
        sites[e["name"]] = {"tier": "edge", "device": e["device"], "count": e["count"],
                            "attach": mid or top, "link": e["link"]}
    if bs:
        sites[mid] = {"tier": "base_station", "device": bs["device"], "count": bs["count"], "attach": top,
                      "link": bs["link"], "max_instances": bs.get("max_instances", 1)}
    sites[top] = {"tier": "cloud", "device": cloud["device"], "count": cloud.get("count", 1),
                  "max_instances": cloud.get("max_instances", 4)}
    return FleetSpec(name="test-fleet", sites=sites, links=links)


def three_tier_fleet(uplink_mbps: float = 10.0, n_edge: int = 1, count: int = 100, bs_instances: int = 2,
                     cloud_instances: int = 4, capacity_mbps: float | None = None):
    """A resolved fleet: n_edge camera classes -> one base-station class -> one cloud class."""
    edges = [{"name": f"cam{i}", "device": device(f"cam-dev{i}", "edge", 10.0 / (i + 1), battery=True),
              "count": count * (i + 1), "link": "radio"} for i in range(n_edge)]
    links = {"radio": {"uplink_mbps": uplink_mbps, "downlink_mbps": 4 * uplink_mbps, "rtt_ms": 30.0,
                       "jitter_ms": 4.0, **({"capacity_mbps": capacity_mbps} if capacity_mbps else {})},
             "backhaul": {"uplink_mbps": 1000.0, "downlink_mbps": 1000.0, "rtt_ms": 10.0,
                          "egress_usd_per_gb": 0.09}}
    spec = fleet_spec(edges, {"name": "bs", "device": device("bs-dev", "base_station", 200.0, price=0.5),
                              "count": 2, "max_instances": bs_instances, "link": "backhaul"},
                      {"name": "cloud", "device": device("cloud-dev", "cloud", 2000.0, price=3.0),
                       "max_instances": cloud_instances}, links)
    return resolve_fleet(spec)


def _piece(pid: str, model: str, index: int, out_bytes: int, ms: dict[str, float], param_bytes: int = 1_000_000):
    t = TensorInfo(f"{pid}:out", (out_bytes // 4,), "float32", out_bytes)
    return Piece(id=pid, model=model, index=index, nodes=(f"{pid}:n",), inputs=(), outputs=(t,),
                 flops=1e9, param_bytes=param_bytes, measured_ms=ms)


def _add_source(g: nx.DiGraph, name: str, nbytes: int, rate_hz: float = 2.0, private: bool = False) -> None:
    g.add_node(name, kind="source", spec=SourceSpec(at="edge", rate_hz=rate_hz, shape=[nbytes // 4],
                                                    private=private),
               pin="edge", nbytes=nbytes, rate_factor=1.0, source=name)


def _add_sink(g: nx.DiGraph, name: str, src: str, source: str, deliver_to: str = "source",
              nbytes: int = 4_000) -> None:
    sid = f"sink:{name}"
    g.add_node(sid, kind="sink", spec=SinkSpec(**{"from": src.split("/")[0], "deliver_to": deliver_to}), rate_factor=1.0,
               source=source)
    g.add_edge(src, sid, nbytes=nbytes, tensors=[f"{src}:result"], private=False)


def chain_graph(ms_by_device: list[dict[str, float]], out_bytes: list[int], input_bytes: int = 600_000,
                deliver_to: str = "source", private: bool = False) -> nx.DiGraph:
    """camera -> m/p0 -> ... -> m/p{n-1} -> sink:out, with the given per-device ms and output bytes."""
    g = nx.DiGraph(app="chain")
    _add_source(g, "camera", input_bytes, private=private)
    prev, prev_bytes, tensor = "camera", input_bytes, "camera"
    for i, (ms, ob) in enumerate(zip(ms_by_device, out_bytes)):
        p = _piece(f"m/p{i}", "m", i, ob, ms)
        g.add_node(p.id, kind="piece", piece=p, model="m", rate_factor=1.0, source="camera")
        g.add_edge(prev, p.id, nbytes=prev_bytes, tensors=[tensor], private=private and prev == "camera")
        prev, prev_bytes, tensor = p.id, ob, f"{p.id}:out"
    _add_sink(g, "out", prev, "camera", deliver_to)
    return g


def random_graph(rnd: random.Random, devices: list[str], n_pieces: int, two_sources: bool = False) -> nx.DiGraph:
    """A random DAG: a camera source, pieces and a transform with random fan-in, one or two sinks."""
    g = nx.DiGraph(app="random")
    private = rnd.random() < 0.25
    _add_source(g, "camera", rnd.choice([2_000, 150_000, 600_000]), private=private)
    nodes = ["camera"]
    for i in range(n_pieces):
        ms = {d: round(rnd.uniform(0.5, 60.0), 3) for d in devices}
        if i == 1 and rnd.random() < 0.3:
            nid = "tx"
            g.add_node(nid, kind="transform", spec=TransformSpec(function="m:f", cost_ms=rnd.uniform(0.5, 8.0)),
                       rate_factor=1.0, source="camera")
        else:
            p = _piece(f"m/p{i}", "m", i, rnd.choice([1_000, 40_000, 300_000]), ms,
                       param_bytes=rnd.choice([10_000, 10_000, 3_000_000_000]))
            nid = p.id
            g.add_node(nid, kind="piece", piece=p, model="m", rate_factor=1.0, source="camera")
        preds = rnd.sample(nodes, k=min(len(nodes), rnd.choice([1, 1, 2])))
        for u in preds:
            nb = g.nodes[u].get("nbytes") if u == "camera" else g.nodes[u]["piece"].out_bytes \
                if g.nodes[u]["kind"] == "piece" else 20_000
            g.add_edge(u, nid, nbytes=int(nb), tensors=[f"{u}:out"], private=private and u == "camera")
        nodes.append(nid)
    last = nodes[-1]
    _add_sink(g, "out", last, "camera", rnd.choice(["source", "source", "any", "cloud"]))
    if n_pieces > 1 and rnd.random() < 0.5:
        _add_sink(g, "aux", nodes[1], "camera", "source")
    if two_sources:
        _add_source(g, "mic", 32_000, rate_hz=4.0)
        p = _piece("v/p0", "v", 0, 400, {d: round(rnd.uniform(0.2, 20.0), 3) for d in devices})
        g.add_node(p.id, kind="piece", piece=p, model="v", rate_factor=1.0, source="mic")
        g.add_edge("mic", p.id, nbytes=32_000, tensors=["mic"], private=False)
        _add_sink(g, "speech", p.id, "mic", "source")
    return g


def assert_matches_brute_force(problem, r, best) -> None:
    """CP-SAT's result `r` equals brute force's `best` (None: infeasible), and its plan evaluates to its objective."""
    from tierplan.planner.evaluate import evaluate

    if best is None:
        assert r.status == "infeasible"
        return
    assert r.status == "optimal"
    assert r.objective == best[0].objective
    ev = evaluate(problem, r.assignment, r.levels)
    assert ev.feasible, ev.violations
    assert ev.objective == r.objective


def twin_app_yaml(model: Path, tensor: str, shape: list[int], dtype: str = "float32",
                  dims: dict[str, int] | None = None) -> str:
    """app.yaml of one source feeding two copies of one ONNX model (`a`, `b`: every operator name
    shared), each to its own sink: two branches of one request."""
    import yaml
    spec = {"onnx": str(model), **({"dims": dims} if dims else {})}
    return yaml.safe_dump({
        "name": "twins", "models": {"a": spec, "b": dict(spec)},
        "sources": {"camera": {"at": "edge", "rate_hz": 2, "shape": shape, "dtype": dtype}},
        "edges": [{"from": "camera", "to": m, "tensors": {"camera": tensor}} for m in ("a", "b")],
        "sinks": {"sa": {"from": "a"}, "sb": {"from": "b"}}, "objective": "latency"})

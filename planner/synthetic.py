"""Synthetic apps and fleets for the planner benchmarks and scale tests: seeded, sized by pieces and classes."""

from __future__ import annotations

import random

import networkx as nx

from tierplan.devices.fleet import resolve_fleet
from tierplan.partition.types import OpCost, Piece, TensorInfo
from tierplan.spec import DeviceSpec, FleetSpec, SinkSpec, SourceSpec, TransformSpec

__all__ = ["synthetic_app", "synthetic_dag", "synthetic_fleet", "synthetic_fleet_spec", "UPLINKS_MBPS"]

# uplink presets of the partitioning literature (Neurosurgeon, JALAD): 2G-ish, 3G, 4G, Wi-Fi, LAN
UPLINKS_MBPS = (0.13, 1.1, 5.85, 18.88, 100.0)

# (name, tier, fp32 GFLOP/s, $/h, memory GB): round figures in the range of the catalog's parts
_EDGE = [("pi4", 13.5), ("pi5", 30.0), ("nano", 235.0), ("phone", 120.0), ("cam", 6.0)]
_BS = [("mec-cpu", 900.0, 0.40), ("mec-t4", 8000.0, 0.53)]
_CLOUD = [("g5", 31000.0, 1.01), ("c7i", 1100.0, 0.36)]


def _device(name: str, tier: str, gflops: float, price: float = 0.0, memory_gb: float = 8.0) -> DeviceSpec:
    return DeviceSpec(name=name, tier=tier, peak_gflops={"fp32": gflops}, memory_gb=memory_gb,
                      memory_bandwidth_gbps=20.0 if tier == "edge" else 300.0, power_idle_w=2.0,
                      power_active_w=6.0 if tier == "edge" else 250.0, cost_per_hour_usd=price,
                      battery=tier == "edge", radio_nj_per_byte=40.0 if tier == "edge" else 0.0)


def synthetic_fleet(n_edge: int, n_bs: int, n_cloud: int, devices_total: int, uplink_mbps: float | None = None,
                    base_stations_total: int | None = None, seed: int = 0):
    """A resolved fleet: n_edge device classes (type x network) -> n_bs base-station classes -> n_cloud regions."""
    return resolve_fleet(synthetic_fleet_spec(n_edge, n_bs, n_cloud, devices_total, uplink_mbps,
                                              base_stations_total, seed))


def synthetic_fleet_spec(n_edge: int, n_bs: int, n_cloud: int, devices_total: int, uplink_mbps: float | None = None,
                         base_stations_total: int | None = None, seed: int = 0) -> FleetSpec:
    """The FleetSpec of `synthetic_fleet` (to change before resolving: replanning scenarios)."""
    rnd = random.Random(seed)
    sites: dict = {}
    links: dict = {"backhaul": {"uplink_mbps": 10000.0, "downlink_mbps": 10000.0, "rtt_ms": 8.0, "jitter_ms": 1.0,
                                "egress_usd_per_gb": 0.09}}
    bs_total = base_stations_total or max(n_bs, devices_total // 20)
    for j in range(n_cloud):
        name, gf, price = _CLOUD[j % len(_CLOUD)]
        sites[f"region{j}"] = {"tier": "cloud", "device": _device(f"{name}-{j}", "cloud", gf, price, 64.0),
                               "count": 1, "max_instances": max(8, devices_total // 50)}
    for j in range(n_bs):
        name, gf, price = _BS[j % len(_BS)]
        sites[f"bs{j}"] = {"tier": "base_station", "device": _device(f"{name}-{j}", "base_station", gf, price, 16.0),
                           "count": max(1, bs_total // n_bs), "attach": f"region{j % n_cloud}", "link": "backhaul",
                           "max_instances": 2}
    weights = [rnd.uniform(0.5, 2.0) for _ in range(n_edge)]
    total_w = sum(weights)
    for i in range(n_edge):
        name, gf = _EDGE[i % len(_EDGE)]
        up = uplink_mbps if uplink_mbps is not None else rnd.choice((1.1, 5.85, 18.88, 100.0))
        links[f"net{i}"] = {"uplink_mbps": up, "downlink_mbps": max(up * 4, 5.0), "rtt_ms": rnd.choice((20.0, 40.0, 60.0)),
                            "jitter_ms": rnd.choice((2.0, 5.0, 10.0)), "capacity_mbps": 1000.0}
        sites[f"{name}{i}"] = {"tier": "edge", "device": _device(f"{name}-{i}", "edge", gf, 0.0, 4.0),
                               "count": max(1, int(round(devices_total * weights[i] / total_w))),
                               "attach": f"bs{i % n_bs}", "link": f"net{i}"}
    return FleetSpec(name=f"synthetic-{n_edge}x{n_bs}x{n_cloud}", sites=sites, links=links)


def synthetic_app(n_pieces: int, n_models: int = 1, seed: int = 0, fleet=None) -> nx.DiGraph:
    """An ensemble of n_models chains (a detector-like first model feeding the others through a crop
    transform), n_pieces in all, with FLOPs falling and tensors shrinking along each chain."""
    rnd = random.Random(seed)
    g = nx.DiGraph(app=f"synthetic-{n_pieces}")
    frame = 3 * 320 * 320
    g.add_node("camera", kind="source", spec=SourceSpec(at="edge", rate_hz=1.0, shape=[1, 3, 320, 320], dtype="uint8"),
               pin="edge", nbytes=frame, rate_factor=1.0, source="camera")
    per = [n_pieces // n_models + (1 if m < n_pieces % n_models else 0) for m in range(n_models)]
    heads = []
    for m, k in enumerate(per):
        model = f"model{m}"
        prev, prev_bytes = ("camera", frame) if m == 0 else ("crop", 3 * 96 * 96 * 4)
        rf = 1.0 if m == 0 else 2.0
        for i in range(k):
            out_bytes = int(max(2_000, (600_000 if m == 0 else 150_000) * (0.6 ** i) * rnd.uniform(0.6, 1.4)))
            flops = 2.5e8 * (0.75 ** i) * rnd.uniform(0.5, 1.5) / (1 if m == 0 else 4)
            t = TensorInfo(f"{model}/t{i}", (out_bytes // 4,), "float32", out_bytes)
            op = OpCost(f"{model}/n{i}", "Conv", flops, int(flops / 50), prev_bytes + out_bytes)
            p = Piece(id=f"{model}/p{i}", model=model, index=i, nodes=(op.name,), inputs=(), outputs=(t,),
                      flops=flops, param_bytes=op.param_bytes, ops=(op,))
            g.add_node(p.id, kind="piece", piece=p, model=model, rate_factor=rf, source="camera")
            g.add_edge(prev, p.id, nbytes=prev_bytes, tensors=["camera" if prev == "camera" else f"{prev}:out"],
                       private=False)
            prev, prev_bytes = p.id, out_bytes
            if m == 0 and i == k - 1 and n_models > 1:
                g.add_node("crop", kind="transform", spec=TransformSpec(function="tierplan.transforms:crop", cost_ms=2.0,
                                                                        fanout=2.0), rate_factor=1.0, source="camera")
                g.add_edge("camera", "crop", nbytes=frame, tensors=["camera"], private=False)
                g.add_edge(p.id, "crop", nbytes=out_bytes, tensors=[f"{p.id}:out"], private=False)
        heads.append(prev)
    for m, h in enumerate(heads):
        sid = f"sink:out{m}"
        g.add_node(sid, kind="sink", spec=SinkSpec(**{"from": f"model{m}", "deliver_to": "source"}), rate_factor=1.0,
                   source="camera")
        g.add_edge(h, sid, nbytes=4_000, tensors=[f"{h}:result"], private=False)
    return g


def synthetic_dag(n_pieces: int, seed: int = 0) -> nx.DiGraph:
    """A random DAG of one request: each piece reads one or two earlier nodes (fan-out and joins),
    FLOPs and tensor sizes drawn at random; one sink reads the last piece, one the piece with most
    readers. For the overlap benchmark: where branches on different sites can run at once."""
    rnd = random.Random(seed)
    g = nx.DiGraph(app=f"dag-{n_pieces}-{seed}")
    frame = 3 * 224 * 224
    g.add_node("camera", kind="source", spec=SourceSpec(at="edge", rate_hz=1.0, shape=[1, 3, 224, 224], dtype="uint8"),
               pin="edge", nbytes=frame, rate_factor=1.0, source="camera")
    nodes, sizes = ["camera"], {"camera": frame}
    for i in range(n_pieces):
        out_bytes = rnd.choice((4_000, 40_000, 200_000))
        flops = rnd.uniform(0.2e9, 3e9)
        t = TensorInfo(f"dag/t{i}", (out_bytes // 4,), "float32", out_bytes)
        op = OpCost(f"dag/n{i}", "Conv", flops, int(flops / 100), out_bytes)
        p = Piece(id=f"dag/p{i}", model="dag", index=i, nodes=(op.name,), inputs=(), outputs=(t,), flops=flops,
                  param_bytes=op.param_bytes, ops=(op,))
        g.add_node(p.id, kind="piece", piece=p, model="dag", rate_factor=1.0, source="camera")
        for u in rnd.sample(nodes, k=min(len(nodes), rnd.choice((1, 1, 2)))):
            g.add_edge(u, p.id, nbytes=sizes[u], tensors=[f"{u}:out"], private=False)
        nodes.append(p.id)
        sizes[p.id] = out_bytes
    busiest = max(nodes[1:], key=lambda n: (g.out_degree(n), n))
    for name, src in (("out", nodes[-1]), ("aux", busiest)):
        sid = f"sink:{name}"
        g.add_node(sid, kind="sink", spec=SinkSpec(**{"from": "dag", "deliver_to": "source"}), rate_factor=1.0,
                   source="camera")
        g.add_edge(src, sid, nbytes=4_000, tensors=[f"{src}:result"], private=False)
    return g

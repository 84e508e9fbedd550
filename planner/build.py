"""From (app graph, Fleet, CostModel) to the integer `Problem` the solver and baselines share.

Per edge class e the request-level figures are derived once here, with the cost model:
    d[e,v,s]    = rate_factor(v) * ms(v, device(s))                       compute per request
    load[e,v,s] = count(e) * rate(source(v)) * rate_factor(v) * ms / 1000  busy instances of s
    T[e,i,a,b]  = sum over hops (RTT/2 + bytes/bandwidth + serialisation + z_p * jitter)
where z_p is the standard-normal quantile of the strictest SLO percentile (p95: 1.645): each
link crossed adds its jitter margin, a conservative bound on the percentile of the sum.
Each site gets utilisation levels with their p-quantile queueing waits (planner.queueing).
Link `capacity_mbps` is the shared capacity of one parent site's side of the link class, so a
class of N parents offers N times it; each child site's own link offers its bandwidth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Mapping

import networkx as nx

from tierplan.planner.problem import ClassData, ItemData, LinkUse, NodeData, Problem, Segments, SiteData
from tierplan.planner.queueing import DEFAULT_SERVICE_CV, utilisation_levels
from tierplan.planner.units import (
    PPM, bytes_to_kb, frac_to_ppm, j_to_uj, mbps_to_bps, ms_to_us, usd_to_uusd,
)
from tierplan.errors import InputError
from tierplan.devices.costmodel import CostModel
from tierplan.devices.fleet import Fleet
from tierplan.spec import LinkSpec, ObjectiveSpec

__all__ = ["SloTarget", "BuildInfo", "build_problem", "objective_coefficients", "topo_order", "latency_model_of"]

# latency coefficient relative to the others when objectives are mixed: keep integers large
_MIX_SCALE = 1000


@dataclass(frozen=True)
class SloTarget:
    """A latency target for one sink (by sink name) at a percentile."""

    latency_ms: float
    percentile: float = 95.0


@dataclass(frozen=True)
class BuildInfo:
    """What the reports need besides the Problem: node ids, ms per site class, rates."""

    order: tuple[str, ...]                         # node ids in the problem's order
    ms: Mapping[str, Mapping[str, float]]          # node id -> site class -> ms per invocation
    rate_hz: Mapping[str, float]                   # node id -> invocations per device-second
    requests_per_s: Mapping[str, float]            # edge class -> requests per second (whole class)
    z_score: float
    percentile: float
    sink_names: Mapping[str, str]                  # sink node id -> sink name
    slo_ms: Mapping[str, float]                    # sink name -> SLO (ms), as given
    weights: ObjectiveSpec                         # the objective's weights, as given


def latency_model_of(graph: nx.DiGraph) -> str:
    """"sum" when the app is chains (no node joins or forks data), else "overlap"."""
    chain = all(graph.in_degree(n) <= 1 and graph.out_degree(n) <= 1 for n in graph.nodes)
    return "sum" if chain else "overlap"


def topo_order(graph: nx.DiGraph) -> list[str]:
    """A deterministic topological order (ties broken by insertion order)."""
    rank = {n: i for i, n in enumerate(graph.nodes)}
    return list(nx.lexicographical_topological_sort(graph, key=lambda n: rank[n]))


def objective_coefficients(weights: ObjectiveSpec, n_classes_weight: int, n_sinks: int) -> tuple[str, int, int, int]:
    """(kind, coef_cost, coef_latency, coef_energy) so that the integer objective is
    proportional to  w_c * $/h + w_l * mean sink latency (ms) + w_e * mean energy (J/request).

    With W = sum of class weights and K sinks: mean latency ms = L/(1000 W K) and mean energy
    J = E/(1e6 W) for the integer terms L (us) and E (uJ); cost is in u$/h.
    """
    used = [k for k in ("cost", "latency", "energy") if getattr(weights, k) > 0]
    if len(used) == 1:
        k = used[0]
        return k, int(k == "cost"), int(k == "latency"), int(k == "energy")
    W, K = max(n_classes_weight, 1), max(n_sinks, 1)
    raw = (weights.cost * W * K, weights.latency * 1000.0, weights.energy * K)
    smallest = min(r for r in raw if r > 0)
    scale = _MIX_SCALE / smallest
    cc, cl, ce = (int(round(r * scale)) for r in raw)
    return "weighted", cc, cl, ce


def _chain(fleet: Fleet, e: str) -> tuple[str, ...]:
    return (e, *fleet.parents(e))


def build_problem(graph: nx.DiGraph, fleet: Fleet, cost_model: CostModel,
                  slo: Mapping[str, SloTarget] | None = None,
                  weights: ObjectiveSpec | None = None,
                  budget_usd_per_hour: float | None = None,
                  link_scale: Mapping[str, float] | None = None,
                  service_cv: float = DEFAULT_SERVICE_CV,
                  queueing: bool = True, rent_for_queueing: bool = False,
                  latency_model: str | None = None) -> tuple[Problem, BuildInfo]:
    """Derive the integer Problem of placing `graph` on `fleet`; pure (inputs untouched).

    `queueing` adds the waiting time at each site's planned utilisation level (planner.queueing,
    service times spread log-normally with `service_cv`); False plans on service times alone.
    Owned sites (edge devices) choose among the utilisation levels; rented sites are planned at
    their cap's wait unless `rent_for_queueing`, where the solver may also rent more instances to
    reach a lower level (exact too, but the shared levels couple the classes: slower proofs).

    `link_scale[edge_class]` multiplies the bandwidth of that class's own link (what-if analysis
    of "what uplink would it need").

    `latency_model`: "sum" (everything a sink depends on adds up: exact for chains) or "overlap"
    (start times: branches on different sites overlap, one site runs a request's nodes one at a
    time; exact for DAGs, planner.evaluate.schedule); None: "sum" for chains, else "overlap".
    """
    slo = dict(slo or {})
    weights = weights or ObjectiveSpec(cost=1.0)
    link_scale = dict(link_scale or {})
    order = topo_order(graph)
    index = {n: i for i, n in enumerate(order)}
    attrs = [graph.nodes[n] for n in order]
    for n, a in zip(order, attrs):
        if a.get("kind") not in ("source", "piece", "transform", "sink"):
            raise InputError(f"app graph node {n!r}: kind must be source, piece, transform or sink "
                             f"(got {a.get('kind')!r})")
    sources = {n: a for n, a in zip(order, attrs) if a["kind"] == "source"}
    if not sources:
        raise InputError("app graph has no source. To fix: declare `sources:` in app.yaml")
    # participating edge classes: every edge class, unless sources pin a specific edge class
    edge = list(fleet.edge_classes())
    if not edge:
        raise InputError(f"fleet {fleet.name!r} has no edge-tier site class. To fix: add a site with tier: edge")
    specific = {a["pin"] for a in sources.values() if a["pin"] in fleet.classes
                and fleet.classes[a["pin"]].tier == "edge"}
    if len(specific) > 1:
        raise InputError(f"sources are pinned to different edge classes ({', '.join(sorted(specific))}); "
                         f"one request comes from one device. To fix: pin sources to `edge` or one class")
    classes_in = [e for e in edge if not specific or e in specific]

    def src_rate(n: str) -> float:
        a = graph.nodes[n]
        s = a.get("source") or (n if a["kind"] == "source" else None)
        if s is None or s not in sources:
            ins = [u for u in graph.predecessors(n)]
            return max((src_rate(u) for u in ins), default=0.0)
        return float(sources[s]["spec"].rate_hz)

    rate_hz = {n: src_rate(n) * float(graph.nodes[n].get("rate_factor", 1.0)) for n in order}
    total_rate = sum(float(a["spec"].rate_hz) for a in sources.values())
    percentile = max([t.percentile for t in slo.values()] or [95.0])
    z = NormalDist().inv_cdf(min(percentile, 99.99) / 100.0) if percentile > 50 else 0.0

    # ---- site classes
    sites: dict[str, SiteData] = {}
    fixed_cost = 0
    for name, sc in fleet.classes.items():
        dev = sc.device
        if sc.tier == "edge":
            sites[name] = SiteData(name, sc.tier, sc.count, 0, frac_to_ppm(sc.max_utilization),
                                   bytes_to_kb(dev.memory_gb * 1e9), fixed_instances=True)
            fixed_cost += usd_to_uusd(dev.cost_per_hour_usd) * sc.count
        else:
            sites[name] = SiteData(name, sc.tier, sc.count * sc.max_instances,
                                   usd_to_uusd(dev.cost_per_hour_usd), frac_to_ppm(sc.max_utilization),
                                   bytes_to_kb(dev.memory_gb * 1e9))
        if queueing:
            lv, fac = utilisation_levels(sites[name].util_cap_ppm, percentile, service_cv)
            if sc.tier != "edge" and not rent_for_queueing:
                lv, fac = lv[-1:], fac[-1:]
            sites[name] = replace(sites[name], levels_ppm=lv, wait_factors=fac)

    # ---- nodes and their memory
    group: dict[str, int] = {}
    for n in order:
        if n not in group:
            comp = nx.node_connected_component(graph.to_undirected(as_view=True), n)
            gid = len(set(group.values()))
            group.update({m: gid for m in comp})
    nodes = []
    for n, a in zip(order, attrs):
        mem = 0
        if a["kind"] == "piece":
            pc = a["piece"]
            mem = bytes_to_kb(pc.param_bytes + pc.in_bytes + pc.out_bytes)
        nodes.append(NodeData(n, a["kind"], mem, group[n]))

    # ---- items: out-edges of a producer grouped by tensor set (sent once per consuming site)
    items: list[ItemData] = []
    for u in order:
        groups: dict[tuple, dict] = {}
        for _, v, ea in graph.out_edges(u, data=True):
            tensors = tuple(sorted(ea.get("tensors") or ())) or (f"{u}->{v}",)
            g = groups.setdefault(tensors, {"consumers": [], "nbytes": 0, "private": False})
            g["consumers"].append(index[v])
            g["nbytes"] = max(g["nbytes"], int(ea.get("nbytes", 0)))
            g["private"] = g["private"] or bool(ea.get("private", False))
        rf = float(graph.nodes[u].get("rate_factor", 1.0))
        for tensors, g in groups.items():
            items.append(ItemData(index[u], tuple(sorted(g["consumers"])), tensors,
                                  int(round(g["nbytes"] * rf)), g["private"]))

    # ---- per-node ms on each device type (cost model called once per (node, device))
    ms: dict[str, dict[str, float]] = {}
    for n, a in zip(order, attrs):
        row = {}
        for name, sc in fleet.classes.items():
            if a["kind"] == "piece":
                row[name] = float(cost_model.piece_ms(a["piece"], sc.device))
            elif a["kind"] == "transform":
                row[name] = float(cost_model.transform_ms(a["spec"], sc.device))
            else:
                row[name] = 0.0
        ms[n] = row

    # ---- link capacity keys
    caps: dict[str, int] = {}

    def cap_keys(child: str, direction: str, scale: float) -> tuple[str, ...]:
        sc = fleet.classes[child]
        link = sc.link
        assert link is not None and sc.attach is not None   # a hop's child class attaches over its link
        bw = link.uplink_mbps if direction == "up" else link.downlink_mbps
        k1 = f"{child}:{direction}"
        caps[k1] = mbps_to_bps(bw * scale * sc.count)
        keys = [k1]
        if link.capacity_mbps is not None:
            parent = fleet.classes[sc.attach]
            k2 = f"{sc.link_name or child}@{sc.attach}:{direction}"
            caps[k2] = mbps_to_bps(link.capacity_mbps * parent.count)
            keys.append(k2)
        return tuple(keys)

    # ---- classes
    raw_w = {e: fleet.classes[e].count * total_rate for e in classes_in}
    top = max(raw_w.values()) if raw_w else 1.0
    class_data: list[ClassData] = []
    for e in classes_in:
        sc_e = fleet.classes[e]
        chain = _chain(fleet, e)
        scale_e = link_scale.get(e, 1.0)
        count = sc_e.count
        allowed: list[tuple[str, ...]] = []
        for v, (n, a) in enumerate(zip(order, attrs)):
            if a["kind"] == "source":
                allowed.append((fleet.resolve_pin(e, a["pin"], f"sources.{n}"),))
            elif a["kind"] == "sink":
                spec = a["spec"]
                where = spec.deliver_to
                if where == "source":
                    src = a.get("source") or next(iter(sources))
                    allowed.append((fleet.resolve_pin(e, sources[src]["pin"], f"sinks.{n}"),))
                elif where == "any":
                    allowed.append(chain)
                else:
                    allowed.append((fleet.resolve_pin(e, where, f"sinks.{n}.deliver_to"),))
            else:
                ok = tuple(s for s in chain if nodes[v].mem_kb <= sites[s].memory_kb
                           and math.isfinite(ms[n][s]))
                if not any(math.isfinite(ms[n][s]) for s in chain):
                    raise InputError(f"{n}: cannot run on any site of edge class {e!r} (its latency is .inf on "
                                     f"every device of {' -> '.join(chain)}). To fix: give a finite latency_ms "
                                     f"for one of those devices")
                if not ok:
                    raise InputError(f"{n}: fits on no site of edge class {e!r} (needs {nodes[v].mem_kb} KB; "
                                     f"largest memory on its chain is {max(sites[s].memory_kb for s in chain)} KB). "
                                     f"To fix: cut the model into more pieces (models.<name>.max_pieces)")
                allowed.append(ok)
        compute_us, load_ppm, energy_uj = [], [], []
        for n, a in zip(order, attrs):
            rf = float(a.get("rate_factor", 1.0))
            # a site where the node cannot run (.inf in a profile) has no figures: it is not allowed there
            runs = [s for s in chain if math.isfinite(ms[n][s])]
            compute_us.append({s: ms_to_us(rf * ms[n][s]) for s in runs})
            load_ppm.append({s: int(math.ceil(count * rate_hz[n] * ms[n][s] / 1000.0 * PPM)) for s in runs})
            per_request = src_rate(n) / total_rate  # this node's source's share of the requests
            energy_uj.append({s: j_to_uj(per_request * cost_model.compute_energy_j(
                rf * ms[n][s], fleet.classes[s].device)) if a["kind"] in ("piece", "transform") else 0
                for s in runs})
        # (child class, direction, link, bandwidth scale) of each link crossed from a_ to b_
        hops: dict[tuple[str, str], tuple[tuple[str, str, LinkSpec, float], ...]] = {}
        for a_ in chain:
            for b_ in chain:
                if a_ == b_:
                    continue
                hops[(a_, b_)] = tuple((child, d, link, scale_e if child == e else 1.0)
                                       for child, _, link, d in fleet.hops(a_, b_))
        item_hops: dict[tuple[str, str], tuple[LinkUse, ...]] = {}
        egress: dict[tuple[int, str, str], int] = {}
        radio: dict[tuple[int, str, str], int] = {}
        xfer_table: dict[tuple[int, str, str], int] = {}
        bits = []
        for k, it in enumerate(items):
            prod = order[it.producer]
            bits.append(int(math.ceil(count * src_rate(prod) * it.nbytes * 8)))
            for (a_, b_), hs in hops.items():
                total = 0
                eg = 0.0
                for child, d, link, scale in hs:
                    bw_link = link.model_copy(update={"uplink_mbps": link.uplink_mbps * scale,
                                                      "downlink_mbps": link.downlink_mbps * scale}) \
                        if scale != 1.0 else link
                    total += ms_to_us(cost_model.transfer_ms(it.nbytes, bw_link, d) + z * link.jitter_ms)
                    if d == "down":
                        eg += cost_model.egress_usd(it.nbytes, link)
                xfer_table[(k, a_, b_)] = total
                if eg:
                    egress[(k, a_, b_)] = usd_to_uusd(eg * count * src_rate(prod) * 3600.0)
                if a_ == e:
                    r = cost_model.radio_energy_j(it.nbytes, sc_e.device) * src_rate(prod) / total_rate
                    if r:
                        radio[(k, a_, b_)] = j_to_uj(r)
        for (a_, b_), hs in hops.items():
            item_hops[(a_, b_)] = tuple(
                LinkUse(f"{child}:{d}", cap_keys(child, d, scale), d == "down")
                for child, d, link, scale in hs)
        slo_us = {}
        for n, a in zip(order, attrs):
            if a["kind"] == "sink":
                name = n[5:] if n.startswith("sink:") else n
                if name in slo:
                    slo_us[index[n]] = ms_to_us(slo[name].latency_ms)
        class_data.append(ClassData(
            name=e, count=count, chain=chain, weight=max(1, int(round(1000 * raw_w[e] / top))),
            allowed=tuple(allowed), compute_us=tuple(compute_us), load_ppm=tuple(load_ppm),
            energy_uj=tuple(energy_uj), hops=item_hops, bits_per_s=tuple(bits), egress_uusd_h=egress,
            radio_uj=radio, slo_us=slo_us, requests_per_s=count * total_rate, link_scale=scale_e,
            xfer=xfer_table))
    W = sum(c.weight for c in class_data)
    n_sinks = sum(1 for a in attrs if a["kind"] == "sink")
    kind, cc, cl, ce = objective_coefficients(weights, W, n_sinks)
    segs = []
    for model, meta in sorted((graph.graph.get("segments") or {}).items()):
        members = sorted((graph.nodes[n]["piece"].index, index[n]) for n in order
                         if graph.nodes[n].get("kind") == "piece" and graph.nodes[n].get("model") == model)
        if len(members) > 1:
            segs.append(Segments(model, tuple(v for _, v in members), int(meta["max_pieces"])))
    problem = Problem(sites=sites, nodes=tuple(nodes), items=tuple(items), classes=tuple(class_data),
                      segments=tuple(segs), latency_model=latency_model or latency_model_of(graph),
                      link_cap_bps=caps, objective_kind=kind, coef_cost=cc, coef_latency=cl,
                      coef_energy=ce, fixed_cost_uusd_h=fixed_cost,
                      budget_uusd_h=usd_to_uusd(budget_usd_per_hour) if budget_usd_per_hour else None,
                      labels={n: sc.tier for n, sc in fleet.classes.items()})
    info = BuildInfo(order=tuple(order), ms=ms, rate_hz=rate_hz,
                     requests_per_s={c.name: c.requests_per_s for c in class_data},
                     z_score=z, percentile=percentile,
                     sink_names={n: (n[5:] if n.startswith("sink:") else n)
                                 for n, a in zip(order, attrs) if a["kind"] == "sink"},
                     slo_ms={k: t.latency_ms for k, t in slo.items()}, weights=weights)
    return problem, info

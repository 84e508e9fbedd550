"""One request's latency as the runtime executes it: the schedule behind `tierplan run`'s "predicted here".

DESIGN.md "Latency as executed": a site runs a request's pieces one at a time, branches on
different sites overlap, transfers share each link. This replays one request through the plan
the way runtime/stage.py and runtime/links.py run it, with given step times:

- a site has one compute thread; it takes deliveries in the order they arrive and runs a node
  as soon as its join is complete, then hands its outputs to the nodes on the same site at once
  (depth first, in edge order, as `StageWorker._emit` does), so a fan-out transform's items go
  down the site's pipeline one after another until each leaves the site;
- a delivery to another site is sent when its producer finishes (a sender thread; the compute
  thread goes on) and crosses its route hop by hop, store-and-forward: each hop is a FIFO link
  direction (the k-th item sent waits for the ones before it, bytes / bandwidth each) followed
  by its one-way delay RTT/2, or a draw of it with the link's jitter (runtime.links.LinkEmulator.arrival_s);
- a fan-out transform's items are separate deliveries (`child_branch`): they queue on the links
  and on every site they visit, and a join downstream of them waits for the item's own inputs;
- the request ends when the last delivery to a sink arrives (every fan-out item's result).

`step_overhead_ms` is added to every node a site runs (the runtime's bookkeeping around a step)
and `hop_overhead_ms` to every delivery between processes (another site or the controller);
both are measured on this machine (runtime.overhead), never assumed.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Callable, Mapping, Sequence

from tierplan.runtime.graph import ExecGraph

__all__ = ["request_ms", "fanout_calls"]


def request_ms(graph: ExecGraph, compute_ms: Mapping[str, float], route: Callable[[str, str], Sequence],
               items: Mapping[str, int] | None = None, item_nbytes: Mapping[tuple[str, str], float] | None = None,
               step_overhead_ms: float = 0.0, hop_overhead_ms: float = 0.0, rng=None,
               sources: Sequence[str] | None = None) -> float:
    """Latency (ms) of one request, alone on the deployment, from its sources' data on their sites
    to its last sink delivery.

    `compute_ms[node]`: one run of a piece or transform (missing: 0). `route(a, b)`: the hops from
    site a to site b, objects with `link_id`, `bytes_per_s` and `delay_ms` (runtime.links.EmulatedHop).
    `items[node]`: outputs per call of a fan-out transform (missing: the node is not a fan-out).
    `item_nbytes[(src, dst)]`: bytes one delivery of an edge carries (missing: the edge's nbytes).
    `rng` (a numpy Generator): draw each hop's delay as the emulator does, max(0, RTT/2 + N(0, jitter)),
    so a join of several items waits for the slowest draw; None: the mean delay, RTT/2.
    `sources`: the sources the request feeds (default: every source of the graph).
    """
    items = items or {}
    item_nbytes = item_nbytes or {}
    kinds, sites = graph.kinds, graph.sites
    need = {n: {e.src for e in es} for n, es in graph.in_edges.items()}
    link_free: dict[str, float] = {}
    site_free: dict[str, float] = {}
    joins: dict[tuple[str, tuple], dict[str, bool]] = {}
    seq = itertools.count()
    heap: list = []
    end = 0.0

    def send(a: str, b: str, nbytes: float, t: float) -> float:
        for hop in route(a, b):
            start = max(t, link_free.get(hop.link_id, 0.0))
            t = link_free[hop.link_id] = start + nbytes / getattr(hop, "goodput_bytes_per_s", hop.bytes_per_s) * 1e3
            jitter = getattr(hop, "jitter_ms", 0.0)
            t += max(0.0, hop.delay_ms + float(rng.normal(0.0, jitter))) if rng is not None and jitter > 0 else hop.delay_ms
        return t + hop_overhead_ms

    def emit(node: str, branch: tuple, empty: bool, t: float) -> float:
        nonlocal end
        here = sites[node]
        for e in graph.out_edges.get(node, ()):
            to = sites.get(e.dst) or here
            nbytes = 0.0 if empty else float(item_nbytes.get((e.src, e.dst), e.nbytes))
            if kinds.get(e.dst) == "sink":
                end = max(end, send(here, to, nbytes, t))     # to the controller, over the route to the sink's site
            elif to == here:
                t = accept(e.dst, node, branch, empty, t)     # same site: in memory, on this thread
            else:
                arrive = send(here, to, nbytes, t)
                heapq.heappush(heap, (arrive, arrive, next(seq), e.dst, node, branch, empty))
        return t

    def accept(node: str, src: str, branch: tuple, empty: bool, t: float) -> float:
        if need.get(node) and src:
            got = joins.setdefault((node, branch), {})
            got[src] = empty
            if len(got) < len(need[node]):
                return t
            del joins[(node, branch)]
            empty = any(got.values())
        if kinds.get(node) != "source":
            t += step_overhead_ms + (0.0 if empty else float(compute_ms.get(node, 0.0)))
        n = items.get(node)
        if n is None or empty:
            return emit(node, branch, empty, t)
        if n <= 0:
            return emit(node, branch, True, t)
        for i in range(n):
            t = emit(node, branch + (i,), False, t)
        return t

    for s in (graph.sources() if sources is None else sources):
        heapq.heappush(heap, (0.0, 0.0, next(seq), s, "", (), False))
    while heap:
        key, arrive, k, node, src, branch, empty = heapq.heappop(heap)
        site = sites[node]
        if site_free.get(site, 0.0) > key:     # the site's thread is busy: the delivery waits its turn
            heapq.heappush(heap, (site_free[site], arrive, k, node, src, branch, empty))
            continue
        site_free[site] = accept(node, src, branch, empty, key)
        end = max(end, site_free[site])
    return end


def fanout_calls(graph: ExecGraph, steps: Sequence, declared: Mapping[str, float]) -> dict[str, int]:
    """Outputs per call of each fan-out transform in one request's trace `steps` ([kind, name, ms]):
    the runs of its consumers on their sites over its own runs (the declared fanout, rounded, for a
    transform the trace does not show running)."""
    runs: dict[str, int] = {}
    for kind, name, _ in steps:
        if kind == "compute":
            node = name.rpartition("@")[0]
            runs[node] = runs.get(node, 0) + 1
    out = {}
    for node, fan in declared.items():
        if node not in graph.kinds:
            continue
        own = runs.get(node, 0)
        children = [runs.get(e.dst, 0) for e in graph.out_edges.get(node, ())
                    if graph.kinds.get(e.dst) in ("piece", "transform")]
        if own and children:
            out[node] = int(round(max(children) / own))
        else:
            out[node] = int(round(fan))
    return out

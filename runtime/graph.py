"""The executable view of a Plan: nodes, where each runs, the edges between them, tensor binding.

A Plan lists sources, pieces, transforms and sinks (`pieces`, by kind) and the data-flow `edges`
(src, dst, tensor names, bytes). This module answers what a stage worker needs to know: which
site hosts a node, which deliveries a node waits for, which tensors an edge carries, and how a
fan-out branch counts towards completing a sink.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Mapping, Sequence

import numpy as np

from tierplan.planner.plan import Plan, PlanEdge, PlanPiece
from tierplan.errors import InputError

__all__ = ["ExecGraph", "select_tensors", "with_app_renames", "bind_inputs", "branch_weight", "child_branch",
           "load_transform", "SINK_PREFIX", "DEFAULT_TRANSFORM_MODULES", "parse_modules"]

SINK_PREFIX = "sink:"
#: modules whose functions a site may run as transforms unless the operator allows more
DEFAULT_TRANSFORM_MODULES: tuple[str, ...] = ("tierplan.transforms",)


def parse_modules(text: str | None, flag: str = "--allow-transforms") -> tuple[str, ...]:
    """DEFAULT_TRANSFORM_MODULES plus the comma-separated module names of an operator's flag."""
    extra = [m.strip() for m in (text or "").split(",") if m.strip()]
    bad = [m for m in extra if not all(part.isidentifier() for part in m.split("."))]
    if bad:
        raise InputError(f"{flag} {text!r}: {bad[0]!r} is not a module name. To fix: e.g. {flag} mypkg.transforms")
    return tuple(dict.fromkeys([*DEFAULT_TRANSFORM_MODULES, *extra]))


def _kind_of(node_id: str, piece: PlanPiece | None) -> str:
    if piece is not None:
        return piece.kind
    return "sink" if node_id.startswith(SINK_PREFIX) else "source"


def _upstream_source(node: str, ins: Mapping[str, list[PlanEdge]], kinds: Mapping[str, str]) -> str | None:
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if kinds.get(n) == "source":
            return n
        stack.extend(e.src for e in ins.get(n, ()))
    return None


@dataclass(frozen=True)
class ExecGraph:
    """Nodes and edges of a plan, with the site of each node resolved."""

    plan: Plan
    nodes: Mapping[str, PlanPiece]
    kinds: Mapping[str, str]
    sites: Mapping[str, str]            # node -> site class
    in_edges: Mapping[str, tuple[PlanEdge, ...]]
    out_edges: Mapping[str, tuple[PlanEdge, ...]]

    @classmethod
    def from_plan(cls, plan: Plan) -> "ExecGraph":
        """Resolve every node's site; sources without an assignment and dangling edges are errors."""
        nodes = {p.id: p for p in plan.pieces}
        ids = list(nodes)
        for e in plan.edges:
            for n in (e.src, e.dst):
                if n not in nodes and n not in ids:
                    ids.append(n)
        kinds = {n: _kind_of(n, nodes.get(n)) for n in ids}
        ins: dict[str, list[PlanEdge]] = {n: [] for n in ids}
        outs: dict[str, list[PlanEdge]] = {n: [] for n in ids}
        for e in plan.edges:
            outs[e.src].append(e)
            ins[e.dst].append(e)
        sites: dict[str, str] = {}
        for n in ids:
            if n in plan.assignment:
                sites[n] = plan.assignment[n]
        # a source the plan does not place is produced on the edge class whose view `assignment`
        # is (the first of per_class), else where its first consumer runs
        view = next(iter(plan.per_class), None)
        for n in ids:
            if n not in sites and kinds[n] == "source":
                consumer = next((sites[e.dst] for e in outs[n] if e.dst in sites), None)
                site = view or consumer
                if site:
                    sites[n] = site
        # sinks deliver where the plan says (assignment, else the view class's pin from the app's
        # `deliver_to`), else back to their source's site, else where the producer runs
        pins = plan.pins.get(view, {}) if view else {}
        for n in ids:
            if n not in sites and kinds[n] == "sink" and pins.get(n):
                sites[n] = pins[n]
        for n in ids:
            if n not in sites and kinds[n] == "sink" and ins[n]:
                src = _upstream_source(n, ins, kinds)
                sites[n] = sites.get(src, "") if src else sites.get(ins[n][0].src, "")
        missing = [n for n in ids if not sites.get(n) and kinds[n] != "sink"]
        if missing:
            raise InputError(f"plan: no site assigned to {', '.join(missing[:5])}. "
                             "To fix: every source, piece and transform needs an `assignment` entry")
        return cls(plan=plan, nodes=nodes, kinds=kinds, sites=sites,
                   in_edges={n: tuple(v) for n, v in ins.items()},
                   out_edges={n: tuple(v) for n, v in outs.items()})

    # ------------------------------------------------------------------ queries
    def nodes_on(self, site: str) -> list[str]:
        """Nodes (sources, pieces, transforms) hosted on `site`."""
        return [n for n, s in self.sites.items() if s == site and self.kinds[n] != "sink"]

    def used_sites(self) -> list[str]:
        """Site classes hosting at least one source, piece or transform, in plan order."""
        out: list[str] = []
        for n, s in self.sites.items():
            if self.kinds[n] != "sink" and s not in out:
                out.append(s)
        return out

    def sources(self) -> list[str]:
        return [n for n, k in self.kinds.items() if k == "source"]

    def sinks(self) -> list[str]:
        return [n for n, k in self.kinds.items() if k == "sink"]

    def source_outputs(self, source: str) -> list[str]:
        """Tensor names a source produces (its declared outputs, else its own name)."""
        p = self.nodes.get(source)
        names = [o["name"] for o in (p.outputs if p else []) if "name" in o]
        return names or [source]

    @staticmethod
    def _reach(start: list[str], step) -> set[str]:
        """Every node reachable from `start` by repeatedly following `step(node)` (start included)."""
        seen, stack = set(), list(start)
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(step(n))
        return seen

    def sinks_reached(self, sources: list[str]) -> list[str]:
        """Sinks downstream of the given sources."""
        seen = self._reach(sources, lambda n: (e.dst for e in self.out_edges.get(n, ())))
        return [n for n in self.sinks() if n in seen]

    def sites_upstream(self, sinks: list[str]) -> set[str]:
        """Sites hosting a node that any of these sinks depends on."""
        seen = self._reach(sinks, lambda n: (e.src for e in self.in_edges.get(n, ())))
        return {self.sites[n] for n in seen if n in self.sites and self.kinds[n] != "sink"}

    def sources_of(self, node: str) -> str | None:
        """The source node a node's requests come from (the first found upstream)."""
        seen, stack = set(), [node]
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if self.kinds.get(n) == "source":
                return n
            stack.extend(e.src for e in self.in_edges.get(n, ()))
        return None


def select_tensors(outputs: Mapping[str, np.ndarray], edge: PlanEdge, src_kind: str = "piece",
                   dst_kind: str = "piece") -> dict[str, np.ndarray]:
    """The tensors an edge carries out of a node's outputs, named as the consumer reads them.

    An edge with a `rename` map (producer output -> consumer input, from app.yaml's edge
    `tensors`) carries the mapped outputs under the consumer's names. Otherwise it carries the
    outputs it names; a name the producer does not have takes the next unused output in order
    (app edges may connect outputs to inputs "in order"); an edge without names, or a
    transform's edge into a sink, carries every output.
    """
    rename = (edge.model_extra or {}).get("rename") or {}
    if rename:
        out: dict[str, np.ndarray] = {rename[o]: outputs[o] for o in rename if o in outputs}
        if out:
            return out
    names = list(edge.tensors)
    if not names or (src_kind == "transform" and dst_kind == "sink"):
        return dict(outputs)
    out = {}
    unused = [k for k in outputs if k not in names]
    for name in names:
        if name in outputs:
            out[name] = outputs[name]
        elif unused:
            out[name] = outputs[unused.pop(0)]
    return out


def with_app_renames(plan: Plan, app) -> Plan:
    """A copy of the plan whose edges carry app.yaml's tensor maps as `rename` (the plan is not changed)."""
    maps = {(e.src, e.dst): dict(e.tensors) for e in app.edges if e.tensors}
    if not maps:
        return plan
    app_node = {p.id: (p.model if p.kind == "piece" and p.model else p.id) for p in plan.pieces}
    edges = []
    for e in plan.edges:
        key = (app_node.get(e.src, e.src), app_node.get(e.dst, e.dst))
        if key in maps and key[0] != key[1] and not (e.model_extra or {}).get("rename"):
            e = e.model_copy(update={"rename": maps[key]})
        edges.append(e)
    return plan.model_copy(update={"edges": edges})


def bind_inputs(collected: Mapping[str, np.ndarray], wanted: list[str]) -> dict[str, np.ndarray]:
    """Bind delivered tensors to a piece's input names: by name first, then in order."""
    if not wanted:
        return dict(collected)
    out = {w: collected[w] for w in wanted if w in collected}
    rest = [v for k, v in collected.items() if k not in out]
    for w in wanted:
        if w not in out and rest:
            out[w] = rest.pop(0)
    return out


def child_branch(branch: str, index: int, count: int) -> str:
    """The branch of item `index` of `count` fanned out from `branch` (one item keeps the branch)."""
    if count == 1:
        return branch
    part = f"{index}/{count}"
    return f"{branch}.{part}" if branch else part


def branch_weight(branch: str) -> Fraction:
    """Share of a request a delivery on `branch` stands for (1 / product of fan-out counts)."""
    w = Fraction(1)
    if branch:
        for part in branch.split("."):
            _, _, n = part.partition("/")
            w /= max(int(n), 1)
    return w


def load_transform(spec: str, allowed: Sequence[str] = DEFAULT_TRANSFORM_MODULES,
                   node: str = "") -> Callable[[dict], list]:
    """The transform callable `module:function` named by a plan's transform node, if the operator
    allows `module` (exactly one of `allowed`; a process-level setting, never taken from a message)
    and `function` is a public function defined in it (listed in its `__all__` when it has one).

    Anything else is refused with an InputError naming the transform, before any import: a peer
    cannot make a site import a module or reach a name the operator did not allow.
    """
    label = f"transform {node} ({spec!r})" if node else f"transform {spec!r}"
    mod, sep, fn = str(spec).partition(":")
    if not sep or not mod or not fn.isidentifier() or fn.startswith("_"):
        raise InputError(f"{label}: expected `module:function` naming a public function. "
                         "To fix: check `function` in app.yaml")
    if mod not in allowed:
        raise InputError(f"{label}: module {mod!r} is not allowed here (allowed: {', '.join(allowed) or 'none'}). "
                         f"To fix: if you trust {mod}, start the agent / deploy with --allow-transforms {mod}")
    try:
        module = importlib.import_module(mod)
    except ImportError as e:
        raise InputError(f"{label}: cannot import ({e}). To fix: check `function` in app.yaml") from e
    public = getattr(module, "__all__", None)
    obj = getattr(module, fn, None)
    if obj is None or (public is not None and fn not in public) or not callable(obj) or \
            getattr(obj, "__module__", None) != mod:
        raise InputError(f"{label}: {mod} has no public function {fn!r}. To fix: check `function` in app.yaml")
    return obj

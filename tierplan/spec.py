"""App and fleet specs: frozen pydantic models of app.yaml and fleet.yaml, validated once at load.

Parsing is pure: names are checked within one file here; resolving device names against the
catalog and reading ONNX files happen in `tierplan.validate` (a separate step).

Cross-field rules are small named `_check_*` methods returning `(relative YAML path, message)`
pairs; one `model_validator` per spec runs them all and raises every problem at once as a
`cross_field` error, which the loader turns into `file:line: yaml.path: message` lines.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Literal, Union, get_args

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, PositiveInt, Tag,
                      field_validator, model_validator)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

__all__ = [
    "Tier", "TIERS", "DTYPES", "Spec", "DeviceSpec", "LinkSpec", "SiteClassSpec", "FleetSpec",
    "ProfileLayer", "ProfileTable", "ModelSpec", "SourceSpec", "TransformSpec", "EdgeSpec",
    "SinkSpec", "SloSpec", "ObjectiveSpec", "AppSpec", "OBJECTIVES", "did_you_mean", "hinter", "HINTS_MAX",
]

Tier = Literal["edge", "base_station", "cloud"]
TIERS: tuple[str, ...] = ("edge", "base_station", "cloud")
DType = Literal["float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"]
DTYPES: tuple[str, ...] = get_args(DType)
Precision = Literal["fp32", "fp16", "int8"]
ObjectiveName = Literal["cost", "latency", "energy"]
Backend = Literal["tvm", "onnxruntime", "litert"]
OBJECTIVES: tuple[str, ...] = get_args(ObjectiveName)
Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$", max_length=64)]
Problem = tuple[str, str]  # (YAML path relative to the spec that raises it, message)

_FUNCTION_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _default_backends() -> list[Backend]:
    """A device's backends when its YAML names none."""
    return ["onnxruntime", "tvm"]


def did_you_mean(word: str, options: Iterable[str], list_max: int = 8) -> str:
    """'; did you mean 'x'?' for the closest option, else '; known: a, b' (up to list_max), else ''."""
    opts = [str(o) for o in options]
    close = difflib.get_close_matches(str(word), opts, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    if opts and len(opts) <= list_max:
        return f"; known: {', '.join(opts)}"
    return ""


HINTS_MAX = 50  # a rule computes "did you mean" for this many distinct words (the CLI shows 50 problems)


def hinter(options: Iterable[str], list_max: int = 8) -> Callable[[str], str]:
    """`did_you_mean` against fixed options, memoised per word and computed for at most HINTS_MAX words.

    A file with thousands of misspellings then costs O(HINTS_MAX x options), not O(problems x options).
    """
    opts = [str(o) for o in options]
    memo: dict[str, str] = {}

    def hint(word: str) -> str:
        if word not in memo:
            memo[word] = did_you_mean(word, opts, list_max) if len(memo) < HINTS_MAX else ""
        return memo[word]
    return hint


def _raise_problems(problems: list[Problem]) -> None:
    """Raise every cross-field problem at once (one line each: 'path: message')."""
    if problems:
        text = "\n".join(f"{p}: {m}" if p else m for p, m in problems)
        raise PydanticCustomError("cross_field", "{detail}", {"detail": text})


class Spec(BaseModel):
    """Base of every spec object: frozen, unknown keys rejected, field names as in the YAML."""

    # allow_inf_nan=False: YAML reads .inf, .nan and 1e400 as floats; no spec number may be one
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False)


# ----------------------------------------------------------------------------- devices
class DeviceSpec(Spec):
    """One hardware type: what the cost model needs to predict latency, money and energy."""

    name: Name = Field(description="Catalog name, e.g. rpi5.")
    tier: Tier = Field(description="Where this device normally sits: edge, base_station or cloud.")
    description: str = Field(default="", description="Human-readable model name.")
    peak_gflops: dict[Precision, float] = Field(
        description="Peak throughput per precision (fp32, fp16, int8) in GFLOP/s (a multiply-add counts 2).")
    memory_gb: float = Field(gt=0, description="Memory usable for model weights and activations, GB.")
    memory_bandwidth_gbps: float = Field(gt=0, description="Memory bandwidth, GB/s.")
    power_idle_w: float = Field(ge=0, description="Idle power draw, watts.")
    power_active_w: float = Field(gt=0, description="Power draw while running inference, watts.")
    cost_per_hour_usd: float = Field(default=0.0, ge=0, description="Rental price per instance-hour, USD; 0 if owned.")
    dispatch_overhead_us: float = Field(
        default=20.0, ge=0, description="Fixed cost per operator launch (kernel dispatch), microseconds.")
    tvm_target: dict = Field(default_factory=lambda: {"kind": "llvm"},
                             description="TVM target in dict form, e.g. {kind: llvm, mtriple: aarch64-linux-gnu}.")
    backends: list[Backend] = Field(
        default_factory=_default_backends, min_length=1, description="Backends usable on this device.")
    battery: bool = Field(default=False, description="Runs on battery: energy per request matters.")
    radio_nj_per_byte: float = Field(default=0.0, ge=0, description="Radio energy to send one byte, nanojoules.")
    sources: list[str] = Field(default_factory=list, description="Where the figures come from (URLs, datasheets).")

    @field_validator("peak_gflops")
    @classmethod
    def _fp32_present(cls, v: dict) -> dict:
        if "fp32" not in v:
            raise ValueError("peak_gflops needs at least an fp32 figure")
        if any(x <= 0 for x in v.values()):
            raise ValueError("peak_gflops figures must be > 0")
        return v

    @model_validator(mode="after")
    def _cross(self) -> "DeviceSpec":
        _raise_problems(self._check_power_order())
        return self

    def _check_power_order(self) -> list[Problem]:
        """Active power cannot be below idle power."""
        if self.power_active_w < self.power_idle_w:
            return [("power_active_w", f"{self.power_active_w} W is below power_idle_w "
                     f"({self.power_idle_w} W); active power includes idle power")]
        return []


def _device_tag(v: Any) -> str:
    return "name" if isinstance(v, str) else "inline"


DeviceRef = Annotated[
    Union[Annotated[Name, Tag("name")], Annotated[DeviceSpec, Tag("inline")]],
    Discriminator(_device_tag),
]


# ----------------------------------------------------------------------------- fleet
class LinkSpec(Spec):
    """A network link class between a site and the site it attaches to."""

    uplink_mbps: float = Field(gt=0, description="Bandwidth towards the parent site, Mbit/s.")
    downlink_mbps: float = Field(gt=0, description="Bandwidth from the parent site, Mbit/s.")
    rtt_ms: float = Field(ge=0, description="Round-trip time, milliseconds.")
    jitter_ms: float = Field(default=0.0, ge=0, description="Standard deviation of one-way delay, milliseconds.")
    egress_usd_per_gb: float = Field(default=0.0, ge=0, description="Price of data leaving the upper site, USD per GB.")
    capacity_mbps: float | None = Field(
        default=None, gt=0, description="Shared capacity of the parent's side of this link class (all devices together), Mbit/s.")
    loss_rate: float = Field(default=0.0, ge=0, lt=1, description="Fraction of packets lost (retransmitted), 0..1.")


class SiteClassSpec(Spec):
    """A class of identical sites: N devices (or N base stations, regions) of one type."""

    tier: Tier = Field(description="edge, base_station or cloud.")
    device: DeviceRef = Field(description="Catalog device name (see `tierplan devices`), or an inline device.")
    count: int = Field(default=1, ge=1, description="How many sites of this class.")
    attach: Name | None = Field(default=None, description="Site class this one connects up to (edge -> base_station -> cloud).")
    link: Name | None = Field(default=None, description="Link class (in `links`) used to reach `attach`.")
    max_instances: int | None = Field(
        default=None, ge=1, description="Rentable instances per site (base stations, clouds); default 1 for owned sites.")
    max_utilization: float = Field(default=0.8, gt=0, le=1, description="Cap on compute utilisation at the offered load, 0..1.")
    max_memory_gb: float | None = Field(
        default=None, gt=0, description="Memory the app may use per site, GB; default: the device's memory.")
    region: str | None = Field(default=None, description="Free-form location label.")

    @model_validator(mode="after")
    def _cross(self) -> "SiteClassSpec":
        _raise_problems(self._check_attach_needs_link() + self._check_memory_limit())
        return self

    def _check_attach_needs_link(self) -> list[Problem]:
        """A site class that attaches somewhere must say over which link class."""
        if self.attach is not None and self.link is None:
            return [("link", f"missing; a site class with `attach: {self.attach}` needs `link` "
                     "(a link class from `links`)")]
        if self.attach is None and self.link is not None:
            return [("attach", f"missing; `link: {self.link}` is given but no site class to attach to")]
        return []

    def _check_memory_limit(self) -> list[Problem]:
        """A per-site memory limit cannot exceed an inline device's memory."""
        if (self.max_memory_gb is not None and isinstance(self.device, DeviceSpec)
                and self.max_memory_gb > self.device.memory_gb):
            return [("max_memory_gb", f"{self.max_memory_gb} GB exceeds the device's memory_gb "
                     f"({self.device.memory_gb} GB)")]
        return []


class FleetSpec(Spec):
    """The fleet: site classes in three tiers and the link classes between them."""

    name: str = Field(default="fleet", description="Fleet name.")
    sites: dict[Name, SiteClassSpec] = Field(min_length=1, description="Site classes by name.")
    links: dict[Name, LinkSpec] = Field(default_factory=dict, description="Link classes by name.")

    @model_validator(mode="after")
    def _cross(self) -> "FleetSpec":
        _raise_problems(self._check_attach_targets() + self._check_link_names() + self._check_connected())
        return self

    def _check_attach_targets(self) -> list[Problem]:
        """`attach` names an existing site class in a strictly higher tier."""
        order = {t: i for i, t in enumerate(TIERS)}
        hint = hinter(self.sites)
        out: list[Problem] = []
        for name, s in self.sites.items():
            if s.attach is None:
                continue
            if s.attach not in self.sites:
                out.append((f"sites.{name}.attach", f"unknown site class {s.attach!r}" + hint(s.attach)))
            elif order[self.sites[s.attach].tier] <= order[s.tier]:
                out.append((f"sites.{name}.attach", f"{s.attach!r} is {self.sites[s.attach].tier}, not in a "
                            f"higher tier than {s.tier}; attach to a site class further up "
                            "(edge -> base_station -> cloud)"))
        return out

    def _check_link_names(self) -> list[Problem]:
        """`link` names an existing link class."""
        hint = hinter(self.links)
        return [(f"sites.{name}.link", f"unknown link class {s.link!r}" + hint(s.link)
                 + ("" if self.links else "; declare it under `links`"))
                for name, s in self.sites.items() if s.link is not None and s.link not in self.links]

    def _check_connected(self) -> list[Problem]:
        """Every non-cloud class attaches upward when a higher tier exists, so data can reach it."""
        order = {t: i for i, t in enumerate(TIERS)}
        present = sorted(self.tiers(), key=order.__getitem__)
        out: list[Problem] = []
        for name, s in self.sites.items():
            higher = [t for t in present if order[t] > order[s.tier]]
            if s.attach is None and higher:
                out.append((f"sites.{name}", f"no `attach`; the fleet has {' and '.join(higher)} site classes, so "
                            f"say which one {name} connects to (attach: <site class>, link: <link class>)"))
        return out

    def tiers(self) -> set[str]:
        """Tiers that have at least one site class."""
        return {s.tier for s in self.sites.values()}


# ----------------------------------------------------------------------------- app
class ProfileLayer(Spec):
    """One layer of a profile-table model: what it produces and how long it takes where."""

    name: Name = Field(description="Layer name, unique within the table.")
    output_bytes: int = Field(ge=0, description="Bytes of the layer's output tensor(s).")
    flops: float = Field(default=0.0, ge=0, description="FLOPs (multiply-add = 2), used for devices without a measurement.")
    param_bytes: int = Field(default=0, ge=0, description="Weight bytes.")
    latency_ms: dict[Name, Annotated[float, Field(gt=0, allow_inf_nan=True)]] = Field(
        default_factory=dict, description="Measured latency per device type (catalog name), milliseconds; "
        ".inf means the layer cannot run on that device.")
    inputs: list[Name] | None = Field(default=None, description="Layers feeding this one; default: the previous layer (a chain).")


class ProfileTable(Spec):
    """A model given as a chain or DAG of profiled layers, for what-if planning without the file."""

    input_bytes: int = Field(ge=0, description="Bytes of the model's input.")
    layers: list[ProfileLayer] = Field(min_length=1, description="Layers in a topological order.")

    @model_validator(mode="after")
    def _cross(self) -> "ProfileTable":
        _raise_problems(self._check_layer_names() + self._check_layer_inputs())
        return self

    def _check_layer_names(self) -> list[Problem]:
        """Layer names are unique."""
        seen: set[str] = set()
        out: list[Problem] = []
        for i, layer in enumerate(self.layers):
            if layer.name in seen:
                out.append((f"layers[{i}].name", f"duplicate layer name {layer.name!r}"))
            seen.add(layer.name)
        return out

    def _check_layer_inputs(self) -> list[Problem]:
        """A layer's inputs are layers listed before it (so the table is a DAG in order)."""
        out: list[Problem] = []
        before: dict[str, None] = {}  # ordered, with O(1) membership
        for i, layer in enumerate(self.layers):
            for j, src in enumerate(layer.inputs or []):
                if src not in before:
                    out.append((f"layers[{i}].inputs[{j}]", f"{src!r} is not a layer listed before "
                                f"{layer.name!r}" + (did_you_mean(src, before) if len(out) < HINTS_MAX else "")))
            before[layer.name] = None
        return out


class ModelSpec(Spec):
    """A model of the app: an ONNX file (or .tflite), or a profile table."""

    onnx: str | None = Field(default=None, description="Path to the ONNX file, relative to app.yaml, or pkg:PACKAGE/PATH.")
    tflite: str | None = Field(default=None, description="Path to a .tflite file (LiteRT backend), relative to app.yaml or pkg:.")
    profile: ProfileTable | None = Field(default=None, description="Profile table instead of a model file.")
    dims: dict[str, PositiveInt] = Field(default_factory=dict,
                                         description="Values for symbolic dimensions: by dim_param name, or INPUT[AXIS] for an "
                                         "unnamed one, e.g. {height: 640, 'x[0]': 1}.")
    max_pieces: int = Field(default=8, ge=1, le=256, description="At most this many pieces for this model.")
    precision: Precision = Field(default="fp32", description="Precision the model runs at: fp32, fp16 or int8.")

    @model_validator(mode="after")
    def _cross(self) -> "ModelSpec":
        _raise_problems(self._check_exactly_one_source())
        return self

    def _check_exactly_one_source(self) -> list[Problem]:
        """A model is exactly one of an ONNX file, a .tflite file or a profile table."""
        given = [k for k in ("onnx", "tflite", "profile") if getattr(self, k) is not None]
        if len(given) != 1:
            return [("", "a model needs exactly one of `onnx`, `tflite` or `profile`"
                     + (f" (got {', '.join(given)})" if given else ""))]
        return []


class SourceSpec(Spec):
    """Where data enters the app: pinned to a site class or a tier, at a rate, with a tensor shape."""

    at: Name = Field(description="Site class name or tier (edge, base_station, cloud) the data is produced on.")
    rate_hz: float = Field(gt=0, description="Requests per second per producing site, Hz.")
    shape: list[PositiveInt] = Field(min_length=1, description="Tensor shape of one request, e.g. [1, 3, 640, 640].")
    dtype: DType = Field(default="float32", description="Element type of the tensor.")
    private: bool = Field(default=False, description="Raw data may not leave the producing device.")

    @property
    def nbytes(self) -> int:
        """Bytes of one request's tensor."""
        import numpy as np
        n = 1
        for d in self.shape:
            n *= d
        return n * np.dtype(self.dtype).itemsize


class TransformSpec(Spec):
    """A host-side step between models, e.g. crop detected boxes out of the frame."""

    function: str = Field(json_schema_extra={"pattern": _FUNCTION_RE.pattern},
                          description="Python callable `module:function`, importable from app.yaml's folder.")
    cost_ms: float = Field(default=0.0, ge=0, description="Declared cost per call on an edge-class CPU, milliseconds.")
    fanout: float = Field(default=1.0, gt=0, description="Expected outputs per input (e.g. boxes per frame); "
                          "each output is one request downstream.")
    output_shape: list[PositiveInt] | None = Field(default=None, description="Shape of one output tensor.")
    output_dtype: DType = Field(default="float32", description="Element type of the output tensor.")

    @field_validator("function")
    @classmethod
    def _function_format(cls, v: str) -> str:
        if not _FUNCTION_RE.match(v):
            raise ValueError(f"{v!r} is not 'module:function' (e.g. 'mytransforms:crop_boxes')")
        return v


class EdgeSpec(Spec):
    """A data-flow edge: outputs of one node (source, model, transform) feed inputs of another."""

    src: Name = Field(alias="from", description="Producing node (source, model or transform).")
    dst: Name = Field(alias="to", description="Consuming node (model or transform).")
    tensors: dict[str, str] = Field(default_factory=dict,
                                    description="Output name of `from` -> input name of `to`; empty: in order.")


class SinkSpec(Spec):
    """Where a result must be delivered."""

    src: Name = Field(alias="from", description="Node (model or transform) whose output is the result.")
    deliver_to: Literal["source", "edge", "base_station", "cloud", "any"] = Field(
        default="source", description="source = back to the requesting device; a tier = the nearest site of that "
        "tier on the device's chain; any = no fixed place: the planner picks a site of the chain and counts the "
        "transfer there, which is where the last piece producing it runs (no transfer) unless another site is "
        "cheaper for the objective; a result made on several sites is gathered at one of them.")


class SloSpec(Spec):
    """A latency target for one sink at a percentile."""

    sink: Name = Field(description="Sink name (in `sinks`).")
    latency_ms: float = Field(gt=0, description="End-to-end latency target, milliseconds.")
    percentile: float = Field(default=95.0, gt=0, le=100, description="Percentile of requests that must meet it, 0..100.")


class ObjectiveSpec(Spec):
    """What to minimise: weights on cost ($/h), latency (ms) and energy (J per request)."""

    cost: float = Field(default=0.0, ge=0, description="Weight on cost, per USD/hour.")
    latency: float = Field(default=0.0, ge=0, description="Weight on mean end-to-end latency, per millisecond.")
    energy: float = Field(default=0.0, ge=0, description="Weight on edge-device energy, per joule per request.")

    @model_validator(mode="after")
    def _cross(self) -> "ObjectiveSpec":
        _raise_problems(self._check_some_weight())
        return self

    def _check_some_weight(self) -> list[Problem]:
        """At least one weight is positive."""
        if self.cost + self.latency + self.energy <= 0:
            return [("", "objective needs at least one positive weight (cost, latency or energy)")]
        return []


def _objective_tag(v: Any) -> str:
    return "name" if isinstance(v, str) else "weights"


ObjectiveRef = Annotated[
    Union[Annotated[ObjectiveName, Tag("name")], Annotated[ObjectiveSpec, Tag("weights")]],
    Discriminator(_objective_tag),
]


class AppSpec(Spec):
    """The application: models, sources, transforms, the data-flow graph, sinks, SLO and objective."""

    name: str = Field(default="app", description="App name.")
    models: dict[Name, ModelSpec] = Field(min_length=1, description="Models by name.")
    sources: dict[Name, SourceSpec] = Field(min_length=1, description="Data sources by name.")
    transforms: dict[Name, TransformSpec] = Field(default_factory=dict, description="Host-side transforms by name.")
    edges: list[EdgeSpec] = Field(min_length=1, description="Data-flow edges between sources, models and transforms.")
    sinks: dict[Name, SinkSpec] = Field(min_length=1, description="Where results are delivered, by name.")
    slo: list[SloSpec] = Field(default_factory=list, description="Latency targets per sink and percentile.")
    min_throughput_rps: float | None = Field(default=None, gt=0, description="Minimum requests/s the deployment must sustain.")
    objective: ObjectiveRef = Field(default="cost", description="cost, latency, energy, or weights {cost, latency, energy}.")
    budget_usd_per_hour: float | None = Field(default=None, gt=0, description="Most the deployment may cost, USD per hour.")
    base_dir: SkipJsonSchema[str] = Field(default="", exclude=True, description="Directory of app.yaml (set by the loader).")

    @property
    def weights(self) -> ObjectiveSpec:
        """The objective as weights."""
        if isinstance(self.objective, ObjectiveSpec):
            return self.objective
        return ObjectiveSpec(**{self.objective: 1.0})

    def node_kinds(self) -> dict[str, str]:
        """Node name -> 'models' | 'sources' | 'transforms' (first declaration wins)."""
        names: dict[str, str] = {}
        for kind in ("models", "sources", "transforms"):
            for n in getattr(self, kind):
                names.setdefault(n, kind)
        return names

    def resolve_path(self, p: str) -> Path:
        """A model path from the YAML as an absolute path (relative to app.yaml; pkg: from an installed package)."""
        if p.startswith("pkg:"):
            import importlib.util
            pkg, _, rel = p[4:].partition("/")
            try:
                spec = importlib.util.find_spec(pkg)
            except (ImportError, ValueError):
                spec = None
            if spec is None or not spec.submodule_search_locations:
                return Path(f"<package {pkg} not installed>") / rel
            return Path(list(spec.submodule_search_locations)[0]) / rel
        path = Path(p)
        return path if path.is_absolute() else Path(self.base_dir or ".") / path

    @model_validator(mode="after")
    def _cross(self) -> "AppSpec":
        problems = self._check_unique_names() + self._check_edge_ends()
        if not problems:  # graph-shape checks need valid endpoints
            problems += self._check_acyclic() + self._check_every_node_fed() + self._check_duplicate_edges()
        problems += self._check_sinks() + self._check_slo()
        _raise_problems(problems)
        return self

    def _check_unique_names(self) -> list[Problem]:
        """Models, sources and transforms share one namespace."""
        seen: dict[str, str] = {}
        out: list[Problem] = []
        for kind in ("models", "sources", "transforms"):
            for n in getattr(self, kind):
                if n in seen:
                    out.append((f"{kind}.{n}", f"name already used in {seen[n]}; node names must be unique "
                                "across models, sources and transforms"))
                seen.setdefault(n, kind)
        return out

    def _check_edge_ends(self) -> list[Problem]:
        """Edges connect declared nodes, and nothing flows into a source."""
        names = self.node_kinds()
        hint = hinter(names)
        out: list[Problem] = []
        for i, e in enumerate(self.edges):
            if e.src not in names:
                out.append((f"edges[{i}].from", f"unknown node {e.src!r}" + hint(e.src)))
            if e.dst not in names:
                out.append((f"edges[{i}].to", f"unknown node {e.dst!r}" + hint(e.dst)))
            elif names[e.dst] == "sources":
                out.append((f"edges[{i}].to", f"{e.dst!r} is a source; sources have no inputs"))
            if e.src == e.dst:
                out.append((f"edges[{i}]", f"edge from {e.src!r} to itself"))
        return out

    def _check_acyclic(self) -> list[Problem]:
        """The data-flow graph is a DAG."""
        import networkx as nx
        g = nx.DiGraph((e.src, e.dst) for e in self.edges)
        try:
            cycle = nx.find_cycle(g)
        except nx.NetworkXNoCycle:
            return []
        path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
        return [("edges", f"the data-flow graph has a cycle ({path}); remove one of these edges")]

    def _check_every_node_fed(self) -> list[Problem]:
        """Every model and transform has an input edge, and every source feeds something."""
        has_in = {e.dst for e in self.edges}
        has_out = {e.src for e in self.edges}
        out: list[Problem] = []
        for kind in ("models", "transforms"):
            for n in getattr(self, kind):
                if n not in has_in:
                    out.append((f"{kind}.{n}", f"nothing feeds {n!r}; add an edge `{{from: <source or node>, to: {n}}}`"))
        for n in self.sources:
            if n not in has_out:
                out.append((f"sources.{n}", f"source {n!r} feeds nothing; add an edge `{{from: {n}, to: <model>}}`"))
        return out

    def _check_duplicate_edges(self) -> list[Problem]:
        """Each (from, to) pair appears once; put several tensors in one edge's `tensors`."""
        seen: dict[tuple[str, str], int] = {}
        out: list[Problem] = []
        for i, e in enumerate(self.edges):
            key = (e.src, e.dst)
            if key in seen:
                out.append((f"edges[{i}]", f"duplicate of edges[{seen[key]}] ({e.src} -> {e.dst}); "
                            "merge their `tensors` into one edge"))
            seen.setdefault(key, i)
        return out

    def _check_sinks(self) -> list[Problem]:
        """A sink takes the output of a declared model or transform."""
        names = self.node_kinds()
        hint = hinter(names)
        out: list[Problem] = []
        for n, s in self.sinks.items():
            if s.src not in names:
                out.append((f"sinks.{n}.from", f"unknown model or transform {s.src!r}" + hint(s.src)))
            elif names[s.src] == "sources":
                out.append((f"sinks.{n}.from", f"{s.src!r} is a source; a sink takes a model's or transform's output"))
        return out

    def _check_slo(self) -> list[Problem]:
        """An SLO names a declared sink, once per percentile."""
        hint = hinter(self.sinks)
        out: list[Problem] = []
        seen: dict[tuple[str, float], int] = {}
        for i, s in enumerate(self.slo):
            if s.sink not in self.sinks:
                out.append((f"slo[{i}].sink", f"unknown sink {s.sink!r}" + hint(s.sink)))
            key = (s.sink, s.percentile)
            if key in seen:
                out.append((f"slo[{i}]", f"duplicate of slo[{seen[key]}] (sink {s.sink}, p{s.percentile:g})"))
            seen.setdefault(key, i)
        return out

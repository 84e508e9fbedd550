"""App and fleet specs: frozen pydantic models of app.yaml and fleet.yaml, validated once at load.

Parsing is pure: names are checked within one file here; resolving device names against the
catalog and reading ONNX files happen in `tierplan.validate` (a separate step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "Tier", "TIERS", "Spec", "DeviceSpec", "LinkSpec", "SiteClassSpec", "FleetSpec",
    "ProfileLayer", "ProfileTable", "ModelSpec", "SourceSpec", "TransformSpec", "EdgeSpec",
    "SinkSpec", "SloSpec", "ObjectiveSpec", "AppSpec",
]

Tier = Literal["edge", "base_station", "cloud"]
TIERS: tuple[str, ...] = ("edge", "base_station", "cloud")
DType = Literal["float32", "float16", "int8", "uint8", "int32", "int64", "bool"]
Precision = Literal["fp32", "fp16", "int8"]
Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$", max_length=64)]


class Spec(BaseModel):
    """Base of every spec object: frozen, unknown keys rejected, field names as in the YAML."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


# ----------------------------------------------------------------------------- devices
class DeviceSpec(Spec):
    """One hardware type: what the cost model needs to predict latency, money and energy."""

    name: Name = Field(description="Catalog name, e.g. rpi5.")
    tier: Tier = Field(description="Where this device normally sits.")
    description: str = Field("", description="Human-readable model name.")
    peak_gflops: dict[Precision, float] = Field(
        description="Peak throughput per precision in GFLOP/s (a multiply-add counts 2).")
    memory_gb: float = Field(gt=0, description="Memory usable for model weights and activations.")
    memory_bandwidth_gbps: float = Field(gt=0, description="Memory bandwidth in GB/s.")
    power_idle_w: float = Field(ge=0, description="Idle power draw in watts.")
    power_active_w: float = Field(gt=0, description="Power draw while running inference, watts.")
    cost_per_hour_usd: float = Field(0.0, ge=0, description="Rental price per instance-hour; 0 if owned.")
    dispatch_overhead_us: float = Field(
        20.0, ge=0, description="Fixed cost per operator launch (kernel dispatch), microseconds.")
    tvm_target: dict = Field(default_factory=lambda: {"kind": "llvm"},
                             description="TVM target in dict form, e.g. {kind: llvm, mtriple: aarch64-linux-gnu}.")
    backends: list[Literal["tvm", "onnxruntime", "litert"]] = Field(
        default_factory=lambda: ["onnxruntime", "tvm"], description="Backends usable on this device.")
    battery: bool = Field(False, description="Runs on battery: energy per request matters.")
    radio_nj_per_byte: float = Field(0.0, ge=0, description="Radio energy to send one byte, nanojoules.")
    sources: list[str] = Field(default_factory=list, description="Where the figures come from.")

    @field_validator("peak_gflops")
    @classmethod
    def _fp32_present(cls, v: dict) -> dict:
        if "fp32" not in v:
            raise ValueError("peak_gflops needs at least an fp32 figure")
        if any(x <= 0 for x in v.values()):
            raise ValueError("peak_gflops figures must be > 0")
        return v


# ----------------------------------------------------------------------------- fleet
class LinkSpec(Spec):
    """A network link class between a site and the site it attaches to."""

    uplink_mbps: float = Field(gt=0, description="Bandwidth towards the parent site, Mbit/s.")
    downlink_mbps: float = Field(gt=0, description="Bandwidth from the parent site, Mbit/s.")
    rtt_ms: float = Field(ge=0, description="Round-trip time, milliseconds.")
    jitter_ms: float = Field(0.0, ge=0, description="Standard deviation of one-way delay, milliseconds.")
    egress_usd_per_gb: float = Field(0.0, ge=0, description="Price of data leaving the upper site, $/GB.")
    capacity_mbps: float | None = Field(
        None, gt=0, description="Shared capacity of the parent's side of this link class (all devices together).")


class SiteClassSpec(Spec):
    """A class of identical sites: N devices (or N base stations, regions) of one type."""

    tier: Tier = Field(description="edge, base_station or cloud.")
    device: Union[Name, DeviceSpec] = Field(description="Catalog device name, or an inline device.")
    count: int = Field(1, ge=1, description="How many sites of this class.")
    attach: Name | None = Field(None, description="Site class this one connects up to (edge -> base_station -> cloud).")
    link: Name | None = Field(None, description="Link class (in `links`) used to reach `attach`.")
    max_instances: int | None = Field(
        None, ge=1, description="Rentable instances per site (base stations, clouds); default 1 for owned sites.")
    max_utilization: float = Field(0.8, gt=0, le=1, description="Cap on compute utilisation at the offered load.")
    region: str | None = Field(None, description="Free-form location label.")

    @model_validator(mode="after")
    def _attach_needs_link(self) -> "SiteClassSpec":
        if self.attach is not None and self.link is None:
            raise ValueError("a site class with `attach` needs `link` (the link class used to reach it)")
        return self


class FleetSpec(Spec):
    """The fleet: site classes in three tiers and the link classes between them."""

    name: str = Field("fleet", description="Fleet name.")
    sites: dict[Name, SiteClassSpec] = Field(description="Site classes by name.")
    links: dict[Name, LinkSpec] = Field(default_factory=dict, description="Link classes by name.")

    @model_validator(mode="after")
    def _references(self) -> "FleetSpec":
        order = {t: i for i, t in enumerate(TIERS)}
        for name, s in self.sites.items():
            if s.attach is not None:
                if s.attach not in self.sites:
                    raise ValueError(f"sites.{name}.attach: unknown site class {s.attach!r}")
                if order[self.sites[s.attach].tier] <= order[s.tier]:
                    raise ValueError(f"sites.{name}.attach: {s.attach!r} is not in a higher tier than {s.tier}")
            if s.link is not None and s.link not in self.links:
                raise ValueError(f"sites.{name}.link: unknown link class {s.link!r}")
        if not any(s.tier != "edge" for s in self.sites.values()) and not self.sites:
            raise ValueError("sites: the fleet has no sites")
        return self


# ----------------------------------------------------------------------------- app
class ProfileLayer(Spec):
    """One layer of a profile-table model: what it produces and how long it takes where."""

    name: Name
    output_bytes: int = Field(ge=0, description="Bytes of the layer's output tensor(s).")
    flops: float = Field(0.0, ge=0, description="FLOPs (multiply-add = 2), used for devices without a measurement.")
    param_bytes: int = Field(0, ge=0, description="Weight bytes.")
    latency_ms: dict[Name, float] = Field(default_factory=dict, description="Measured latency per device type.")
    inputs: list[Name] | None = Field(None, description="Layers feeding this one; default: the previous layer (a chain).")


class ProfileTable(Spec):
    """A model given as a chain or DAG of profiled layers, for what-if planning without the file."""

    input_bytes: int = Field(ge=0, description="Bytes of the model's input.")
    layers: list[ProfileLayer] = Field(min_length=1)


class ModelSpec(Spec):
    """A model of the app: an ONNX file (or .tflite), or a profile table."""

    onnx: str | None = Field(None, description="Path to the ONNX file, relative to app.yaml, or pkg:PACKAGE/PATH.")
    tflite: str | None = Field(None, description="Path to a .tflite file (LiteRT backend).")
    profile: ProfileTable | None = Field(None, description="Profile table instead of a model file.")
    dims: dict[str, int] = Field(default_factory=dict, description="Values for symbolic input dimensions.")
    max_pieces: int = Field(8, ge=1, le=256, description="At most this many pieces for this model.")
    precision: Precision = Field("fp32", description="Precision the model runs at.")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> "ModelSpec":
        given = [k for k in ("onnx", "tflite", "profile") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a model needs exactly one of `onnx`, `tflite` or `profile`"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self


class SourceSpec(Spec):
    """Where data enters the app: pinned to a site class or a tier, at a rate, with a tensor shape."""

    at: Name = Field(description="Site class name or tier (edge, base_station, cloud) the data is produced on.")
    rate_hz: float = Field(gt=0, description="Requests per second per producing site.")
    shape: list[int] = Field(min_length=1, description="Tensor shape of one request.")
    dtype: DType = "float32"
    private: bool = Field(False, description="Raw data may not leave the producing device.")

    @field_validator("shape")
    @classmethod
    def _positive_dims(cls, v: list[int]) -> list[int]:
        if any(d <= 0 for d in v):
            raise ValueError("every dimension of shape must be > 0")
        return v


class TransformSpec(Spec):
    """A host-side step between models, e.g. crop detected boxes out of the frame."""

    function: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="Python callable `module:function`.")
    cost_ms: float = Field(0.0, ge=0, description="Declared cost per call on an edge-class CPU, ms.")
    fanout: float = Field(1.0, gt=0, description="Expected outputs per input (e.g. boxes per frame).")
    output_shape: list[int] | None = Field(None, description="Shape of one output tensor.")
    output_dtype: DType = "float32"


class EdgeSpec(Spec):
    """A data-flow edge: outputs of one node (source, model, transform) feed inputs of another."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    src: Name = Field(alias="from", description="Producing node.")
    dst: Name = Field(alias="to", description="Consuming node.")
    tensors: dict[str, str] = Field(default_factory=dict,
                                    description="Output name of `from` -> input name of `to`; empty: in order.")


class SinkSpec(Spec):
    """Where a result must be delivered."""

    src: Name = Field(alias="from", description="Node whose output is the result.")
    deliver_to: Literal["source", "edge", "base_station", "cloud", "any"] = Field(
        "source", description="source = back to the producing device.")


class SloSpec(Spec):
    """A latency target for one sink at a percentile."""

    sink: Name
    latency_ms: float = Field(gt=0)
    percentile: float = Field(95.0, gt=0, le=100)


class ObjectiveSpec(Spec):
    """What to minimise: weights on cost ($/h), latency (ms) and energy (J per request)."""

    cost: float = Field(0.0, ge=0)
    latency: float = Field(0.0, ge=0)
    energy: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _some_weight(self) -> "ObjectiveSpec":
        if self.cost + self.latency + self.energy <= 0:
            raise ValueError("objective needs at least one positive weight (cost, latency or energy)")
        return self


class AppSpec(Spec):
    """The application: models, sources, transforms, the data-flow graph, sinks, SLO and objective."""

    name: str = Field("app")
    models: dict[Name, ModelSpec] = Field(min_length=1)
    sources: dict[Name, SourceSpec] = Field(min_length=1)
    transforms: dict[Name, TransformSpec] = Field(default_factory=dict)
    edges: list[EdgeSpec] = Field(min_length=1)
    sinks: dict[Name, SinkSpec] = Field(min_length=1)
    slo: list[SloSpec] = Field(default_factory=list)
    min_throughput_rps: float | None = Field(None, gt=0, description="Minimum requests/s the deployment must sustain.")
    objective: Union[Literal["cost", "latency", "energy"], ObjectiveSpec] = "cost"
    budget_usd_per_hour: float | None = Field(None, gt=0)
    base_dir: str = Field("", exclude=True, description="Directory of app.yaml (set by the loader).")

    @property
    def weights(self) -> ObjectiveSpec:
        """The objective as weights."""
        if isinstance(self.objective, ObjectiveSpec):
            return self.objective
        return ObjectiveSpec(**{self.objective: 1.0})

    def resolve_path(self, p: str) -> Path:
        """A model path from the YAML as an absolute path (relative to app.yaml; pkg: from an installed package)."""
        if p.startswith("pkg:"):
            import importlib.util
            pkg, _, rel = p[4:].partition("/")
            spec = importlib.util.find_spec(pkg)
            if spec is None or not spec.submodule_search_locations:
                return Path(f"<package {pkg} not installed>") / rel
            return Path(list(spec.submodule_search_locations)[0]) / rel
        path = Path(p)
        return path if path.is_absolute() else Path(self.base_dir or ".") / path

    @model_validator(mode="after")
    def _graph(self) -> "AppSpec":
        names: dict[str, str] = {}
        for kind in ("models", "sources", "transforms"):
            for n in getattr(self, kind):
                if n in names:
                    raise ValueError(f"{kind}.{n}: name already used in {names[n]}")
                names[n] = kind
        for i, e in enumerate(self.edges):
            if e.src not in names:
                raise ValueError(f"edges[{i}].from: unknown node {e.src!r}")
            if e.dst not in names:
                raise ValueError(f"edges[{i}].to: unknown node {e.dst!r}")
            if names[e.dst] == "sources":
                raise ValueError(f"edges[{i}].to: {e.dst!r} is a source; sources have no inputs")
        import networkx as nx
        g = nx.DiGraph((e.src, e.dst) for e in self.edges)
        if not nx.is_directed_acyclic_graph(g):
            cycle = " -> ".join(u for u, _ in nx.find_cycle(g))
            raise ValueError(f"edges: the data-flow graph has a cycle ({cycle})")
        for n, s in self.sinks.items():
            if s.src not in names or names[s.src] == "sources":
                raise ValueError(f"sinks.{n}.from: unknown model or transform {s.src!r}")
        for i, s in enumerate(self.slo):
            if s.sink not in self.sinks:
                raise ValueError(f"slo[{i}].sink: unknown sink {s.sink!r}")
        return self

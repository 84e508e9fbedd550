"""The scenario of a simulation run as one frozen config: what `simulate()` rehearses and how.

`Scenario` holds every knob, parsed and checked once; `Scenario.of(**kw)` builds one from the loose
forms the CLI and tests use (flag strings such as "periodic:5", "site:bs#0@10-20:reroute",
"cams=4g~0.3", "8:2", `fast=True`). A sweep cell is a Scenario with a few fields replaced
(`dataclasses.replace`), which is how a run is made deterministic per seed whatever the worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Literal, Mapping, TypedDict, cast

from tierplan.errors import InputError
from tierplan.simulations.batching import BatchPolicy, check_link_sharing, parse_batching
from tierplan.simulations.calibration import ServiceProfile, load_profile
from tierplan.simulations.scenario import (ArrivalSpec, FailureWindow, LinkVariation, MobilityEvent, parse_arrivals,
                                           parse_failure, parse_link, parse_mobility)

__all__ = ["Scenario", "ScenarioArgs", "Engine", "WINDOW_REQUESTS"]

Engine = Literal["auto", "fast", "simpy"]
ServiceDist = Literal["lognormal", "exponential", "deterministic"]
WINDOW_REQUESTS = 400_000   # requests the fast path holds at once (about 100-200 MB on a 3-stage app)
EXACT_QUANTILES = 2_000_000  # latencies per sink kept exactly before the sketch takes over
BLOCK_REQUESTS = 65_536      # expected requests per arrival block (the unit of the random streams)


@dataclass(frozen=True)
class Scenario:
    """Everything a run rehearses besides the plan: strategies, time, arrivals, outages, links, engine.

    engine: "fast" (vectorised, streaming: raises InputError where it cannot run), "simpy", or
    "auto" (fast above 50,000 stage visits where it can run, else SimPy). rates[source] overrides
    requests/s per device; slo_ms[sink] the SLO; replicas[site] servers per instance;
    latency_ms[(piece, site)] a piece's time (a mean, or a measured (p50_ms, p95_ms) pair);
    service_correlation: share of the log-normal service variance common to a request's stages;
    profile: measured node@site times (simulations.calibration); colocate=N: every site on one host
    with N cores; batching: None (off) or a BatchPolicy; link_sharing: fifo or fair.
    window_requests: requests solved at once by the fast path (memory bound, not results), counted
    for a 3-stage journey: a journey of more stages gets proportionally fewer;
    block_requests: expected requests per arrival block (each block draws from its own stream: the
    sample path depends on it, never on window_requests);
    exact_quantiles: latencies per sink kept exactly before quantiles come from the sketch
    (simulations.stats; relative error 0.05%).
    """

    strategies: tuple[str, ...] | None = None
    duration_s: float = 60.0
    seed: int = 0
    arrivals: ArrivalSpec = field(default_factory=ArrivalSpec)
    failures: tuple[FailureWindow, ...] = ()
    mobility: tuple[MobilityEvent, ...] = ()
    links: tuple[LinkVariation, ...] = ()
    engine: Engine = "auto"
    rates: Mapping[str, float] = field(default_factory=dict)
    slo_ms: Mapping[str, float] = field(default_factory=dict)
    replicas: Mapping[str, int] = field(default_factory=dict)
    service_dist: ServiceDist = "lognormal"
    service_cv: float = 0.1
    dispatch: Literal["round_robin", "shared"] = "round_robin"
    latency_ms: Mapping[tuple[str, str], float | tuple[float, float]] = field(default_factory=dict)
    service_correlation: float = 0.0
    profile: ServiceProfile | None = None
    colocate: int | None = None
    batching: BatchPolicy | None = field(default_factory=lambda: parse_batching("auto"))
    link_sharing: Literal["fifo", "fair"] = "fifo"
    window_requests: int = WINDOW_REQUESTS
    exact_quantiles: int = EXACT_QUANTILES
    block_requests: int = BLOCK_REQUESTS

    def __post_init__(self) -> None:
        if not self.duration_s > 0 or self.duration_s != self.duration_s:
            raise InputError(f"--duration {self.duration_s}: must be > 0 seconds")
        if self.engine not in ("auto", "fast", "simpy"):
            raise InputError(f"--engine {self.engine!r}: expected auto, fast or simpy")
        if self.dispatch not in ("round_robin", "shared"):
            raise InputError(f"simulate: dispatch must be round_robin or shared, got {self.dispatch!r}")
        if self.window_requests < 1 or self.block_requests < 1:
            raise InputError(f"simulate: window_requests and block_requests must be >= 1, got "
                             f"{self.window_requests}, {self.block_requests}")

    @property
    def fast(self) -> bool | None:
        """True = fast path only, False = SimPy, None = choose."""
        return {"auto": None, "fast": True, "simpy": False}[self.engine]

    @classmethod
    def of(cls, **kw: object) -> Scenario:
        """A Scenario from loose forms: flag strings, lists, `fast=True|False|None`, a profile path."""
        names = {f.name for f in fields(cls)}
        out: dict[str, object] = {}
        for k, v in kw.items():
            if k == "fast":
                out["engine"] = {None: "auto", True: "fast", False: "simpy"}[v]  # type: ignore[index]
            elif k not in names:
                raise TypeError(f"Scenario has no field {k!r}")
            elif v is not None or k in ("profile", "colocate", "strategies"):
                out[k] = v
        return cls(**_parsed(out))  # type: ignore[arg-type]


class ScenarioArgs(TypedDict, total=False):
    """The keyword forms `Scenario.of` and `simulate(..., **kw)` accept."""

    strategies: Iterable[str] | str | None
    duration_s: float
    seed: int
    arrivals: str | ArrivalSpec
    failures: Iterable[str | FailureWindow] | str | None
    mobility: Iterable[str | MobilityEvent] | str | None
    links: Mapping[str, str | LinkVariation] | Iterable[str | LinkVariation] | str | None
    fast: bool | None
    engine: Engine
    rates: Mapping[str, float] | None
    slo_ms: Mapping[str, float] | None
    replicas: Mapping[str, int] | None
    service_dist: ServiceDist
    service_cv: float
    dispatch: Literal["round_robin", "shared"]
    latency_ms: Mapping[tuple[str, str], float | tuple[float, float]] | None
    service_correlation: float
    profile: ServiceProfile | str | Path | None
    colocate: int | None
    batching: str | tuple[int, float] | BatchPolicy | bool | None
    link_sharing: str
    window_requests: int
    exact_quantiles: int
    block_requests: int


def _items(x: object, parse: Callable[[str], object], kinds: tuple[type, ...]) -> tuple:
    if x is None:
        return ()
    seq = [x] if isinstance(x, (str, *kinds)) else list(cast(Iterable[object], x))
    return tuple(parse(v) if isinstance(v, str) else v for v in seq)


def _parsed(kw: dict[str, object]) -> dict[str, object]:
    """Parse the string and list forms of `kw` into Scenario field values."""
    out = dict(kw)
    if isinstance(out.get("strategies"), str):
        out["strategies"] = tuple(s.strip() for s in str(out["strategies"]).split(",") if s.strip())
    elif out.get("strategies") is not None:
        out["strategies"] = tuple(out["strategies"])  # type: ignore[arg-type]
    if isinstance(out.get("arrivals"), str):
        out["arrivals"] = parse_arrivals(str(out["arrivals"]))
    if "failures" in out:
        out["failures"] = _items(out["failures"], parse_failure, (FailureWindow,))
    if "mobility" in out:
        out["mobility"] = _items(out["mobility"], parse_mobility, (MobilityEvent,))
    if "links" in out:
        links = out["links"]
        if isinstance(links, Mapping):
            out["links"] = tuple(parse_link(f"{k}={v}") if isinstance(v, str) else v for k, v in links.items())
        else:
            out["links"] = _items(links, parse_link, (LinkVariation,))
    if "batching" in out:
        b = out["batching"]
        out["batching"] = b if isinstance(b, BatchPolicy) else parse_batching(b)
    if "link_sharing" in out:
        out["link_sharing"] = check_link_sharing(str(out["link_sharing"]))
    if isinstance(out.get("profile"), (str, Path)):
        out["profile"] = load_profile(out["profile"])  # type: ignore[arg-type]
    for k in ("rates", "slo_ms", "replicas", "latency_ms"):
        if k in out:
            out[k] = dict(out[k] or {})  # type: ignore[call-overload]
    return out

"""Hand-built plans and fleets for the simulator tests (no planner or catalog needed); not a test module."""

from __future__ import annotations

from tierplan.planner.plan import BaselineResult, Plan, PlanEdge, PlanPiece, SinkLatency
from tierplan.spec import DeviceSpec, FleetSpec, LinkSpec, SiteClassSpec


def device(name: str, tier: str, usd: float = 0.0) -> DeviceSpec:
    """A small inline device (the simulator reads only its name and price)."""
    return DeviceSpec(name=name, tier=tier, peak_gflops={"fp32": 10.0}, memory_gb=4, memory_bandwidth_gbps=10,
                      power_idle_w=1, power_active_w=5, cost_per_hour_usd=usd)


def make_fleet(cams: int = 20, bs: int = 2, bs_max: int | None = 1, uplink_mbps: float = 50.0,
               rtt_ms: float = 10.0, jitter_ms: float = 0.0, capacity_mbps: float | None = None) -> FleetSpec:
    """cams (edge) -> bs (base station) -> cloud, with a radio and a backhaul link."""
    return FleetSpec(
        name="test",
        sites={
            "cams": SiteClassSpec(tier="edge", device=device("cam", "edge"), count=cams, attach="bs", link="radio"),
            "bs": SiteClassSpec(tier="base_station", device=device("mec", "base_station", 0.5), count=bs,
                                attach="cloud", link="backhaul", max_instances=bs_max),
            "cloud": SiteClassSpec(tier="cloud", device=device("vm", "cloud", 2.0), count=1, max_instances=8),
        },
        links={
            "radio": LinkSpec(uplink_mbps=uplink_mbps, downlink_mbps=uplink_mbps * 2, rtt_ms=rtt_ms,
                              jitter_ms=jitter_ms, capacity_mbps=capacity_mbps),
            "backhaul": LinkSpec(uplink_mbps=1000, downlink_mbps=1000, rtt_ms=20, egress_usd_per_gb=0.09),
        },
    )


def make_plan(assign: dict[str, str] | None = None, rate_hz: float = 5.0, slo_ms: float = 200.0,
              ms: dict[str, dict[str, float]] | None = None, fanout: float = 1.0) -> Plan:
    """camera -> det/p0 -> det/p1 -> cls/p0 -> sink:labels (cls/p0 runs `fanout` times per frame)."""
    ms = ms or {"det/p0": {"cams": 20.0, "bs": 4.0, "cloud": 2.0},
                "det/p1": {"cams": 30.0, "bs": 6.0, "cloud": 3.0},
                "cls/p0": {"cams": 10.0, "bs": 2.0, "cloud": 1.0}}
    assign = assign or {"det/p0": "cams", "det/p1": "bs", "cls/p0": "bs"}
    pieces = [PlanPiece(id="camera", kind="source", rate_hz=rate_hz),
              *[PlanPiece(id=p, model=p.split("/")[0], latency_ms=v, rate_factor=fanout if p == "cls/p0" else 1.0)
                for p, v in ms.items()],
              PlanPiece(id="sink:labels", kind="sink")]
    edges = [PlanEdge(src="camera", dst="det/p0", nbytes=150_000), PlanEdge(src="det/p0", dst="det/p1", nbytes=60_000),
             PlanEdge(src="det/p1", dst="cls/p0", nbytes=20_000), PlanEdge(src="cls/p0", dst="sink:labels", nbytes=400)]
    baselines = {
        "all-device": BaselineResult(latency_ms=60, cost_per_hour_usd=0.0, assignment={p: "cams" for p in ms}),
        "all-cloud": BaselineResult(latency_ms=30, cost_per_hour_usd=2.0, assignment={p: "cloud" for p in ms}),
        "best-split": BaselineResult(latency_ms=40, cost_per_hour_usd=1.0,
                                     assignment={"det/p0": "cams", "det/p1": "cloud", "cls/p0": "cloud"}),
    }
    return Plan(status="optimal", assignment=assign, sinks={"labels": SinkLatency(latency_ms=50, slo_ms=slo_ms)},
                cost_per_hour_usd=1.0, baselines=baselines, pieces=pieces, edges=edges)


def embedded(plan: Plan, fleet: FleetSpec) -> Plan:
    """`plan` carrying `fleet` as the planner embeds it (what simulate reads when no fleet is passed)."""
    return plan.model_copy(update={"fleet": fleet.model_dump(mode="json", by_alias=True, exclude_none=True)})

"""Every device class of a plan runs at once: per-class copies of the graph, shared sites, scaled workers."""

from __future__ import annotations

import numpy as np
import pytest

from tierplan.errors import InputError
from tierplan.planner.plan import ClassCoverage, Plan
from tierplan.runtime.fleetrun import class_node, fleet_plan, parse_classes, prepare, scaled_workers
from tierplan.runtime.graph import ExecGraph
from tierplan.runtime.handplan import chain_plan
from tierplan.spec import FleetSpec

TIERS = {"phone": "edge", "tablet": "edge", "bs": "base_station", "cloud": "cloud"}


def two_class_fleet() -> FleetSpec:
    """phones and tablets under one base station, under one cloud region."""
    return FleetSpec.model_validate({
        "sites": {"phone": {"tier": "edge", "device": "pixel-8", "count": 300, "attach": "bs", "link": "radio"},
                  "tablet": {"tier": "edge", "device": "pixel-8", "count": 100, "attach": "bs", "link": "radio"},
                  "bs": {"tier": "base_station", "device": "mec-t4", "attach": "cloud", "link": "backhaul"},
                  "cloud": {"tier": "cloud", "device": "aws-g5-xlarge"}},
        "links": {"radio": {"uplink_mbps": 800, "downlink_mbps": 800, "rtt_ms": 2},
                  "backhaul": {"uplink_mbps": 2000, "downlink_mbps": 2000, "rtt_ms": 2}}})


def two_class_plan(files) -> Plan:
    """SqueezeNet in 3 pieces: phones run p0, p1 and send p2 to the cloud; tablets offload p0, p1 to the bs."""
    base = chain_plan(files, ["phone", "phone", "cloud"], "phone", fleet=two_class_fleet())
    per = {"phone": {"m/p0": "phone", "m/p1": "phone", "m/p2": "cloud"},
           "tablet": {"m/p0": "bs", "m/p1": "bs", "m/p2": "cloud"}}
    pins = {"phone": {"input": "phone", "sink:output": "phone"}, "tablet": {"input": "tablet", "sink:output": "tablet"}}
    cov = {"phone": ClassCoverage(devices=300, mode="offload", latency_ms=50, meets_slo=True),
           "tablet": ClassCoverage(devices=100, mode="offload", latency_ms=60, meets_slo=True)}
    return base.model_copy(update={"per_class": per, "pins": pins, "coverage": cov,
                                   "instances": {"bs": 8, "cloud": 2}})


def test_each_class_gets_its_own_copy_of_the_graph_on_its_own_sites(sq_files):
    """Two classes: every node twice (CLASS/NODE), each copy where its class's view puts it, edges within a class."""
    plan = two_class_plan(sq_files)
    exe = fleet_plan(plan, ["phone", "tablet"])
    g = ExecGraph.from_plan(exe)
    assert g.sites[class_node("phone", "m/p0")] == "phone" and g.sites[class_node("tablet", "m/p0")] == "bs"
    assert g.sites[class_node("tablet", "input")] == "tablet"
    assert g.sites[class_node("tablet", "sink:output")] == "tablet"
    assert sorted(g.nodes_on("cloud")) == [class_node("phone", "m/p2"), class_node("tablet", "m/p2")]
    assert all(e.src.split("/")[0] == e.dst.split("/")[0] for e in exe.edges)   # no edge crosses classes
    assert len(exe.pieces) == 2 * len(plan.pieces)


def test_one_class_keeps_the_plans_node_names_with_its_view():
    """A single class runs under the plan's own node names, with that class's placement."""
    plan = Plan(status="feasible", assignment={"a": "x"}, per_class={"c1": {"a": "x"}, "c2": {"a": "y"}})
    exe = fleet_plan(plan, ["c2"])
    assert exe.assignment == {"a": "y"} and list(exe.per_class) == ["c2"]


def test_shared_sites_run_the_plans_instances_scaled_to_the_devices_that_run(sq_files):
    """bs (8 instances for the tablets' 100 devices) and cloud (2 for all 400) scale to the devices run, at least 1."""
    plan = two_class_plan(sq_files)
    workers, why = scaled_workers(plan, ["phone", "tablet"], 25, TIERS)
    assert workers["phone"] == workers["tablet"] == 25                # edge: the devices themselves
    assert workers["bs"] == 2                                         # 8 x 25/100
    assert workers["cloud"] == 1                                      # 2 x 50/400 = 0.25 -> at least one
    assert "8 x 25/100" in why["bs"] and "at least one" in why["cloud"]
    only_phones, _ = scaled_workers(plan, ["phone"], 1, TIERS)
    assert "bs" not in only_phones                                    # a site no running class uses is not started


def test_class_flag_names_only_the_plans_classes(sq_files):
    """--class NAME[,NAME] picks a subset; an unknown name is one line naming the choices."""
    plan = two_class_plan(sq_files)
    assert parse_classes(plan, None) == ["phone", "tablet"]
    assert parse_classes(plan, "tablet") == ["tablet"]
    with pytest.raises(InputError, match="'laptop' is not a device class.*phone, tablet.*To fix"):
        parse_classes(plan, "tablet,laptop")
    with pytest.raises(InputError, match="--devices-per-class 0"):
        prepare(plan, None, 0, TIERS)


@pytest.mark.integration
def test_every_class_runs_on_its_sites_and_the_shared_ones(ray_cluster, sq_files, sq_input, sq_reference):
    """Both classes deployed at once (2 devices each): each request runs its class's pieces where the plan
    puts them, the cloud hosts both classes' last piece, and every result equals the whole model's."""
    from tierplan.runtime.deploy import deploy

    plan = two_class_plan(sq_files)
    with deploy(plan, cluster=ray_cluster, request_timeout_s=20, devices_per_class=2) as svc:
        info = svc.describe()
        assert info["fleet"]["classes"] == ["phone", "tablet"]
        assert {s for s in info["sites"]} >= {"phone", "phone#1", "tablet", "tablet#1", "bs", "cloud"}
        for cls, where in (("phone", {"m/p0": "phone", "m/p2": "cloud"}), ("tablet", {"m/p0": "bs", "m/p2": "cloud"})):
            out, trace = svc.predict_traced(sq_input, device_class=cls)
            np.testing.assert_allclose(out["output"]["softmaxout_1"], sq_reference, rtol=1e-5, atol=1e-6)
            ran = {n for kind, n, _ in trace.steps if kind == "compute"}
            assert {f"{class_node(cls, p)}@{s}" for p, s in where.items()} <= ran
            assert trace.device_class == cls
        with pytest.raises(InputError, match="laptop"):
            svc.predict(sq_input, device_class="laptop")

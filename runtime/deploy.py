"""Turn a Plan into a running Service: Ray actors for base stations and clouds, agents for edge sites.

    with deploy(plan, local=True) as service:
        y = service.predict({"camera": frame})

Local (the embedded default): a Ray cluster on this machine with one node per base-station or
cloud site class (`runtime.cluster.LocalCluster`, or the one passed in), and one agent process
per edge site class. Remote: `ray_address` names an existing cluster whose nodes were started
with the site resources and labels (see runtime.cluster), and `agents` gives the host:port of
each edge site's `tierplan agent`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

from tierplan.planner.plan import Plan
from tierplan.runtime.agent import AgentProcess
from tierplan.runtime.cluster import LocalCluster, SiteNodeDown, ensure_ray_env, start_site_actor
from tierplan.runtime.fleetrun import prepare
from tierplan.runtime.graph import DEFAULT_TRANSFORM_MODULES, ExecGraph, load_transform, with_app_renames
from tierplan.runtime.links import route_table
from tierplan.runtime.proto import runtime_pb2 as pb
from tierplan.runtime.security import CONTROLLER, TlsConfig, check_listen
from tierplan.runtime.service import Service, files_for, slot_key
from tierplan.runtime.options import LINKS_DIR_MARKER, StageOptions
from tierplan.errors import InputError, RuntimeFault

__all__ = ["deploy", "metrics_ports", "local_threads", "site_tiers", "request_deadline_s",
           "SLO_DEADLINE_FACTOR"]

# A request's deadline is a multiple of its SLO: late results still count as answers (and as
# SLO misses in the metrics), but nothing waits for ever. On a shared 2-core machine the
# measured tail reaches several times the SLO, hence the generous factor.
SLO_DEADLINE_FACTOR = 10.0
MIN_DEADLINE_S = 2.0
NO_SLO_DEADLINE_S = 30.0
ACTOR_STOP_TIMEOUT_S = 2.0
_RAY_CONNECT_RETRY_S = 1.0
_RAY_GCS_WAIT_ENV = "RAY_gcs_server_port_wait_time_s"   # Ray's count of GCS connect tries (ray/_private/node.py)
log = logging.getLogger("tierplan.runtime")


def request_deadline_s(plan: Plan, slo_factor: float = SLO_DEADLINE_FACTOR) -> float:
    """Default deadline of a request: `slo_factor` x the plan's largest SLO (at least MIN_DEADLINE_S),
    or NO_SLO_DEADLINE_S when the plan has none. Every hop's gRPC timeout is what remains of it."""
    slos = [s.slo_ms for s in plan.sinks.values() if s.slo_ms]
    if not slos:
        return NO_SLO_DEADLINE_S
    return max(MIN_DEADLINE_S, max(slos) * slo_factor / 1e3)


def site_tiers(graph: ExecGraph, known: Mapping[str, str]) -> dict[str, str]:
    """Tier of every site the plan uses, from `known` (the plan's fleet); a site it does not know is
    refused: guessing a tier would start the wrong kind of worker."""
    missing = [s for s in graph.used_sites() if s not in known]
    if missing:
        raise InputError(f"plan: site class {missing[0]!r} is not in the plan's fleet. To fix: re-run "
                         "`tierplan plan` (or, for a hand-made plan, embed a fleet that has it)")
    return {s: known[s] for s in graph.used_sites()}


def with_free_batch(plan: Plan, files: Mapping[str, pb.PieceFile], batch_sites: Sequence[str]) -> dict[str, pb.PieceFile]:
    """`files` with each onnxruntime piece on a batching site served with its batch dimension free again
    when its model's inputs had one (runtime.batchdim: partitioning bound it to 1), so the site can
    batch its requests; a piece that fails the check, or whose model is fixed-size, is left as it is."""
    if not plan.batch_free_models or not batch_sites:
        return dict(files)
    from tierplan.runtime.batchdim import free_batch
    free_models = set(plan.batch_free_models)
    pieces = {p.id: p for p in plan.pieces}
    out = dict(files)
    for node, f in files.items():
        p = pieces.get(node)
        entry = json.loads(f.manifest_entry_json or "{}")
        if p is None or p.model not in free_models or plan.assignment.get(node) not in batch_sites or \
                entry.get("backend", "onnxruntime") != "onnxruntime":
            continue
        freed = free_batch(f.data)
        if freed is not None:
            entry.update(sha256=hashlib.sha256(freed).hexdigest(), batch_dim="freed (runtime.batchdim)")
            out[node] = pb.PieceFile(node=f.node, manifest_entry_json=json.dumps(entry), data=freed,
                                     filename=f.filename)
    return out


def local_threads(n_sites: int) -> int:
    """onnxruntime intra-op threads per site worker when every site runs on this machine: the cores
    shared out, at least one. Each worker's own threads otherwise oversubscribe the cores (three
    sites on 2 cores: 6 threads) and the pipeline already runs the sites in parallel; measured here
    (SqueezeNet in 3 sites, 8 concurrent requests) 1 thread spent ~2 ms less CPU per request."""
    return max(1, (os.cpu_count() or 1) // max(n_sites, 1))


def metrics_ports(base: int, names: Sequence[str], check: Sequence[str] = ()) -> dict[str, int]:
    """name -> its metrics port: `base`, base + 1, ... in order (all 0, a free port each, when `base` is 0).

    The names in `check` run on this host: their ports must be free here (InputError naming the
    first taken one, before anything starts)."""
    if not base:
        return {n: 0 for n in names}
    if not 0 < base <= 65536 - len(names):
        raise InputError(f"--metrics-port {base}: {len(names)} processes need ports {base}-{base + len(names) - 1}, "
                         "beyond 65535. To fix: choose a base port below " + str(65536 - len(names)))
    ports = {n: base + i for i, n in enumerate(names)}
    for n in check:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the metrics server binds
            try:
                s.bind(("127.0.0.1", ports[n]))
            except OSError as e:
                raise InputError(f"--metrics-port {base}: port {ports[n]} (metrics of {n}) is taken on 127.0.0.1 "
                                 f"({e.strerror or e}); this deployment needs {base}-{base + len(names) - 1}. "
                                 "To fix: choose another base port") from None
    return ports


def deploy(plan: Plan | str | Path, local: bool = True, *, manifest_root: str | Path | None = None,
           manifest: Mapping | None = None, cluster: LocalCluster | None = None,
           tls_dir: str | Path | None = None, agents: Mapping[str, str] | None = None,
           ray_address: str | None = None, options: StageOptions | None = None,
           request_timeout_s: float | None = None, front_door: str | None = None,
           emulate_links: bool = True, ready_timeout_s: float = 180.0,
           replicas: int | Mapping[str, int] | None = None, allow_transforms: Sequence[str] | None = None,
           insecure: bool = False, metrics_port: int = 0, classes: Sequence[str] | None = None,
           devices_per_class: int = 1, batch: tuple[int, float] | None = None) -> Service:
    """Start every site's worker for `plan` and return the ready Service (a context manager).

    `replicas`: workers per Ray site (base stations, clouds; one number for all, or per site).
    Deliveries spread over a site's replicas by request; when one dies, its in-flight requests
    start again on the others once, within their deadline. None (default): the plan's instances
    scaled to the devices that run (runtime.fleetrun.scaled_workers).
    `classes`: the edge device classes that run (default: every class of the plan, each on its own
    copy of the graph, the shared sites hosting every class's copies: runtime.fleetrun);
    `devices_per_class`: agents started per edge class (a request stays on one of them).
    `allow_transforms`: modules whose functions the workers this call starts (agents, Ray actors)
    may run as transforms, `tierplan.transforms` when None; a transform of the plan from another
    module is refused here, before anything starts. Agents started elsewhere keep their own list.
    `front_door` beyond loopback needs `tls_dir`, or `insecure` (SECURITY.md).
    `metrics_port`: the controller serves its Prometheus metrics on this loopback port and each
    worker started here on the next ones (Ray sites and their replicas, then edge agents, in the
    plan's site order: `describe()["metrics"]` lists them); 0 (default): free ports.
    `batch`: (max_batch, max_wait_ms) of the batching sites instead of StageOptions' (max_batch 1: none).
    """
    if not isinstance(plan, Plan):
        plan_path = Path(plan)
        plan = Plan.load(plan_path)
        base_dir = plan_path.parent
    else:
        base_dir = None
    if plan.status == "infeasible":
        raise InputError(f"plan is infeasible ({plan.reason or 'no reason given'}); nothing to deploy. "
                         "To fix: relax the SLO or the constraints and re-run `tierplan plan`")
    fleet = plan.fleet_model()            # the plan's own fleet: tiers, routes (no fleet.yaml, no catalog)
    if plan.app is not None:              # the app's tensor maps on the edges (a hand-made plan may have no app)
        plan = with_app_renames(plan, plan.app_spec())
    known = {name: c.tier for name, c in fleet.classes.items()}
    run = prepare(plan, classes, devices_per_class, known)
    plan = run.plan
    graph = ExecGraph.from_plan(plan)
    allowed = tuple(dict.fromkeys([*DEFAULT_TRANSFORM_MODULES, *(allow_transforms or ())]))
    for node in graph.nodes:   # the workers refuse them too; say so before starting anything
        if graph.kinds[node] == "transform" and graph.sites.get(node) not in (agents or {}):
            load_transform((graph.nodes[node].model_extra or {}).get("function") or "", allowed, node=node)
    if front_door is not None:
        check_listen(front_door, tls_dir, insecure)
    tiers = site_tiers(graph, known)
    all_sites = list(dict.fromkeys([*graph.used_sites(), *graph.sites.values()]))
    routes = route_table(fleet, [s for s in all_sites if s]) if emulate_links else {}
    options = options or StageOptions(batch_sites=tuple(s for s, t in tiers.items() if t == "cloud"),
                                      threads=local_threads(len(tiers)) if local and not agents else 0)
    if batch is not None:
        options = replace(options, max_batch=int(batch[0]), max_wait_ms=float(batch[1]))
    tls = TlsConfig.from_dir(tls_dir, CONTROLLER) if tls_dir else None
    if request_timeout_s is None:
        request_timeout_s = request_deadline_s(plan)
    agents = dict(agents or {})
    ray_tiers = [s for s, t in tiers.items() if t != "edge" and s not in agents]
    counts = {s: run.workers.get(s, 1) if replicas is None else
              (replicas.get(s, 1) if isinstance(replicas, Mapping) else replicas) for s in ray_tiers}
    counts.update({s: run.workers.get(s, 1) if local else 1 for s, t in tiers.items() if t == "edge" and s not in agents})
    bad = {s: n for s, n in counts.items() if not isinstance(n, int) or n < 1}
    if bad:
        raise InputError(f"deploy: replicas must be whole numbers >= 1, got {bad}. To fix: pass e.g. replicas=2")
    shared_links = ""
    if local and routes and not agents and not options.links_shared_dir:
        # every process of a local deployment shares each emulated link's bandwidth (runtime.links)
        shared_links = tempfile.mkdtemp(prefix="tierplan-links-")
        options = replace(options, links_shared_dir=shared_links)
    if options.links_shared_dir and Path(options.links_shared_dir).is_dir():   # workers use it only if marked
        (Path(options.links_shared_dir) / LINKS_DIR_MARKER).touch()
    try:
        files = files_for(plan, manifest, base_dir, manifest_root, emulate_cross=local, classes=run.classes)
        files = with_free_batch(plan, files, options.batch_sites)
        service = Service(plan, routes=routes, files=files, options=options, tls=tls,
                          request_timeout_s=request_timeout_s, replicas=counts, fleet_run=run)
    except BaseException:
        if shared_links:
            shutil.rmtree(shared_links, ignore_errors=True)
        raise
    if shared_links:
        service.add_closer(lambda: shutil.rmtree(shared_links, ignore_errors=True))  # runs last
    ray_sites = [s for s, t in tiers.items() if t != "edge" and s not in agents]
    local_agents = [s for s, t in tiers.items() if t == "edge" and s not in agents] if local else []
    slots = [slot_key(s, k) for s in ray_sites for k in range(counts.get(s, 1))]
    agent_slots = [slot_key(s, k) for s in local_agents for k in range(counts.get(s, 1))]
    try:
        ports = metrics_ports(metrics_port, ["controller", *slots, *agent_slots],
                              check=["controller", *agent_slots, *(slots if local else [])])
    except BaseException:
        service.close()
        raise
    try:
        service.start_controller(ports["controller"])
        if ray_sites:
            _start_ray_sites(service, ray_sites, local, cluster, ray_address, tls_dir, allowed, ready_timeout_s,
                             ports)
        for site, t in tiers.items():
            if site in agents:
                service.set_address(site, agents[site])
            elif t == "edge":
                if not local:
                    raise InputError(f"edge site {site!r} has no agent address. To fix: run "
                                     f"`tierplan agent --site {site} --listen HOST:PORT` there and pass it")
                for k in range(counts.get(site, 1)):   # one agent per device of the class
                    agent = AgentProcess(site, service.address, str(tls_dir) if tls_dir else None,
                                         allow_transforms=allowed, metrics_port=ports[slot_key(site, k)], replica=k)
                    service.add_closer(agent.stop)
                    service.agents[slot_key(site, k)] = agent
                    agent.start()
        service.wait_ready(ready_timeout_s)
        if front_door is not None:
            service.serve_front_door(front_door)
    except BaseException:
        service.close()
        raise
    return service


def _start_ray_sites(service: Service, sites: list[str], local: bool, cluster: LocalCluster | None,
                     ray_address: str | None, tls_dir, allowed: tuple[str, ...], ready_timeout_s: float,
                     ports: Mapping[str, int] | None = None) -> None:
    ensure_ray_env()
    import ray
    if cluster is None and local:
        cluster = LocalCluster(sites)
        service.add_closer(cluster.shutdown)
    elif cluster is not None:
        cluster.ensure_sites(sites)
    elif not ray.is_initialized():
        _connect_ray(ray_address or "auto", ready_timeout_s)
        service.add_closer(ray.shutdown)   # runs after the actors are stopped: leave the cluster cleanly
    service.cluster = cluster
    for site in sites:
        n = service.replicas.get(site, 1)
        for k in range(n):
            handle = _start_actor(cluster, site, service.address, tls_dir, k, n, allowed,
                                  (ports or {}).get(slot_key(site, k), 0))
            service.actors[slot_key(site, k)] = handle
            service.add_closer(functools.partial(_stop_actor, handle))


def _connect_ray(address: str, timeout_s: float) -> None:
    """Connect to an existing Ray cluster, waiting for it to be ready: a head that `ray start` has just
    launched opens its port before its node has registered, and `ray.init` then fails with
    ConnectionError. Retried until `timeout_s`; then a RuntimeFault that names the address."""
    import ray

    from tierplan.logs import log_level
    deadline = time.monotonic() + timeout_s
    host, _, port = address.rpartition(":")
    while port.isdigit():   # Ray's own connect waits minutes on a dead address: wait for the port first
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=_RAY_CONNECT_RETRY_S).close()
            break
        except OSError as e:
            if time.monotonic() >= deadline:
                raise RuntimeFault(f"--ray-address {address}: nothing listens there after {timeout_s:.0f} s ({e}). "
                                   "To fix: start the head with `ray start --head ...` and check the address") from e
            time.sleep(_RAY_CONNECT_RETRY_S)
    while True:
        # Ray's driver retries its GCS connection 20 times (about 35 s each on a head that died after opening
        # its port): one try per call here, so the deadline below bounds the whole wait.
        saved = os.environ.get(_RAY_GCS_WAIT_ENV)
        os.environ[_RAY_GCS_WAIT_ENV] = "1"
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level=log_level())   # Ray's INFO lines stay off unless asked
            return
        except (ConnectionError, RuntimeError) as e:
            if ray.is_initialized():
                ray.shutdown()
            if time.monotonic() >= deadline:
                raise RuntimeFault(f"--ray-address {address}: no Ray cluster ready there after "
                                   f"{time.monotonic() - deadline + timeout_s:.0f} s "
                                   f"({(str(e).strip().splitlines() or [type(e).__name__])[0][:200]}). To fix: start it with "
                                   "`ray start --head ...` and check the address") from e
            log.info("Ray cluster at %s not ready yet (%s); retrying", address, e)
            time.sleep(_RAY_CONNECT_RETRY_S)
        finally:
            if saved is None:
                os.environ.pop(_RAY_GCS_WAIT_ENV, None)
            else:
                os.environ[_RAY_GCS_WAIT_ENV] = saved


def _start_actor(cluster: LocalCluster | None, site: str, controller: str, tls_dir, replica: int, replicas: int,
                 allowed: tuple[str, ...], metrics_port: int = 0):
    """Start one site actor; on a local cluster whose site node died meanwhile, restart the node once."""
    tls = str(tls_dir) if tls_dir else None
    alive = (lambda: cluster.site_alive(site)) if cluster is not None else None
    try:
        return start_site_actor(site, controller, tls, replica=replica, replicas=replicas, alive=alive,
                                allow_transforms=allowed, metrics_port=metrics_port)[0]
    except SiteNodeDown as e:
        if cluster is None:
            raise
        log.warning("%s; starting it again", e)
        cluster.restart_site(site)
        return start_site_actor(site, controller, tls, replica=replica, replicas=replicas, alive=alive,
                                allow_transforms=allowed, metrics_port=metrics_port)[0]


def _stop_actor(handle) -> None:
    """Stop a site actor's worker (its segments go with it), then kill the actor for good."""
    import ray
    try:
        ray.get(handle.stop.remote(), timeout=ACTOR_STOP_TIMEOUT_S)
    except Exception as e:  # already dead or stuck: killed below either way, and the controller sweeps
        log.debug("site actor did not stop cleanly: %s", e)
    ray.kill(handle, no_restart=True)

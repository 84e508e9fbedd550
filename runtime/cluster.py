"""The local Ray cluster (one Ray node per base-station or cloud site) and the site actor.

Each site class becomes a Ray node with the custom resource `site:<name>` (one unit) and the
label `tierplan-site=<name>`; the site's stage worker is an actor that asks for that unit, so
Ray places it on its site's node and restarts it (max_restarts=-1) when the node returns. The
same placement works on real hosts started with

    ray start --head --resources '{"site:cloud": 1}' --labels tierplan-site=cloud
    ray start --address HEAD:6379 --resources '{"site:bs": 1}' --labels tierplan-site=bs
"""

from __future__ import annotations

import logging

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from tierplan.errors import RuntimeFault

if TYPE_CHECKING:
    from ray._private.node import Node

__all__ = ["LocalCluster", "SiteActor", "SiteNodeDown", "site_resource", "SITE_LABEL", "ensure_ray_env",
           "start_site_actor"]

log = logging.getLogger(__name__)

SITE_LABEL = "tierplan-site"
_START_ATTEMPTS = 3
_POLL_S = 2.0                                  # how often a starting actor's node is checked
_NODE_OBJECT_STORE_BYTES = 80 * 1024 * 1024   # small: tensors cross sites over gRPC, not the object store


def site_resource(site: str) -> str:
    """The custom Ray resource that pins a site's actor to its node."""
    return f"site:{site}"


def ensure_ray_env() -> None:
    """Environment Ray needs before it starts to stay on loopback (DESIGN.md, pitfalls)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    root = str(Path(__file__).resolve().parent.parent)   # workers import runtime/ from this checkout
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, *paths) if p)
    from tierplan.logs import quiet_ray
    quiet_ray()   # Ray's import sets its loggers to INFO; back to WARNING unless asked (tierplan.logs)


class LocalCluster:
    """A real Ray cluster on this machine: a head (no CPUs, the driver) plus one node per site."""

    def __init__(self, sites: Sequence[str] = (), connect: bool = True) -> None:
        ensure_ray_env()
        import ray
        from ray.cluster_utils import Cluster

        from tierplan.logs import log_level
        self._lock = threading.Lock()
        for attempt in range(_START_ATTEMPTS):
            # Ray gives a node 30 s to register; on a saturated machine that can fail: try again
            self.cluster = Cluster(initialize_head=False)
            try:
                self.cluster.add_node(num_cpus=0, include_dashboard=False, node_ip_address="127.0.0.1",
                                      object_store_memory=_NODE_OBJECT_STORE_BYTES, labels={SITE_LABEL: "head"})
                break
            except Exception as e:  # Ray raises a bare Exception on a startup timeout
                self.cluster.shutdown()
                if attempt + 1 == _START_ATTEMPTS:
                    raise RuntimeFault(f"local Ray cluster did not start ({e}). To fix: retry when the "
                                       "machine is less loaded") from e
        self.nodes: dict[str, Node] = {}
        for s in sites:
            self.add_site(s, wait=False)
        self.cluster.wait_for_nodes()
        self.connected = False
        if connect and not ray.is_initialized():
            ray.init(address=self.cluster.address, include_dashboard=False, _node_ip_address="127.0.0.1",
                     log_to_driver=False, logging_level=log_level())
            self.connected = True

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_site(self, site: str, wait: bool = True) -> None:
        """Add the Ray node of a site class (again, after a failure)."""
        with self._lock:
            if site in self.nodes:
                return
            for attempt in range(_START_ATTEMPTS):
                before = set(self.cluster.worker_nodes)
                try:
                    node = self.cluster.add_node(
                        wait=wait, num_cpus=1, resources={site_resource(site): 1}, labels={SITE_LABEL: site},
                        node_ip_address="127.0.0.1", object_store_memory=_NODE_OBJECT_STORE_BYTES)
                    if wait and not _raylet_stays_up(node):
                        raise RuntimeError("its raylet exited right after registering")
                    self.nodes[site] = node
                    return
                except Exception as e:  # Ray raises a bare Exception when a node misses its 30 s start window
                    # Ray's Cluster lists the node before waiting for it: a node that never registered would
                    # stay listed, and every later wait_for_nodes() would time out on it. Remove it first.
                    for node in set(self.cluster.worker_nodes) - before:
                        try:
                            self.cluster.remove_node(node, allow_graceful=False)
                        except Exception as gone:  # its processes already exited
                            log.debug("removing unregistered node of %s: %s", site, gone)
                    if attempt + 1 == _START_ATTEMPTS:
                        raise RuntimeFault(f"Ray node for site {site!r} did not start ({e}). To fix: retry when "
                                           "the machine is less loaded") from e

    def ensure_sites(self, sites: list[str]) -> None:
        missing = [s for s in sites if s not in self.nodes]
        for s in missing:
            self.add_site(s, wait=False)
        if missing:
            self.cluster.wait_for_nodes()

    def site_alive(self, site: str) -> bool:
        """Whether the site's Ray node (started here) still has its raylet running and the cluster
        still counts it alive (the GCS marks a raylet dead after missed health checks)."""
        import ray
        node = self.nodes.get(site)
        if node is None:
            return False
        raylets = node.all_processes.get("raylet")
        if not raylets or any(p.process.poll() is not None for p in raylets):
            return False
        try:
            states = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
        except Exception as e:  # the GCS did not answer: judge by the process alone
            log.debug("ray.nodes() failed: %s", e)
            return True
        return states.get(node.node_id, True)

    def restart_site(self, site: str) -> None:
        """Replace a site's dead Ray node with a fresh one (a raylet killed by the OS or missing its
        health checks on a saturated machine)."""
        with self._lock:
            node = self.nodes.pop(site, None)
        if node is not None:
            try:
                self.cluster.remove_node(node, allow_graceful=False)
            except Exception as e:  # already gone: nothing left to remove
                log.debug("removing dead node of %s: %s", site, e)
        self.add_site(site)

    def kill_site(self, site: str) -> None:
        """Remove a site's Ray node at once (its processes die): a site failure."""
        with self._lock:
            node = self.nodes.pop(site)
        self.cluster.remove_node(node, allow_graceful=False)

    def shutdown(self) -> None:
        import ray
        if self.connected and ray.is_initialized():
            ray.shutdown()
        self.cluster.shutdown()


def _raylet_stays_up(node, settle_s: float = 2.0) -> bool:
    """Whether a just-registered node's raylet is still running after `settle_s` (one was seen to exit
    at once after a site's node was killed and added again, leaving the site down for good)."""
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        raylets = node.all_processes.get("raylet") or []
        if any(p.process.poll() is not None for p in raylets):
            return False
        time.sleep(0.2)
    return True


def _actor_class():
    import ray

    @ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0)
    class SiteActor:
        """Hosts a StageWorker on its site's Ray node; registers with the controller on (re)start."""

        def __init__(self, site: str, controller: str, tls_dir: str | None = None, replica: int = 0,
                     allow_transforms: tuple[str, ...] | None = None, metrics_port: int = 0) -> None:
            """`allow_transforms`: the deploying operator's transform modules (never the wire's);
            `metrics_port`: the loopback port of the worker's metrics (0: a free one)."""
            from tierplan.runtime.graph import DEFAULT_TRANSFORM_MODULES
            from tierplan.runtime.security import TlsConfig
            from tierplan.runtime.stage import StageWorker
            tls = TlsConfig.from_dir(tls_dir, site) if tls_dir else None
            self.worker = StageWorker(site, "127.0.0.1:0", tls=tls, controller=controller, replica=replica,
                                      allow_transforms=tuple(allow_transforms or DEFAULT_TRANSFORM_MODULES),
                                      metrics_port=metrics_port)
            self.worker.start()

        def address(self) -> str:
            return self.worker.address

        def stop(self) -> None:
            """Stop the worker (unlinks its shared-memory segments) before the actor is killed."""
            self.worker.stop()

        def pid(self) -> int:
            return os.getpid()

        def node_id(self) -> str:
            """The Ray node this actor runs on (its labels name the site)."""
            return ray.get_runtime_context().get_node_id()

    return SiteActor


_ACTOR = None


def SiteActor():
    """The Ray actor class (built lazily so importing this module does not import Ray)."""
    global _ACTOR
    if _ACTOR is None:
        _ACTOR = _actor_class()
    return _ACTOR


def start_site_actor(site: str, controller: str, tls_dir: str | None, timeout_s: float = 60.0,
                     replica: int = 0, replicas: int = 1, alive=None, allow_transforms: tuple[str, ...] | None = None,
                     metrics_port: int = 0):
    """Create a site's actor (replica `replica` of `replicas`) pinned to its node; returns (handle,
    address, seconds). Replicas share the node's one unit of the site resource. `alive()`, when
    given, is asked every poll: False means the site's node died, so waiting longer is futile.
    `allow_transforms`: the transform modules the actor's worker may import (the operator's list)."""
    import ray
    share = 1.0 / max(replicas, 1)
    handle = SiteActor().options(resources={site_resource(site): share}, name=None).remote(
        site, controller, tls_dir, replica, tuple(allow_transforms) if allow_transforms else None, metrics_port)
    t0 = time.time()
    ref = handle.address.remote()
    while True:
        ready, _ = ray.wait([ref], timeout=max(0.0, min(_POLL_S, t0 + timeout_s - time.time())))
        if ready:
            try:
                address = ray.get(ref)
            except Exception as e:  # the actor died while starting: say which site
                ray.kill(handle, no_restart=True)
                raise RuntimeFault(f"site {site!r}: its stage actor failed to start ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''}). To fix: see the Ray logs "
                                   "under /tmp/ray/session_latest/logs") from e
            return handle, address, time.time() - t0
        down = alive is not None and not alive()
        if down or time.time() >= t0 + timeout_s:
            ray.kill(handle, no_restart=True)
            if down:
                raise SiteNodeDown(f"site {site!r}: its Ray node died while its stage actor was starting. "
                                   "To fix: restart the site's node (ray start ... --resources "
                                   f"'{{\"{site_resource(site)}\": 1}}')")
            raise RuntimeFault(f"site {site!r}: its stage actor did not start within {timeout_s:.0f} s. "
                               f"To fix: check that a Ray node offers resource {site_resource(site)!r}")


class SiteNodeDown(RuntimeFault):
    """A site's Ray node died; a local cluster can start it again."""

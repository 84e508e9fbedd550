"""Kernel-shaped links: two network namespaces joined by a veth pair, bandwidth shaped by tc tbf.

`veth_pair(rate_mbps=20)` is a context manager for tests and benchmarks that want the kernel,
not the user-space emulator (runtime.links), to pace a link. It creates two namespaces with
unique names, joins them by a veth pair with private addresses on one /30, puts a token bucket
filter (`tc qdisc ... tbf`) on the sending side (and optionally the other), and deletes it all
on exit, also on error. Processes started with `VethPair.popen` run inside a namespace
(`ip netns exec`) and are ended on exit; so is anything else left running in the two namespaces,
which nobody else can have entered. A process killed inside the `with` leaves its pair behind:
`remove_stale_pairs()` deletes pairs whose owner (the pid in their name) is gone. It needs root
(CAP_NET_ADMIN and CAP_SYS_ADMIN); when the machine refuses, `NetnsError` names the command and
the kernel's answer.

tbf counts whole frames: at MTU 1500, TCP/IP and Ethernet headers take 66 of every 1514 bytes,
so the payload moves at about 95.6% of the shaped rate, while the emulator and the cost model
charge payload bytes against the declared bandwidth: `wire_rate_mbps(declared)` is the tbf rate
that gives the declared link's payload rate. Delay and jitter would need netem, which this
shaper does not use (this machine's kernel has no sch_netem).

The same module is the probe that measures such a link with tierplan's own transport:
`python -m tierplan.runtime.netns serve --listen HOST:0` runs a Stage delivery endpoint (the handlers of
runtime.stage) and prints its port; `python -m tierplan.runtime.netns send --to HOST:PORT --bytes N`
sends one delivery with runtime.stage.Sender after a warm-up and prints `{"bytes", "seconds"}`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from tierplan.runtime.links import PACKET_PAYLOAD_BYTES
from tierplan.errors import InputError, RuntimeFault

__all__ = ["VethPair", "NetnsError", "veth_pair", "remove_stale_pairs", "tbf_args", "wire_rate_mbps",
           "probe_argv", "probe_env", "read_port", "recording_server", "main", "TBF_BURST_S", "TBF_MIN_BURST_BYTES", "TBF_QUEUE_MS",
           "FRAME_HEADER_BYTES"]

# tbf's bucket depth: what the link may send at once after an idle spell, as time at the rate,
# but never less than a few full frames, or tbf cannot pass one GSO segment (tc-tbf(8): burst
# must be at least the MTU, and rate / HZ on tick-based kernels).
TBF_BURST_S = 0.001
TBF_MIN_BURST_BYTES = 16 * 1514
# Longest a packet may wait in tbf's queue before it is dropped (tc-tbf(8) `latency`): large
# enough that a local TCP sender is held back by the queue rather than by drops.
TBF_QUEUE_MS = 200.0
# Headers around each TCP segment's payload on the wire that tbf counts: Ethernet 14, IPv4 20,
# TCP with timestamps 32 (what Linux sends between two hosts by default).
FRAME_HEADER_BYTES = 14 + 20 + 32
_CMD_TIMEOUT_S = 10.0
_PROBE_START_TIMEOUT_S = 30.0
_STOP_GRACE_S = 3.0
log = logging.getLogger("tierplan.runtime")
_NAME_COUNTER = itertools.count()
_NS_NAME = re.compile(r"^tierplan-([0-9a-f]{6})[0-9a-f]{4}-[ab]$")
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy",
               "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class NetnsError(RuntimeFault):
    """The machine refused to create or shape the namespaces (permissions, missing `ip`/`tc`, kernel)."""


def _run(argv: Sequence[str]) -> str:
    """Run one ip/tc command; raise NetnsError naming it and the kernel's answer when it fails."""
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=_CMD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetnsError(f"network namespaces unavailable: `{' '.join(argv)}` could not run ({e})") from e
    if r.returncode != 0:
        why = (r.stderr or r.stdout).strip().splitlines()
        raise NetnsError(f"network namespaces unavailable: `{' '.join(argv)}` failed: "
                         f"{why[-1] if why else 'exit ' + str(r.returncode)}. To fix: run as root "
                         "(CAP_NET_ADMIN, CAP_SYS_ADMIN) on a kernel with veth and sch_tbf")
    return r.stdout


def tbf_args(rate_mbps: float, burst_bytes: int | None = None, queue_ms: float = TBF_QUEUE_MS) -> list[str]:
    """The `tc qdisc add ... root` arguments of a tbf at `rate_mbps` (bucket and queue as documented above)."""
    if rate_mbps <= 0:
        raise InputError(f"tbf rate must be > 0 Mbit/s, got {rate_mbps}. To fix: pass the link's bandwidth")
    rate_bps = rate_mbps * 1e6
    burst = burst_bytes or max(TBF_MIN_BURST_BYTES, int(rate_bps / 8 * TBF_BURST_S))
    return ["tbf", "rate", f"{rate_bps:.0f}bit", "burst", str(int(burst)), "latency", f"{queue_ms:g}ms"]


def wire_rate_mbps(payload_mbps: float) -> float:
    """The tbf rate whose payload rate is `payload_mbps` (full-size segments): how the emulator reads a declared link."""
    return payload_mbps * (PACKET_PAYLOAD_BYTES + FRAME_HEADER_BYTES) / PACKET_PAYLOAD_BYTES


def _namespace_names() -> set[str]:
    """Names of the machine's network namespaces (`ip netns list`; empty when it cannot run)."""
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=_CMD_TIMEOUT_S)
    return {line.split(" ", 1)[0] for line in r.stdout.splitlines() if line.strip()}


def _ns_pids(ns: str) -> list[int]:
    """Processes inside namespace `ns` (empty when it does not exist)."""
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=_CMD_TIMEOUT_S)
    return [int(x) for x in r.stdout.split() if x.isdigit()] if r.returncode == 0 else []


class VethPair:
    """Two namespaces joined by a veth pair: side 0 is "a" (sends at `rate_mbps`), side 1 is "b"."""

    def __init__(self, token: str, subnet: tuple[int, int, int], rate_mbps: float | None,
                 reverse_rate_mbps: float | None) -> None:
        self.token = token
        self.namespaces = (f"tierplan-{token}-a", f"tierplan-{token}-b")
        self.devices = (f"tp{token}a", f"tp{token}b")      # at most 15 characters (IFNAMSIZ)
        x, y, z = subnet                                     # the /30 10.x.y.z, z a multiple of 4
        self.addresses = (f"10.{x}.{y}.{z + 1}", f"10.{x}.{y}.{z + 2}")
        self.rate_mbps = rate_mbps
        self.reverse_rate_mbps = reverse_rate_mbps
        self._procs: list[subprocess.Popen] = []

    def exec_argv(self, side: int, argv: Sequence[str]) -> list[str]:
        """`argv` run inside namespace `side` (0 or 1)."""
        return ["ip", "netns", "exec", self.namespaces[side], *argv]

    def popen(self, side: int, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start `argv` inside namespace `side` (no proxy variables: addresses are private); ended on exit."""
        env = {k: v for k, v in (kwargs.pop("env", None) or os.environ).items() if k not in _PROXY_VARS}
        p = subprocess.Popen(self.exec_argv(side, argv), env=env, **kwargs)
        self._procs.append(p)
        return p

    def set_rate(self, side: int, rate_mbps: float | None) -> None:
        """Reshape side's sending direction to `rate_mbps` (None: unshaped), in place."""
        dev = self.devices[side]
        if rate_mbps is None:
            subprocess.run(self.exec_argv(side, ["tc", "qdisc", "del", "dev", dev, "root"]),
                           capture_output=True, timeout=_CMD_TIMEOUT_S)
        else:
            _run(self.exec_argv(side, ["tc", "qdisc", "replace", "dev", dev, "root", *tbf_args(rate_mbps)]))
        if side == 0:
            self.rate_mbps = rate_mbps
        else:
            self.reverse_rate_mbps = rate_mbps

    def qdisc(self, side: int) -> str:
        """`tc -s qdisc show` of side's device: what the kernel really applied, with its counters."""
        return _run(self.exec_argv(side, ["tc", "-s", "qdisc", "show", "dev", self.devices[side]])).strip()

    # ------------------------------------------------------------------ lifecycle
    def _create(self) -> None:
        a, b = self.namespaces
        da, db = self.devices
        for ns in (a, b):
            _run(["ip", "netns", "add", ns])
        _run(["ip", "link", "add", da, "type", "veth", "peer", "name", db])
        _run(["ip", "link", "set", da, "netns", a])
        _run(["ip", "link", "set", db, "netns", b])
        for ns, dev, addr in ((a, da, self.addresses[0]), (b, db, self.addresses[1])):
            _run(["ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        for side, rate in ((0, self.rate_mbps), (1, self.reverse_rate_mbps)):
            if rate is not None:
                _run(self.exec_argv(side, ["tc", "qdisc", "add", "dev", self.devices[side], "root",
                                           *tbf_args(rate)]))

    def close(self) -> None:
        """End this pair's processes, then delete both namespaces (their veth ends go with them)."""
        for p in self._procs:
            if p.poll() is None:
                p.terminate()
        for p in self._procs:
            try:
                p.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for ns in self.namespaces:
            for pid in _ns_pids(ns):  # strays inside our own, uniquely named namespaces
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=_CMD_TIMEOUT_S)
        # a veth not yet moved into a namespace (creation failed half-way) lives in ours
        subprocess.run(["ip", "link", "del", self.devices[0]], capture_output=True, timeout=_CMD_TIMEOUT_S)
        left = [ns for ns in self.namespaces if ns in _namespace_names()]
        if left:  # teardown runs in `finally`: say so rather than mask the body's own error
            log.warning("network namespaces %s could not be deleted; remove them with `ip netns del NAME` "
                        "or runtime.netns.remove_stale_pairs() once this process exits", ", ".join(left))


def _token() -> str:
    """A name part unique across processes and calls: the owner's pid (6 hex digits), a counter, random bits."""
    return f"{os.getpid():06x}{next(_NAME_COUNTER) & 0xF:x}{secrets.token_hex(2)[:3]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_pairs() -> list[str]:
    """Delete the namespaces of pairs whose owning process is gone (killed before its `with` ended).

    Only names this module makes (`tierplan-<pid><counter><random>-a|b`) whose pid is not alive are
    touched; processes still inside them were started by that dead owner and are ended. Returns the
    namespaces removed.
    """
    _run(["ip", "netns", "list"])   # raises NetnsError, naming the cause, where namespaces are unavailable
    removed = []
    for name in sorted(_namespace_names()):
        m = _NS_NAME.match(name)
        if m is None or _pid_alive(int(m.group(1), 16)):
            continue
        ns = m.group(0)
        for pid in _ns_pids(ns):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=_CMD_TIMEOUT_S)
        removed.append(ns)
    return removed


@contextmanager
def veth_pair(rate_mbps: float | None = None, reverse_rate_mbps: float | None = None) -> Iterator[VethPair]:
    """Two fresh namespaces joined by a veth pair, a -> b shaped at `rate_mbps` (b -> a at `reverse_rate_mbps`).

    None leaves a direction unshaped. Everything is deleted on exit, also when the body raises.
    Raises NetnsError when the machine refuses (not root, no `ip`, no veth or tbf in the kernel).
    """
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise NetnsError(f"network namespaces unavailable: `{tool}` is not on PATH. "
                             "To fix: install iproute2")
    rnd = secrets.randbits(16)
    pair = VethPair(_token(), (200 + rnd % 50, (rnd >> 8) % 256, 4 * secrets.randbelow(64)),
                    rate_mbps, reverse_rate_mbps)
    try:
        pair._create()
        yield pair
    finally:
        pair.close()


# ---------------------------------------------------------------------- probe
def probe_argv(*args: str) -> list[str]:
    """The command line of this module's probe (`serve` or `send`) with the running interpreter."""
    return [sys.executable, "-m", "tierplan.runtime.netns", *args]


def probe_env() -> dict[str, str]:
    """Environment for a probe subprocess: this checkout importable whatever the working directory."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def read_port(proc: subprocess.Popen, timeout_s: float = _PROBE_START_TIMEOUT_S) -> int:
    """The port a `serve` probe prints on its first line (raises NetnsError if it dies or stays silent)."""
    assert proc.stdout is not None, "read_port needs a probe started with stdout=subprocess.PIPE"
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout_s):
        raise NetnsError(f"probe server did not start within {timeout_s:g} s")
    line = proc.stdout.readline().strip()
    if not line.isdigit():
        err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
        raise NetnsError(f"probe server failed to start: {line or err.strip()[-300:]}")
    return int(line)


def recording_server(listen: str = "127.0.0.1:0") -> tuple:
    """A Stage delivery server that acknowledges every delivery and records its arrival time.

    Returns (server, "host:port", {request_id: arrival time.time()}); the caller stops the server.
    Used by the namespace probe, the link tests and benchmarks/links.py.
    """
    import threading
    from concurrent import futures

    import grpc

    from tierplan.runtime.proto import runtime_pb2 as pb
    from tierplan.runtime.transport import delivery_handlers
    from tierplan.runtime.wire import GRPC_OPTIONS, RAW_STAGE_METHOD, RAW_STAGE_ONE_METHOD

    received: dict[str, float] = {}
    lock = threading.Lock()

    def receive(d, context):
        with lock:
            received[d.request_id] = time.time()
        return pb.Ack(ok=True)

    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=GRPC_OPTIONS)
    srv.add_generic_rpc_handlers(delivery_handlers(RAW_STAGE_METHOD, RAW_STAGE_ONE_METHOD, receive))
    port = srv.add_insecure_port(listen)
    if port == 0:
        raise NetnsError(f"cannot listen on {listen}. To fix: pick a free address")
    srv.start()
    host = listen.rpartition(":")[0]
    return srv, f"{host}:{port}", received


def _serve(listen: str) -> None:
    srv, address, _ = recording_server(listen)
    print(address.rpartition(":")[2], flush=True)
    signal.signal(signal.SIGTERM, lambda *_: srv.stop(0))
    srv.wait_for_termination()


def _send(to: str, nbytes: int, timeout_s: float) -> dict:
    import numpy as np

    from tierplan.runtime.links import LinkEmulator
    from tierplan.runtime.transport import Sender
    from tierplan.runtime.wire import Delivery

    sender = Sender("probe", None, lambda: LinkEmulator())
    try:
        for rid, size in (("warm-up", 1024), ("timed", nbytes)):
            d = Delivery(rid, "probe", "sink", {"t": np.zeros(size, np.uint8)},
                         deadline_unix_ms=(time.time() + timeout_s) * 1e3)
            t0 = time.perf_counter()
            err = sender.send(lambda: to, d, "")
            seconds = time.perf_counter() - t0
            if err:
                raise SystemExit(err)
    finally:
        sender.close()
    return {"bytes": nbytes, "seconds": seconds}


def main(argv: Sequence[str] | None = None) -> None:
    """`serve --listen HOST:PORT` or `send --to HOST:PORT --bytes N` (see the module doc)."""
    ap = argparse.ArgumentParser(prog="python -m tierplan.runtime.netns", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="a Stage delivery endpoint that acknowledges every delivery")
    s.add_argument("--listen", required=True)
    t = sub.add_parser("send", help="time one delivery of N bytes with runtime.stage.Sender")
    t.add_argument("--to", required=True)
    t.add_argument("--bytes", type=int, required=True)
    t.add_argument("--timeout-s", type=float, default=60.0)
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        _serve(args.listen)
    else:
        print(json.dumps(_send(args.to, args.bytes, args.timeout_s)), flush=True)


if __name__ == "__main__":
    main()

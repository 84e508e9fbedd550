"""Runtime benchmarks: per-hop overhead, emulated-link throughput, the SqueezeNet pipeline, plan vs measured.

    python benchmarks/runtime.py [--quick] [--examples read-text,smart-city] [--seconds S] [--repeat N]

1. One hop on loopback for 1 KiB .. 16 MiB, both ways a delivery can go: the same-host fast path
   (runtime.localwire: a Unix socket, tensor bytes in shared memory from 64 KiB on) and gRPC on
   TCP (one packed unary message up to 2 MiB, a raw-bytes stream of 1 MiB chunks above; what
   remote peers and TLS deployments use). The best gRPC figure from 1 MiB on is the measured
   loopback bandwidth used below.
2. Throughput over an emulated link (token bucket, no delay) against its declared bandwidth
   (goal: >= 90% for large tensors).
3. SqueezeNet 1.1 (random weights) cut in 3 pieces (1.55 MB and 260 KB between them) on three
   sites (edge agent process, two Ray nodes), links not emulated: p50 and req/s at 8 concurrent
   clients, against the same 3 pieces in one process, with onnxruntime's default threads and
   with one thread (what each site worker gets here); the pipeline with the same-host fast path
   (one compute thread per site, the default, and two: a backlog from one peer then runs on two
   cores) and with gRPC only (as before it). Each pipeline is driven two ways: 8 client threads
   each blocking in `predict`, and 8 requests kept in flight from one thread with `predict_async`
   (each result's callback sends the next: no thread wakes per request, as a serving client would
   drive it). DESIGN.md peer table: Ray Serve 35-40 ms, 7-8 ms per hop.
   Goals: per hop <= 1 ms beyond bytes/bandwidth, where per hop = (pipeline p50 - best
   one-process p50 - sum over hops of bytes / measured loopback gRPC bandwidth) / hops; req/s at
   8 concurrent >= 0.85 of the best one-process figure. Hops per request: 4 (input to the edge
   site, edge -> base station, base station -> cloud, result back). Also the CPU per request of
   each set-up (one process: this process; the pipeline: the controller and the site workers)
   and one process's over the pipeline's: the req/s ratio the pipeline reaches on cores of its
   own, which the shared machine's req/s ratio only approximates; per process of the pipeline, its
   CPU per request beside its pieces' (the traces' compute-thread CPU): the rest is the runtime's own.
4. `tierplan run` on the examples, every device class at its rates: per class and group of sinks,
   measured p50 against the plan's placement predicted for this machine, as `tierplan run` prints
   it ("predicted here"; goal within 15%), and the fleet devices' figure.

Prints rich tables and writes benchmarks/results/runtime.json. The machine is shared: compare
ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tierplan.runtime.links import LinkEmulator  # noqa: E402
from tierplan.runtime.localwire import LocalServer  # noqa: E402
from tierplan.runtime.shm import ShmReader  # noqa: E402
from tierplan.runtime.proto import runtime_pb2 as pb  # noqa: E402
from tierplan.runtime.proto import runtime_pb2_grpc as pbg  # noqa: E402
from tierplan.runtime.transport import Sender, delivery_handlers  # noqa: E402
from tierplan.runtime.wire import GRPC_OPTIONS, RAW_STAGE_METHOD, RAW_STAGE_ONE_METHOD, Delivery, frames_to_delivery  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "runtime.json"
# section 3's pipelines: (name, same-host fast path, compute threads per site worker)
VARIANTS = (("same_host", True, 1), ("same_host_2_compute", True, 2), ("grpc_only", False, 1))
TITLES = {"grpc_only": "gRPC only (before)", "same_host": "same-host fast path",
          "same_host_2_compute": "same-host fast path, 2 compute threads per site"}
# section 3's two ways to keep 8 requests in flight against a pipeline
PIPELINE_CLIENTS = {"pipeline": "8 client threads", "pipeline_async": "8 in flight from one thread (predict_async)"}
HOP_SIZES = [1 << 10, 16 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20]
LINK_MBPS = [100.0, 400.0, 1000.0]
LINK_BYTES = 16 << 20
CONCURRENCY = 8
HOPS_PER_REQUEST = 4


class _Sink(pbg.StageServicer):
    """A Stage server that reassembles each delivery (any of the three forms) and acknowledges it."""

    def Deliver(self, request_iterator, context):
        frames_to_delivery(request_iterator)
        return pb.Ack(ok=True)

    def DeliverBundle(self, request, context):
        frames_to_delivery(iter(request.frames))
        return pb.Ack(ok=True)

    def deliver_raw(self, d, context):
        return pb.Ack(ok=True)


class _Server:
    """A loopback Stage endpoint (gRPC, and the same-host socket of runtime.localwire)."""

    def __init__(self) -> None:
        self.srv = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=GRPC_OPTIONS)
        sink = _Sink()
        self.reader = ShmReader()
        pbg.add_StageServicer_to_server(sink, self.srv)
        self.srv.add_generic_rpc_handlers(delivery_handlers(RAW_STAGE_METHOD, RAW_STAGE_ONE_METHOD, sink.deliver_raw,
                                                            self.reader))
        port = self.srv.add_insecure_port("127.0.0.1:0")
        self.srv.start()
        self.address = f"127.0.0.1:{port}"
        self.local = LocalServer(self.address, sink.deliver_raw, self.reader)
        self.local.start()

    def stop(self) -> None:
        self.local.stop()
        self.srv.stop(0)
        self.reader.close()


def _hop_ms(sender: Sender, addr: str, size: int, repeats: int) -> float:
    x = np.random.default_rng(0).random(size // 4).astype(np.float32)
    times = []
    n = max(3, repeats if size <= (1 << 20) else repeats // 4)
    for i in range(n + 1):
        d = Delivery(f"r{i}", "a", "b", {"x": x}, deadline_unix_ms=(time.time() + 30) * 1e3)
        t0 = time.perf_counter()
        err = sender.send(lambda: addr, d, "")
        if err:
            raise RuntimeError(err)
        if i:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_hops(repeats: int) -> list[dict]:
    """Median time of one delivery (send + reassemble + ack) per tensor size, on loopback: the
    same-host fast path (the default between local processes) and gRPC on TCP."""
    server = _Server()
    fast = Sender("a", None, lambda: LinkEmulator())
    wire = Sender("a", None, lambda: LinkEmulator(), shm=False)
    rows = []
    try:
        for size in HOP_SIZES:
            ms = _hop_ms(fast, server.address, size, repeats)
            grpc_ms = _hop_ms(wire, server.address, size, repeats)
            rows.append({"bytes": size, "p50_ms": ms, "gb_per_s": size / (ms / 1e3) / 1e9,
                         "grpc_p50_ms": grpc_ms, "grpc_gb_per_s": size / (grpc_ms / 1e3) / 1e9})
    finally:
        fast.close()
        wire.close()
        server.stop()
    return rows


def bench_links() -> list[dict]:
    """Achieved throughput over an emulated link of each bandwidth, 16 MiB tensors, 3 in a row."""
    server = _Server()
    addr = server.address
    rows = []
    try:
        for mbps in LINK_MBPS:
            routes = {"a|b": [{"link_id": "a->b", "bandwidth_mbps": mbps, "delay_ms": 0.0}]}
            emu = LinkEmulator(routes)
            sender = Sender("a", None, lambda: emu)
            x = np.zeros(LINK_BYTES // 4, dtype=np.float32)
            n = 3
            t0 = time.perf_counter()
            for i in range(n):
                d = Delivery(f"r{i}", "a", "b", {"x": x}, deadline_unix_ms=(time.time() + 120) * 1e3)
                err = sender.send(lambda: addr, d, "b")
                if err:
                    raise RuntimeError(err)
            s = time.perf_counter() - t0
            sender.close()
            achieved = n * LINK_BYTES * 8 / s / 1e6
            rows.append({"link_mbps": mbps, "achieved_mbps": achieved, "share": achieved / mbps})
    finally:
        server.stop()
    return rows


def _closed_loop(fn, concurrency: int, seconds: float) -> tuple[float, list[float]]:
    """req/s and latencies (ms) with `concurrency` clients calling fn() back to back for `seconds`."""
    lat: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client():
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            fn()
            with lock:
                lat.append((time.perf_counter() - t0) * 1e3)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(lat) / (time.perf_counter() - t0), lat


def _closed_loop_async(svc, x: dict, concurrency: int, seconds: float, steps: list) -> tuple[float, list[float]]:
    """req/s and latencies (ms) with `concurrency` requests kept in flight from one thread
    (Service.predict_async: each result's callback starts the next request), no thread per request."""
    lat: list[float] = []
    stop = time.perf_counter() + seconds
    ended = threading.Semaphore(0)

    def start() -> None:
        t0 = time.perf_counter()
        svc.predict_async(x, traced=True).add_done_callback(lambda f: finish(f, t0))

    def finish(f, t0: float) -> None:
        lat.append((time.perf_counter() - t0) * 1e3)    # one thread delivers the results: no lock
        steps.append(f.result()[1].steps)
        if time.perf_counter() < stop:
            start()
        else:
            ended.release()

    t0 = time.perf_counter()
    for _ in range(concurrency):
        start()
    for _ in range(concurrency):
        ended.acquire()
    return len(lat) / (time.perf_counter() - t0), lat


def _cpu_by(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) so far of this process ("controller": every thread, finished ones
    included) and of each of `pids` (from /proc)."""
    import resource
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out = {"controller": ru.ru_utime + ru.ru_stime}
    tick = os.sysconf("SC_CLK_TCK")
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):   # gone: its time is lost, the figure only shrinks
            continue
    return out


def _pipeline_round(svc, inproc: dict, x: dict, seconds: float, repeats: int, acc: dict) -> None:
    """One round: sequential requests then a closed loop at CONCURRENCY, for every in-process set-up
    and the pipeline, one after another (the machine is shared: rounds see the same load)."""
    for _ in range(repeats):
        for name, fn in inproc.items():
            t0 = time.perf_counter()
            fn()
            acc[name]["seq"].append((time.perf_counter() - t0) * 1e3)
        _, tr = svc.predict_traced(x)
        acc["pipeline"]["seq"].append(tr.latency_ms)
        acc["pipeline"]["steps"].append(tr.steps)
    # CPU of the set-up's processes: the pipeline's controller (this process) and site workers
    # (agent and actor pids); Ray's own daemons are left out (idle: < 5% of a core here)
    site_pids = {s: h["pid"] for s, h in svc.health().items() if h.get("pid")}
    loop_steps: list = acc["pipeline"].setdefault("loop_steps", [])
    async_steps: list = acc["pipeline_async"].setdefault("loop_steps", [])

    def pipeline() -> None:    # predict's own path (predict drops the trace predict_traced returns)
        loop_steps.append(svc.predict_traced(x)[1].steps)
    for name, fn in [*inproc.items(), ("pipeline", pipeline), ("pipeline_async", None)]:
        pids = site_pids if name.startswith("pipeline") else {}
        c0, t0 = _cpu_by(pids), time.perf_counter()
        if fn is None:
            _, part = _closed_loop_async(svc, x, CONCURRENCY, seconds, async_steps)
        else:
            _, part = _closed_loop(fn, CONCURRENCY, seconds)
        c1 = _cpu_by(pids)
        acc[name]["cpu_s"] = acc[name].get("cpu_s", 0.0) + sum(c1[k] - c0[k] for k in c1 if k in c0)
        if name.startswith("pipeline"):   # per process: where the pipeline's CPU beyond one process's goes
            by = acc[name].setdefault("cpu_s_by", {})
            for k in c1:
                if k in c0:
                    by[k] = by.get(k, 0.0) + c1[k] - c0[k]
        acc[name]["lat"] += part
        acc[name]["t"] += time.perf_counter() - t0


def _summary(a: dict) -> dict:
    return {"p50_ms": statistics.median(a["seq"]), "rps_8": len(a["lat"]) / a["t"],
            "cpu_ms_per_req": a.get("cpu_s", 0.0) / max(len(a["lat"]), 1) * 1e3,
            "p50_ms_8": float(np.percentile(a["lat"], 50)), "p95_ms_8": float(np.percentile(a["lat"], 95))}


def bench_squeezenet(seconds: float, repeats: int, loopback_bytes_per_s: float) -> dict:
    """The 3-piece SqueezeNet across 3 sites (same-host fast path, then gRPC only) vs the same
    pieces in one process (onnxruntime's default threads, and one thread)."""
    import onnx

    from tierplan.runtime.deploy import deploy, local_threads
    from tierplan.runtime.handplan import chain_plan, split_chain, with_random_weights
    from tierplan.runtime.runners import OrtRunner
    from tierplan.runtime.options import StageOptions
    from tierplan.spec import FleetSpec

    tmp = Path(tempfile.mkdtemp(prefix="tierplan-bench-"))
    model = with_random_weights(Path(onnx.__file__).parent / "backend/test/data/light/light_squeezenet.onnx",
                                tmp / "squeezenet.onnx")
    files = split_chain(model, ["r9", "r39"], tmp, "sq")
    x = {"input": np.random.default_rng(0).random((1, 3, 224, 224)).astype(np.float32)}

    def chain(runners):
        def run():
            t = {"data_0": x["input"]}
            for r in runners:
                t = r.run(t)
            return t
        return run

    inproc = {"one_process": chain([OrtRunner(f) for f in files]),
              "one_process_1_thread": chain([OrtRunner(f, threads=1) for f in files])}
    # bytes crossing each hop: the input, each piece's outputs (the last one's go back as the result)
    hop_bytes, t = [x["input"].nbytes], {"data_0": x["input"]}
    for r in [OrtRunner(f) for f in files]:
        t = r.run(t)
        hop_bytes.append(sum(int(v.nbytes) for v in t.values()))
    fleet = FleetSpec.model_validate({
        "sites": {"phone": {"tier": "edge", "device": "pixel-8", "attach": "bs", "link": "l"},
                  "bs": {"tier": "base_station", "device": "mec-t4", "attach": "cloud", "link": "l"},
                  "cloud": {"tier": "cloud", "device": "aws-g5-xlarge"}},
        "links": {"l": {"uplink_mbps": 10000, "downlink_mbps": 10000, "rtt_ms": 0}}})
    plan = chain_plan(files, ["phone", "bs", "cloud"], "phone", fleet=fleet)
    rounds = 4
    bytes_ms = sum(b / loopback_bytes_per_s * 1e3 for b in hop_bytes)
    out: dict = {"hops_per_request": HOPS_PER_REQUEST, "hop_bytes": hop_bytes,
                 "loopback_gb_per_s": loopback_bytes_per_s / 1e9, "bytes_over_bandwidth_ms": bytes_ms}
    for variant, fast, compute in VARIANTS:
        options = StageOptions(batch_sites=("cloud",), threads=local_threads(3), shm=fast, compute_threads=compute)
        acc: dict[str, dict[str, Any]] = {k: {"seq": [], "lat": [], "t": 0.0, "steps": []}
                                     for k in [*inproc, "pipeline", "pipeline_async"]}
        with deploy(plan, emulate_links=False, request_timeout_s=30, options=options) as svc:
            for _ in range(5):
                svc.predict(x)
                for fn in inproc.values():
                    fn()
            for _ in range(rounds):
                _pipeline_round(svc, inproc, x, seconds / rounds, max(repeats // rounds, 3), acc)
        ones = {k: _summary(acc[k]) for k in inproc}
        best_p50 = min(o["p50_ms"] for o in ones.values())
        best_rps = max(o["rps_8"] for o in ones.values())
        best_cpu = min(o["cpu_ms_per_req"] for o in ones.values())
        acc["pipeline_async"]["seq"], acc["pipeline_async"]["steps"] = acc["pipeline"]["seq"], acc["pipeline"]["steps"]
        pipes = {k: _pipeline_summary(acc[k], best_p50, best_rps, best_cpu, bytes_ms)
                 for k in ("pipeline", "pipeline_async")}
        out[variant] = {"one_process": ones, **pipes}
    return out


def _pipeline_summary(a: dict, best_p50: float, best_rps: float, best_cpu: float, bytes_ms: float) -> dict:
    """One pipeline closed loop's figures beside the best one-process ones."""
    pipe = _summary(a)
    compute = statistics.median(sum(ms for k, _, ms in st if k == "compute") for st in a["steps"])
    # per process at 8 concurrent: its CPU per request, and its pieces' (the compute thread's CPU
    # over each piece's run, mean over the closed loop's traces): the rest is the runtime's own
    n_lat = max(len(a["lat"]), 1)
    piece_cpu: dict[str, float] = {}
    loop = a["loop_steps"]
    for st in loop:
        for kind, where, ms in st:
            if kind == "cpu":
                site = where.rsplit("@", 1)[-1]
                piece_cpu[site] = piece_cpu.get(site, 0.0) + ms / max(len(loop), 1)
    pipe["cpu_by_process"] = {k: {"cpu_ms_per_req": v / n_lat * 1e3, "pieces_cpu_ms": piece_cpu.get(k, 0.0)}
                              for k, v in a.get("cpu_s_by", {}).items()}
    pipe.update({
        "per_hop_ms": (pipe["p50_ms"] - best_p50 - bytes_ms) / HOPS_PER_REQUEST,
        "per_hop_raw_ms": (pipe["p50_ms"] - best_p50) / HOPS_PER_REQUEST,
        "per_hop_vs_own_compute_ms": (pipe["p50_ms"] - compute) / HOPS_PER_REQUEST,
        "rps_ratio": pipe["rps_8"] / best_rps,
        # the req/s ratio on cores of its own (CPU-bound both ways): one-process CPU per request
        # over the pipeline's; load-independent, unlike rps_ratio on a shared machine
        "cpu_ratio": best_cpu / pipe["cpu_ms_per_req"],
        "steps_p50_ms": _steps_p50(a["steps"])})
    return pipe


def _steps_p50(steps: list) -> dict:
    by: dict[str, list[float]] = {}
    for st in steps:
        for kind, name, ms in st:
            by.setdefault(f"{kind} {name}", []).append(ms)
    return {k: statistics.median(v) for k, v in by.items()}


def bench_examples(names: list[str], seconds: float) -> list[dict]:
    """`tierplan run` on each example: measured p50 against the same "predicted here" figure the CLI
    prints (the plan's placement at this machine's speed), and the fleet devices' prediction."""
    from tierplan.run import run_example
    rows: list[dict[str, Any]] = []
    for name in names:
        try:
            rep = run_example(name, seconds, progress=False)
        except Exception as e:  # an example that cannot run here is reported, not fatal
            rows.append({"example": name, "error": f"{type(e).__name__}: {e}"})
            continue
        # per device class and group of sinks: a fleet run's pooled p50 mixes them (read-text's 2 ms
        # speech requests with its 200 ms text ones), so only these rows compare like with like
        for c in rep.classes:
            here = c.predicted_local_p50_ms
            rows.append({"example": name, "device_class": c.device_class, "sinks": list(c.sinks),
                         "requests_ok": c.requests - c.failed, "requests_failed": c.failed,
                         "measured_p50_ms": c.measured_p50_ms, "measured_p95_ms": c.measured_p95_ms,
                         "predicted_here_p50_ms": here, "predicted_fleet_p50_ms": c.predicted_ms,
                         "ratio": c.measured_p50_ms / here if c.measured_p50_ms and here else None,
                         "ratio_fleet": (c.measured_p50_ms / c.predicted_ms)
                         if c.measured_p50_ms and c.predicted_ms else None,
                         "plan": rep.plan_source})
    return rows


def _spread(runs: list[dict]) -> dict:
    """Per variant, each ratio of the pipeline over the runs: [min, median, max] (the machine is shared:
    one run's ratio is not the figure)."""
    out: dict = {"runs": len(runs)}
    for variant, _, _ in VARIANTS:
        out[variant] = {}
        for key in ("rps_ratio", "cpu_ratio", "cpu_ms_per_req"):
            vals = sorted(r[variant]["pipeline"][key] for r in runs)
            out[variant][key] = [vals[0], statistics.median(vals), vals[-1]]
            if all("pipeline_async" in r[variant] for r in runs):
                vals = sorted(r[variant]["pipeline_async"][key] for r in runs)
                out[variant].setdefault("pipeline_async", {})[key] = [vals[0], statistics.median(vals), vals[-1]]
        best_cpu = sorted(min(o["cpu_ms_per_req"] for o in r[variant]["one_process"].values()) for r in runs)
        out[variant]["one_process_cpu_ms_per_req"] = [best_cpu[0], statistics.median(best_cpu), best_cpu[-1]]
    return out


def _f(v, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def _print(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    con = Console(width=180)
    con.print(f"load average (1 min) at start {res['load_start'][0]:.1f}, at end {res['load_end'][0]:.1f} "
              f"on {res['cores']} cores")
    t = Table(title="1. one hop on loopback (delivery + ack)", title_justify="left")
    for c in ("tensor", "same-host p50 ms", "same-host GB/s", "gRPC/TCP p50 ms", "gRPC/TCP GB/s"):
        t.add_column(c, justify="right")
    for r in res["hops"]:
        t.add_row(f"{r['bytes'] / 1024:.0f} KiB", f"{r['p50_ms']:.2f}", f"{r['gb_per_s']:.2f}",
                  f"{r['grpc_p50_ms']:.2f}", f"{r['grpc_gb_per_s']:.2f}")
    con.print(t)
    t = Table(title=f"2. emulated link throughput ({LINK_BYTES >> 20} MiB tensors; goal >= 90%)", title_justify="left")
    for c in ("link Mbit/s", "achieved Mbit/s", "share"):
        t.add_column(c, justify="right")
    for r in res["links"]:
        t.add_row(f"{r['link_mbps']:.0f}", f"{r['achieved_mbps']:.1f}", f"{100 * r['share']:.1f}%")
    con.print(t)
    if "squeezenet" in res:
        s = res["squeezenet"]
        t = Table(title=f"3. SqueezeNet 1.1 in 3 pieces ({', '.join(f'{b / 1e3:.0f} KB' for b in s['hop_bytes'])} "
                        f"over the {s['hops_per_request']} hops), links not emulated; bytes / loopback gRPC "
                        f"bandwidth ({s['loopback_gb_per_s']:.2f} GB/s) = {s['bytes_over_bandwidth_ms']:.2f} ms "
                        "per request", title_justify="left")
        for c in ("set-up", "p50 ms", "per hop ms beyond bytes/bw (goal <= 1)", "per hop raw ms",
                  "req/s at 8", "vs best one process (goal >= 0.85)", "p50 / p95 ms at 8", "CPU ms / req at 8",
                  "one process CPU / this CPU"):
            t.add_column(c, justify="right" if c != "set-up" else "left")
        labels = {"one_process": "3 pieces in one process, onnxruntime default threads",
                  "one_process_1_thread": "3 pieces in one process, 1 thread"}
        for variant, title in TITLES.items():
            v = s[variant]
            for k, o in v["one_process"].items():
                t.add_row(f"{labels[k]} [{variant} run]", f"{o['p50_ms']:.1f}", "-", "-", f"{o['rps_8']:.0f}", "-",
                          f"{o['p50_ms_8']:.1f} / {o['p95_ms_8']:.1f}", _f(o.get("cpu_ms_per_req"), ".2f"), "-")
            for key, client in PIPELINE_CLIENTS.items():
                p = v.get(key)
                if p is None:
                    continue
                t.add_row(f"tierplan: edge agent + 2 Ray nodes, {title}, {client}", f"{p['p50_ms']:.1f}",
                          f"{p['per_hop_ms']:.2f}", f"{p['per_hop_raw_ms']:.2f}", f"{p['rps_8']:.0f}",
                          f"{p['rps_ratio']:.2f}", f"{p['p50_ms_8']:.1f} / {p['p95_ms_8']:.1f}",
                          _f(p.get("cpu_ms_per_req"), ".2f"), _f(p.get("cpu_ratio"), ".2f"))
        t.add_row("peer: Ray Serve, 3 deployments (DESIGN.md)", "35-40", "", "7-8", "32-43", "", "", "", "")
        con.print(t)
        for variant in TITLES:
            for key in PIPELINE_CLIENTS:
                by = s[variant].get(key, {}).get("cpu_by_process")
                if by:
                    con.print(f"   {variant} {key}, CPU ms per request at 8 by process (its pieces' CPU, the rest): "
                              + "; ".join(f"{k} {v['cpu_ms_per_req']:.2f} ({v['pieces_cpu_ms']:.2f}, "
                                          f"{v['cpu_ms_per_req'] - v['pieces_cpu_ms']:.2f})" for k, v in by.items()))
        sp = res.get("squeezenet_spread")
        if sp and sp["runs"] > 1:
            for variant in TITLES:
                v = sp[variant]
                for key in PIPELINE_CLIENTS:
                    k = v if key == "pipeline" else v.get(key)
                    if not k:
                        continue
                    con.print(f"   {variant} {key} over {sp['runs']} runs (min / median / max): req/s ratio "
                              + " / ".join(f"{x:.2f}" for x in k["rps_ratio"]) + ", CPU ratio "
                              + " / ".join(f"{x:.2f}" for x in k["cpu_ratio"]) + ", pipeline CPU ms/req "
                              + " / ".join(f"{x:.2f}" for x in k["cpu_ms_per_req"]) + ", one process CPU ms/req "
                              + " / ".join(f"{x:.2f}" for x in v["one_process_cpu_ms_per_req"]))
    if res.get("examples"):
        t = Table(title="4. tierplan run: measured vs the plan predicted here (goal within 15%)", title_justify="left")
        for c in ("example", "class", "sinks", "ok", "failed", "measured p50 ms", "predicted here ms",
                  "measured / predicted here", "fleet devices' prediction ms"):
            t.add_column(c, justify="right" if c not in ("example", "class", "sinks") else "left")
        for r in res["examples"]:
            if "error" in r:
                t.add_row(r["example"], "-", "-", "-", "-", "-", "-", r["error"][:60], "-")
            else:
                t.add_row(r["example"], r.get("device_class") or "-", ",".join(r.get("sinks") or []),
                          str(r["requests_ok"]), str(r["requests_failed"]), _f(r["measured_p50_ms"]),
                          _f(r["predicted_here_p50_ms"]), _f(r["ratio"], ".2f"), _f(r["predicted_fleet_p50_ms"]))
        con.print(t)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="Fewer repeats, shorter runs.")
    ap.add_argument("--seconds", type=float, default=None, help="Seconds per closed-loop / example run.")
    ap.add_argument("--examples", default="read-text,smart-city", help="Comma-separated examples ('' for none).")
    ap.add_argument("--skip-squeezenet", action="store_true")
    ap.add_argument("--repeat", type=int, default=1,
                    help="Run section 3 this many times (fresh deployments) and print the spread of its ratios.")
    a = ap.parse_args(argv)
    seconds = a.seconds or (3.0 if a.quick else 8.0)
    repeats = 10 if a.quick else 40
    res: dict = {"load_start": list(os.getloadavg()), "cores": os.cpu_count(), "hops": bench_hops(repeats),
                 "links": bench_links()}
    # the loopback gRPC bandwidth the per-hop goal allows for: the best measured over tensors of 1 MiB
    # and more (one size's median swings with the machine's load)
    loopback = max(r["grpc_gb_per_s"] for r in res["hops"] if r["bytes"] >= (1 << 20)) * 1e9
    if not a.skip_squeezenet:
        runs = [bench_squeezenet(seconds, repeats, loopback) for _ in range(max(a.repeat, 1))]
        res["squeezenet"] = runs[0]
        res["squeezenet_spread"] = _spread(runs)
    res["examples"] = bench_examples([e for e in a.examples.split(",") if e], seconds)
    res["load_end"] = list(os.getloadavg())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2))
    _print(res)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

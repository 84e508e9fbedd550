"""Runtime benchmarks: per-hop overhead, emulated-link throughput, the SqueezeNet pipeline, plan vs measured.

    python benchmarks/runtime.py [--quick] [--examples read-text,smart-city] [--seconds S]

1. One hop on loopback (a delivery to a gRPC Stage server and its Ack: one packed unary message
   up to 2 MiB, a raw-bytes stream of 1 MiB chunks above) for 1 KiB .. 16 MiB.
2. Throughput over an emulated link (token bucket, no delay) against its declared bandwidth
   (goal: >= 90% for large tensors).
3. SqueezeNet 1.1 (random weights) cut in 3 pieces (1.55 MB and 260 KB between them) on three
   sites (edge agent process, two Ray nodes), links not emulated: p50 and req/s at 8 concurrent
   clients, against the same 3 pieces in one process (DESIGN.md peer table: Ray Serve 35-40 ms,
   7-8 ms per hop; goal <= 1 ms + bytes/bandwidth per hop). Hops per request: 4 (input to the
   edge site, edge -> base station, base station -> cloud, result back).
4. `tierplan run` on the examples: measured p50 against the plan's prediction (goal within 15%).

Prints rich tables and writes benchmarks/results/runtime.json. The machine is shared: compare
ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.links import LinkEmulator  # noqa: E402
from runtime.proto import runtime_pb2 as pb  # noqa: E402
from runtime.proto import runtime_pb2_grpc as pbg  # noqa: E402
from runtime.stage import Sender, delivery_handlers  # noqa: E402
from runtime.wire import GRPC_OPTIONS, RAW_STAGE_METHOD, RAW_STAGE_ONE_METHOD, Delivery, frames_to_delivery  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "runtime.json"
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


def _serve() -> tuple[grpc.Server, str]:
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=GRPC_OPTIONS)
    sink = _Sink()
    pbg.add_StageServicer_to_server(sink, srv)
    srv.add_generic_rpc_handlers(delivery_handlers(RAW_STAGE_METHOD, RAW_STAGE_ONE_METHOD, sink.deliver_raw))
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    return srv, f"127.0.0.1:{port}"


def bench_hops(repeats: int) -> list[dict]:
    """Median time of one delivery (send + reassemble + ack) per tensor size, on loopback."""
    srv, addr = _serve()
    sender = Sender("a", None, lambda: LinkEmulator())
    rows = []
    try:
        for size in HOP_SIZES:
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
            ms = statistics.median(times)
            rows.append({"bytes": size, "p50_ms": ms, "gb_per_s": size / (ms / 1e3) / 1e9})
    finally:
        sender.close()
        srv.stop(0)
    return rows


def bench_links() -> list[dict]:
    """Achieved throughput over an emulated link of each bandwidth, 16 MiB tensors, 3 in a row."""
    srv, addr = _serve()
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
        srv.stop(0)
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


def bench_squeezenet(seconds: float, repeats: int) -> dict:
    """The 3-piece SqueezeNet across 3 sites vs the same pieces in one process."""
    import onnx

    from runtime.deploy import deploy
    from runtime.handplan import chain_plan, split_chain, with_random_weights
    from runtime.runners import OrtRunner
    from tierplan.spec import FleetSpec

    tmp = Path(tempfile.mkdtemp(prefix="tierplan-bench-"))
    model = with_random_weights(Path(onnx.__file__).parent / "backend/test/data/light/light_squeezenet.onnx",
                                tmp / "squeezenet.onnx")
    files = split_chain(model, ["r9", "r39"], tmp, "sq")
    x = {"input": np.random.default_rng(0).random((1, 3, 224, 224)).astype(np.float32)}

    runners = [OrtRunner(f) for f in files]

    def inproc():
        t = {"data_0": x["input"]}
        for r in runners:
            t = r.run(t)
        return t

    fleet = FleetSpec.model_validate({
        "sites": {"phone": {"tier": "edge", "device": "pixel-8", "attach": "bs", "link": "l"},
                  "bs": {"tier": "base_station", "device": "mec-t4", "attach": "cloud", "link": "l"},
                  "cloud": {"tier": "cloud", "device": "aws-g5-xlarge"}},
        "links": {"l": {"uplink_mbps": 10000, "downlink_mbps": 10000, "rtt_ms": 0}}})
    plan = chain_plan(files, ["phone", "bs", "cloud"], "phone", fleet=fleet)
    # the machine is shared: alternate the two set-ups in rounds so both see the same load
    rounds = 4
    seq_in, seq, steps, lat_in, lat, n_in, n_pipe, t_in, t_pipe = [], [], [], [], [], 0, 0, 0.0, 0.0
    with deploy(plan, fleet=fleet, emulate_links=False, request_timeout_s=30) as svc:
        for _ in range(5):
            svc.predict(x)
            inproc()
        for _ in range(rounds):
            for _ in range(max(repeats // rounds, 3)):
                t0 = time.perf_counter()
                inproc()
                seq_in.append((time.perf_counter() - t0) * 1e3)
                _, tr = svc.predict_traced(x)
                seq.append(tr.latency_ms)
                steps.append(tr.steps)
            t0 = time.perf_counter()
            rps, part = _closed_loop(inproc, CONCURRENCY, seconds / rounds)
            lat_in += part
            t_in += time.perf_counter() - t0
            n_in += len(part)
            t0 = time.perf_counter()
            rps, part = _closed_loop(lambda: svc.predict(x), CONCURRENCY, seconds / rounds)
            lat += part
            t_pipe += time.perf_counter() - t0
            n_pipe += len(part)
    one = {"p50_ms": statistics.median(seq_in), "rps_8": n_in / t_in, "p50_ms_8": float(np.percentile(lat_in, 50)),
           "p95_ms_8": float(np.percentile(lat_in, 95))}
    rps = n_pipe / t_pipe
    p50 = statistics.median(seq)
    compute = statistics.median(sum(ms for k, _, ms in s if k == "compute") for s in steps)
    pipe = {"p50_ms": p50, "rps_8": rps, "p50_ms_8": float(np.percentile(lat, 50)),
            "p95_ms_8": float(np.percentile(lat, 95)),
            "per_hop_ms": (p50 - one["p50_ms"]) / HOPS_PER_REQUEST,
            "per_hop_ms_vs_own_compute": (p50 - compute) / HOPS_PER_REQUEST}
    return {"one_process": one, "three_sites": pipe, "hops_per_request": HOPS_PER_REQUEST}


def bench_examples(names: list[str], seconds: float) -> list[dict]:
    """`tierplan run` on each example: measured vs predicted p50."""
    from runtime.runapp import run_example
    rows = []
    for name in names:
        try:
            rep = run_example(name, seconds, progress=False)
        except Exception as e:  # an example that cannot run here is reported, not fatal
            rows.append({"example": name, "error": f"{type(e).__name__}: {e}"})
            continue
        ratio = (rep.measured_p50_ms / rep.predicted_p50_ms) if rep.measured_p50_ms and rep.predicted_p50_ms else None
        rows.append({"example": name, "requests_ok": rep.requests_ok, "requests_failed": rep.requests_failed,
                     "measured_p50_ms": rep.measured_p50_ms, "measured_p95_ms": rep.measured_p95_ms,
                     "predicted_p50_ms": rep.predicted_p50_ms, "ratio": ratio, "plan": rep.plan_source})
    return rows


def _print(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    con = Console()
    t = Table(title="1. one hop on loopback (delivery + ack)", title_justify="left")
    for c in ("tensor", "p50 ms", "GB/s"):
        t.add_column(c, justify="right")
    for r in res["hops"]:
        t.add_row(f"{r['bytes'] / 1024:.0f} KiB", f"{r['p50_ms']:.2f}", f"{r['gb_per_s']:.2f}")
    con.print(t)
    t = Table(title=f"2. emulated link throughput ({LINK_BYTES >> 20} MiB tensors; goal >= 90%)", title_justify="left")
    for c in ("link Mbit/s", "achieved Mbit/s", "share"):
        t.add_column(c, justify="right")
    for r in res["links"]:
        t.add_row(f"{r['link_mbps']:.0f}", f"{r['achieved_mbps']:.1f}", f"{100 * r['share']:.1f}%")
    con.print(t)
    if "squeezenet" in res:
        s = res["squeezenet"]
        t = Table(title="3. SqueezeNet 1.1 in 3 pieces (1.55 MB, 260 KB between them), links not emulated",
                  title_justify="left")
        for c in ("pipeline", "p50 ms", "per hop ms", "req/s at 8", "p50 / p95 ms at 8"):
            t.add_column(c, justify="right" if c != "pipeline" else "left")
        o, p = s["one_process"], s["three_sites"]
        t.add_row("3 pieces in one process", f"{o['p50_ms']:.1f}", "-", f"{o['rps_8']:.0f}",
                  f"{o['p50_ms_8']:.1f} / {o['p95_ms_8']:.1f}")
        t.add_row("tierplan: edge agent + 2 Ray nodes, gRPC", f"{p['p50_ms']:.1f}",
                  f"{p['per_hop_ms']:.2f} vs one process; {p['per_hop_ms_vs_own_compute']:.2f} vs its own "
                  f"compute ({s['hops_per_request']} hops)", f"{p['rps_8']:.0f}",
                  f"{p['p50_ms_8']:.1f} / {p['p95_ms_8']:.1f}")
        t.add_row("peer: Ray Serve, 3 deployments (DESIGN.md)", "35-40", "7-8", "32-43", "")
        con.print(t)
    if res.get("examples"):
        t = Table(title="4. tierplan run: measured vs the plan's prediction (goal within 15%)", title_justify="left")
        for c in ("example", "ok", "failed", "measured p50 ms", "predicted ms", "measured / predicted"):
            t.add_column(c, justify="right" if c != "example" else "left")
        for r in res["examples"]:
            if "error" in r:
                t.add_row(r["example"], "-", "-", "-", "-", r["error"][:60])
            else:
                t.add_row(r["example"], str(r["requests_ok"]), str(r["requests_failed"]),
                          f"{r['measured_p50_ms']:.1f}" if r["measured_p50_ms"] else "-",
                          f"{r['predicted_p50_ms']:.1f}" if r["predicted_p50_ms"] else "-",
                          f"{r['ratio']:.2f}" if r["ratio"] else "-")
        con.print(t)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="Fewer repeats, shorter runs.")
    ap.add_argument("--seconds", type=float, default=None, help="Seconds per closed-loop / example run.")
    ap.add_argument("--examples", default="read-text,smart-city", help="Comma-separated examples ('' for none).")
    ap.add_argument("--skip-squeezenet", action="store_true")
    a = ap.parse_args(argv)
    seconds = a.seconds or (3.0 if a.quick else 8.0)
    repeats = 10 if a.quick else 40
    res: dict = {"hops": bench_hops(repeats), "links": bench_links()}
    if not a.skip_squeezenet:
        res["squeezenet"] = bench_squeezenet(seconds, repeats)
    res["examples"] = bench_examples([e for e in a.examples.split(",") if e], seconds)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2))
    _print(res)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

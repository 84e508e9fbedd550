"""Link benchmarks: declared jitter, loss and bandwidth against what real gRPC sends measure (emulator and kernel).

    python benchmarks/links.py [--quick]

1. Jitter: one-way delay of small deliveries over a link emulated by runtime.links (runtime.stage.Sender,
   loopback gRPC): measured mean and std against the declared RTT/2 and jitter (clipped at 0 as in the
   simulator) and against the seeded draws themselves (replayed), for the read-text fleet's links and
   one two-hop route. "measured - drawn" is what the machine adds per delivery (gRPC, scheduling).
2. Loss: throughput of 1 MiB deliveries over a 100 Mbit/s emulated link losing a share of its packets,
   against the goodput bandwidth x (1 - loss_rate).
3. Kernel shaping (runtime.netns): 4 MiB from one network namespace to a Stage server in another over
   a veth pair shaped by tbf, against the shaped rate, and the same declared link through the user-space
   emulator (tbf at wire_rate_mbps(declared), as the emulator charges payload bytes).

Prints rich tables and writes benchmarks/results/links.json. The machine is shared: numbers are noisy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tierplan.devices.fleet import resolve_fleet
from tierplan.runtime.links import LinkEmulator, route_table  # noqa: E402
from tierplan.runtime.netns import probe_argv, probe_env, read_port, recording_server, veth_pair, wire_rate_mbps  # noqa: E402
from tierplan.runtime.stage import Sender  # noqa: E402
from tierplan.runtime.wire import Delivery  # noqa: E402
from tierplan.loader import load_fleet  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "links.json"
LOSS_RATES = [0.0, 0.01, 0.1, 0.25]
LOSS_LINK_MBPS = 100.0
TBF_RATES_MBPS = [10.0, 20.0, 50.0]
TBF_BYTES = 4 << 20
IQR_PER_STD = 1.349   # interquartile range of a normal distribution, in standard deviations


def _sends(emu: LinkEmulator, a: str, b: str, payload: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """n deliveries one after another from a to b: per-delivery one-way ms and total seconds."""
    srv, addr, received = recording_server()
    sender = Sender(a, None, lambda: emu)
    try:
        warm = Delivery("warm-up", "x", "y", {"t": payload[:1]}, deadline_unix_ms=(time.time() + 30) * 1e3)
        if sender.send(lambda: addr, warm, ""):   # connect first: not part of any link's time
            raise RuntimeError("warm-up delivery failed")
        lat, t0 = [], time.perf_counter()
        for i in range(n):
            d = Delivery(f"r{i}", "x", "y", {"t": payload}, deadline_unix_ms=(time.time() + 60) * 1e3)
            err = sender.send(lambda: addr, d, b)
            if err:
                raise RuntimeError(err)
            lat.append((received[d.request_id] - d.sent_unix_ms / 1e3) * 1e3)
        return np.array(lat), time.perf_counter() - t0
    finally:
        sender.close()
        srv.stop(0)


def bench_jitter(n: int) -> list[dict]:
    """Declared against measured one-way delay for the example fleets' links (and read-text's phone -> cloud)."""
    fleet = load_fleet(ROOT / "examples" / "read-text" / "fleet.yaml")
    sites = list(fleet.sites)
    routes = route_table(resolve_fleet(fleet), sites)
    pairs = [(a, fleet.sites[a].attach) for a in sites if fleet.sites[a].attach]
    edge = next(a for a, _ in pairs if fleet.sites[a].tier == "edge")
    top = next(s for s in sites if fleet.sites[s].attach is None)
    pairs.append((edge, top))
    rows = []
    for a, b in pairs:
        emu = LinkEmulator(routes, seed=1)
        hops = emu.route(a, b)
        payload = np.zeros(256, np.float32)
        lat, _ = _sends(emu, a, b, payload, n)
        replay = LinkEmulator(routes, seed=1)     # the same seed draws the same delays: what was emulated
        drawn = np.array([(replay.arrival_s(a, b, payload.nbytes, now_s=100.0 * i) - 100.0 * i) * 1e3
                          for i in range(n)])
        q25, q75 = np.percentile(lat, [25, 75])
        excess = lat - drawn
        rows.append({"route": f"{a}->{b}", "hops": len(hops),
                     "drawn_mean_ms": float(drawn.mean()), "drawn_std_ms": float(drawn.std()),
                     "measured_iqr_std_ms": float((q75 - q25) / IQR_PER_STD),
                     "excess_p50_ms": float(np.percentile(excess, 50)), "excess_p95_ms": float(np.percentile(excess, 95)),
                     "declared_delay_ms": sum(h.delay_ms for h in hops),
                     "declared_jitter_ms": float(np.sqrt(sum(h.jitter_ms ** 2 for h in hops))),
                     "expected_mean_ms": sum(h.expected_delay_ms for h in hops),
                     "expected_std_ms": float(np.sqrt(sum(h.delay_std_ms ** 2 for h in hops))),
                     "measured_mean_ms": float(lat.mean()), "measured_std_ms": float(lat.std()), "sends": n})
    return rows


def bench_loss(n: int) -> list[dict]:
    """Throughput of n x 1 MiB over a lossy emulated link against bandwidth x (1 - loss)."""
    rows = []
    payload = np.zeros(1 << 20, np.uint8)
    for p in LOSS_RATES:
        emu = LinkEmulator({"a|b": [{"link_id": "a->b", "bandwidth_mbps": LOSS_LINK_MBPS, "delay_ms": 0.0,
                                     "loss_rate": p}]})
        _, s = _sends(emu, "a", "b", payload, n)
        achieved = n * payload.nbytes * 8 / s / 1e6
        goodput = LOSS_LINK_MBPS * (1 - p)
        rows.append({"loss_rate": p, "goodput_mbps": goodput, "achieved_mbps": achieved, "share": achieved / goodput})
    return rows


def _kernel_s(pair, address: str) -> float:
    r = subprocess.run(pair.exec_argv(0, probe_argv("send", "--to", address, "--bytes", str(TBF_BYTES))),
                       capture_output=True, text=True, env=probe_env(), timeout=120, check=True)
    return json.loads(r.stdout)["seconds"]


def bench_kernel() -> list[dict]:
    """4 MiB over tbf-shaped veth pairs (namespaces) and over the emulator, per declared rate."""
    rows = []
    with veth_pair(rate_mbps=TBF_RATES_MBPS[0]) as pair:
        srv = pair.popen(1, probe_argv("serve", "--listen", f"{pair.addresses[1]}:0"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=probe_env())
        address = f"{pair.addresses[1]}:{read_port(srv)}"
        for rate in TBF_RATES_MBPS:
            pair.set_rate(0, rate)
            raw_s = _kernel_s(pair, address)
            pair.set_rate(0, wire_rate_mbps(rate))
            kernel_s = _kernel_s(pair, address)
            emu = LinkEmulator({"a|b": [{"link_id": "a->b", "bandwidth_mbps": rate, "delay_ms": 0.0}]})
            _, emu_s = _sends(emu, "a", "b", np.zeros(TBF_BYTES, np.uint8), 1)
            rows.append({"rate_mbps": rate, "tbf_achieved_mbps": TBF_BYTES * 8 / raw_s / 1e6,
                         "tbf_share": TBF_BYTES * 8 / raw_s / 1e6 / rate, "kernel_s": kernel_s,
                         "emulator_s": emu_s, "kernel_over_emulator": kernel_s / emu_s})
    return rows


def _print(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    con = Console(width=160)
    t = Table(title="1. jitter: one-way delay over the emulator, real gRPC sends (read-text fleet)", title_justify="left")
    for c in ("route", "hops", "RTT/2 ms", "jitter ms", "expected mean / std", "drawn mean / std",
              "measured mean / std (IQR std)", "measured - drawn p50 / p95"):
        t.add_column(c, justify="right" if c != "route" else "left", no_wrap=c == "route")
    for r in res["jitter"]:
        t.add_row(r["route"], str(r["hops"]), f"{r['declared_delay_ms']:.1f}", f"{r['declared_jitter_ms']:.1f}",
                  f"{r['expected_mean_ms']:.1f} / {r['expected_std_ms']:.1f}",
                  f"{r['drawn_mean_ms']:.1f} / {r['drawn_std_ms']:.1f}",
                  f"{r['measured_mean_ms']:.1f} / {r['measured_std_ms']:.1f} ({r['measured_iqr_std_ms']:.1f})",
                  f"{r['excess_p50_ms']:.2f} / {r['excess_p95_ms']:.2f}")
    con.print(t)
    t = Table(title=f"2. loss: 1 MiB deliveries over {LOSS_LINK_MBPS:.0f} Mbit/s", title_justify="left")
    for c in ("loss rate", "goodput Mbit/s", "achieved Mbit/s", "share"):
        t.add_column(c, justify="right")
    for r in res["loss"]:
        t.add_row(f"{r['loss_rate']:.2f}", f"{r['goodput_mbps']:.1f}", f"{r['achieved_mbps']:.1f}",
                  f"{100 * r['share']:.1f}%")
    con.print(t)
    t = Table(title=f"3. kernel tbf on a veth pair vs the emulator ({TBF_BYTES >> 20} MiB)", title_justify="left")
    for c in ("rate Mbit/s", "tbf achieved Mbit/s", "share", "kernel s (tbf at wire rate)", "emulator s",
              "kernel / emulator"):
        t.add_column(c, justify="right")
    for r in res["kernel"]:
        t.add_row(f"{r['rate_mbps']:.0f}", f"{r['tbf_achieved_mbps']:.2f}", f"{100 * r['tbf_share']:.1f}%",
                  f"{r['kernel_s']:.3f}", f"{r['emulator_s']:.3f}", f"{r['kernel_over_emulator']:.3f}")
    con.print(t)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="Fewer sends.")
    a = ap.parse_args(argv)
    n = 60 if a.quick else 200
    res = {"jitter": bench_jitter(n), "loss": bench_loss(4 if a.quick else 10), "kernel": bench_kernel()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2))
    _print(res)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

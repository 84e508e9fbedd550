"""Loader benchmark: how long app.yaml and fleet.yaml of 10 MB take to load and validate.

    python benchmarks/loader.py [--mb 10] [--repeat 3]

Generates, in a temporary folder, an app.yaml whose one model is a profile table of as many
layers as fill the size, and a fleet.yaml of as many edge site classes (inline devices, one link
class each); each valid, and with one problem per entry (a negative output_bytes per layer, a
misspelt `attach` per site class). For each file it times, best of --repeat:
- `load`: tierplan.loader.load_app / load_fleet in this process (wall and CPU seconds);
- `validate`: `python -m tierplan validate` end to end (a fresh interpreter: imports included);
- `pyyaml`: PyYAML's own C-accelerated safe_load of the same text, for reference.
Goal: the loader reads a 10 MB YAML in under 3 s (issue 14). Prints a rich table and writes
benchmarks/results/loader.json with the machine's load average (the CPU may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tierplan.errors import SpecError  # noqa: E402
from tierplan.loader import load_app, load_fleet  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "loader.json"
GOAL_S = 3.0

APP_HEAD = """\
name: big
models:
  net:
    profile:
      input_bytes: 1000
      layers:
"""
APP_LAYER = ("      - {{name: layer_{i}, output_bytes: {out}, flops: 1500000.0, param_bytes: 100, "
             "latency_ms: {{rpi5: 1.25, pixel-8: 0.5}}}}\n")
APP_TAIL = """\
sources:
  cam: {at: edge, rate_hz: 5, shape: [1, 3, 8, 8]}
edges:
  - {from: cam, to: net}
sinks:
  out: {from: net}
"""
FLEET_SITE = """\
  edge_{i}:
    tier: edge
    device:
      name: dev{i}
      tier: edge
      description: an inline device for the loader benchmark
      peak_gflops: {{fp32: 100.0, fp16: 200.0}}
      memory_gb: 4
      memory_bandwidth_gbps: 20
      power_idle_w: 1
      power_active_w: 5
    count: 1000
    attach: {attach}
    link: l{i}
    max_utilization: 0.8
"""
FLEET_LINK = "  l{i}: {{uplink_mbps: 10.5, downlink_mbps: 40.25, rtt_ms: 50, jitter_ms: 8}}\n"


def app_text(mb: float, bad: bool) -> tuple[str, int]:
    """(app.yaml text of about `mb` MB, number of layers)."""
    per = len(APP_LAYER.format(i=10**5, out=10**5))
    n = max(1, int((mb * 1e6 - len(APP_HEAD) - len(APP_TAIL)) / per))
    layers = "".join(APP_LAYER.format(i=i, out=(-1 if bad else 1000 + i)) for i in range(n))
    return APP_HEAD + layers + APP_TAIL, n


def fleet_text(mb: float, bad: bool) -> tuple[str, int]:
    """(fleet.yaml text of about `mb` MB, number of site classes)."""
    per = len(FLEET_SITE.format(i=10**4, attach="region")) + len(FLEET_LINK.format(i=10**4))
    n = max(1, int(mb * 1e6 / per))
    attach = "regoin" if bad else "region"
    sites = "".join(FLEET_SITE.format(i=i, attach=attach) for i in range(n))
    links = "".join(FLEET_LINK.format(i=i) for i in range(n))
    return ("name: big\nsites:\n  region: {tier: cloud, device: aws-g5-xlarge}\n" + sites
            + "links:\n" + links), n


def _best(fn, repeat: int) -> tuple[float, float, object]:
    """(best wall s, its CPU s, last result) over `repeat` runs."""
    best = (float("inf"), 0.0)
    out = None
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, (time.perf_counter() - w, time.process_time() - c))
    return best[0], best[1], out


def _load(loader, path: Path):
    try:
        loader(path)
        return 0
    except SpecError as e:
        return len(e.problems)


SMALL_APP = APP_HEAD + APP_LAYER.format(i=0, out=1000) + APP_TAIL  # the app a fleet is validated with


def _validate_cli(path: Path, kind: str) -> tuple[float, int]:
    """Wall seconds and exit code of `python -m tierplan validate` on one file (a fleet with a one-layer app)."""
    small = path.parent / "small_app.yaml"
    small.write_text(SMALL_APP)
    args = [str(path)] if kind == "app" else [str(small), "--fleet", str(path)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "tierplan", "validate", *args], capture_output=True, text=True,
                       env=env, cwd=path.parent)
    return time.perf_counter() - t0, r.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=10.0, help="Size of each generated file, MB.")
    ap.add_argument("--repeat", type=int, default=3, help="Runs per measurement (the best is kept).")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, make, loader in (("app", app_text, load_app), ("fleet", fleet_text, load_fleet)):
            for bad in (False, True):
                text, n = make(args.mb, bad)
                path = Path(tmp) / f"{kind}{'_bad' if bad else ''}.yaml"
                path.write_text(text)
                wall, cpu, problems = _best(lambda: _load(loader, path), args.repeat)
                cli = min(_validate_cli(path, kind) for _ in range(max(1, args.repeat - 1)))
                ref = _best(lambda: yaml.load(text, Loader=yaml.CSafeLoader), 1)[0]
                rows.append({"file": kind, "valid": not bad, "mb": round(len(text.encode()) / 1e6, 2),
                             "entries": n, "problems": problems, "load_s": round(wall, 3), "load_cpu_s": round(cpu, 3),
                             "validate_cli_s": round(cli[0], 3), "validate_exit": cli[1],
                             "pyyaml_safe_load_s": round(ref, 3), "goal_met": wall < GOAL_S})
    table = Table(title=f"Loading {args.mb:g} MB YAML files (best of {args.repeat}; goal < {GOAL_S:g} s)")
    for col in ("file", "valid", "MB", "entries", "problems", "load s", "load CPU s", "validate (CLI) s",
                "exit", "PyYAML safe_load s", "goal"):
        table.add_column(col, justify="left" if col in ("file", "valid", "goal") else "right")
    for r in rows:
        table.add_row(r["file"], "yes" if r["valid"] else "no", f"{r['mb']:.1f}", f"{r['entries']:,}",
                      f"{r['problems']:,}", f"{r['load_s']:.2f}", f"{r['load_cpu_s']:.2f}",
                      f"{r['validate_cli_s']:.2f}", str(r["validate_exit"]), f"{r['pyyaml_safe_load_s']:.2f}",
                      "met" if r["goal_met"] else "MISSED")
    con = Console()
    (con if con.is_terminal else Console(width=160)).print(table)
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} on {os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"mb": args.mb, "repeat": args.repeat, "goal_s": GOAL_S, "rows": rows,
                                   "load_average_1m": round(load[0], 2), "cpus": os.cpu_count(),
                                   "python": platform.python_version(), "pyyaml": yaml.__version__,
                                   "libyaml": bool(getattr(yaml, "__with_libyaml__", False))}, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if all(r["goal_met"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

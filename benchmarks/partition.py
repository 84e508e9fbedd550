"""Benchmark of partition/: time and peak memory to load, cut and extract models of 100..5,000 operators.

Synthetic models are chains of residual blocks (Conv, Relu, Conv, Add, Relu) built with
onnx.helper (partition.zoo.residual_chain); real models are added for scale. Goal: a 2,000-op
model loaded, cut and extracted in under 5 s. Prints a rich table, writes
benchmarks/results/partition.json.

    python benchmarks/partition.py [--sizes 100,500,1000,2000,5000] [--max-pieces 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tierplan.partition import zoo  # noqa: E402
from tierplan.partition.cuts import coarsen  # noqa: E402
from tierplan.partition.extract import build_pieces, write_pieces  # noqa: E402
from tierplan.partition.onnx_graph import load_onnx  # noqa: E402

GOAL_OPS, GOAL_S = 2000, 5.0


def _one(path: Path, out_dir: Path, k: int, dims=None) -> dict:
    t0 = time.perf_counter()
    G = load_onnx(path, dims)
    t1 = time.perf_counter()
    part = coarsen(G, k)
    t2 = time.perf_counter()
    write_pieces(G, build_pieces(G, part), out_dir)
    t3 = time.perf_counter()
    return {"ops": G.number_of_nodes(), "pieces": len(part.pieces), "load_s": t1 - t0, "cut_s": t2 - t1,
            "extract_s": t3 - t2, "total_s": t3 - t0}


def _peak_mb(path: Path, out_dir: Path, k: int, dims=None) -> float:
    tracemalloc.start()
    _one(path, out_dir, k, dims)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,500,1000,2000,5000")
    ap.add_argument("--max-pieces", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per model; the best is reported")
    args = ap.parse_args(argv)

    import onnx
    light = Path(onnx.__file__).parent / "backend/test/data/light"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = []
        for n in (int(s) for s in args.sizes.split(",")):
            cases.append((f"residual_chain_{n}", zoo.save(zoo.residual_chain(n), tmp / f"chain{n}.onnx"), None))
        cases.append(("light_resnet50", light / "light_resnet50.onnx", None))
        cases.append(("light_densenet121", light / "light_densenet121.onnx", None))
        for name, path, dims in cases:
            runs = [_one(path, tmp / f"{name}_{i}", args.max_pieces, dims) for i in range(args.repeat)]
            best = min(runs, key=lambda r: r["total_s"])
            best.update(model=name, peak_traced_mb=_peak_mb(path, tmp / f"{name}_m", args.max_pieces, dims))
            rows.append(best)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    goal = next((r for r in rows if r["model"] == f"residual_chain_{GOAL_OPS}"), None)
    result = {"max_pieces": args.max_pieces, "repeat": args.repeat, "max_rss_mb": rss_mb, "rows": rows,
              "goal": {"ops": GOAL_OPS, "limit_s": GOAL_S, "total_s": goal["total_s"] if goal else None,
                       "met": bool(goal and goal["total_s"] < GOAL_S)}}
    out = REPO / "benchmarks" / "results" / "partition.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))

    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"partition: load + cut + extract (K={args.max_pieces}, best of {args.repeat})",
              title_justify="left")
    for col in ("model", "ops", "pieces", "load s", "cut s", "extract s", "total s", "peak MB (traced)"):
        t.add_column(col, justify="left" if col == "model" else "right", no_wrap=col == "model")
    for r in rows:
        t.add_row(r["model"], str(r["ops"]), str(r["pieces"]), f"{r['load_s']:.3f}", f"{r['cut_s']:.3f}",
                  f"{r['extract_s']:.3f}", f"{r['total_s']:.3f}", f"{r['peak_traced_mb']:.1f}")
    con = Console()
    con.print(t)
    g = result["goal"]
    con.print(f"goal: {GOAL_OPS} ops in < {GOAL_S:.0f} s: {g['total_s']:.2f} s -> "
              + ("[green]met[/]" if g["met"] else "[red]not met[/]") + f"; max RSS {rss_mb:.0f} MB; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark of runtime/compile: per-piece latency with TVM untuned, TVM tuned and onnxruntime on this machine.

Models: the example app's PP-OCR detector, orientation classifier and recogniser (real weights,
shapes from examples/read-text/app.yaml) and SqueezeNet (onnx's light model), each cut into
pieces by partition/. Every piece is compiled three ways through `compile_plan` (onnxruntime;
TVM untuned; TVM tuned with a small meta-schedule budget on the heaviest tasks of the pieces
named by --tune-pieces) into fresh stores, so compile and tune times are real. Latency is the
median of timed runs of the accepted artifact (each one checked against onnxruntime first).
Last, the whole plan is compiled again into the first store: that must be all cache hits.
Prints a rich table, writes benchmarks/results/compile.json.

    python benchmarks/compile.py [--trials 16] [--tasks 2] [--tune-pieces 2] [--runs 10]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tierplan.partition.api import partition_model  # noqa: E402
from tierplan.planner.plan import Plan, PlanPiece  # noqa: E402
from tierplan.runtime.compile import CompileOptions, compile_plan, compiler_versions  # noqa: E402


def _pkg(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


# model name -> (file, dims for its symbolic inputs (as in examples/read-text/app.yaml), pieces)
MODELS = {
    "ppocr_det": (_pkg("rapidocr_onnxruntime", "models", "ch_PP-OCRv4_det_infer.onnx"),
                  {"p2o.DynamicDimension.0": 1, "p2o.DynamicDimension.1": 480, "p2o.DynamicDimension.2": 480}, 3),
    "ppocr_cls": (_pkg("rapidocr_onnxruntime", "models", "ch_ppocr_mobile_v2.0_cls_infer.onnx"),
                  {"x[0]": 1, "x[2]": 48, "x[3]": 192}, 2),
    "ppocr_rec": (_pkg("rapidocr_onnxruntime", "models", "ch_PP-OCRv4_rec_infer.onnx"),
                  {"p2o.DynamicDimension.0": 1, "x[2]": 48, "p2o.DynamicDimension.1": 320}, 2),
    "squeezenet": (_pkg("onnx", "backend", "test", "data", "light", "light_squeezenet.onnx"), {}, 2),
}


def _pieces(work: Path) -> list[PlanPiece]:
    out: list[PlanPiece] = []
    for name, (path, dims, k) in MODELS.items():
        res = partition_model(path, max_pieces=k, out_dir=work / "pieces" / name, dims=dims, model_name=name)
        for p in res.manifest["pieces"]:
            f = Path(p["file"])
            out.append(PlanPiece(id=p["id"], model=name, file=str(f if f.is_absolute() else res.out_dir / f),
                                 inputs=p["inputs"], outputs=p["outputs"], flops=p["flops"],
                                 param_bytes=p["param_bytes"]))
    return out


def _plan(pieces: list[PlanPiece]) -> Plan:
    return Plan(status="feasible", assignment={p.id: "here" for p in pieces}, site_devices={"here": "local"},
                pieces=pieces)


def _alt(entry: dict, backend: str) -> dict | None:
    return next((a for a in entry["alternatives"] if a["backend"] == backend), None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16, help="meta-schedule trials per tuned task")
    ap.add_argument("--tasks", type=int, default=2, help="tasks tuned per piece (the heaviest)")
    ap.add_argument("--tune-pieces", type=int, default=2, help="tune the N TVM-compilable pieces with most FLOPs")
    ap.add_argument("--runs", type=int, default=10, help="timed runs per artifact (median)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "compile.json"))
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    con = Console(width=200)
    t_all = time.perf_counter()
    opts = CompileOptions(measure_runs=args.runs, measure_budget_s=5.0)
    with tempfile.TemporaryDirectory(prefix="tierplan-bench-compile-") as tmp:
        work = Path(tmp)
        pieces = _pieces(work)
        plan = _plan(pieces)
        ort_res = compile_plan(plan, work / "ort", backends=["onnxruntime"], progress=True, options=opts)
        tvm_res = compile_plan(plan, work / "tvm", backends=["tvm"], progress=True, options=opts)
        tvm_ok = [p for p in pieces if (_alt(tvm_res.entry(p.id, "here"), "tvm") or {}).get("ok")]
        to_tune = sorted(tvm_ok, key=lambda p: p.flops, reverse=True)[: args.tune_pieces]
        tuned_res = compile_plan(_plan(to_tune), work / "tuned", backends=["tvm"], tune_trials=args.trials,
                                 tune_tasks=args.tasks, tune_db=work / "tuning", progress=True,
                                 options=opts) if to_tune and args.trials > 0 else None
        t0 = time.perf_counter()
        again = compile_plan(plan, work / "tvm", backends=["tvm"], progress=False, options=opts)
        recompile_s = time.perf_counter() - t0

    rows = []
    for p in pieces:
        o = ort_res.entry(p.id, "here")
        t = tvm_res.entry(p.id, "here")
        ta = _alt(t, "tvm") or {}
        tu = tuned_res.entry(p.id, "here") if tuned_res and p in to_tune else None
        tune = (tu or {}).get("tune") or {}
        rows.append({
            "piece": p.id, "gflops": p.flops / 1e9,
            "onnxruntime_ms": o["latency_ms"], "onnxruntime_build_s": o["build_s"],
            "tvm_untuned_ms": ta.get("latency_ms") if ta.get("ok") else None,
            "tvm_compile_s": t["build_s"] if t["backend"] == "tvm" else None,
            "tvm_max_abs_diff": ta.get("max_abs_diff"),
            "tvm_tuned_ms": tu["latency_ms"] if tu and tu["backend"] == "tvm" else None,
            "tune_s": tune.get("tune_s"), "tuned_compile_s": tu["build_s"] if tu else None,
            "tasks_tuned": len(tune.get("tasks_tuned", [])), "tasks_total": tune.get("tasks_total"),
            "tvm_failed": None if ta.get("ok") else ta.get("reason"),
        })

    def ms(v):
        return "-" if v is None else f"{v:.2f}"

    table = Table(title=f"compile: per-piece latency on this machine ({platform.machine()}), median of up to "
                        f"{args.runs} runs; tuned = {args.trials} trials x {args.tasks} heaviest tasks",
                  title_justify="left")
    for col in ("piece", "GFLOPs", "onnxruntime ms", "TVM untuned ms", "TVM tuned ms", "TVM compile s",
                "tune s", "note"):
        table.add_column(col, justify="left" if col in ("piece", "note") else "right")
    for r in rows:
        note = ""
        if r["tvm_failed"]:
            note = "TVM rejected, onnxruntime used: " + r["tvm_failed"].split("(")[-1].rstrip(")")[:60]
        elif r["tvm_tuned_ms"] is not None:
            note = f"tuned {r['tasks_tuned']}/{r['tasks_total']} tasks"
        table.add_row(r["piece"], f"{r['gflops']:.3f}", ms(r["onnxruntime_ms"]), ms(r["tvm_untuned_ms"]),
                      ms(r["tvm_tuned_ms"]), "-" if r["tvm_compile_s"] is None else f"{r['tvm_compile_s']:.1f}",
                      "-" if r["tune_s"] is None else f"{r['tune_s']:.1f}", note)
    con.print(table)
    total_s = time.perf_counter() - t_all
    summary = {
        "pieces": len(rows), "tvm_compiled": len(tvm_ok), "tvm_rejected": len(rows) - len(tvm_ok),
        "onnxruntime_compile_s": ort_res.compile_s, "tvm_untuned_compile_s": tvm_res.compile_s,
        "tuned_compile_s": tuned_res.compile_s if tuned_res else None,
        "recompile_all_cached_s": recompile_s, "recompile_cached": again.cached, "total_s": total_s,
    }
    con.print(f"compile (build + check + time) of {len(rows)} pieces: onnxruntime {ort_res.compile_s:.1f} s, "
              f"TVM untuned {tvm_res.compile_s:.1f} s"
              + (f", TVM tuned ({len(to_tune)} pieces) {tuned_res.compile_s:.1f} s" if tuned_res else "")
              + f"; recompiling the unchanged plan: {recompile_s:.2f} s, {again.cached}/{len(rows)} cached; "
              f"benchmark {total_s:.0f} s")
    result = {"benchmark": "compile", "machine": {"arch": platform.machine(), "python": platform.python_version()},
              "versions": compiler_versions(), "settings": vars(args), "rows": rows, "summary": summary}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

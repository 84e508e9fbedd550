"""Wire fuzzing at length: tests/runtime/test_runtime_fuzz.py with more examples, its counts as a table.

    python benchmarks/fuzz.py [--examples N] [--random]

Runs the adversarial fuzzer of every RPC in runtime.proto (live agent, worker, controller and front
door over loopback, plain and mutual TLS) with N examples per test (CI runs 20), derandomized unless
`--random`, then prints calls, correct answers, error statuses and the failures that must stay 0
(unhandled handler exceptions, hangs, crashed processes, files written outside a cache), per RPC,
and writes benchmarks/results/fuzz.json. Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "fuzz.json"
TEST = "tests/runtime/test_runtime_fuzz.py"
FAILURES = ("unhandled", "hangs", "crashes", "escapes")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=200, help="Hypothesis examples per test (default 200).")
    ap.add_argument("--random", action="store_true", help="Fresh random examples instead of the fixed seed.")
    a = ap.parse_args(argv)
    env = dict(os.environ, TIERPLAN_FUZZ_EXAMPLES=str(a.examples), TIERPLAN_FUZZ_REPORT=str(RESULTS),
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    if a.random:
        env["TIERPLAN_FUZZ_RANDOM"] = "1"
    t0 = time.perf_counter()
    rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST], cwd=ROOT,
                        env=env).returncode
    wall_s = time.perf_counter() - t0
    if not RESULTS.is_file():
        print(f"no results written ({TEST} exited {rc})")
        return rc or 1
    res = json.loads(RESULTS.read_text())
    res.update(wall_s=round(wall_s, 1), random=a.random, pytest_exit=rc)
    RESULTS.write_text(json.dumps(res, indent=1) + "\n")
    cols = ["ok", "errors", *FAILURES]
    print(f"\n{'RPC':<42}" + "".join(f"{c:>10}" for c in cols))
    for rpc, c in res["per_rpc"].items():
        print(f"{rpc:<42}" + "".join(f"{c.get(k, 0):>10}" for k in cols))
    print(f"{'all (' + str(res['calls']) + ' calls)':<42}" + "".join(f"{res[k]:>10}" for k in cols))
    print(f"{a.examples} examples per test, {wall_s:.0f} s; written to {RESULTS.relative_to(ROOT)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())

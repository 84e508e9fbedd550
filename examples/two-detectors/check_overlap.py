"""Check a `tierplan run` of this example against the planner's latency model (examples/README.md).

    tierplan run examples/two-detectors --duration 15 --json --plan-out out/plan.json > out/run.json
    python examples/two-detectors/check_overlap.py out/plan.json out/run.json

Per device class: the run's measured p50 against the plan's latency model (its slowest sink)
evaluated with the run's own measured compute steps (planner.measured), under the overlap model
(what the plan used: branches on different sites at the same time) and the sum model. Exit 0 when
every class is within 15% of the overlap model, else 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tierplan.planner.measured import StepKey, latency_with_steps
from tierplan.planner.plan import Plan
from tierplan.runtime.fleetrun import split_node

TOLERANCE = 0.15


def measured_steps(plan: Plan, report: dict) -> dict[StepKey, float]:
    """(class or None, node, site) -> the run's p50 of that compute step (ms)."""
    classes = list(plan.per_class)
    out: dict[StepKey, float] = {}
    for row in report["stages"]:
        if row["kind"] == "compute":
            node, _, site = row["name"].rpartition("@")
            cls, base = split_node(node, classes)
            out[(cls, base.rpartition("~")[2], site)] = float(row["measured_p50_ms"])
    return out


def ratios(plan: Plan, report: dict, model: str) -> dict[str, float]:
    """Per class: measured p50 / the model's figure with the measured steps (its slowest sink)."""
    planned = latency_with_steps(plan, measured_steps(plan, report), model)
    return {row["device_class"]: row["measured_p50_ms"] / max(planned[row["device_class"]][s] for s in row["sinks"])
            for row in report["classes"]}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    plan = Plan.load(argv[0])
    report = json.loads(Path(argv[1]).read_text())
    over, summed = ratios(plan, report, "overlap"), ratios(plan, report, "sum")
    print(f"latency model of the plan: {plan.latency_semantics.split(':')[0]}")
    print(f"{'class':<12} {'sites':<22} {'measured/overlap':>17} {'measured/sum':>13}")
    for cls, x in over.items():
        sites = "+".join(sorted({s for n, s in plan.per_class[cls].items() if "/" in n}))
        print(f"{cls:<12} {sites:<22} {x:>17.3f} {summed[cls]:>13.3f}")
    off = [c for c, x in over.items() if abs(x - 1) > TOLERANCE]
    print("within 15% of the overlap model" if not off else f"outside 15%: {', '.join(off)}")
    return 1 if off else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

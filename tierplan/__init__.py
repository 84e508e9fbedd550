"""tierplan: place the pieces of an ML app on device, base station and cloud, prove it, run it.

    import tierplan
    app = tierplan.load_app("app.yaml"); fleet = tierplan.load_fleet("fleet.yaml")
    plan = tierplan.plan(app, fleet, objective="cost")

The API is quiet unless asked: Ray's and gRPC's logging stays at WARNING (TIERPLAN_LOG_LEVEL=INFO
for more; see tierplan.logs).
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierplan.logs import quiet_by_default

quiet_by_default()   # before anything starts gRPC or Ray: their INFO chatter stays off unless asked (tierplan.logs)

from tierplan.errors import InfeasibleError, InputError, SpecError, TierplanError  # noqa: E402
from tierplan.loader import load_app, load_fleet  # noqa: E402

if TYPE_CHECKING:
    from tierplan.devices.fleet import Fleet
    from tierplan.planner.api import Objective
    from tierplan.planner.plan import Plan
    from tierplan.runtime.service import Service
    from tierplan.simulations.report import SimReport
    from tierplan.spec import AppSpec, FleetSpec

__version__ = "0.1.0"
__all__ = ["load_app", "load_fleet", "plan", "simulate", "deploy",
           "TierplanError", "InputError", "SpecError", "InfeasibleError"]


def plan(app: "AppSpec", fleet: "FleetSpec | Fleet", objective: "Objective" = None, **kw: Any) -> "Plan":
    """Place the app's pieces on the fleet (planner.api.plan_app; keywords as there)."""
    from tierplan.planner.api import plan_app
    return plan_app(app, fleet, objective=objective, **kw)


def simulate(plan: "Plan", fleet: "Fleet | FleetSpec | None" = None, **kw: Any) -> "SimReport":
    """Replay a plan over its own fleet, or a what-if `fleet` (simulations.api.simulate; keywords build
    the Scenario)."""
    from tierplan.simulations.api import simulate as _sim
    return _sim(plan, fleet, **kw)


def deploy(plan: "Plan | str | Path", local: bool = True, **kw: Any) -> "Service":
    """Run a plan; returns a context-managed Service with predict / predict_batch (runtime.deploy)."""
    from tierplan.runtime.deploy import deploy as _deploy
    return _deploy(plan, local=local, **kw)

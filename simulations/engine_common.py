"""What both engines hand back: per-request completion times and outcomes, plus busy intervals."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tierplan.simulations.journey import Journey, Stage

__all__ = ["Busy", "EngineResult", "resource_label", "sink_done"]


def resource_label(stage: Stage) -> str:
    """Name of the resource class in utilisation tables: a site class, or link:SITE:DIR[:shared]."""
    if stage.kind == "compute":
        return stage.site
    return f"link:{stage.site}:{stage.direction}" + (":shared" if stage.shared else "")


@dataclass
class Busy:
    """Service intervals on one resource class: which instance, when service started, for how long."""

    instances: int
    servers: int
    inst: list[np.ndarray] = field(default_factory=list)
    start_ms: list[np.ndarray] = field(default_factory=list)
    service_ms: list[np.ndarray] = field(default_factory=list)

    def add(self, inst: np.ndarray, start_ms: np.ndarray, service_ms: np.ndarray) -> None:
        self.inst.append(np.asarray(inst, dtype=np.int64))
        self.start_ms.append(np.asarray(start_ms, dtype=np.float64))
        self.service_ms.append(np.asarray(service_ms, dtype=np.float64))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.inst:
            z = np.zeros(0)
            return z.astype(np.int64), z, z
        return np.concatenate(self.inst), np.concatenate(self.start_ms), np.concatenate(self.service_ms)


@dataclass
class EngineResult:
    """Per journey: stage completion times (ms; NaN where the request failed) and outcome flags."""

    engine: str
    done_ms: list[list[np.ndarray]]
    failed: list[np.ndarray]
    rerouted: list[np.ndarray]
    delayed: list[np.ndarray]
    busy: dict[str, Busy]
    events: int = 0
    batch_sizes: dict[str, list[int]] = field(default_factory=dict)  # site class -> size of each batch run


def sink_done(journey: Journey, t_ms: np.ndarray, done: list[np.ndarray], failed: np.ndarray) -> dict[str, np.ndarray]:
    """Completion time of each sink of a journey: the last of its final stages (NaN if failed)."""
    out = {}
    for name, stages in journey.sinks.items():
        d = t_ms.copy() if not stages else np.max(np.stack([done[s] for s in stages]), axis=0)
        out[name] = np.where(failed, np.nan, d)
    return out

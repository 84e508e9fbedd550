"""What a simulation rehearses: arrivals, link conditions, failures and mobility, plus their parsers.

Each is a frozen dataclass; the CLI strings parse into them here so the API and the command line
share one grammar:

    arrivals   poisson | periodic[:JITTER_MS] | burst[:FACTOR[:ON_S[:OFF_S]]] |
               diurnal[:AMPLITUDE[:PERIOD_S]] | trace:FILE
    --fail     KIND:CLASS[#INSTANCES]@START-END[:POLICY]   KIND = device|link|site,
               INSTANCES = 3 | 0-4 | 25%, POLICY = fail|reroute|wait (default fail)
    --mobility CLASS:SHARE@START[-END][>INSTANCE]           e.g. cams:0.5@20>0 (half the cams move to
               base station 0 at t = 20 s; without >INSTANCE each moves to another random one)
    --link     SITE=PRESET|MBPS|trace:FILE[~CV]             e.g. cams=4g~0.3, bs=trace:bw.csv
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from tierplan.errors import InputError

__all__ = [
    "LINK_PRESETS_MBPS", "ArrivalSpec", "FailureWindow", "MobilityEvent", "LinkVariation",
    "parse_arrivals", "parse_failure", "parse_mobility", "parse_link", "bandwidth_factor_series",
]

# Mean uplink rates measured by Neurosurgeon (Kang et al., ASPLOS 2017, Table 2): 3G, LTE, Wi-Fi;
# 2G (EDGE) from the same line of work's traces. Megabit per second.
LINK_PRESETS_MBPS: dict[str, float] = {"2g": 0.13, "3g": 1.1, "4g": 5.85, "wifi": 18.88}

Policy = Literal["fail", "reroute", "wait"]


@dataclass(frozen=True)
class ArrivalSpec:
    """How requests arrive at each producing site (rate from the plan or app, shape from here).

    poisson: homogeneous. periodic: each device every 1/rate s from a random phase (cameras,
    sensors), each request shifted by N(0, jitter_ms). burst: a two-state Markov-modulated Poisson process shared by the
    class (rate x `burst_factor` while on; mean on/off sojourns in seconds), normalised so the
    mean rate is the nominal one. diurnal: rate x (1 + amplitude sin(2 pi t / period)).
    trace: timestamps in seconds, one per line (optionally `t,CLASS` or `t,CLASS/SOURCE`: only that
    source of the class), replayed as they are.
    """

    kind: Literal["poisson", "periodic", "burst", "diurnal", "trace"] = "poisson"
    jitter_ms: float = 0.0
    burst_factor: float = 5.0
    burst_on_s: float = 2.0
    burst_off_s: float = 8.0
    amplitude: float = 0.5
    period_s: float = 60.0
    trace: tuple[tuple[float, str | None], ...] = ()
    trace_path: str | None = None

    @property
    def label(self) -> str:
        return f"trace:{self.trace_path}" if self.kind == "trace" else self.kind


@dataclass(frozen=True)
class FailureWindow:
    """An outage: instances of a site class (or its devices, or its uplink) down from start to end.

    `instances` None means every instance; `share` picks that fraction of instances at random
    (from the run's seed). Requests that reach a down resource fail, are rerouted to another live
    instance of the same class (sites only), or wait for the end of the outage.
    """

    kind: Literal["device", "link", "site"]
    target: str
    start_s: float
    end_s: float
    policy: Policy = "fail"
    instances: tuple[int, ...] | None = None
    share: float | None = None


@dataclass(frozen=True)
class MobilityEvent:
    """From start_s (until end_s) a share of an edge class is served by other base-station instances."""

    edge_class: str
    share: float
    start_s: float
    end_s: float | None = None
    to_instance: int | None = None


@dataclass(frozen=True)
class LinkVariation:
    """Bandwidth of a site class's uplink/downlink over time.

    `mbps` replaces the fleet's figure (a preset or a number); `trace` is (t_s, mbps) steps
    (a step function, repeating); `cv` > 0 adds a log-normal AR(1) variation per `step_s` with that
    coefficient of variation around the mean. Up and down scale by the same factor.
    """

    site: str
    mbps: float | None = None
    trace: tuple[tuple[float, float], ...] = ()
    cv: float = 0.0
    step_s: float = 1.0
    correlation: float = 0.8
    label: str = ""


def _float(s: str, what: str) -> float:
    """A finite number from a flag or trace field; InputError naming `what` otherwise (nan and inf included)."""
    try:
        v = float(s)
    except ValueError:
        raise InputError(f"{what}: {s!r} is not a number. To fix: write a finite number") from None
    if not math.isfinite(v):
        raise InputError(f"{what}: {s!r} is not a finite number. To fix: write a finite number")
    return v


def parse_arrivals(text: str) -> ArrivalSpec:
    """Parse `--arrivals`; a trace file is read here (one timestamp in seconds per line)."""
    kind, _, rest = text.partition(":")
    args = [a for a in rest.split(":") if a] if rest else []
    if kind == "poisson" and not args:
        return ArrivalSpec("poisson")
    if kind == "periodic" and len(args) <= 1:
        j = _float(args[0], "--arrivals periodic jitter") if args else 0.0
        if j < 0:
            raise InputError("--arrivals periodic[:JITTER_MS]: jitter must be >= 0")
        return ArrivalSpec("periodic", jitter_ms=j)
    if kind == "burst":
        vals = [_float(a, "--arrivals burst") for a in args]
        if len(vals) > 3 or any(v <= 0 for v in vals):
            raise InputError("--arrivals burst[:FACTOR[:ON_S[:OFF_S]]]: up to three positive numbers")
        d = ArrivalSpec()
        f, on, off = vals + [d.burst_factor, d.burst_on_s, d.burst_off_s][len(vals):]
        return ArrivalSpec("burst", burst_factor=f, burst_on_s=on, burst_off_s=off)
    if kind == "diurnal":
        vals = [_float(a, "--arrivals diurnal") for a in args]
        if len(vals) > 2 or (vals and not 0 <= vals[0] <= 1) or (len(vals) == 2 and vals[1] <= 0):
            raise InputError("--arrivals diurnal[:AMPLITUDE[:PERIOD_S]]: amplitude in [0, 1], period > 0")
        d = ArrivalSpec()
        amplitude, period = vals + [d.amplitude, d.period_s][len(vals):]
        return ArrivalSpec("diurnal", amplitude=amplitude, period_s=period)
    if kind == "trace" and rest:
        return ArrivalSpec("trace", trace=_read_trace(Path(rest)), trace_path=rest)
    raise InputError(f"--arrivals {text!r}: expected poisson, periodic[:JITTER_MS], burst[:F[:ON[:OFF]]], "
                     f"diurnal[:A[:PERIOD]] or trace:FILE")


def _read_trace(path: Path) -> tuple[tuple[float, str | None], ...]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the arrival trace ({e.__class__.__name__}). To fix: check the path")
    out = []
    for i, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line or (i == 1 and not line[0].isdigit() and line[0] not in "-."):
            continue
        parts = [p.strip() for p in line.replace(";", ",").split(",")]
        t = _float(parts[0], f"{path}:{i}: timestamp in seconds")
        if t < 0:
            raise InputError(f"{path}:{i}: negative timestamp {t}")
        out.append((t, parts[1] if len(parts) > 1 and parts[1] else None))
    if not out:
        raise InputError(f"{path}: the arrival trace has no timestamps")
    return tuple(sorted(out, key=lambda x: x[0]))


_FAIL = re.compile(r"^(device|link|site):([A-Za-z_][\w.\-]*)(?:#([\d\-%.]+))?@([\d.]+)-([\d.]+)(?::(\w+))?$")


def parse_failure(text: str) -> FailureWindow:
    """Parse one `--fail` value, e.g. `site:bs#0-3@10-20:reroute` or `link:cams#25%@5-15`."""
    m = _FAIL.match(text.strip())
    if not m:
        raise InputError(f"--fail {text!r}: expected KIND:CLASS[#INSTANCES]@START-END[:POLICY], "
                         f"e.g. site:bs#0@10-20:reroute")
    kind, target, inst, a, b, policy = m.groups()
    start, end = _float(a, "--fail start"), _float(b, "--fail end")
    if end <= start:
        raise InputError(f"--fail {text!r}: the outage must end after it starts")
    policy = policy or "fail"
    if policy not in ("fail", "reroute", "wait"):
        raise InputError(f"--fail {text!r}: policy must be fail, reroute or wait")
    instances, share = None, None
    if inst:
        if inst.endswith("%"):
            share = _float(inst[:-1], "--fail share") / 100.0
            if not 0 < share <= 1:
                raise InputError(f"--fail {text!r}: share must be in (0, 100]%")
        elif "-" in inst:
            lo, hi = (int(_float(x, "--fail instances")) for x in inst.split("-", 1))
            instances = tuple(range(lo, hi + 1))
        else:
            instances = (int(_float(inst, "--fail instance")),)
    return FailureWindow(kind, target, start, end, policy, instances, share)  # type: ignore[arg-type]


_MOB = re.compile(r"^([A-Za-z_][\w.\-]*):([\d.]+)@([\d.]+)(?:-([\d.]+))?(?:>(\d+))?$")


def parse_mobility(text: str) -> MobilityEvent:
    """Parse one `--mobility` value, e.g. `cams:0.5@20>0` or `phones:0.2@10-40`."""
    m = _MOB.match(text.strip())
    if not m:
        raise InputError(f"--mobility {text!r}: expected CLASS:SHARE@START[-END][>INSTANCE], e.g. cams:0.5@20>0")
    cls, share, a, b, to = m.groups()
    share_f = _float(share, "--mobility share")
    if not 0 < share_f <= 1:
        raise InputError(f"--mobility {text!r}: share must be in (0, 1]")
    return MobilityEvent(cls, share_f, _float(a, "--mobility start"), _float(b, "--mobility end") if b else None,
                         int(to) if to else None)


def parse_link(text: str) -> LinkVariation:
    """Parse one `--link` value: SITE=PRESET|MBPS|trace:FILE, optionally ~CV (variation)."""
    site, eq, rest = text.partition("=")
    if not eq or not site or not rest:
        raise InputError(f"--link {text!r}: expected SITE=PRESET|MBPS|trace:FILE[~CV], e.g. cams=4g~0.3")
    rest, _, cv_s = rest.partition("~")
    cv = _float(cv_s, "--link cv") if cv_s else 0.0
    if cv < 0:
        raise InputError(f"--link {text!r}: cv must be >= 0")
    if rest.startswith("trace:"):
        return LinkVariation(site, trace=_read_bw_trace(Path(rest[6:])), cv=cv, label=rest)
    if rest.lower() in LINK_PRESETS_MBPS:
        return LinkVariation(site, mbps=LINK_PRESETS_MBPS[rest.lower()], cv=cv, label=rest.lower())
    mbps = _float(rest, f"--link {site}")
    if mbps <= 0:
        raise InputError(f"--link {text!r}: bandwidth must be > 0 Mbit/s")
    return LinkVariation(site, mbps=mbps, cv=cv, label=f"{mbps:g} Mbps")


def _read_bw_trace(path: Path) -> tuple[tuple[float, float], ...]:
    try:
        rows = [r.split("#", 1)[0].strip() for r in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the bandwidth trace ({e.__class__.__name__}). To fix: check the path")
    out = []
    for i, r in enumerate(rows, 1):
        if not r or not (r[0].isdigit() or r[0] == "."):
            continue
        parts = [p for p in re.split(r"[,;\s]+", r) if p]
        if len(parts) < 2:
            raise InputError(f"{path}:{i}: expected `t_s,mbps`")
        t, bw = _float(parts[0], f"{path}:{i}"), _float(parts[1], f"{path}:{i}")
        if bw <= 0:
            raise InputError(f"{path}:{i}: bandwidth must be > 0 Mbit/s")
        out.append((t, bw))
    if not out:
        raise InputError(f"{path}: the bandwidth trace has no `t_s,mbps` rows")
    return tuple(sorted(out))


def bandwidth_factor_series(var: LinkVariation, nominal_mbps: float, horizon_s: float,
                            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(step start times s, bandwidth multiplier of the nominal rate) for one link class."""
    if var.trace:
        t = np.array([x[0] for x in var.trace])
        bw = np.array([x[1] for x in var.trace])
        t = t - t[0]
        span = max(float(t[-1]) + (float(t[-1] - t[-2]) if len(t) > 1 else 1.0), 1e-9)
        reps = int(np.ceil(horizon_s / span)) + 1
        times = (t[None, :] + span * np.arange(reps)[:, None]).ravel()
        base = np.tile(bw, reps) / nominal_mbps
    else:
        n = int(np.ceil(horizon_s / var.step_s)) + 1
        times = np.arange(n) * var.step_s
        base = np.full(n, (var.mbps or nominal_mbps) / nominal_mbps)
    if var.cv > 0:
        sigma = np.sqrt(np.log1p(var.cv ** 2))
        z = np.empty(len(times))
        eps = rng.standard_normal(len(times))
        rho = var.correlation
        z[0] = eps[0]
        for i in range(1, len(z)):  # AR(1) in log space, stationary N(0, 1)
            z[i] = rho * z[i - 1] + np.sqrt(1 - rho ** 2) * eps[i]
        base = base * np.exp(sigma * z - sigma ** 2 / 2)
    return times, base

"""Service-time calibration from measurement: per-stage empirical distributions and their correlation.

Drawing every stage of a request independently from a fixed-CV log-normal misses what a real
machine does: the slowdowns that hit all of a request's stages at once (sites sharing cores, GC
pauses, OS scheduling, frequency changes). A `ServiceProfile` replays what was measured instead:

- marginals: each compute stage's measured times (`node@site` -> sorted samples), drawn by
  inverse-CDF from their empirical quantiles, so the tail is the measured tail, not a fitted one;
- dependence: a Gaussian copula with one shared normal draw per request (the correlated slowdown
  factor) and one independent draw per stage, mixed as sqrt(rho) Z_request + sqrt(1 - rho) Z_stage.
  rho, the share of a stage's (normal-score) variance common to the whole request, is fitted to the
  same measurement: replayed requests must spread like the measured ones (their totals' quantiles
  up to p95). The mean pairwise correlation of stage normal scores is kept as a diagnostic (it
  misses how strongly neighbouring stages move together).

Profiles come from traces of the local runtime (`profile_from_traces`, e.g. the per-request steps
`runtime.service.Service.predict_traced` returns, as benchmarks/runtime_traces.py gathers them) or
from a `tierplan run --json` report (`profile_from_run`: `tierplan simulate PLAN --profile RUN.json`),
or from a dedicated calibration run of the pieces with onnxruntime (`profile_pieces`), and are saved
to / loaded from JSON (`ServiceProfile.save`, `load_profile`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from statistics import NormalDist
from typing import Iterable, Mapping, Sequence

import numpy as np

from tierplan.errors import InputError

__all__ = ["OVERHEAD_KEY", "TIME_BIN_S", "ServiceProfile", "RequestTrace", "profile_from_traces", "profile_from_run", "as_run",
           "load_profile", "normal_scores", "copula_correlation", "fit_correlation", "time_shifts", "step_glue_ms",
           "profile_pieces"]

_ND = NormalDist()
OVERHEAD_KEY = ("<request>", "")   # the overhead's samples among the stages (drawn like a stage)
_MIN_PAIRS = 8          # requests that must share two stages before their correlation counts
_FIT_REPLAYS = 16       # replays of the measured requests per candidate correlation
_FIT_GRID = 41          # candidate correlations 0, 0.025, ..., 1
_FIT_QUANTILES = (0.5, 0.75, 0.9, 0.95)   # where replayed and measured request totals are matched
TIME_BIN_S = 1.0        # the machine's slowdown is measured per second of the run (a load burst lasts seconds)


@dataclass(frozen=True)
class RequestTrace:
    """One request as measured: end-to-end latency and its (kind, name, ms) steps."""

    latency_ms: float
    steps: tuple[tuple[str, str, float], ...]
    t_s: float | None = None    # when it was sent (seconds into the run), if known


@dataclass
class ServiceProfile:
    """Measured per-stage service times (compute steps `node@site`) and their within-request correlation.

    `samples_ms[(node, site)]` are one invocation's measured times, sorted; `correlation` in [0, 1]
    is the copula's shared share rho (0: stages independent, 1: one slowdown for the whole request).
    """

    samples_ms: dict[tuple[str, str], np.ndarray]
    correlation: float
    requests: int = 0
    source: str = ""
    pairs: dict[str, float] = field(default_factory=dict)   # "a|b" -> correlation of that stage pair
    overhead_ms: np.ndarray | None = None   # per request: time outside its measured steps (dispatch, glue)
    # per batching site: how long the oldest request of a batch that did not fill waited for it to start,
    # as measured (the runtime's max_wait_ms plus its batching thread's delay on a busy host)
    batch_wait_ms: dict[str, float] = field(default_factory=dict)
    # the machine's slowdown over the run: per `time_bin_s` bin of send times, the mean normal score of the
    # steps measured then (shrunk for the bin's few samples), replayed at the same time into a run (tiled)
    time_shift: np.ndarray | None = None
    time_bin_s: float = TIME_BIN_S
    # the runtime's own time per step on a site's compute thread (joins, routing, the trace), beyond the
    # step's measured time, per site ("*": any other site): it holds the site, so requests queued there wait
    glue_ms: dict[str, float] = field(default_factory=dict)
    # the requests a run sent per device of each class and source, per second (its Poisson draw, not the
    # app's nominal rate: seed 0 sends flagship_phones 76 text requests in 60 s where 1 Hz means 60)
    sent_hz: dict[str, dict[str, float]] = field(default_factory=dict)
    # the host's floor under a request's result delivery: the time from a result's send before the controller
    # took it, whatever the link (the sender's and the receiver's threads on a busy host), sorted samples, one
    # per request, 0 where the link alone explains it. A result arrives at the later of its route's draw and this
    result_host_ms: np.ndarray | None = None
    # the batching caps the run deployed (`tierplan run --batch`: max_batch, max_wait_ms); None: not recorded
    # (the runtime's defaults). Under simulate's default batching ("auto") the simulator batches with these
    batch_caps: tuple[int, float] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.correlation <= 1.0:
            raise InputError(f"service profile: correlation {self.correlation} must be in [0, 1]")
        for key, xs in self.samples_ms.items():
            if len(xs) == 0:
                raise InputError(f"service profile: stage {key[0]}@{key[1]} has no samples")
        self.samples_ms = {k: np.sort(np.asarray(v, dtype=np.float64)) for k, v in self.samples_ms.items()}
        if self.time_shift is not None:
            self.time_shift = np.asarray(self.time_shift, dtype=np.float64)
        if self.result_host_ms is not None:
            self.result_host_ms = np.sort(np.maximum(np.asarray(self.result_host_ms, dtype=np.float64), 0.0))
        if self.overhead_ms is not None:
            self.overhead_ms = np.sort(np.maximum(np.asarray(self.overhead_ms, dtype=np.float64), 0.0))
            self.samples_ms[OVERHEAD_KEY] = self.overhead_ms
        self._grids: dict[tuple[str, str], np.ndarray] = {}

    @property
    def time_share(self) -> float:
        """Share of a step's normal-score variance that the time of the run explains (the shifts' mean square)."""
        return float(np.mean(self.time_shift ** 2)) if self.time_shift is not None and len(self.time_shift) else 0.0

    def shift_at(self, t_ms: np.ndarray) -> np.ndarray:
        """The measured slowdown (a normal-score shift) at simulated times t_ms, the run's bins tiled."""
        t_ms = np.asarray(t_ms, dtype=np.float64)
        if self.time_shift is None or not len(self.time_shift):
            return np.zeros(t_ms.shape)
        k = np.floor(t_ms / (1e3 * self.time_bin_s)).astype(np.int64) % len(self.time_shift)
        return self.time_shift[k]

    def mix(self, z_req: np.ndarray | None, own: np.ndarray, shift: np.ndarray | float = 0.0) -> np.ndarray:
        """A step's standard normal: the time's shift, the request's shared draw and its own, so that the
        request's common share stays `correlation` (of which the time takes `time_share`)."""
        tau = self.time_share
        common = max(self.correlation, tau)
        rest = math.sqrt(max(self.correlation - tau, 0.0))
        z = shift + math.sqrt(1.0 - common) * own
        return z if z_req is None or rest == 0.0 else z + rest * z_req

    def glue_at(self, site: str) -> float:
        """The runtime's own time per step on `site` (ms), beyond the step's measured time."""
        return self.glue_ms.get(site, self.glue_ms.get("*", 0.0))

    def has(self, node: str, site: str) -> bool:
        return (node, site) in self.samples_ms

    def mean_ms(self, node: str, site: str) -> float:
        return float(self.samples_ms[(node, site)].mean())

    def quantile_ms(self, node: str, site: str, u: np.ndarray) -> np.ndarray:
        """Inverse empirical CDF at probabilities u in (0, 1): `from_normal` at Phi^-1(u)."""
        z = np.array([_ND.inv_cdf(float(min(max(x, 1e-12), 1 - 1e-12))) for x in np.ravel(u)])
        return self.from_normal(node, site, z.reshape(np.shape(u)))

    def from_normal(self, node: str, site: str, z: np.ndarray) -> np.ndarray:
        """The measured time at standard-normal draws z: the i-th smallest of m samples at the normal
        score Phi^-1((i + 0.5) / m), linear in between, the extremes beyond (no extrapolation)."""
        key = (node, site)
        grid = self._grids.get(key)
        if grid is None:
            m = len(self.samples_ms[key])
            grid = self._grids[key] = np.array([_ND.inv_cdf((i + 0.5) / m) for i in range(m)])
        return np.interp(z, grid, self.samples_ms[key])

    def to_json(self) -> dict:
        return {"correlation": self.correlation, "requests": self.requests, "source": self.source,
                "pairs": self.pairs,
                "overhead_ms": None if self.overhead_ms is None else self.overhead_ms.tolist(),
                **({"batch_wait_ms": self.batch_wait_ms} if self.batch_wait_ms else {}),
                **({"batch_caps": list(self.batch_caps)} if self.batch_caps is not None else {}),
                **({"time_shift": self.time_shift.tolist(), "time_bin_s": self.time_bin_s}
                   if self.time_shift is not None else {}),
                **({"glue_ms": self.glue_ms} if self.glue_ms else {}),
                **({"sent_hz": self.sent_hz} if self.sent_hz else {}),
                **({"result_host_ms": self.result_host_ms.tolist()} if self.result_host_ms is not None else {}),
                "stages": {f"{n}@{s}": v.tolist() for (n, s), v in sorted(self.samples_ms.items())
                           if (n, s) != OVERHEAD_KEY}}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))


def profile_from_run(doc: Mapping, source: str = "", warmup: int = 0) -> ServiceProfile:
    """A profile from a `tierplan run --json` report: its `traces` (each request's class, latency and
    steps). A run of several device classes names each class's copy of a node `CLASS/NODE`
    (runtime.fleetrun): the class is dropped, so a stage is the plan's `node@site`, as the simulator
    names it (a piece two classes run on one site is one stage, as it is one server there)."""
    classes = [str(c) for c in doc.get("classes_run") or []]
    raw = doc.get("traces")
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{source or 'run report'}: no request traces in it. To fix: pass the --json report of "
                         "`tierplan run` (a run where requests succeeded)")

    def plain(name: str) -> str:
        head, sep, rest = name.partition("/")
        return rest if sep and len(classes) > 1 and head in classes else name
    # a request's latency in the report keeps the time its input waited at its busy source site (its feed
    # step beyond the feed's median to that site): queueing, which the simulator draws itself, so it is
    # taken out here, or it would count as the runtime's own overhead outside the steps
    feeds: dict[str, list[float]] = {}
    for t in raw:
        for k, n, ms in t["steps"]:
            if k == "feed":
                feeds.setdefault(str(n), []).append(float(ms))
    floor = {n: float(np.median(v)) for n, v in feeds.items()}

    def waited(steps) -> float:
        return sum(max(0.0, float(ms) - floor[str(n)]) for k, n, ms in steps if k == "feed")
    traces = [RequestTrace(float(t["latency_ms"]) - waited(t["steps"]),
                           tuple((str(k), plain(str(n)), float(ms)) for k, n, ms in t["steps"]),
                           float(t["t_s"]) if t.get("t_s") is not None else None) for t in raw]
    cost = doc.get("overhead") or {}    # the runtime's own costs on this host, measured apart (runtime.overhead)
    per_request = float(cost.get("request_ms") or 0.0) + 2.0 * float(cost.get("hop_ms") or 0.0)   # input in, result out
    prof = profile_from_traces(traces, source=source or "tierplan run", warmup=warmup, request_floor_ms=per_request)
    if "*" not in prof.glue_ms and (cost.get("step_ms") or cost.get("run_ms")):
        # no one-site request to measure it on (every smart-city request crosses a link): the runtime's
        # per-step and per-run costs as its probe measured them on this host
        prof.glue_ms["*"] = float(cost.get("step_ms") or 0.0) + float(cost.get("run_ms") or 0.0)
    prof.batch_wait_ms = {str(r["site"]): float(r["batch_wait_ms"]) for r in doc.get("site_rows") or []
                          if isinstance(r, dict) and r.get("site") and r.get("batch_wait_ms") is not None}
    prof.sent_hz = _sent_hz(doc, [t.t_s for t in traces])
    caps = doc.get("batch")
    if isinstance(caps, dict) and caps.get("max_batch") is not None:
        prof.batch_caps = (int(caps["max_batch"]), float(caps.get("max_wait_ms", 0.0)))
    return prof


def _sent_hz(doc: Mapping, sent: Sequence[float | None]) -> dict[str, dict[str, float]]:
    """Requests per second and device that a run sent for each class and source: each report row's
    requests over the run's sending time (its last send, from the traces' times) and devices."""
    times = [t for t in sent if t is not None]
    span = max(times, default=0.0)
    if len(times) < _MIN_PAIRS or span <= 0:
        return {}
    per_device = max(1, int(doc.get("devices_per_class") or 1))
    out: dict[str, dict[str, float]] = {}
    for row in doc.get("classes") or []:
        if isinstance(row, dict) and row.get("sources") and row.get("requests"):
            for src in row["sources"]:
                out.setdefault(str(row.get("device_class") or ""), {})[str(src)] = \
                    float(row["requests"]) / span / per_device
    return out


def as_run(plan, path: str | Path | None):
    """`plan` scaled to what a `tierplan run --json` report at `path` ran, so the simulator replays that run:
    its classes only, `devices_per_class` devices each, one instance of every shared site with the
    run's workers, its sources' rates x its `rate_scale`. A path that is not a run report (a saved
    ServiceProfile) leaves the plan as it is."""
    if path is None:
        return plan
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return plan     # load_profile says what is wrong with it
    if not (isinstance(doc, dict) and "traces" in doc and "requests_ok" in doc) or plan.fleet is None:
        return plan
    ran = [str(c) for c in doc.get("classes_run") or []] or list(plan.per_class)
    per_device = max(1, int(doc.get("devices_per_class") or 1))
    workers = {str(r["site"]): int(r["workers"]) for r in doc.get("site_rows") or [] if "site" in r and "workers" in r}
    fleet = json.loads(json.dumps(plan.fleet))
    sites = fleet.get("sites", {})
    for name in [n for n, s in sites.items() if s.get("tier") == "edge" and n in plan.per_class and n not in ran]:
        del sites[name]                       # a class that did not run
    for name, s in sites.items():
        s["count"] = per_device if s.get("tier") == "edge" else 1
    instances = {s: workers.get(s, 1) for s, n in plan.instances.items() if s in sites}
    update: dict = {"fleet": fleet, "instances": instances,
                    "per_class": {c: v for c, v in plan.per_class.items() if c in ran},
                    "pins": {c: v for c, v in plan.pins.items() if c in ran},
                    "coverage": {c: v for c, v in plan.coverage.items() if c in ran}}
    scale = float(doc.get("rate_scale") or 1.0)
    if plan.app is not None and scale != 1.0:
        app = json.loads(json.dumps(plan.app))
        for src in (app.get("sources") or {}).values():
            if src.get("rate_hz"):
                src["rate_hz"] = src["rate_hz"] * scale
        update["app"] = app
    return plan.model_copy(update=update)


def load_profile(path: str | Path) -> ServiceProfile:
    """A profile saved by `ServiceProfile.save` (or written by hand in that shape), or built from a
    `tierplan run --json` report (`profile_from_run`)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{p}: cannot read the service profile ({e.__class__.__name__}). "
                         f"To fix: pass a file written by ServiceProfile.save or `tierplan run --json`") from None
    if isinstance(doc, dict) and "traces" in doc and "requests_ok" in doc:
        try:
            return profile_from_run(doc, source=f"tierplan run ({p.name})")
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{p}: a run report whose traces cannot be read ({e.__class__.__name__}: {e}). "
                             "To fix: pass the --json report of `tierplan run` as written") from None
    if isinstance(doc, dict) and "result_delay_ms" in doc and "result_host_ms" not in doc:
        raise InputError(f"{p}: a service profile from an older tierplan (result_delay_ms: lateness added to every "
                         "result; now result_host_ms, a floor under delivery). To fix: pass the run report it came "
                         "from (`tierplan run --json`), or save the profile again from it")
    try:
        stages = {_split(k): np.asarray(v, dtype=np.float64) for k, v in doc["stages"].items()}
        over = doc.get("overhead_ms")
        return ServiceProfile(stages, float(doc["correlation"]), int(doc.get("requests", 0)),
                              str(doc.get("source", p.name)), dict(doc.get("pairs", {})),
                              None if over is None else np.asarray(over, dtype=np.float64),
                              {str(k): float(v) for k, v in (doc.get("batch_wait_ms") or {}).items()},
                              None if doc.get("time_shift") is None else np.asarray(doc["time_shift"], dtype=np.float64),
                              float(doc.get("time_bin_s", TIME_BIN_S)),
                              {str(k): float(v) for k, v in (doc.get("glue_ms") or {}).items()},
                              {str(c): {str(k): float(v) for k, v in d.items()} for c, d in (doc.get("sent_hz") or {}).items()},
                              None if doc.get("result_host_ms") is None else np.asarray(doc["result_host_ms"]),
                              None if doc.get("batch_caps") is None else
                              (int(doc["batch_caps"][0]), float(doc["batch_caps"][1])))
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{p}: not a service profile ({e.__class__.__name__}: {e}); expected "
                         f"{{'correlation': RHO, 'stages': {{'node@site': [ms, ...]}}}}") from None


def _split(name: str) -> tuple[str, str]:
    node, at, site = name.rpartition("@")
    if not at or not node or not site:
        raise ValueError(f"stage name {name!r} is not node@site")
    return node, site


def normal_scores(x: np.ndarray) -> np.ndarray:
    """Normal scores of a sample: Phi^-1 of its mid-ranks / n (ties share a score)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(n)
    ranks[order] = np.arange(1, n + 1)
    # ties: average rank of equal values
    uniq, inv = np.unique(x, return_inverse=True)
    if len(uniq) < n:
        ranks = (np.bincount(inv, weights=ranks) / np.bincount(inv))[inv]
    return np.array([_ND.inv_cdf(r / (n + 1)) for r in ranks])


def copula_correlation(per_request: Sequence[dict[str, float]]) -> tuple[float, dict[str, float]]:
    """(rho, per-pair correlations): the mean correlation of normal scores over pairs of stages
    measured in the same requests, weighted by the requests each pair shares; clipped to [0, 1]."""
    stages = sorted({k for r in per_request for k in r})
    pairs, num, den = {}, 0.0, 0
    for a, b in combinations(stages, 2):
        both = [(r[a], r[b]) for r in per_request if a in r and b in r]
        if len(both) < _MIN_PAIRS:
            continue
        xa, xb = (normal_scores(np.array(v)) for v in zip(*both))
        if xa.std() == 0 or xb.std() == 0:
            continue
        c = float(np.corrcoef(xa, xb)[0, 1])
        pairs[f"{a}|{b}"] = c
        num += c * len(both)
        den += len(both)
    rho = num / den if den else 0.0
    return min(1.0, max(0.0, rho)), pairs


def fit_correlation(profile: ServiceProfile, requests: Sequence[Sequence[tuple[str, str]]],
                    totals_ms: np.ndarray, seed: int = 0, replays: int = _FIT_REPLAYS) -> float:
    """The copula's shared share rho that reproduces the measured spread of whole requests.

    Each measured request is replayed `replays` times through the profile (its own steps, each drawn
    from its stage's measured times with a shared normal per request mixed in by rho); rho is the
    point of a grid over [0, 1] whose replayed per-request totals best match the measured totals at
    the quantiles `_FIT_QUANTILES` (squared log ratios). Quantiles, not the variance: step times are
    heavy-tailed, so a few extreme requests would dominate a variance, and with heavy tails the
    upper quantiles need not grow with rho (no bisection). The draws are fixed by `seed`, so the
    same measurement gives the same rho."""
    q = np.asarray(_FIT_QUANTILES)
    target = np.log(np.maximum(np.quantile(np.asarray(totals_ms, dtype=np.float64), q), 1e-9))
    rng = np.random.default_rng(seed)
    n = len(requests)
    z_req = rng.standard_normal((replays, n))
    own = [rng.standard_normal((replays, len(r))) for r in requests]
    keys = sorted({k for r in requests for k in r})
    idx = {k: i for i, k in enumerate(keys)}
    step_key = [np.array([idx[k] for k in r], dtype=np.int64) for r in requests]

    def loss(rho: float) -> float:
        tot = np.zeros((replays, n))
        for i, (ks, e) in enumerate(zip(step_key, own)):
            z = math.sqrt(rho) * z_req[:, i:i + 1] + math.sqrt(1.0 - rho) * e
            for j, ki in enumerate(ks):
                node, site = keys[ki]
                tot[:, i] += profile.from_normal(node, site, z[:, j])
        got = np.log(np.maximum(np.quantile(tot.ravel(), q), 1e-9))
        return float(np.sum((got - target) ** 2))

    grid = np.linspace(0.0, 1.0, _FIT_GRID)
    return float(grid[int(np.argmin([loss(r) for r in grid]))])


def profile_from_traces(traces: Iterable, source: str = "", warmup: int = 0, fit: bool = True,
                        seed: int = 0, request_floor_ms: float = 0.0) -> ServiceProfile:
    """A profile from per-request traces (objects with `steps` = [(kind, name, ms), ...]).

    Compute steps are named `node@site`; every invocation is a sample of its stage's marginal.
    The time a request spent outside its steps (dispatch, the glue between pieces) is measured on
    the requests that ran on one site without transfers (their steps one after another), those with
    the fewest steps (the request's own share: a long single-site request, e.g. a phone's whole OCR
    cascade, adds a share per step and per fan-out item that a 2-step request does not have), and,
    when there are enough of them, kept as `overhead_ms` and drawn for every request. Beyond
    `request_floor_ms` (the runtime's own per-request cost: its input's and result's hops), that time
    is the site's per-step work around its steps (`glue_ms`, per site: joins, routing, the trace),
    done on the site's compute thread, so the simulator adds it to every step's service time there
    and keeps only the rest as the request's own delay.
    The correlation is fitted to the measured spread of each request's total compute time
    (`fit_correlation`; `fit=False`: the mean pairwise correlation of stage normal scores, which
    misses how strongly neighbouring stages move together). The first `warmup` requests (cold
    caches, lazy initialisation) are left out.
    """
    samples: dict[tuple[str, str], list[float]] = {}
    per_request: list[dict[str, float]] = []
    steps_of: list[list[tuple[str, str]]] = []
    step_ms: list[list[float]] = []     # per request, its compute steps' ms in the order of steps_of
    sent: list[float | None] = []       # per request, when it was sent (run traces)
    totals: list[float] = []
    overhead: list[float] = []
    own_overhead: list[float | None] = []
    n_steps: list[int | None] = []
    one_site: list[str | None] = []
    results: dict[str, list[float]] = {}   # route -> the transfer after a request's last step (its result)
    n = 0
    for i, tr in enumerate(traces):
        if i < warmup:
            continue
        n += 1
        mine: dict[str, list[float]] = {}
        keys: list[tuple[str, str]] = []
        own_ms: list[float] = []
        for kind, name, ms in tr.steps:
            if kind != "compute" or "@" not in name:
                continue
            samples.setdefault(_split(name), []).append(float(ms))
            mine.setdefault(name, []).append(float(ms))
            keys.append(_split(name))
            own_ms.append(float(ms))
        per_request.append({k: float(np.mean(v)) for k, v in mine.items()})
        last = max((i for i, (kind, _, _) in enumerate(tr.steps) if kind == "compute"), default=len(tr.steps))
        for kind, name, ms in tr.steps[last + 1:]:
            if kind == "transfer":
                results.setdefault(str(name), []).append(float(ms))
        steps_of.append(keys)
        step_ms.append(own_ms)
        sent.append(getattr(tr, "t_s", None))
        totals.append(sum(sum(v) for v in mine.values()))
        sequential = len({site for _, site in keys}) == 1 and not any(k == "transfer" for k, _, _ in tr.steps)
        if sequential and hasattr(tr, "latency_ms"):  # one site, no transfers: the steps run one after another
            overhead.append(float(tr.latency_ms) - totals[-1])
            own_overhead.append(overhead[-1])
            n_steps.append(len(keys))
            one_site.append(keys[0][1] if keys else None)
        else:
            own_overhead.append(None)
            n_steps.append(None)
            one_site.append(None)
    if not samples:
        raise InputError(f"{source or 'traces'}: no compute steps (node@site) to calibrate from")
    glue = step_glue_ms(own_overhead, n_steps, one_site, request_floor_ms)
    own_overhead = [None if o is None else max(0.0, o - glue.get(site or "", glue.get("*", 0.0)) * (k or 0))
                    for o, k, site in zip(own_overhead, n_steps, one_site)]
    overhead = [o for o in own_overhead if o is not None]
    fewest = min((k for k in n_steps if k is not None), default=None)
    shortest = [o for o, k in zip(own_overhead, n_steps) if o is not None and k == fewest]
    if len(shortest) >= _MIN_PAIRS:   # the requests with the fewest steps: the request's own overhead
        overhead = shortest
        own_overhead = [o if k == fewest else None for o, k in zip(own_overhead, n_steps)]
    rho_pairs, pairs = copula_correlation(per_request)
    prof = ServiceProfile({k: np.array(v) for k, v in samples.items()}, rho_pairs, n, source, pairs,
                          np.array(overhead) if len(overhead) >= _MIN_PAIRS else None,
                          time_shift=time_shifts(sent, steps_of, step_ms, samples), glue_ms=glue,
                          result_host_ms=result_host_delays(results))
    if fit and n >= _MIN_PAIRS:
        if prof.overhead_ms is not None:  # the overhead is one more draw of the request: fit the whole latency
            typical = float(np.median(overhead))   # for a request whose own overhead is not known
            steps_of = [k + [OVERHEAD_KEY] for k in steps_of]
            totals = [t + (typical if o is None else o) for t, o in zip(totals, own_overhead)]
        prof.correlation = fit_correlation(prof, steps_of, np.array(totals), seed)
    return prof


def step_glue_ms(overhead: Sequence[float | None], n_steps: Sequence[int | None], site: Sequence[str | None],
                 floor_ms: float = 0.0) -> dict[str, float]:
    """The runtime's time per step on a site beyond the steps themselves, from one-site requests without
    transfers: per site, the median over its requests of (time outside the steps - `floor_ms`) / steps;
    "*": the median over every site's requests (for sites no one-site request ran on). smart-city's
    camera requests spend ~12 ms outside their 34 steps (~0.35 ms a step, measured with other work on
    the cores), read-text's 2-step speech requests ~0.7 ms. {} when there are too few requests to tell."""
    per: dict[str, list[float]] = {}
    for o, k, s in zip(overhead, n_steps, site):
        if o is not None and k and s is not None:
            per.setdefault(s, []).append(max(0.0, o - floor_ms) / k)
    out = {s: float(np.median(v)) for s, v in per.items() if len(v) >= _MIN_PAIRS}
    every = [g for v in per.values() for g in v]
    if len(every) >= _MIN_PAIRS:
        out["*"] = float(np.median(every))
    return out


def result_host_delays(results: Mapping[str, Sequence[float]]) -> np.ndarray | None:
    """The host's floor under result delivery, from each request's last transfer (a result: a small tensor,
    nothing to queue behind) on the route the run measured shortest (median): its late half as measured
    (the time since send before the controller took the result), its early half 0 (the link explains those).

    A busy host delays a result's delivery to a time since its send, whatever the route: smart-city's results
    took 66, 63 and 63 ms at p99 over routes of 8, 18.5 and 32.5 ms declared (fibre, 5G and LTE), and its
    fibre route's p95 is 27 ms where its declared jitter gives 10. Added to each route's draw, one route's
    lateness overshoots the long routes (street_cams p95 1.11x) and misses the short one (traffic_cams
    0.85x); the later of the two fits both. None without 8 results on one route."""
    routes = [np.asarray(v, dtype=np.float64) for v in results.values() if len(v) >= _MIN_PAIRS]
    if not routes:
        return None
    best = min(routes, key=lambda x: float(np.median(x)))
    return np.where(best > np.median(best), best, 0.0)


def time_shifts(sent: Sequence[float | None], steps_of: Sequence[Sequence[tuple[str, str]]],
                step_ms: Sequence[Sequence[float]], samples: Mapping[tuple[str, str], Sequence[float]],
                bin_s: float = TIME_BIN_S) -> np.ndarray | None:
    """The machine's slowdown over a run, per `bin_s` of send times: each step's normal score within its
    stage's measured times, averaged per request, then per bin, each weighted by its typical time (a
    60 ms detector tells the machine's state, a 0.05 ms transform mostly noise; an OCR cascade more than a
    1 ms VAD request); the bins' spread beyond what their few requests explain is the run's time-varying
    share, and each bin's mean is shrunk towards 0 by it (empirical Bayes). None without send times, or
    when the time explains nothing.

    Stages run by one request are drawn with its time's shift (simulations.world), so a burst of load that
    slowed every site for a few seconds of the run slows the simulated requests of those seconds together,
    and queues build as they did; drawn independently, the same slow steps spread over the run and do not."""
    if any(t is None for t in sent) or len(sent) < 4 * _MIN_PAIRS:
        return None
    grid = {k: np.sort(np.asarray(v, dtype=np.float64)) for k, v in samples.items()}
    typical = {k: float(np.median(a)) for k, a in grid.items()}
    score: list[float] = []
    weight: list[float] = []
    when: list[int] = []
    for t, keys, ms in zip(sent, steps_of, step_ms):
        if not keys:
            continue
        z, w = [], []
        for k, v in zip(keys, ms):
            a = grid[k]
            mid = (np.searchsorted(a, v, "left") + np.searchsorted(a, v, "right") - 1) / 2.0
            z.append(_ND.inv_cdf(min(max((mid + 0.5) / len(a), 1e-6), 1 - 1e-6)))
            w.append(typical[k])
        # weighted by the steps' typical times: a 60 ms detector tells the machine's state, a 0.05 ms
        # transform's time is mostly noise
        score.append(float(np.average(z, weights=w)) if sum(w) > 0 else float(np.mean(z)))
        weight.append(max(sum(w), 1e-3))    # a request tells as much as its work: an OCR cascade, not a 1 ms VAD
        when.append(int(float(t) // bin_s))    # type: ignore[arg-type]
    if not score:
        return None
    x, wr, b = np.asarray(score), np.asarray(weight), np.asarray(when, dtype=np.int64)
    b -= b.min() if b.min() < 0 else 0
    sw, sw2 = np.bincount(b, weights=wr), np.bincount(b, weights=wr ** 2)
    used = sw > 0
    m = np.bincount(b, weights=wr * x) / np.where(used, sw, 1.0)
    neff = np.where(used, sw ** 2 / np.where(used, sw2, 1.0), 0.0)      # requests' effective count per bin
    ss = np.bincount(b, weights=wr * (x - m[b]) ** 2) / np.where(used, sw, 1.0)
    many = neff > 1.5
    if float(np.sum(neff[many] - 1)) < _MIN_PAIRS:
        return None
    within = float(np.sum((ss * neff / np.maximum(neff - 1, 1e-9))[many] * (neff[many] - 1)) / np.sum(neff[many] - 1))
    noise = within / np.maximum(neff, 1e-9)
    centre = float(np.average(x, weights=wr))
    between = float(np.average((m[used] - centre) ** 2, weights=sw[used]))
    tau = between - float(np.average(noise[used], weights=sw[used]))
    if tau <= 0:
        return None
    return np.where(used, (m - centre) * tau / (tau + noise), 0.0)


def profile_pieces(files: Mapping[tuple[str, str], str | Path], requests: int = 50, warmup: int = 3,
                   threads: int = 1, seed: int = 0) -> ServiceProfile:
    """A profile from a dedicated calibration run: each request runs every piece once, in order, with
    onnxruntime on this machine (as a site's worker would), timing each run (like devices/profile).

    `files[(node, site)]` is the piece's ONNX file; pieces run in the mapping's order. Consecutive
    pieces of one request share the machine's state at that moment (other processes, caches,
    frequency), which is what the fitted correlation captures. No runtime overheads (transfers,
    dispatch) are in it: `profile_from_traces` on runtime traces has those.
    """
    import time

    from tierplan.devices.profile import _session_inputs, ort_session
    from tierplan.partition.feeds import random_feeds

    if not files:
        raise InputError("profile_pieces: no pieces to run")
    runners = []
    for (node, site), path in files.items():
        sess = ort_session(path, threads=threads)
        feeds = random_feeds(_session_inputs(sess), seed=seed)
        runners.append((f"{node}@{site}", sess, feeds))
    for _ in range(warmup):
        for _, sess, feeds in runners:
            sess.run(None, feeds)
    traces = []
    for _ in range(requests):
        steps, t_req = [], time.perf_counter()
        for name, sess, feeds in runners:
            t0 = time.perf_counter()
            sess.run(None, feeds)
            steps.append(("compute", name, (time.perf_counter() - t0) * 1e3))
        traces.append(RequestTrace((time.perf_counter() - t_req) * 1e3, tuple(steps)))
    return profile_from_traces(traces, source=f"onnxruntime, {requests} requests", seed=seed)

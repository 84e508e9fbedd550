"""Streaming aggregates of a simulation: latency quantiles with a known error, and busy time per bin.

The fast path processes requests in windows and keeps only these, so memory does not grow with
the number of requests (issue #20). `LatencySketch` keeps the exact latencies up to a limit (small
runs report exact quantiles, as before) and then folds them into a log-bucketed histogram: every
value lands in bucket ceil(log_gamma(x)) and is read back as the bucket's midpoint, so a quantile
is within `rel_error` (0.05%) of a sample value of the right rank (the DDSketch bound,
Masson et al., VLDB 2019), whatever the number of values. numpy's bincount does the
bucketing, so adding a million values costs milliseconds (the PyPI sketches add one value per
Python call). `BusyAccumulator` folds busy intervals into per-instance and per-bin totals in
linear time with no Python loop over jobs.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["LatencySketch", "BusyAccumulator", "busy_per_bin", "quantiles_sorted", "REL_ERROR"]

REL_ERROR = 5e-4               # relative error of a folded quantile (gamma = (1 + e) / (1 - e))
_MIN_MS = 1e-6                 # values below this (ms) count as zero
_EXACT_LIMIT = 2_000_000       # values kept exactly before folding (16 MB per sketch)


def quantiles_sorted(sorted_x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Quantiles of a sorted sample, linear interpolation (numpy's default method)."""
    pos = q * (len(sorted_x) - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, len(sorted_x) - 1)
    return sorted_x[lo] + (pos - lo) * (sorted_x[hi] - sorted_x[lo])


class LatencySketch:
    """Quantiles, mean, count and threshold counts of non-negative values added in chunks.

    Exact (a sorted copy of every value) while at most `exact_limit` values were added; past that,
    a log histogram with relative error REL_ERROR. `count_le(x)` is exact either way (the caller
    counts SLO hits per chunk as it adds them).

    >>> s = LatencySketch(exact_limit=0)
    >>> s.add(np.array([10.0, 20.0, 30.0, 40.0]))
    >>> bool(abs(s.quantiles(np.array([1.0]))[0] - 40.0) <= 40.0 * REL_ERROR)
    True
    """

    def __init__(self, exact_limit: int = _EXACT_LIMIT) -> None:
        self.exact_limit = int(exact_limit)
        self.n = 0
        self.total = 0.0
        self._exact: list[np.ndarray] | None = []
        self._zeros = 0
        self._counts = np.zeros(0, dtype=np.int64)
        self._lo = 0                       # bucket index of _counts[0]
        self._log_gamma = math.log((1 + REL_ERROR) / (1 - REL_ERROR))

    def add(self, x: np.ndarray) -> None:
        """Add a chunk of values (ms, NaN-free)."""
        if not len(x):
            return
        self.n += len(x)
        self.total += float(x.sum())
        if self._exact is not None:
            self._exact.append(np.asarray(x, dtype=np.float64).copy())
            if self.n <= self.exact_limit:
                return
            kept, self._exact = np.concatenate(self._exact), None
            self._fold(kept)
            return
        self._fold(x)

    def _fold(self, x: np.ndarray) -> None:
        pos = x >= _MIN_MS
        self._zeros += int((~pos).sum())
        k = np.ceil(np.log(x[pos]) / self._log_gamma).astype(np.int64)
        if not len(k):
            return
        lo, hi = int(k.min()), int(k.max())
        if not len(self._counts):
            self._lo = lo
        new_lo, new_hi = min(lo, self._lo), max(hi, self._lo + len(self._counts) - 1)
        if new_lo < self._lo or new_hi >= self._lo + len(self._counts):
            grown = np.zeros(new_hi - new_lo + 1, dtype=np.int64)
            grown[self._lo - new_lo: self._lo - new_lo + len(self._counts)] = self._counts
            self._counts, self._lo = grown, new_lo
        self._counts += np.bincount(k - self._lo, minlength=len(self._counts))

    @property
    def exact(self) -> bool:
        return self._exact is not None

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    def quantiles(self, q: np.ndarray) -> np.ndarray:
        """Quantiles at q in [0, 1]: exact (interpolated) while exact, else bucket midpoints."""
        if self.n == 0:
            return np.full(len(q), np.nan)
        if self._exact is not None:
            return quantiles_sorted(np.sort(np.concatenate(self._exact)), np.asarray(q, dtype=np.float64))
        rank = np.asarray(q, dtype=np.float64) * (self.n - 1)
        cum = np.cumsum(self._counts)
        out = np.zeros(len(rank))
        above = rank >= self._zeros
        b = np.searchsorted(cum, rank[above] - self._zeros, side="right")
        b = np.minimum(b, len(cum) - 1)
        gamma = math.exp(self._log_gamma)
        out[above] = 2.0 * np.exp((b + self._lo) * self._log_gamma) / (gamma + 1.0)
        return out


def busy_per_bin(start: np.ndarray, end: np.ndarray, step: float, nbins: int) -> np.ndarray:
    """Busy time falling in each bin [i*step, (i+1)*step), exactly, in linear time and no Python loop.

    A job covers part of its first bin, every bin strictly between its first and last (a difference
    array counts those), and part of its last bin.

    >>> busy_per_bin(np.array([0.5, 1.5]), np.array([1.0, 3.5]), 1.0, 4).tolist()
    [0.5, 0.5, 1.0, 0.5]
    """
    horizon = step * nbins
    s, e = np.clip(start, 0.0, horizon), np.clip(end, 0.0, horizon)
    keep = e > s
    s, e = s[keep], e[keep]
    b0 = np.minimum((s / step).astype(np.int64), nbins - 1)
    b1 = np.minimum((e / step).astype(np.int64), nbins - 1)
    one = b0 == b1
    out = np.bincount(b0[one], weights=(e - s)[one], minlength=nbins).astype(np.float64)
    m = ~one
    if m.any():
        s, e, b0, b1 = s[m], e[m], b0[m], b1[m]
        out += np.bincount(b0, weights=(b0 + 1) * step - s, minlength=nbins)
        out += np.bincount(b1, weights=e - b1 * step, minlength=nbins)
        inner = np.zeros(nbins + 1)
        np.add.at(inner, b0 + 1, 1.0)
        np.add.at(inner, b1, -1.0)
        out += np.cumsum(inner)[:nbins] * step
    return out


class BusyAccumulator:
    """Busy time of one resource class: per instance, per time bin, and the offered work in all."""

    def __init__(self, instances: int, servers: int, horizon_ms: float, nbins: int) -> None:
        self.instances, self.servers = int(instances), int(servers)
        self.horizon_ms, self.nbins = float(horizon_ms), int(nbins)
        self.by_inst = np.zeros(self.instances)
        self.by_bin = np.zeros(self.nbins)
        self.offered_ms = 0.0

    def add(self, inst: np.ndarray, start_ms: np.ndarray, service_ms: np.ndarray) -> None:
        """Fold a chunk of service intervals (instance, start, length) in."""
        if not len(inst):
            return
        h = self.horizon_ms
        busy = np.clip(np.minimum(start_ms + service_ms, h) - np.minimum(start_ms, h), 0.0, None)
        self.by_inst += np.bincount(inst, weights=busy, minlength=self.instances)[: self.instances]
        self.by_bin += busy_per_bin(start_ms, start_ms + service_ms, h / self.nbins, self.nbins)
        self.offered_ms += float(service_ms.sum())

"""Prometheus metrics cheap enough for every request: plain sums under one lock, read at scrape time.

prometheus_client's own Histogram takes a lock per bucket and walks its buckets in Python on each
`observe` (about 2.5 us here), and a stage worker updates five to seven metrics per request. These
drop-ins (`Histogram`, `Counter`, `Gauge`: the constructor arguments the runtime uses, `labels()`,
`observe` / `inc` / `set`) keep counts in Python lists and register one collector that turns them
into the same metric families when the endpoint is scraped: the same names, labels, buckets and
text format (`_bucket{le=...}`, `_sum`, `_count`, `_total`), without the `_created` samples.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
import math
import threading
from typing import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

__all__ = ["Histogram", "Counter", "Gauge"]

_DEFAULT_BUCKETS = (.005, .01, .025, .05, .075, .1, .25, .5, .75, 1.0, 2.5, 5.0, 7.5, 10.0)


class _HistogramChild:
    __slots__ = ("_bounds", "_counts", "_sum", "_lock")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds                 # upper bounds, +Inf last
        self._counts = [0] * len(bounds)      # per bucket (not cumulative)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, amount: float) -> None:
        i = bisect.bisect_left(self._bounds, amount)   # the first bucket whose bound is >= amount (le)
        with self._lock:
            self._counts[min(i, len(self._counts) - 1)] += 1
            self._sum += amount

    def snapshot(self) -> tuple[list[int], float]:
        with self._lock:
            return list(self._counts), self._sum


class _ValueChild:
    __slots__ = ("_value", "_lock")

    def __init__(self) -> None:
        self._value = 0.0
        self._lock = threading.Lock()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        with self._lock:
            self._value += amount

    def set(self, value: float) -> None:
        self._value = float(value)     # one store: atomic under the GIL

    def get(self) -> float:
        return self._value


class _Family(ABC):
    """One metric with labels: `labels(*values)` gives (and keeps) its child for those values.
    Each kind (Histogram, Counter, Gauge) says how a child is made and how it is exposed."""

    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], object] = {}
        self._lock = threading.Lock()
        if not self.labelnames:
            self._children[()] = self._new_child()
        if registry is not None:
            registry.register(_Collector(self))

    @abstractmethod
    def _new_child(self):
        """A fresh child of this kind (its counts at zero)."""

    def labels(self, *values: str):
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: {len(self.labelnames)} label values needed, got {len(values)}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.setdefault(key, self._new_child())
        return child

    @abstractmethod
    def families(self) -> Iterator[Metric]:
        """The prometheus_client metric families to expose at a scrape."""

    def _values(self, fam):
        """`fam` (a counter or gauge family) with each child's value."""
        for key, child in list(self._children.items()):
            fam.add_metric(list(key), child.get())
        return fam


class Histogram(_Family):
    """prometheus_client.Histogram's counterpart (buckets: upper bounds; +Inf is added)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None, buckets: Sequence[float] = _DEFAULT_BUCKETS) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = tuple(bounds)
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> _HistogramChild:
        return _HistogramChild(self._bounds)

    def observe(self, amount: float) -> None:
        """For a histogram without labels."""
        self.labels().observe(amount)

    def families(self) -> Iterator[Metric]:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in list(self._children.items()):
            counts, total = child.snapshot()   # type: ignore[attr-defined]
            cumulative, buckets = 0, []
            for bound, n in zip(self._bounds, counts):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))
            fam.add_metric(list(key), buckets, total)
        yield fam


class Counter(_Family):
    """prometheus_client.Counter's counterpart (a name ending in `_total` is exposed as given)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        super().__init__(name[:-len("_total")] if name.endswith("_total") else name, documentation, labelnames,
                         registry)

    def _new_child(self) -> _ValueChild:
        return _ValueChild()

    def inc(self, amount: float = 1) -> None:
        """For a counter without labels."""
        self.labels().inc(amount)

    def families(self) -> Iterator[Metric]:
        yield self._values(CounterMetricFamily(self.name, self.documentation, labels=self.labelnames))


class Gauge(_Family):
    """prometheus_client.Gauge's counterpart (`set` only)."""

    def _new_child(self) -> _ValueChild:
        return _ValueChild()

    def set(self, value: float) -> None:
        """For a gauge without labels."""
        self.labels().set(value)

    def families(self) -> Iterator[Metric]:
        yield self._values(GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames))


class _Collector:
    """What the registry asks at scrape time for one metric."""

    def __init__(self, metric: _Family) -> None:
        self.metric = metric

    def collect(self) -> Iterator[Metric]:
        return self.metric.families()

    def describe(self) -> list[Metric]:
        return []    # names are not checked for duplicates at registration (each worker has its own registry)

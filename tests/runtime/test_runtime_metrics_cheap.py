"""runtime/metrics.py's cheap Histogram/Counter/Gauge scrape as prometheus_client's own do (same text but `_created`)."""

from __future__ import annotations

import threading

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tierplan.runtime import metrics


def _fill(hist, counter, gauge, registry: CollectorRegistry) -> bytes:
    h = hist("tierplan_x_seconds", "doc x", ["site", "node"], registry=registry, buckets=(0.001, 0.01, 1))
    c = counter("tierplan_y_total", "doc y", ["link"], registry=registry)
    g = gauge("tierplan_q", "doc q", ["site"], registry=registry)
    for v in (0.0005, 0.001, 0.005, 2.0, 1.0):     # on a bound counts in that bucket (le)
        h.labels("bs", "m/p1").observe(v)
    h.labels("cloud", "m/p2").observe(0.02)
    c.labels("a->b").inc(5)
    c.labels("a->b").inc(2)
    g.labels("bs").set(3)
    return generate_latest(registry)


def test_scrape_matches_prometheus_client_but_created():
    ours = _fill(metrics.Histogram, metrics.Counter, metrics.Gauge, CollectorRegistry())
    theirs = _fill(prometheus_client.Histogram, prometheus_client.Counter, prometheus_client.Gauge, CollectorRegistry())

    def lines(text: bytes) -> list[str]:
        return [ln for ln in text.decode().splitlines() if "_created" not in ln]
    assert lines(ours) == lines(theirs)
    assert 'tierplan_x_seconds_bucket{le="1.0",node="m/p1",site="bs"} 4.0' in lines(ours)
    assert 'tierplan_y_total{link="a->b"} 7.0' in lines(ours)


def test_updates_from_many_threads_are_all_counted():
    reg = CollectorRegistry()
    h = metrics.Histogram("tierplan_t_seconds", "t", ["site"], registry=reg, buckets=(0.5,))
    c = metrics.Counter("tierplan_n_total", "n", ["site"], registry=reg)

    def work():
        for _ in range(5000):
            h.labels("s").observe(0.1)
            c.labels("s").inc()
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = generate_latest(reg).decode()
    assert 'tierplan_t_seconds_count{site="s"} 20000.0' in text and 'tierplan_n_total{site="s"} 20000.0' in text


def test_wrong_label_count_and_negative_increment_are_refused():
    c = metrics.Counter("tierplan_z_total", "z", ["a", "b"], registry=CollectorRegistry())
    with pytest.raises(ValueError):
        c.labels("only-one")
    with pytest.raises(ValueError):
        c.labels("x", "y").inc(-1)

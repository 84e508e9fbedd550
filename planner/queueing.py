"""Waiting time in a site's queue at the planned utilisation, as utilisation levels (linear in CP-SAT).

A site instance is one FIFO server. Requests arrive (Poisson, the conservative case for cameras
and phones) and a request's work at the site is one job of J us (its pieces there, one after
another) with a service-time spread cv. For an M/G/1 queue at utilisation rho the
Pollaczek-Khinchine mean wait is rho * R / (1 - rho), R = E[S^2] / (2 E[S]) = J (1 + cv^2) / 2
the mean residual work; the waiting time is 0 with probability 1 - rho and otherwise close to
exponential with mean R / (1 - rho) (exact for M/M/1, Kingman's heavy-traffic law otherwise), so
its p-quantile is

    w_p(rho) = R * ln(rho / (1 - p)) / (1 - rho)    for rho > 1 - p,  else 0.

CP-SAT cannot multiply a utilisation by a job size, so an owned site (edge devices, one class
each) picks one of a few utilisation levels r_1 < ... < r_L = max_utilization (a binary per
level): its load must fit under r_l, and every sink whose request runs something there waits
w_p(r_l) / J x J[e,s], J[e,s] the largest work any sink of class e has on s (the job a request
may queue behind: read-text's speech request waits behind the phone's OCR job). Rented sites are
planned at their cap (a constant factor; their instance count keeps the utilisation under it),
or, with `rent_for_queueing`, choose a level too and rent more instances to queue less. The
wait is reified on (the sink visits s, the level is chosen), so the model stays linear, and
classes stay separable (J is per class). Between levels the wait of the upper edge is used, so
the bound stays conservative; the job at a shared site is the class's own (where another class
sends much larger jobs, an underestimate).
"""

from __future__ import annotations

import math

from tierplan.planner.units import PPM

__all__ = ["DEFAULT_SERVICE_CV", "UTILISATION_GRID", "RHO_CEILING", "wait_factor", "utilisation_levels",
           "wait_us"]

# log-normal spread of service times when none is measured (the simulator's default service_cv)
DEFAULT_SERVICE_CV = 0.1
# utilisation levels tried below a site's max_utilization (the cap itself is always a level);
# the first level that is <= 1 - p has no p-quantile wait at all
UTILISATION_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)
# a cap of 100% would mean an unbounded wait: the factor of a level is taken at most at this rho
RHO_CEILING = 0.98
# wait factors are integers in thousandths of the job size (CP-SAT takes integers only)
FACTOR_SCALE = 1000


def wait_factor(rho: float, percentile: float, service_cv: float) -> float:
    """w_p(rho) / J: the p-quantile waiting time of an M/G/1 queue in units of the job size."""
    tail = 1.0 - percentile / 100.0
    rho = min(rho, RHO_CEILING)
    if tail <= 0 or rho <= tail:
        return 0.0
    residual = (1.0 + service_cv ** 2) / 2.0
    return residual * math.log(rho / tail) / (1.0 - rho)


def utilisation_levels(cap_ppm: int, percentile: float, service_cv: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(levels in ppm, wait factors in thousandths of the job) for a site capped at `cap_ppm`.

    The grid below the cap, the cap itself, and 1 - p (no wait) when it is below the cap.
    """
    tail_ppm = int(round((1.0 - percentile / 100.0) * PPM))
    grid = {int(round(r * PPM)) for r in UTILISATION_GRID}
    if 0 < tail_ppm:
        grid.add(tail_ppm)
    levels = sorted(r for r in grid if r < cap_ppm) + [cap_ppm]
    factors = tuple(int(math.ceil(FACTOR_SCALE * wait_factor(r / PPM, percentile, service_cv))) for r in levels)
    return tuple(levels), factors


def wait_us(factor: int, job_us: int) -> int:
    """The wait of one level for a job of `job_us`, rounded up to whole microseconds."""
    return -(-factor * job_us // FACTOR_SCALE)

"""Integer micro-units for CP-SAT: the one place floats become integers and back.

CP-SAT takes integers only. Every time is held in microseconds, every amount of money in
micro-dollars, energy in microjoules, memory in kilobytes, bandwidth in bits per second and
utilisation in parts per million. Conversions happen here and nowhere else.

A value that has no integer form CP-SAT can hold (not finite, or beyond a 64-bit integer) is
bad input, not a crash: each conversion raises `InputError` naming the quantity and the fix.
"""

from __future__ import annotations

import math

from tierplan.errors import InputError

__all__ = [
    "US_PER_MS", "UUSD_PER_USD", "UJ_PER_J", "PPM", "BYTES_PER_KB",
    "ms_to_us", "us_to_ms", "usd_to_uusd", "uusd_to_usd", "j_to_uj", "uj_to_j",
    "frac_to_ppm", "bytes_to_kb", "mbps_to_bps", "HOURS_PER_MONTH", "MAX_INT",
]

US_PER_MS = 1_000
UUSD_PER_USD = 1_000_000
UJ_PER_J = 1_000_000
PPM = 1_000_000
BYTES_PER_KB = 1_024
HOURS_PER_MONTH = 730.0  # 365 * 24 / 12, the usual cloud billing month
MAX_INT = 2**63 - 1  # CP-SAT holds 64-bit integers; a converted value beyond this is not a plan input


def _whole(x: float, what: str, value: float, unit: str, up: bool = False) -> int:
    """x (already scaled) as an int, rounded half up (or up); InputError if it is not finite or too large."""
    if not math.isfinite(x) or abs(x) > MAX_INT:
        raise InputError(f"{what} of {value:g}{' ' + unit if unit else ''} is {'not finite' if not math.isfinite(x) else 'too large'} "
                         f"for the planner's integer units (at most {MAX_INT:.3g} after conversion). To fix: check the "
                         "counts, rates, sizes and bandwidths in app.yaml and fleet.yaml for an absurd value")
    return int(math.ceil(x)) if up else int(math.floor(x + 0.5))


def ms_to_us(ms: float) -> int:
    """Milliseconds -> integer microseconds (rounded half up; times are never negative)."""
    return _whole(ms * US_PER_MS, "a time", ms, "ms")


def us_to_ms(us: int | float) -> float:
    """Integer microseconds -> milliseconds."""
    return us / US_PER_MS


def usd_to_uusd(usd: float) -> int:
    """Dollars -> integer micro-dollars."""
    return _whole(usd * UUSD_PER_USD, "an amount", usd, "USD")


def uusd_to_usd(uusd: int | float) -> float:
    """Integer micro-dollars -> dollars."""
    return uusd / UUSD_PER_USD


def j_to_uj(j: float) -> int:
    """Joules -> integer microjoules."""
    return _whole(j * UJ_PER_J, "an energy", j, "J")


def uj_to_j(uj: int | float) -> float:
    """Integer microjoules -> joules."""
    return uj / UJ_PER_J


def frac_to_ppm(frac: float) -> int:
    """A fraction (utilisation) -> integer parts per million."""
    return _whole(frac * PPM, "a fraction", frac, "")


def bytes_to_kb(nbytes: float) -> int:
    """Bytes -> integer kilobytes, rounded up (memory must never be under-counted)."""
    return _whole(nbytes / BYTES_PER_KB, "a size", nbytes, "bytes", up=True)


def mbps_to_bps(mbps: float) -> int:
    """Megabits per second -> integer bits per second."""
    return _whole(mbps * 1e6, "a bandwidth", mbps, "Mbit/s")

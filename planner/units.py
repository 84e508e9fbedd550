"""Integer micro-units for CP-SAT: the one place floats become integers and back.

CP-SAT takes integers only. Every time is held in microseconds, every amount of money in
micro-dollars, energy in microjoules, memory in kilobytes, bandwidth in bits per second and
utilisation in parts per million. Conversions happen here and nowhere else.
"""

from __future__ import annotations

import math

__all__ = [
    "US_PER_MS", "UUSD_PER_USD", "UJ_PER_J", "PPM", "BYTES_PER_KB",
    "ms_to_us", "us_to_ms", "usd_to_uusd", "uusd_to_usd", "j_to_uj", "uj_to_j",
    "frac_to_ppm", "bytes_to_kb", "mbps_to_bps", "HOURS_PER_MONTH",
]

US_PER_MS = 1_000
UUSD_PER_USD = 1_000_000
UJ_PER_J = 1_000_000
PPM = 1_000_000
BYTES_PER_KB = 1_024
HOURS_PER_MONTH = 730.0  # 365 * 24 / 12, the usual cloud billing month


def ms_to_us(ms: float) -> int:
    """Milliseconds -> integer microseconds (rounded half up; times are never negative)."""
    return int(math.floor(ms * US_PER_MS + 0.5))


def us_to_ms(us: int | float) -> float:
    """Integer microseconds -> milliseconds."""
    return us / US_PER_MS


def usd_to_uusd(usd: float) -> int:
    """Dollars -> integer micro-dollars."""
    return int(math.floor(usd * UUSD_PER_USD + 0.5))


def uusd_to_usd(uusd: int | float) -> float:
    """Integer micro-dollars -> dollars."""
    return uusd / UUSD_PER_USD


def j_to_uj(j: float) -> int:
    """Joules -> integer microjoules."""
    return int(math.floor(j * UJ_PER_J + 0.5))


def uj_to_j(uj: int | float) -> float:
    """Integer microjoules -> joules."""
    return uj / UJ_PER_J


def frac_to_ppm(frac: float) -> int:
    """A fraction (utilisation) -> integer parts per million."""
    return int(math.floor(frac * PPM + 0.5))


def bytes_to_kb(nbytes: float) -> int:
    """Bytes -> integer kilobytes, rounded up (memory must never be under-counted)."""
    return int(math.ceil(nbytes / BYTES_PER_KB))


def mbps_to_bps(mbps: float) -> int:
    """Megabits per second -> integer bits per second."""
    return int(math.floor(mbps * 1e6 + 0.5))

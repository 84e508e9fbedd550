"""Where calibrations live and which one applies: per host in the user's cache, keyed by CPU identity.

- `local` (this machine): `<cache>/calibration/<cpu key>.json` (devices.host.cpu_identity().key: model,
  arch, cores, ISA-flag hash), so a cache shared between machines (an NFS home, a copied ~/.cache)
  never hands one CPU's figures to another. A calibration of `local` records the CPU it was measured
  on (`cpu_key`, `cpu`); one made on another CPU is refused with a StaleCalibrationWarning that names
  that CPU, and the cost model falls back to the uncalibrated roofline (or `tierplan run` calibrates).
- Any other device: `<cache>/calibration/<device>.json` (made on that device and copied here).
- `--calibration FILE` (use_calibration_file) takes precedence over the cache for the device it names.
- A calibration in an older format (`format_version` below devices.calibration.CALIBRATION_FORMAT: fitted with
  other op keys) is refused the same way, with a one-line warning; `tierplan run` then calibrates again.

Nothing is ever written into the package or the source tree.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from tierplan.devices.host import LOCAL, cache_dir, cpu_identity

if TYPE_CHECKING:
    from tierplan.devices.calibration import Calibration
    from tierplan.spec import DeviceSpec

__all__ = ["StaleCalibrationWarning", "calibration_dir", "local_calibration_path", "stamp", "fits_this_host",
           "checked", "use_calibration_file", "clear_overrides", "lookup", "default_path", "file_sha256",
           "host_figures_path"]


class StaleCalibrationWarning(UserWarning):
    """A calibration of `local` made on another CPU than this one, or one in an older format: not used."""


_OVERRIDES: dict[str, "Calibration"] = {}   # device name -> calibration given with --calibration


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (remembered per path, size and mtime): how a calibration names the pieces it measured."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return ""
    return _sha256_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=4096)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    from tierplan.partition.onnx_graph import model_sha256
    return model_sha256(path)


def calibration_dir() -> Path:
    """<cache>/calibration ($XDG_CACHE_HOME/tierplan/calibration, else ~/.cache/tierplan/calibration)."""
    return cache_dir() / "calibration"


def local_calibration_path(directory: str | Path | None = None) -> Path:
    """Where this machine's calibration lives: <dir>/<cpu key>.json."""
    return Path(directory or calibration_dir()) / f"{cpu_identity().key}.json"


def host_figures_path(kind: str, directory: str | Path | None = None) -> Path:
    """Where this machine's other measured figures of `kind` live (e.g. the runtime's own time per step
    and hop, runtime.overhead): <dir>/<cpu key>.<kind>.json, beside its calibration."""
    return Path(directory or calibration_dir()) / f"{cpu_identity().key}.{kind}.json"


def default_path(device_name: str, directory: str | Path | None = None) -> Path:
    """The cache file of `device_name`'s calibration (`local`: keyed by this CPU)."""
    if device_name == LOCAL:
        return local_calibration_path(directory)
    return Path(directory or calibration_dir()) / f"{device_name}.json"


def stamp(cal: "Calibration") -> "Calibration":
    """`cal` marked as measured on this machine's CPU."""
    cpu = cpu_identity()
    return replace(cal, cpu_key=cpu.key, cpu=cpu.label)


def fits_this_host(cal: "Calibration") -> bool:
    """True unless `cal` is a calibration of `local` made on another CPU (or on an unrecorded one)."""
    return cal.device != LOCAL or cal.cpu_key == cpu_identity().key


def checked(cal: "Calibration", source: str = "calibration") -> "Calibration | None":
    """`cal` when it may be used here, else None with a StaleCalibrationWarning naming its CPU, or saying
    it was fitted with an older format's op keys (devices.calibration.CALIBRATION_FORMAT)."""
    from tierplan.devices.calibration import CALIBRATION_FORMAT

    if cal.format_version < CALIBRATION_FORMAT:
        warnings.warn(f"{source}: calibration of `{cal.device}` in an older format (v{cal.format_version}, now "
                      f"v{CALIBRATION_FORMAT}: new op keys); not used, recalibrating. "
                      f"To fix: run `tierplan calibrate`", StaleCalibrationWarning, stacklevel=3)
        return None
    if fits_this_host(cal):
        return cal
    made_on = cal.cpu or (f"an unrecorded CPU (host {cal.host!r})" if cal.host else "an unrecorded CPU")
    warnings.warn(f"{source}: calibration of `local` made on {made_on}"
                  f"{f' [key {cal.cpu_key}]' if cal.cpu_key else ''}, not on this machine's "
                  f"{cpu_identity().label} [key {cpu_identity().key}]; not used. "
                  f"To fix: run `tierplan calibrate` on this machine", StaleCalibrationWarning, stacklevel=3)
    return None


def use_calibration_file(path: str | Path) -> "Calibration | None":
    """Load `path` (`--calibration FILE`) and make it the calibration of the device it names for this
    process's cost models; a `local` calibration from another CPU is refused (warning) and None returned."""
    from tierplan.devices.calibration import Calibration

    cal = checked(Calibration.load(path), str(path))
    if cal is not None:
        _OVERRIDES[cal.device] = cal
    return cal


def clear_overrides() -> None:
    """Forget calibrations given with use_calibration_file."""
    _OVERRIDES.clear()


def lookup(device: "DeviceSpec", directory: str | Path | None = None) -> "Calibration | None":
    """The calibration that applies to `device` here: a --calibration override, else its cache file
    (checked against this CPU for `local`), else None."""
    from tierplan.devices.calibration import Calibration

    if device.name in _OVERRIDES:
        return _OVERRIDES[device.name]
    path = default_path(device.name, directory)
    if not path.is_file():
        return None
    return checked(Calibration.load(path), str(path))

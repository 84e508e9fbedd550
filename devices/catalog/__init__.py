"""The device catalog: one YAML per real hardware type (devices/catalog/*.yaml), loaded as DeviceSpec,
plus `local`, this machine, detected at run time (devices.host)."""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from tierplan.errors import InputError, SpecError
from tierplan.spec import DeviceSpec

__all__ = ["CATALOG_DIR", "load_catalog", "get_device", "suggest"]

CATALOG_DIR = Path(__file__).resolve().parent


def suggest(name: str, options: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest option, or '' when nothing is close."""
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


@lru_cache(maxsize=8)
def _load_dir(directory: str) -> Mapping[str, DeviceSpec]:
    from tierplan.loader import load_yaml_spec

    out: dict[str, DeviceSpec] = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        dev = load_yaml_spec(path, DeviceSpec)
        if dev.name != path.stem:
            raise SpecError([f"{path}:1: name: {dev.name!r} differs from the file name; "
                             f"To fix: name the file {dev.name}.yaml"])
        out[dev.name] = dev
    return MappingProxyType(out)


def load_catalog(directory: str | Path | None = None) -> dict[str, DeviceSpec]:
    """Every device of the catalog by name (a fresh dict; the specs are frozen and shared); the default
    catalog also holds `local`, this machine as detected (devices.host.local_device)."""
    out = dict(_load_dir(str(Path(directory or CATALOG_DIR).resolve())))
    if directory is None:
        from tierplan.devices.host import LOCAL, local_device
        out[LOCAL] = local_device()
    return out


def get_device(name: str, catalog: Mapping[str, DeviceSpec] | None = None) -> DeviceSpec:
    """One device by name (`local`: this machine, detected); unknown names raise InputError with a did-you-mean."""
    if catalog is None and name == "local":
        from tierplan.devices.host import local_device
        return local_device()
    cat = load_catalog() if catalog is None else catalog
    if name not in cat:
        raise InputError(f"unknown device {name!r}{suggest(name, sorted(cat))}. "
                         f"To fix: `tierplan devices` lists the catalog ({len(cat)} devices)")
    return cat[name]

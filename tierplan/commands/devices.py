"""`tierplan devices [NAME] [--json]`: the device catalog as a table, or one device in detail."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import JustifyMethod

    from tierplan.devices.calibration import Calibration
    from tierplan.spec import DeviceSpec

__all__ = ["register", "device_dict"]


def device_dict(dev: DeviceSpec, calibrated: bool = False) -> dict[str, Any]:
    """A device as the JSON object `tierplan devices --json` prints."""
    d = dev.model_dump()
    d["calibrated"] = calibrated
    return d


def _print_table(devs: list[DeviceSpec], cal: dict[str, bool]) -> None:
    from tierplan.console import console
    from rich.table import Table

    t = Table(title=f"device catalog: {len(devs)} devices", title_justify="left")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("name", "left"), ("tier", "left"), ("fp32 GF/s", "right"), ("fp16", "right"), ("int8", "right"),
        ("GB", "right"), ("GB/s", "right"), ("W", "right"), ("$/h", "right"), ("cal", "left"))
    for col, just in columns:
        t.add_column(col, justify=just, no_wrap=True)
    order = {"edge": 0, "base_station": 1, "cloud": 2}
    for d in sorted(devs, key=lambda d: (order[d.tier], d.name)):
        pk = d.peak_gflops
        t.add_row(d.name, d.tier.replace("base_station", "base"), f"{pk['fp32']:,.0f}",
                  f"{pk['fp16']:,.0f}" if "fp16" in pk else "-", f"{pk['int8']:,.0f}" if "int8" in pk else "-",
                  f"{d.memory_gb:g}", f"{d.memory_bandwidth_gbps:g}", f"{d.power_idle_w:g}-{d.power_active_w:g}",
                  f"{d.cost_per_hour_usd:.3f}", "yes" if cal.get(d.name) else "")
    con = console(min_width=110)
    con.print(t)
    con.print("`tierplan devices NAME` shows one device with its backends, TVM target and sources.")


def _print_one(dev: DeviceSpec, cal: Calibration | None) -> None:
    from tierplan.console import console
    from rich.table import Table

    t = Table(title=f"{dev.name}: {dev.description}", title_justify="left", show_header=False)
    t.add_column("field")
    t.add_column("value")
    for k, v in dev.model_dump().items():
        if k == "sources":
            continue
        t.add_row(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v))
    if dev.name == "local":
        from tierplan.devices.calibstore import local_calibration_path
        from tierplan.devices.host import detect_host

        h = detect_host()
        t.add_row("detected CPU", h.cpu.label)
        t.add_row("CPU key", h.cpu.key)
        t.add_row("peak from", h.peak_note)
        t.add_row("frequency", f"{h.ghz:.2f} GHz ({h.ghz_source})")
        t.add_row("detection cache", h.cache_file)
        t.add_row("calibration file", str(local_calibration_path()))
    if cal is not None:
        t.add_row("calibration", f"{cal.measured_at} on {cal.cpu or cal.host}: op overhead {cal.op_overhead_us:.1f} us, "
                                 f"run overhead {cal.run_overhead_us:.1f} us, {len(cal.ms_per_gflop)} op types, "
                                 f"{cal.threads} thread(s)")
    elif dev.name == "local":
        t.add_row("calibration", "none for this CPU yet: `tierplan run` makes one on first use, or `tierplan calibrate`")
    con = console()
    con.print(t)
    con.print("sources:")
    for s in dev.sources:
        con.print(f"  {s}", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("devices")
    def devices_cmd(
        name: str = typer.Argument(None, help="Show one device in detail."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """List the device catalog (peak FLOP/s, memory, power, price, backends), or one device."""
        from tierplan.devices.catalog import get_device, load_catalog
        from tierplan.devices.costmodel import CostModel

        cm = CostModel()
        if name:
            dev = get_device(name)
            cal = cm.calibration_for(dev)
            if as_json:
                out = device_dict(dev, cal is not None)
                if cal is not None:
                    out["calibration"] = cal.to_dict()
                if dev.name == "local":
                    from tierplan.devices.calibstore import local_calibration_path
                    from tierplan.devices.host import detect_host
                    out["detected"] = detect_host().to_dict()
                    out["calibration_file"] = str(local_calibration_path())
                print(json.dumps(out, indent=2))
            else:
                _print_one(dev, cal)
            return
        devs = list(load_catalog().values())
        calibrated = {d.name: cm.calibration_for(d) is not None for d in devs}
        if as_json:
            print(json.dumps({"devices": [device_dict(d, calibrated[d.name]) for d in devs]}, indent=2))
        else:
            _print_table(devs, calibrated)

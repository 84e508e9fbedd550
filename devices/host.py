"""This machine as a device: the `local` DeviceSpec detected at run time (CPU, ISA, cores, memory, TVM target).

Nothing here is read from a shipped file. What is detected, and from where:

- CPU identity (`cpu_identity`): architecture (platform.machine), vendor, model name, family/model or
  Arm CPU part, ISA flags from /proc/cpuinfo (`flags` on x86, `Features` on aarch64), and the cores this
  process may use: os.sched_getaffinity, capped by a cgroup CPU quota (cpu.max / cfs_quota_us).
  Its `key` (model slug, arch, cores, hash of the ISA flags) names the per-host caches: the detection
  below and the calibration (devices.calibstore).
- Frequency: cpufreq's cpuinfo_max_freq, else the highest `cpu MHz` in /proc/cpuinfo, else
  lscpu's `CPU max MHz`, else the `@ x.xxGHz` in the model name, else DEFAULT_GHZ (said so in sources).
- Peak GFLOP/s per precision = cores x GHz x FLOP/cycle/core from the ISA tables below.
- Memory: MemTotal in /proc/meminfo, capped by a cgroup memory limit.
- Memory bandwidth: one-thread numpy copy of BANDWIDTH_BYTES (read + write counted, best of
  BANDWIDTH_REPEATS, well under a second), the rate one intra-op thread can stream.
- TVM target: {kind: llvm, mtriple: <arch>-linux-gnu, mcpu: tvm.target.codegen.llvm_get_system_cpu()}
  (LLVM's own host CPU name, the one TVM builds native code for; omitted when TVM is absent).

The slow parts (TVM import, bandwidth) are measured once per host and cached in
`<cache>/host/<key>.json` (cache = $TIERPLAN_CACHE, else $XDG_CACHE_HOME/tierplan, else ~/.cache/tierplan).

FLOP/cycle/core tables (fp32; a fused multiply-add counts 2):

| ISA (x86) | FLOP/cycle | why |
|---|---|---|
| AVX-512, Intel | 64 | 2 x 512-bit FMA ports x 16 lanes x 2 (Xeon Scalable Gold/Platinum, Sapphire Rapids) [1] |
| AVX-512, AMD Zen 4 (family 0x19) | 32 | AVX-512 runs on 2 x 256-bit FMA pipes [2] |
| AVX-512, AMD Zen 5 (family 0x1a) | 64 | full 512-bit datapath, 2 FMA pipes [3] |
| AVX2 + FMA | 32 | 2 x 256-bit FMA x 8 lanes x 2 (Haswell and later, Zen 2/3) [1][4] |
| AVX2 + FMA, Zen / Zen+ (family 0x17, model < 0x30) | 16 | 2 x 128-bit FMA pipes [4] |
| AVX without FMA | 16 | one 256-bit add + one 256-bit multiply per cycle [1] |
| SSE2 | 8 | one 128-bit add + one 128-bit multiply per cycle [1] |

fp16: x86 with AVX512-FP16 runs fp16 FMAs at twice the fp32 rate [5]; without it fp16 is converted
to fp32 (F16C), so the fp16 peak is the fp32 one. int8: AMX-INT8 (TMUL) does 1024 int8 MACs per
cycle per core = 2048 ops [1]; AVX-512 VNNI / AVX-VNNI (VPDPBUSD: 4 int8 MACs per 32-bit lane)
4x the fp32 rate of that vector width [1]; otherwise 2x (VPMADDUBSW + VPMADDWD) [1].

| ISA (aarch64) | FLOP/cycle | why |
|---|---|---|
| Cortex-A35 (part 0xd04) | 4 | one 64-bit NEON FMA [6] |
| Cortex-A53/A55/A72/A73 (0xd03, 0xd05, 0xd08, 0xd09) | 8 | one 128-bit NEON FMA per cycle [6] |
| Cortex-A75/A76/A77/A78, Neoverse N1/N2 (0xd0a, 0xd0b, 0xd0d, 0xd41, 0xd0c, 0xd49) | 16 | 2 x 128-bit FMA [6] |
| Cortex-X1..X4, Neoverse V1/V2 (0xd44, 0xd4c, 0xd4e, 0xd82, 0xd40, 0xd4f) | 32 | 4 x 128-bit FMA (V1: 2 x 256-bit SVE) [6] |
| other with SVE | 2 x VL/32 x 2 | two SVE FMA pipes of the default vector length [6] |
| other NEON | 16 | 2 x 128-bit FMA, the common case since Cortex-A75 [6] |

fp16: `asimdhp` (FP16 arithmetic) 2x fp32; int8: `i8mm` (SMMLA) 8x, `asimddp` (SDOT) 4x, else 2x [6].

[1] Intel 64 and IA-32 Architectures Optimization Reference Manual (order 248966), chapters on
    Skylake-SP / Ice Lake / Sapphire Rapids FMA units, VNNI and AMX throughput.
[2] AMD Software Optimization Guide for AMD Family 19h Processors (Zen 4), pub. 57647.
[3] AMD Software Optimization Guide for AMD Family 1Ah Processors (Zen 5), pub. 58455.
[4] AMD Software Optimization Guides for Family 17h Processors (Zen: 55723; Zen 2: 56305).
[5] Intel AVX512-FP16 Architecture Specification (order 347407).
[6] Arm Software Optimization Guides for each core (Cortex-A53 .. X4, Neoverse N1/N2/V1/V2):
    "ASIMD/FP floating-point multiply-accumulate" throughput tables.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from tierplan.cachedir import user_cache_dir
from tierplan.spec import DeviceSpec, Precision

__all__ = ["CpuIdentity", "HostInfo", "cache_dir", "cpu_identity", "parse_cpu_identity", "detect_host", "local_device", "clear_cache",
           "peak_gflops", "measure_bandwidth_gbps", "nchwc_block", "LOCAL"]

LOCAL = "local"
PROC_CPUINFO = Path("/proc/cpuinfo")
PROC_MEMINFO = Path("/proc/meminfo")
CPUFREQ_MAX = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
SVE_VL = Path("/proc/sys/abi/sve_default_vector_length")
CGROUP_ROOT = Path("/sys/fs/cgroup")
HOST_CACHE_VERSION = 1

DEFAULT_GHZ = 2.0                # when no frequency can be read (said so in the device's sources)
BANDWIDTH_BYTES = 64 << 20       # copied buffer: beyond most per-core L2 shares, ~10 ms at 10 GB/s
BANDWIDTH_REPEATS = 5
# Our estimates, not measurements (a 2-core share of a ~200 W, ~64-core server socket): no portable
# power reading exists inside a VM. They feed energy per request only.
IDLE_W_PER_CORE = 2.5
ACTIVE_W_PER_CORE = 5.0
# Per-operator framework overhead before calibration replaces it (onnxruntime on a server core ~5 us,
# on a small Arm core ~3x that, as the catalog's rpi4 entry).
DISPATCH_US = {"x86_64": 5.0, "aarch64": 15.0}

# ISA flags that change what code runs fast (and so the calibration); the key hashes these only, so a
# microcode update adding a mitigation flag does not invalidate a calibration.
ISA_FLAGS: tuple[str, ...] = (
    "sse2", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2", "sme", "fphp",
)
ARM_PARTS_FLOP_PER_CYCLE: dict[int, float] = {
    0xd04: 4, 0xd03: 8, 0xd05: 8, 0xd08: 8, 0xd09: 8,
    0xd0a: 16, 0xd0b: 16, 0xd0d: 16, 0xd41: 16, 0xd0c: 16, 0xd49: 16,
    0xd44: 32, 0xd4c: 32, 0xd4e: 32, 0xd82: 32, 0xd40: 32, 0xd4f: 32,
}
ARM_PART_NAMES: dict[int, str] = {
    0xd03: "Cortex-A53", 0xd04: "Cortex-A35", 0xd05: "Cortex-A55", 0xd08: "Cortex-A72", 0xd09: "Cortex-A73",
    0xd0a: "Cortex-A75", 0xd0b: "Cortex-A76", 0xd0c: "Neoverse N1", 0xd0d: "Cortex-A77", 0xd40: "Neoverse V1",
    0xd41: "Cortex-A78", 0xd44: "Cortex-X1", 0xd49: "Neoverse N2", 0xd4c: "Cortex-X1C", 0xd4e: "Cortex-X3",
    0xd4f: "Neoverse V2", 0xd82: "Cortex-X4",
}
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8": "aarch64"}


def cache_dir() -> Path:
    """tierplan's per-user cache (tierplan.cachedir: $TIERPLAN_CACHE, else $XDG_CACHE_HOME/tierplan, else
    ~/.cache/tierplan); never the package or the source tree."""
    return user_cache_dir()


# ----------------------------------------------------------------------------- identity
@dataclass(frozen=True)
class CpuIdentity:
    """What a calibration depends on: the CPU kind, its ISA and the cores this process may use."""

    arch: str
    vendor: str
    model_name: str
    family: int | None
    model: int | None
    arm_part: int | None
    flags: tuple[str, ...]          # the ISA_FLAGS present, sorted
    cores: int

    @property
    def key(self) -> str:
        """File-name key: model slug, arch, cores and a hash of the ISA flags."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.model_name.lower()).strip("-")[:48] or "cpu"
        ident = f"{self.vendor}|{self.model_name}|{self.family}|{self.model}|{self.arm_part}|{','.join(self.flags)}"
        return f"{slug}-{self.arch}-{self.cores}c-{hashlib.sha1(ident.encode()).hexdigest()[:8]}"

    @property
    def label(self) -> str:
        """Human name: 'Intel(R) Xeon(R) Processor (x86_64, 2 cores, AVX-512 VNNI AMX)'."""
        return f"{self.model_name} ({self.arch}, {self.cores} cores, {' '.join(isa_names(self.flags)) or 'no SIMD'})"


def nchwc_block(cpu: "CpuIdentity | None" = None) -> int:
    """onnxruntime's MLAS NCHWc channel block on this CPU (or `cpu`): 16 with AVX-512F, 8 on other x86-64
    (SSE2 baseline to AVX2), 1 elsewhere (Arm builds leave the NCHWc layout off). MLAS platform.cpp sets
    NchwcBlockSize the same way; devices.constants.nchwc_runs says which convs it blocks."""
    cpu = cpu or cpu_identity()
    if cpu.arch not in ("x86_64", "amd64", "AMD64"):
        return 1
    return 16 if "avx512f" in cpu.flags else 8


def isa_names(flags: Iterable[str]) -> list[str]:
    """The headline vector ISAs among `flags`, for people."""
    f = set(flags)
    names = [("AVX2", "avx2"), ("AVX-512", "avx512f"), ("VNNI", "avx512_vnni"), ("AVX-VNNI", "avx_vnni"),
             ("AVX512-FP16", "avx512_fp16"), ("AMX", "amx_tile"), ("NEON", "asimd"), ("FP16", "asimdhp"),
             ("DOTPROD", "asimddp"), ("I8MM", "i8mm"), ("SVE", "sve"), ("SVE2", "sve2")]
    return [n for n, flag in names if flag in f]


def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if cur:
                blocks.append(cur)
            cur = {}
            continue
        k, _, v = line.partition(":")
        cur.setdefault(k.strip().lower(), v.strip())
    if cur:
        blocks.append(cur)
    return blocks


def _int(s: str | None) -> int | None:
    try:
        return int(s, 0) if s is not None else None
    except ValueError:
        return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def usable_cores() -> int:
    """CPUs this process may run on (affinity), capped by a cgroup v2/v1 CPU quota (rounded up)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = None
    parts = _read(CGROUP_ROOT / "cpu.max").split()
    if len(parts) == 2 and parts[0] != "max":
        quota = int(parts[0]) / max(int(parts[1]), 1)
    else:
        q, p = _read(CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").strip(), _read(CGROUP_ROOT / "cpu" / "cpu.cfs_period_us").strip()
        if q and p and int(q) > 0:
            quota = int(q) / max(int(p), 1)
    if quota:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


@lru_cache(maxsize=1)
def cpu_identity() -> CpuIdentity:
    """This machine's CPU identity from /proc/cpuinfo and the scheduler (cheap; no TVM, no measurement)."""
    return parse_cpu_identity(_read(PROC_CPUINFO), platform.machine(), usable_cores())


def parse_cpu_identity(cpuinfo: str, machine: str, cores: int) -> CpuIdentity:
    """A CpuIdentity from /proc/cpuinfo text, platform.machine() and a core count."""
    m = machine.lower()
    arch = _ARCH_ALIASES.get(m, m)
    blocks = _cpuinfo_blocks(cpuinfo)
    first = next((b for b in blocks if "processor" in b), blocks[0] if blocks else {})
    head = {k: v for b in blocks for k, v in b.items() if k in ("hardware", "model name")}   # arm: trailing block
    raw_flags = set((first.get("flags") or first.get("features") or "").split())
    vendor = first.get("vendor_id") or first.get("cpu implementer") or platform.processor() or "unknown"
    part = _int(first.get("cpu part"))
    name = first.get("model name") or head.get("model name") or head.get("hardware") or ""
    if not name:
        name = (ARM_PART_NAMES.get(part, f"Arm CPU part {hex(part)}") if part is not None
                else (platform.processor() or arch))
    return CpuIdentity(arch=arch, vendor=vendor, model_name=re.sub(r"\s+", " ", name).strip(),
                       family=_int(first.get("cpu family")), model=_int(first.get("model")), arm_part=part,
                       flags=tuple(sorted(f for f in raw_flags if f in ISA_FLAGS)), cores=cores)


# ----------------------------------------------------------------------------- peaks
def fp32_flop_per_cycle(cpu: CpuIdentity) -> tuple[float, str]:
    """fp32 FLOP per cycle per core and the table row it came from (see the module docstring)."""
    f = set(cpu.flags)
    if cpu.arch == "x86_64":
        amd = "AMD" in cpu.vendor.upper()
        if "avx512f" in f:
            if amd:
                return (64.0, "AVX-512, AMD Zen 5") if (cpu.family or 0) >= 0x1A else (32.0, "AVX-512, AMD Zen 4")
            return 64.0, "AVX-512, Intel (2 FMA ports)"
        if "avx2" in f and "fma" in f:
            if amd and cpu.family == 0x17 and (cpu.model or 0) < 0x30:
                return 16.0, "AVX2 + FMA, AMD Zen/Zen+"
            return 32.0, "AVX2 + FMA"
        if "avx" in f:
            return 16.0, "AVX"
        return 8.0, "SSE2"
    if cpu.arch == "aarch64":
        if cpu.arm_part in ARM_PARTS_FLOP_PER_CYCLE:
            return float(ARM_PARTS_FLOP_PER_CYCLE[cpu.arm_part]), f"Arm CPU part {hex(cpu.arm_part)}"
        if "sve" in f:
            vl_bytes = _int(_read(SVE_VL).strip()) or 16
            return 2 * (vl_bytes * 8 / 32) * 2, f"SVE, {vl_bytes * 8}-bit vectors"
        return 16.0, "NEON (2 x 128-bit FMA)"
    return 4.0, f"unknown architecture {cpu.arch} (scalar FMA assumed)"


def peak_gflops(cpu: CpuIdentity, ghz: float) -> tuple[dict[Precision, float], str]:
    """{fp32, fp16, int8} peak GFLOP/s (int8: GOP/s) of `cpu` at `ghz`, and how they were derived."""
    per_cycle, row = fp32_flop_per_cycle(cpu)
    f = set(cpu.flags)
    fp32 = cpu.cores * ghz * per_cycle
    if cpu.arch == "x86_64":
        fp16 = 2 * fp32 if "avx512_fp16" in f else fp32
        if "amx_int8" in f:
            int8, how = cpu.cores * ghz * 2048.0, "AMX-INT8 2048 ops/cycle"
        elif "avx512_vnni" in f or "avx_vnni" in f:
            int8, how = 4 * fp32, "VNNI 4x fp32"
        else:
            int8, how = 2 * fp32, "no VNNI: 2x fp32"
    else:
        fp16 = 2 * fp32 if ("asimdhp" in f or "fphp" in f) else fp32
        if "i8mm" in f:
            int8, how = 8 * fp32, "I8MM 8x fp32"
        elif "asimddp" in f:
            int8, how = 4 * fp32, "DOTPROD 4x fp32"
        else:
            int8, how = 2 * fp32, "no dot product: 2x fp32"
    note = (f"{cpu.cores} cores x {ghz:.2f} GHz x {per_cycle:g} FLOP/cycle ({row}); "
            f"fp16 {'2x' if fp16 > fp32 else '1x'} fp32; int8 {how}")
    return {"fp32": round(fp32, 1), "fp16": round(fp16, 1), "int8": round(int8, 1)}, note


def cpu_ghz(cpu_text: str | None = None) -> tuple[float, str]:
    """(GHz, source): cpufreq max, else cpuinfo MHz, else lscpu max MHz, else the model name, else DEFAULT_GHZ."""
    khz = _int(_read(CPUFREQ_MAX).strip())
    if khz:
        return khz / 1e6, "cpufreq cpuinfo_max_freq"
    text = _read(PROC_CPUINFO) if cpu_text is None else cpu_text
    mhz = [float(x) for x in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)]
    if mhz:
        return max(mhz) / 1e3, "/proc/cpuinfo cpu MHz"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        m = re.search(r"CPU max MHz:\s*([\d.]+)", out)
        if m:
            return float(m.group(1)) / 1e3, "lscpu CPU max MHz"
    except (OSError, subprocess.SubprocessError):
        pass
    m = re.search(r"@\s*([\d.]+)\s*GHz", cpu_identity().model_name)
    if m:
        return float(m.group(1)), "model name"
    return DEFAULT_GHZ, f"not readable here; {DEFAULT_GHZ} GHz assumed"


def memory_gb() -> float:
    """MemTotal, capped by a cgroup v2 memory limit, GB (decimal)."""
    m = re.search(r"MemTotal:\s*(\d+)\s*kB", _read(PROC_MEMINFO))
    total = int(m.group(1)) * 1024 if m else 4 << 30
    lim = _read(CGROUP_ROOT / "memory.max").strip()
    if lim.isdigit():
        total = min(total, int(lim))
    return round(total / 1e9, 1)


def measure_bandwidth_gbps(nbytes: int = BANDWIDTH_BYTES, repeats: int = BANDWIDTH_REPEATS) -> float:
    """One thread's copy bandwidth, GB/s: numpy copy of `nbytes` (read + write), best of `repeats`."""
    import numpy as np

    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best / 1e9


def _tvm_mcpu() -> str | None:
    try:
        from tvm.target import codegen
        return str(codegen.llvm_get_system_cpu()) or None
    except Exception:   # TVM absent or built without LLVM: the target names no mcpu
        return None


# ----------------------------------------------------------------------------- the device
@dataclass(frozen=True)
class HostInfo:
    """Everything detected about this machine (what `tierplan devices local` shows)."""

    cpu: CpuIdentity
    ghz: float
    ghz_source: str
    peak_gflops: dict[Precision, float]
    peak_note: str
    memory_gb: float
    memory_bandwidth_gbps: float
    tvm_mcpu: str | None
    detected_at: str
    cache_file: str = ""

    @property
    def triple(self) -> str:
        return f"{self.cpu.arch}-linux-gnu"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cpu"]["key"] = self.cpu.key
        d["cpu"]["label"] = self.cpu.label
        d["triple"] = self.triple
        return d

    def device(self) -> DeviceSpec:
        """The `local` DeviceSpec."""
        c = self.cpu
        target = {"kind": "llvm", "mtriple": self.triple}
        if self.tvm_mcpu:
            target["mcpu"] = self.tvm_mcpu
        return DeviceSpec(
            name=LOCAL, tier="edge", description=f"This machine: {c.model_name}, {c.cores} cores (detected)",
            peak_gflops=dict(self.peak_gflops), memory_gb=self.memory_gb,
            memory_bandwidth_gbps=round(self.memory_bandwidth_gbps, 1),
            power_idle_w=IDLE_W_PER_CORE * c.cores, power_active_w=ACTIVE_W_PER_CORE * c.cores,
            cost_per_hour_usd=0.0, dispatch_overhead_us=DISPATCH_US.get(c.arch, 10.0), tvm_target=target,
            backends=["onnxruntime", "tvm", "litert"], battery=False,
            sources=[f"[1] /proc/cpuinfo and the scheduler: {c.label}, CPU key {c.key}",
                     f"[2] peak: {self.peak_note} (per-ISA table in devices/host.py)",
                     f"[3] frequency: {self.ghz:.2f} GHz from {self.ghz_source}",
                     f"[4] memory: /proc/meminfo; bandwidth: one-thread numpy copy, measured {self.detected_at}",
                     f"[5] TVM target: llvm_get_system_cpu() = {self.tvm_mcpu or 'n/a (TVM not importable)'}",
                     "[6] power and dispatch overhead: tierplan estimates (devices/host.py); "
                     "`tierplan calibrate` replaces the efficiencies and overheads"])


def _host_cache_file(cpu: CpuIdentity) -> Path:
    return cache_dir() / "host" / f"{cpu.key}.json"


@lru_cache(maxsize=1)
def detect_host(refresh: bool = False) -> HostInfo:
    """Detect this machine; the measured parts (bandwidth, TVM's CPU name) come from the per-host cache
    when present, else are measured now and cached there."""
    cpu = cpu_identity()
    ghz, ghz_src = cpu_ghz()
    peaks, note = peak_gflops(cpu, ghz)
    path = _host_cache_file(cpu)
    cached = {}
    if not refresh:
        try:
            cached = json.loads(path.read_text())
            if cached.get("version") != HOST_CACHE_VERSION:
                cached = {}
        except (OSError, ValueError):
            cached = {}
    if not cached:
        cached = {"version": HOST_CACHE_VERSION, "bandwidth_gbps": measure_bandwidth_gbps(), "tvm_mcpu": _tvm_mcpu(),
                  "detected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": cpu.label}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cached, indent=2) + "\n")
            tmp.replace(path)
        except OSError:   # a read-only home: detect again next time
            pass
    return HostInfo(cpu=cpu, ghz=ghz, ghz_source=ghz_src, peak_gflops=peaks, peak_note=note, memory_gb=memory_gb(),
                    memory_bandwidth_gbps=float(cached["bandwidth_gbps"]), tvm_mcpu=cached.get("tvm_mcpu"),
                    detected_at=str(cached.get("detected_at", "")), cache_file=str(path))


@lru_cache(maxsize=1)
def local_device() -> DeviceSpec:
    """The device `local`: this machine, detected (see detect_host)."""
    return detect_host().device()


def clear_cache() -> None:
    """Forget this process's detection (after the environment or the cache directory changed)."""
    for f in (cpu_identity, detect_host, local_device):
        f.cache_clear()

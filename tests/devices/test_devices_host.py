"""This machine as `local`: detected at run time, calibrated per CPU in the user's cache, stale calibrations refused."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tierplan.devices import calibstore, host
from tierplan.devices.catalog import CATALOG_DIR, get_device, load_catalog
from tierplan.devices.costmodel import Calibration, CostModel
from tierplan.devices.host import CpuIdentity, parse_cpu_identity, peak_gflops

ROOT = Path(__file__).resolve().parents[2]

# /proc/cpuinfo of another machine: the AMD EPYC (Zen, AVX2 only) the issue reproduced on
EPYC_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 1
model name\t: AMD EPYC 7601 32-Core Processor
cpu MHz\t\t: 2199.998
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi1 bmi2 hypervisor

"""
# a Raspberry Pi 5 (4x Cortex-A76)
RPI5_CPUINFO = "".join(f"""processor\t: {i}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

""" for i in range(4)) + "Model\t: Raspberry Pi 5 Model B Rev 1.0\n"


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty user cache, as on a machine tierplan never ran on."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TIERPLAN_CACHE", raising=False)
    host.clear_cache()
    calibstore.clear_overrides()
    yield tmp_path / "cache" / "tierplan"
    host.clear_cache()
    calibstore.clear_overrides()


@pytest.fixture
def other_cpu(tmp_path, monkeypatch, fresh_cache):
    """This process now believes it runs on the AMD EPYC above (its /proc/cpuinfo swapped for that one)."""
    real = host.cpu_identity()
    fake = tmp_path / "cpuinfo"
    fake.write_text(EPYC_CPUINFO)
    monkeypatch.setattr(host, "PROC_CPUINFO", fake)
    host.clear_cache()
    yield real
    host.clear_cache()


def _calibration_here(**kw) -> Calibration:
    """A small calibration of `local` stamped with this machine's CPU."""
    cal = Calibration(device="local", ms_per_gflop={"Conv": 7.0}, ms_per_mb={"Conv": 0.1}, op_overhead_us=1.0,
                      run_overhead_us=5.0, **kw)
    return calibstore.stamp(cal)


def test_local_is_this_machine_detected(fresh_cache):
    """`local` comes from this machine: its TVM target is LLVM's host CPU and triple, its peak follows the detected
    cores, clock and ISA, and no shipped file describes it."""
    dev = get_device("local")
    cpu = host.cpu_identity()
    assert dev.tvm_target["mtriple"] == f"{cpu.arch}-linux-gnu" and cpu.arch == host._ARCH_ALIASES.get(
        platform.machine().lower(), platform.machine().lower())
    from tvm.target import codegen
    assert dev.tvm_target["mcpu"] == str(codegen.llvm_get_system_cpu())
    per_cycle, _ = host.fp32_flop_per_cycle(cpu)
    assert dev.peak_gflops["fp32"] == pytest.approx(cpu.cores * host.detect_host().ghz * per_cycle, rel=1e-3)
    assert 1 <= cpu.cores <= len(os.sched_getaffinity(0))      # the CPUs this process may use (a quota caps them)
    assert dev.memory_gb > 0 and dev.memory_bandwidth_gbps > 0
    assert load_catalog()["local"] == dev
    assert not (CATALOG_DIR / "local.yaml").exists() and not (ROOT / "devices" / "calibration").exists()
    assert (fresh_cache / "host" / f"{cpu.key}.json").is_file()      # the measured parts are cached per host


def test_cpu_identity_and_peaks_of_other_machines():
    """Parsing another machine's /proc/cpuinfo gives its identity and the per-ISA peak (catalog figures agree)."""
    epyc = parse_cpu_identity(EPYC_CPUINFO, "x86_64", 2)
    assert epyc.model_name == "AMD EPYC 7601 32-Core Processor" and "avx2" in epyc.flags and "avx512f" not in epyc.flags
    peaks, note = peak_gflops(epyc, 2.2)
    assert peaks["fp32"] == pytest.approx(2 * 2.2 * 16) and "Zen/Zen+" in note   # 2 x 128-bit FMA pipes
    pi = parse_cpu_identity(RPI5_CPUINFO, "aarch64", 4)
    assert pi.arch == "aarch64" and pi.arm_part == 0xD0B and {"asimd", "asimddp", "asimdhp"} <= set(pi.flags)
    assert pi.model_name == "Cortex-A76"
    peaks, _ = peak_gflops(pi, 2.4)
    assert peaks["fp32"] == get_device("rpi5").peak_gflops["fp32"]                 # 4 x 2.4 GHz x 16
    assert peaks["int8"] == 4 * peaks["fp32"] and peaks["fp16"] == 2 * peaks["fp32"]
    spr = CpuIdentity("x86_64", "GenuineIntel", "Xeon", 6, 143, None, ("amx_int8", "avx512_vnni", "avx512f"), 1)
    peaks, _ = peak_gflops(spr, 2.0)
    assert peaks["fp32"] == 128.0 and peaks["int8"] == 2.0 * 2048
    assert epyc.key != pi.key != spr.key and epyc.key != host.cpu_identity().key


def test_stale_calibration_from_another_cpu_is_refused(other_cpu, tmp_path):
    """A calibration made on another CPU is not used: a --calibration file, or one found at this CPU's cache path,
    is refused with a warning naming the CPU it was made on; this CPU's own cache stays empty."""
    from dataclasses import replace

    made_here = replace(_calibration_here(), cpu_key=other_cpu.key, cpu=other_cpu.label)   # the real CPU's
    f = made_here.save(tmp_path / "from-elsewhere.json")
    # now on the "EPYC": the file belongs to the real CPU
    assert host.cpu_identity().model_name.startswith("AMD EPYC")
    with pytest.warns(calibstore.StaleCalibrationWarning, match=other_cpu.model_name.replace("(", r"\(").replace(")", r"\)")):
        assert calibstore.use_calibration_file(f) is None
    with pytest.warns(calibstore.StaleCalibrationWarning, match="not used"):
        cm = CostModel(Calibration.load(f))
    assert cm.calibration_for(get_device("local")) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CostModel().calibration_for(get_device("local")) is None    # nothing cached for the EPYC
    made_here.save(calibstore.local_calibration_path())                    # a copied cache with the wrong content
    with pytest.warns(calibstore.StaleCalibrationWarning, match="To fix: run `tierplan calibrate`"):
        assert CostModel().calibration_for(get_device("local")) is None


def test_calibration_of_this_cpu_is_used(fresh_cache, tmp_path):
    """A calibration stamped with this CPU is used, from the cache path keyed by the CPU or from --calibration."""
    cal = _calibration_here()
    path = cal.save(calibstore.local_calibration_path())
    assert path.parent == fresh_cache / "calibration" and path.stem == host.cpu_identity().key
    assert CostModel().calibration_for(get_device("local")) == cal
    other = calibstore.stamp(Calibration(device="local", ms_per_gflop={"Conv": 3.0}, ms_per_mb={}, op_overhead_us=2.0,
                                         run_overhead_us=9.0))
    assert calibstore.use_calibration_file(other.save(tmp_path / "mine.json")) == other
    assert CostModel().calibration_for(get_device("local")) == other      # --calibration wins over the cache


@pytest.mark.slow   # takes seconds: kept out of the fast lane (under 3 min); the full suite runs it
def test_first_use_calibrates_once_and_caches(fresh_cache, squeezenet):
    """With no calibration for this CPU, ensure_local_calibration measures (the pieces about to run among the
    samples, their own times kept), stamps the result with this CPU, caches it, and the next call reuses it."""
    from tierplan.devices.calibrate import ensure_local_calibration
    from tierplan.devices.pieces import piece_from_onnx

    piece = piece_from_onnx(squeezenet, "about-to-run/p0", model="about-to-run")
    cal = ensure_local_calibration([piece], progress=False, budget_s=0.0)
    assert cal.cpu_key == host.cpu_identity().key and {"about-to-run", "synthetic"} <= set(cal.models)
    assert calibstore.local_calibration_path().is_file()
    assert ensure_local_calibration([piece], progress=False, budget_s=0.0) == cal
    assert CostModel().calibration_for(get_device("local")) == cal
    # the file about to run is predicted here by its own measurement, other files by the fit
    measured = cal.piece_ms[calibstore.file_sha256(squeezenet)]
    assert CostModel().piece_ms(piece, get_device("local")) == measured > 0
    assert CostModel(False).piece_ms(piece, get_device("local")) != measured


@pytest.mark.slow   # takes seconds: kept out of the fast lane (under 3 min); the full suite runs it
def test_cli_refuses_stale_calibration_with_one_warning_line(tmp_path, squeezenet):
    """`tierplan estimate --device local --calibration F` with F from another CPU prints one `warning:` line naming
    that CPU and uses this CPU's own calibration from the cache instead; `tierplan calibrate` writes to the cache."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    env.pop("TIERPLAN_CACHE", None)
    mine = _calibration_here()
    mine.save(tmp_path / "cache" / "tierplan" / "calibration" / f"{host.cpu_identity().key}.json")
    stale = Calibration.from_dict({**mine.to_dict(), "cpu_key": "amd-epyc-7601-x86_64-2c-0badc0de",
                                   "cpu": "AMD EPYC 7601 32-Core Processor (x86_64, 2 cores, AVX2)"})
    stale.save(tmp_path / "stale.json")
    r = subprocess.run([sys.executable, "-m", "tierplan", "estimate", str(squeezenet), "--device", "local",
                        "--calibration", str(tmp_path / "stale.json"), "--json"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "AMD EPYC 7601" in lines[0] and "Traceback" not in r.stderr
    out = json.loads(r.stdout)
    assert out["calibrated"] is True and out["calibration_cpu"] == host.cpu_identity().label


def test_every_costing_verb_takes_a_calibration_file():
    """`estimate`, `plan`, `run` and `simulate` each accept `--calibration FILE`."""
    for verb in ("estimate", "plan", "run", "simulate"):
        r = subprocess.run([sys.executable, "-m", "tierplan", verb, "--help"], capture_output=True, text=True,
                           cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}, timeout=120)
        assert r.returncode == 0 and "--calibration" in r.stdout, verb


@pytest.mark.slow   # takes seconds: kept out of the fast lane
def test_cached_calibration_times_the_new_pieces_about_to_run(fresh_cache, squeezenet, tmp_path):
    """A calibration of this CPU made for other pieces is kept, and the pieces about to run that it has not
    timed are measured once and added to it: in the cache file, or only in this process for --calibration."""
    from tierplan.devices.calibrate import ensure_local_calibration
    from tierplan.devices.pieces import piece_from_onnx

    piece = piece_from_onnx(squeezenet, "new/p0", model="new")
    sha = calibstore.file_sha256(squeezenet)
    cal = _calibration_here()
    assert sha not in cal.piece_ms
    cal.save(calibstore.local_calibration_path())
    got = ensure_local_calibration([piece], progress=False)
    assert got.piece_ms[sha] > 0 and got.ms_per_gflop == cal.ms_per_gflop
    assert Calibration.load(calibstore.local_calibration_path()).piece_ms[sha] == got.piece_ms[sha]
    assert ensure_local_calibration([piece], progress=False) == got           # timed once
    # --calibration FILE: the user's file is not rewritten
    mine = tmp_path / "mine.json"
    cal.save(mine)
    before = mine.read_text()
    assert calibstore.use_calibration_file(mine) == cal
    over = ensure_local_calibration([piece], progress=False)
    assert over.piece_ms[sha] > 0 and mine.read_text() == before
    assert CostModel().calibration_for(get_device("local")) == over
    calibstore.clear_overrides()


def test_pieces_about_to_run_are_timed_one_after_another(squeezenet, tmp_path):
    """measure_in_sequence gives a CPU time for each piece onnxruntime can run, in the order given, and leaves
    out the ones it cannot load."""
    from dataclasses import replace

    from tierplan.devices.pieces import piece_from_onnx
    from tierplan.devices.profile import measure_in_sequence

    a = piece_from_onnx(squeezenet, "m/p0", model="m")
    b = replace(a, id="m/p1")
    gone = replace(a, id="m/gone", file=str(tmp_path / "missing.onnx"))
    got = measure_in_sequence([a, gone, b], runs=2, warmup=1)
    assert set(got) == {"m/p0", "m/p1"} and all(ms > 0 for ms in got.values())
    assert measure_in_sequence([gone]) == {}

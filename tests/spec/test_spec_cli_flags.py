"""Bad command-line flags exit 2 with one line naming the flag and ending in a fix, never a traceback."""

from __future__ import annotations

import pytest

from spec_paths import DATA


def _one_error_line(res, flag: str) -> str:
    """The single `error:` line of a run that refused `flag`."""
    assert res.exit_code == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: {flag} ") and "To fix: " in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "1e400", "0", "-5"])
def test_simulate_duration_must_be_finite_and_positive(cli, value):
    """`simulate --duration` refuses nan, inf and values <= 0 naming --duration."""
    res = cli("simulate", str(DATA / "app.yaml"), "--fleet", str(DATA / "fleet.yaml"), "--duration", value)
    _one_error_line(res, "--duration")


@pytest.mark.parametrize("value", ["nan", "inf", "-0.5", "1.5"])
def test_simulate_service_correlation_is_a_share(cli, value):
    """`simulate --service-correlation` refuses nan, inf and values outside [0, 1] naming the flag."""
    res = cli("simulate", str(DATA / "app.yaml"), "--fleet", str(DATA / "fleet.yaml"),
              "--service-correlation", value)
    _one_error_line(res, "--service-correlation")


@pytest.mark.parametrize("flag,value", [("--arrivals", "periodic:nan"), ("--arrivals", "burst:inf"),
                                        ("--link", "phones=nan"), ("--link", "phones=inf"), ("--link", "phones=4g~nan")])
def test_simulate_scenario_numbers_must_be_finite(cli, flag, value):
    """Numbers inside simulate's --arrivals and --link values refuse nan and inf, naming the flag."""
    res = cli("simulate", str(DATA / "app.yaml"), "--fleet", str(DATA / "fleet.yaml"), "--duration", "1", flag, value)
    _one_error_line(res, flag)


def test_partition_out_is_an_existing_file(cli, tmp_path):
    """`partition --out FILE` where FILE exists exits 2 naming --out, and leaves the file alone."""
    f = tmp_path / "taken"
    f.write_text("keep me")
    res = cli("partition", str(DATA / "det.onnx"), "--dims", "height=8,width=8", "--out", str(f))
    assert "existing file" in _one_error_line(res, "--out")
    assert f.read_text() == "keep me"


def test_partition_out_below_a_file(cli, tmp_path):
    """`partition --out FILE/sub` (a folder that cannot be created) exits 2 naming --out."""
    f = tmp_path / "taken"
    f.write_text("")
    res = cli("partition", str(DATA / "det.onnx"), "--dims", "height=8,width=8", "--out", str(f / "sub"))
    _one_error_line(res, "--out")


def test_simulate_report_is_an_existing_file(cli, tmp_path):
    """`simulate --report FILE` where FILE exists exits 2 naming --report, before simulating."""
    f = tmp_path / "taken"
    f.write_text("")
    res = cli("simulate", str(DATA / "app.yaml"), "--fleet", str(DATA / "fleet.yaml"), "--report", str(f))
    _one_error_line(res, "--report")


def test_plan_out_that_cannot_be_written(cli, tmp_path):
    """`plan --out` naming a folder exits 2 naming the path, and leaves no temporary file behind."""
    (tmp_path / "dir").mkdir()
    res = cli("plan", str(DATA / "app.yaml"), "--fleet", str(DATA / "fleet.yaml"), "--out", str(tmp_path / "dir"))
    assert res.exit_code == 2 and "Traceback" not in res.stderr, res.stderr
    assert "cannot write the plan" in res.stderr and "To fix: " in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]


def _bad_file(tmp_path, kind: str):
    """A path that is not a usable input: missing, a folder, empty, binary garbage, or a YAML list."""
    p = tmp_path / f"{kind}.yaml"
    if kind == "folder":
        p.mkdir()
    elif kind == "empty":
        p.write_text("")
    elif kind == "garbage":
        p.write_bytes(bytes(range(256)) * 8)
    elif kind == "list":
        p.write_text("- a\n- b\n")
    return p


COMMANDS = {
    "validate": lambda f: ["validate", f],
    "validate-fleet": lambda f: ["validate", str(DATA / "app.yaml"), "--fleet", f],
    "plan": lambda f: ["plan", f, "--fleet", str(DATA / "fleet.yaml")],
    "plan-fleet": lambda f: ["plan", str(DATA / "app.yaml"), "--fleet", f],
    "estimate": lambda f: ["estimate", f, "--device", "rpi5"],
    "simulate": lambda f: ["simulate", f, "--fleet", str(DATA / "fleet.yaml")],
    "simulate-fleet": lambda f: ["simulate", str(DATA / "app.yaml"), "--fleet", f],
    "simulate-profile": lambda f: ["simulate", str(DATA / "app.yaml"), "--fleet", str(DATA / "fleet.yaml"),
                                   "--duration", "1", "--profile", f],
    "partition": lambda f: ["partition", f, "--out", f + ".out"],
    "compile": lambda f: ["compile", f],
}


@pytest.mark.parametrize("kind", ["missing", "folder", "empty", "garbage", "list"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_unusable_input_files_exit_2_without_traceback(cli, tmp_path, command, kind):
    """Missing, folder, empty, binary or list-shaped input files exit 2 with an error naming the file."""
    f = _bad_file(tmp_path, kind)
    res = cli(*COMMANDS[command](str(f)))
    assert res.exit_code == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("error: ") and f.name in res.stderr, res.stderr


@pytest.mark.parametrize("args,flag", [
    (["plan", str(DATA / "app.yaml"), "--fleet", str(DATA / "fleet.yaml"), "--time-limit"], "--time-limit"),
    (["run", "read-text", "--duration"], "--duration"),
    (["run", "read-text", "--timeout"], "--timeout"),
    (["deploy", "plan.json", "--duration"], "--duration"),
    (["up", "plan.json", "--duration"], "--duration"),
    (["agent", "--site", "phone", "--cache-max-mb"], "--cache-max-mb"),
])
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_float_flags_refuse_nan_inf_and_negatives(cli, args, flag, value):
    """Every float flag of plan, run, deploy, up and agent refuses nan, inf and negatives in one line naming it."""
    _one_error_line(cli(*args, value), flag)

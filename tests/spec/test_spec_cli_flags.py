"""Bad command-line flags exit 2 with one line naming the flag and ending in a fix, never a traceback."""

from __future__ import annotations

import pytest

from conftest import DATA


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

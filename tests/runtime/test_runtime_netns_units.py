"""Unit rules of runtime.netns that need no namespaces: tbf arguments, header allowance, probe command lines."""

from __future__ import annotations

import sys

import pytest

from tierplan.runtime.links import PACKET_PAYLOAD_BYTES
from tierplan.runtime.netns import FRAME_HEADER_BYTES, TBF_MIN_BURST_BYTES, probe_argv, tbf_args, wire_rate_mbps
from tierplan.errors import InputError


def test_tbf_arguments_carry_the_rate_in_bits_and_a_bucket_of_at_least_the_minimum():
    """tbf gets the rate in bit/s, a burst never below TBF_MIN_BURST_BYTES and growing with the rate."""
    slow, fast = tbf_args(20.0), tbf_args(10_000.0)
    assert slow[:3] == ["tbf", "rate", "20000000bit"]
    assert int(slow[slow.index("burst") + 1]) == TBF_MIN_BURST_BYTES
    assert int(fast[fast.index("burst") + 1]) > TBF_MIN_BURST_BYTES
    assert "latency" in slow


def test_a_rate_of_zero_is_refused_with_the_fix():
    """A non-positive tbf rate raises InputError saying what to pass."""
    with pytest.raises(InputError, match="To fix"):
        tbf_args(0.0)


def test_wire_rate_adds_the_frame_headers_tbf_counts():
    """The tbf rate for a declared payload rate is scaled by (payload + headers) / payload per full segment."""
    assert wire_rate_mbps(20.0) == pytest.approx(20.0 * (PACKET_PAYLOAD_BYTES + FRAME_HEADER_BYTES) / PACKET_PAYLOAD_BYTES)
    assert 1.04 < wire_rate_mbps(1.0) < 1.05


def test_probe_runs_this_module_with_the_running_interpreter():
    """The probe command line is `python -m tierplan.runtime.netns ...` with sys.executable."""
    assert probe_argv("serve", "--listen", "10.0.0.2:0") == [sys.executable, "-m", "tierplan.runtime.netns", "serve",
                                                             "--listen", "10.0.0.2:0"]

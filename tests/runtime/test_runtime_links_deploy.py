"""A deployed plan's cross-site transfers show the fleet's declared jitter (route table -> workers -> real sends)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tierplan.runtime.deploy import deploy
from tierplan.runtime.handplan import chain_plan
from tierplan.spec import FleetSpec

pytestmark = pytest.mark.integration

RTT_MS, JITTER_MS = 40.0, 6.0
RADIO_MBPS = 20_000.0          # fast, so the 1.55 MB tensor's wire time (0.6 ms) hides no jitter
N_REQUESTS = 40
OVERHEAD_MS = 8.0              # a 1.55 MB hop between two processes on the busy 2-core machine, at most
IQR_PER_STD = 1.349            # interquartile range of a normal distribution, in standard deviations
TRIM_SHARE = 0.05              # share of the lowest and of the highest transfers left out of the mean


def _jittery_fleet() -> FleetSpec:
    return FleetSpec.model_validate({
        "sites": {"phone": {"tier": "edge", "device": "pixel-8", "attach": "bs", "link": "radio"},
                  "bs": {"tier": "base_station", "device": "mec-t4", "attach": "cloud", "link": "backhaul"},
                  "cloud": {"tier": "cloud", "device": "aws-g5-xlarge"}},
        "links": {"radio": {"uplink_mbps": RADIO_MBPS, "downlink_mbps": RADIO_MBPS, "rtt_ms": RTT_MS,
                            "jitter_ms": JITTER_MS},
                  "backhaul": {"uplink_mbps": 2000, "downlink_mbps": 2000, "rtt_ms": 2}}})


def test_deployed_radio_link_has_the_declared_delay_and_jitter(ray_cluster, sq_files, sq_input):
    """40 requests through phone -> bs -> cloud: the phone->bs transfer's mean is RTT/2 and its spread the declared
    jitter; the processes share the emulated links through one directory, removed at teardown."""
    fleet = _jittery_fleet()
    plan = chain_plan(sq_files, ["phone", "bs", "cloud"], "phone", fleet=fleet)
    radio, backhaul = [], []
    with deploy(plan, cluster=ray_cluster, request_timeout_s=10.0) as svc:
        svc.predict(sq_input)                           # warm-up: connections, runners
        for _ in range(N_REQUESTS):
            _, trace = svc.predict_traced(sq_input)
            steps = {name: ms for _, name, ms in trace.steps}
            radio.append(steps["phone->bs"])
            backhaul.append(steps["bs->cloud"])
        shared = Path(svc.options.links_shared_dir)  # one link budget for every process of the deployment
        assert shared.is_dir() and any(shared.iterdir())
    assert not shared.exists()                          # removed at teardown
    radio, backhaul = np.array(radio), np.array(backhaul)
    wire_ms = 1_548_800 * 8 / (RADIO_MBPS * 1e6) * 1e3
    se_mean = JITTER_MS / np.sqrt(N_REQUESTS)
    k = int(N_REQUESTS * TRIM_SHARE)          # robust to a few scheduling hiccups on the shared machine
    mean = float(np.sort(radio)[k:N_REQUESTS - k].mean())
    assert RTT_MS / 2 + wire_ms - 3 * se_mean < mean < RTT_MS / 2 + wire_ms + 3 * se_mean + OVERHEAD_MS, mean
    q25, q75 = np.percentile(radio, [25, 75])
    assert (q75 - q25) / IQR_PER_STD == pytest.approx(JITTER_MS, rel=0.35)
    # the backhaul declares no jitter: its spread is only the machine's noise, far below the radio's
    b25, b75 = np.percentile(backhaul, [25, 75])
    assert (b75 - b25) < 0.5 * (q75 - q25)

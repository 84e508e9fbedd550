"""Mutual TLS plus a token between sites: certificates from `tierplan certs`, refusals of bad peers."""

from __future__ import annotations

import grpc
import pytest

from runtime.proto import runtime_pb2 as pb
from runtime.proto import runtime_pb2_grpc as pbg
from runtime.security import CONTROLLER, TARGET_NAME, TlsConfig, channel, make_certs
from runtime.stage import StageWorker
from runtime.wire import GRPC_OPTIONS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """Two independent CAs: the deployment's, and a stranger's."""
    good = tmp_path_factory.mktemp("certs")
    other = tmp_path_factory.mktemp("other")
    make_certs(good, ["phone", "cloud"])
    make_certs(other, ["phone", "cloud"])
    return good, other


@pytest.fixture(scope="module")
def worker(certs):
    w = StageWorker("cloud", "127.0.0.1:0", tls=TlsConfig.from_dir(certs[0], "cloud"))
    w.start()
    yield w
    w.stop()


def _health(address: str, ch: grpc.Channel) -> pb.HealthReply:
    try:
        return pbg.StageStub(ch).Health(pb.HealthRequest(), timeout=5)
    finally:
        ch.close()


def test_certs_writes_ca_site_and_controller_material(certs):
    """`make_certs` writes the CA, a key pair per site plus the controller's, and a token."""
    names = {p.name for p in certs[0].iterdir()}
    assert {"ca.pem", "ca.key", "phone.pem", "phone.key", "cloud.pem", "cloud.key", f"{CONTROLLER}.pem",
            f"{CONTROLLER}.key", "token"} <= names
    assert (certs[0] / "phone.key").stat().st_mode & 0o077 == 0


def test_peer_with_valid_certificate_and_token_is_served(worker, certs):
    """A peer holding a CA-signed certificate and the token gets answers."""
    tls = TlsConfig.from_dir(certs[0], "phone")
    assert _health(worker.address, channel(worker.address, tls, GRPC_OPTIONS)).site == "cloud"


def test_peer_without_certificate_is_refused(worker, certs):
    """A client that trusts the CA but shows no certificate of its own cannot call the site."""
    tls = TlsConfig.from_dir(certs[0], "phone")
    creds = grpc.ssl_channel_credentials(root_certificates=tls.ca_pem)
    ch = grpc.secure_channel(worker.address, creds, options=[*GRPC_OPTIONS, ("grpc.ssl_target_name_override", TARGET_NAME)])
    with pytest.raises(grpc.RpcError) as e:
        _health(worker.address, ch)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_peer_with_certificate_from_another_ca_is_refused(worker, certs):
    """A certificate signed by a different CA is rejected in the TLS handshake."""
    stranger = TlsConfig.from_dir(certs[1], "phone")
    mixed = TlsConfig(ca_pem=TlsConfig.from_dir(certs[0], "phone").ca_pem, cert_pem=stranger.cert_pem,
                      key_pem=stranger.key_pem, token=stranger.token)
    with pytest.raises(grpc.RpcError) as e:
        _health(worker.address, channel(worker.address, mixed, GRPC_OPTIONS))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_peer_with_valid_certificate_but_wrong_token_is_refused(worker, certs):
    """A valid certificate is not enough: the site token must match too."""
    good = TlsConfig.from_dir(certs[0], "phone")
    wrong = TlsConfig(good.ca_pem, good.cert_pem, good.key_pem, token="not-the-token")
    with pytest.raises(grpc.RpcError) as e:
        _health(worker.address, channel(worker.address, wrong, GRPC_OPTIONS))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_plaintext_peer_is_refused(worker):
    """A peer speaking plaintext gRPC to a TLS site gets no answer."""
    with pytest.raises(grpc.RpcError):
        _health(worker.address, grpc.insecure_channel(worker.address))


def test_deployment_with_mutual_tls_serves_end_to_end(ray_cluster, sq_files, sq_input, sq_reference, certs):
    """With --tls-dir every hop (controller, agent, Ray actor) uses mutual TLS + token and results still match."""
    import numpy as np

    from rt_helpers import three_tier_fleet
    from runtime.deploy import deploy
    from runtime.handplan import chain_plan
    fleet = three_tier_fleet()
    plan = chain_plan(sq_files, ["phone", "phone", "cloud"], "phone", fleet=fleet)
    with deploy(plan, fleet=fleet, cluster=ray_cluster, tls_dir=certs[0], request_timeout_s=10) as svc:
        out = svc.predict(sq_input)
        address = svc.health()["cloud"]["address"]
    np.testing.assert_allclose(out["output"]["softmaxout_1"], sq_reference, rtol=1e-5, atol=1e-6)
    assert address  # the cloud worker listened (behind TLS) while serving

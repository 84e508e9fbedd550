"""Mutual TLS plus a token between sites: certificates from `tierplan certs`, refusals of bad peers."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from tierplan.runtime.proto import runtime_pb2 as pb
from tierplan.runtime.proto import runtime_pb2_grpc as pbg
from tierplan.runtime.security import CA_DIR, CONTROLLER, TARGET_NAME, TlsConfig, channel, make_certs
from tierplan.runtime.stage import StageWorker
from tierplan.runtime.wire import GRPC_OPTIONS
from tierplan.errors import InputError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TEST_TRANSFORMS = "tests.runtime.rt_fanout_transforms"


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


def test_certs_writes_one_bundle_per_site_and_keeps_the_ca_key_apart(certs):
    """`make_certs` writes ca/ (ca.pem, ca.key) for the operator and, per site and the controller, a
    bundle of ca.pem, its key pair and the token, without ca.key; every key and token is 0600."""
    out = certs[0]
    assert {p.name for p in (out / CA_DIR).iterdir()} >= {"ca.pem", "ca.key", "token"}
    for name in ("phone", "cloud", CONTROLLER):
        assert {p.name for p in (out / name).iterdir()} == {"ca.pem", f"{name}.pem", f"{name}.key", "token"}
        assert (out / name / "ca.pem").read_bytes() == (out / CA_DIR / "ca.pem").read_bytes()
    secrets = [f for f in out.rglob("*") if f.is_file() and (f.suffix == ".key" or f.name == "token")]
    assert len(secrets) == 1 + 1 + 2 * 3   # ca.key, ca/token, and a key and a token per bundle
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in secrets), [(f, oct(f.stat().st_mode)) for f in secrets]
    assert [f.parent.name for f in out.rglob("ca.key")] == [CA_DIR]


def test_a_site_bundle_folder_alone_is_enough(certs, tmp_path):
    """The folder copied to a host (one bundle) loads on its own, the same as through the --out folder."""
    import shutil
    copy = tmp_path / "phone"
    shutil.copytree(certs[0] / "phone", copy)
    assert TlsConfig.from_dir(copy, "phone") == TlsConfig.from_dir(certs[0], "phone")


def test_a_key_others_can_read_is_refused(certs, tmp_path):
    """A key or token readable by group or others is refused, naming the file and the chmod to run."""
    import shutil
    copy = tmp_path / "phone"
    shutil.copytree(certs[0] / "phone", copy)
    (copy / "phone.key").chmod(0o644)
    with pytest.raises(InputError, match=r"phone\.key: permissions 0644 are too open.*chmod 600"):
        TlsConfig.from_dir(copy, "phone")


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
    from tierplan.runtime.deploy import deploy
    from tierplan.runtime.handplan import chain_plan
    fleet = three_tier_fleet()
    plan = chain_plan(sq_files, ["phone", "phone", "cloud"], "phone", fleet=fleet)
    with deploy(plan, cluster=ray_cluster, tls_dir=certs[0], request_timeout_s=10) as svc:
        out = svc.predict(sq_input)
        address = svc.health()["cloud"]["address"]
    np.testing.assert_allclose(out["output"]["softmaxout_1"], sq_reference, rtol=1e-5, atol=1e-6)
    assert address  # the cloud worker listened (behind TLS) while serving


# ---------------------------------------------------------------------------- hostile Configure messages
def _relu_onnx() -> bytes:
    import onnx
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _plan_json(transform: str | None = None) -> str:
    """x (phone) -> relu (phone) [-> t (phone), a transform] -> sink on phone."""
    from tierplan.planner.plan import Plan, PlanEdge, PlanPiece
    row = [{"name": "x", "shape": [1, 4], "dtype": "float32", "nbytes": 16}]
    pieces = [PlanPiece(id="x", kind="source"), PlanPiece(id="relu", kind="piece", file="relu.onnx", inputs=row)]
    edges = [PlanEdge(src="x", dst="relu", nbytes=16, tensors=["x"])]
    last = "relu"
    if transform:
        pieces.append(PlanPiece(id="t", kind="transform", function=transform))
        edges.append(PlanEdge(src="relu", dst="t", nbytes=16, tensors=["y"]))
        last = "t"
    pieces.append(PlanPiece(id="sink:out", kind="sink"))
    edges.append(PlanEdge(src=last, dst="sink:out", nbytes=16))
    assignment = {p.id: "phone" for p in pieces}
    return Plan(status="feasible", assignment=assignment, pieces=pieces, edges=edges).model_dump_json()


def _configure(address: str, files: list[pb.PieceFile], transform: str | None = None, options: str = "",
               tls: TlsConfig | None = None, site: str = "phone") -> pb.Ack:
    ch = channel(address, tls, GRPC_OPTIONS)
    try:
        return pbg.StageStub(ch).Configure(pb.ConfigureRequest(
            site=site, plan_json=_plan_json(transform), generation=1, files=files, options_json=options), timeout=30)
    finally:
        ch.close()


def _piece(data: bytes | None = None, filename: str = "relu.onnx", **entry) -> pb.PieceFile:
    data = _relu_onnx() if data is None else data
    return pb.PieceFile(node="relu", data=data, filename=filename,
                        manifest_entry_json=json.dumps({"piece": "relu", "backend": "onnxruntime", **entry}))


@pytest.fixture()
def plain_worker(tmp_path):
    """A plaintext worker on loopback with its cache in tmp_path/cache (and tmp_path/outside next to it)."""
    (tmp_path / "outside").mkdir()
    w = StageWorker("phone", "127.0.0.1:0", cache_dir=str(tmp_path / "cache"))
    w.start()
    yield w, tmp_path
    w.stop()


def _written(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", ["/ABS/evil.onnx", "../../outside/evil.onnx", "../evil.onnx", "a/../../b/evil.onnx"])
def test_piece_file_names_from_the_wire_cannot_leave_the_cache(plain_worker, name):
    """An absolute or ../ file name is not used: the piece lands in the cache as <sha256>.onnx and nowhere else."""
    w, tmp = plain_worker
    name = name.replace("/ABS", str(tmp / "outside"))
    ack = _configure(w.address, [_piece(filename=name)])
    assert ack.ok, ack.error
    assert _written(tmp / "outside") == [] and not (tmp / "evil.onnx").exists()
    digest = hashlib.sha256(_relu_onnx()).hexdigest()
    assert [p.name for p in _written(tmp / "cache")] == [f"{digest}.onnx"]
    assert (tmp / "cache" / f"{digest}.onnx").stat().st_mode & 0o777 == 0o600


def test_paths_in_the_manifest_entry_are_never_read(plain_worker):
    """`file`/`path`/`host_file` in a peer's entry are ignored: the worker loads only the bytes it wrote itself,
    and a piece sent without bytes is refused rather than read from a path."""
    w, tmp = plain_worker
    decoy = tmp / "outside" / "decoy.onnx"
    decoy.write_bytes(b"not a model: loading this would fail")
    ack = _configure(w.address, [_piece(file=str(decoy), path=str(decoy), host_file=str(decoy), rel_file="../x")])
    assert ack.ok, ack.error
    ack = _configure(w.address, [pb.PieceFile(node="relu", filename="relu.onnx",
                                              manifest_entry_json=json.dumps({"file": str(decoy)}))])
    assert not ack.ok and "carried no file" in ack.error


def test_a_file_type_outside_the_backends_allowlist_is_refused(plain_worker):
    """A .pth (or any suffix the backend does not load) is refused and nothing is written."""
    w, tmp = plain_worker
    ack = _configure(w.address, [_piece(filename="sitecustomize.pth")])
    assert not ack.ok and "'.pth'" in ack.error and "To fix" in ack.error
    ack = _configure(w.address, [_piece(backend="pickle")])
    assert not ack.ok and "'pickle'" in ack.error
    assert _written(tmp / "cache") == []


def test_bytes_that_do_not_match_the_manifests_sha256_are_refused(plain_worker):
    """The entry's sha256 must be the data's: a mismatch is refused and nothing is written."""
    w, tmp = plain_worker
    ack = _configure(w.address, [_piece(sha256="0" * 64)])
    assert not ack.ok and "sha256" in ack.error
    assert _written(tmp / "cache") == []
    good = hashlib.sha256(_relu_onnx()).hexdigest()
    assert _configure(w.address, [_piece(sha256=good)]).ok


def test_oversize_piece_files_and_a_full_cache_are_refused(plain_worker):
    """A file over the per-file limit, or one that would take the cache over its limit, gets a clear refusal."""
    w, tmp = plain_worker
    n = len(_relu_onnx())
    w._cache.file_limit_bytes = n - 1
    ack = _configure(w.address, [_piece()])
    assert not ack.ok and "over the limit" in ack.error and "per piece file" in ack.error
    w._cache.file_limit_bytes = n
    w._cache.limit_bytes = n - 1
    ack = _configure(w.address, [_piece()])
    assert not ack.ok and "cache over its limit" in ack.error
    assert _written(tmp / "cache") == []


def test_a_message_over_grpcs_limit_is_refused_by_status(plain_worker, monkeypatch):
    """A Configure bigger than the receive limit ends in RESOURCE_EXHAUSTED, not in a write."""
    from tierplan.runtime.wire import MAX_MESSAGE_BYTES
    w, tmp = plain_worker
    ch = grpc.insecure_channel(w.address, options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES + (2 << 20))])
    try:
        with pytest.raises(grpc.RpcError) as e:
            pbg.StageStub(ch).Configure(pb.ConfigureRequest(
                site="phone", plan_json=_plan_json(), files=[_piece(data=bytes(MAX_MESSAGE_BYTES + (1 << 20)))]),
                timeout=60)
    finally:
        ch.close()
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _written(tmp / "cache") == []


def test_a_transform_from_a_module_the_operator_did_not_allow_is_refused(plain_worker):
    """A plan naming `os:system`, or a test module the operator did not allow, is refused with the transform's name;
    options sent with Configure cannot widen the list."""
    w, _ = plain_worker
    ack = _configure(w.address, [_piece()], transform="os:system")
    assert not ack.ok and "transform t ('os:system')" in ack.error and "--allow-transforms" in ack.error
    ack = _configure(w.address, [_piece()], transform=f"{TEST_TRANSFORMS}:add_row_sum",
                     options=json.dumps({"allow_transforms": [TEST_TRANSFORMS]}))
    assert not ack.ok and f"transform t ('{TEST_TRANSFORMS}:add_row_sum')" in ack.error
    ack = _configure(w.address, [_piece()], transform="tierplan.transforms:cv2")   # imported, not defined there
    assert not ack.ok and "no public function 'cv2'" in ack.error


def test_an_allowed_transform_module_works(tmp_path):
    """With the module in the operator's list (the worker's constructor, as `--allow-transforms` sets it) the
    transform loads and runs."""
    import numpy as np
    w = StageWorker("phone", "127.0.0.1:0", cache_dir=str(tmp_path / "cache"),
                    allow_transforms=("tierplan.transforms", TEST_TRANSFORMS))
    w.start()
    try:
        ack = _configure(w.address, [_piece()], transform=f"{TEST_TRANSFORMS}:split_rows")
        assert ack.ok, ack.error
        out = w._cfg.transforms["t"]({"x": np.ones((2, 4), np.float32)})
        assert len(out) == 2
    finally:
        w.stop()


def test_options_and_site_from_the_wire_are_checked(plain_worker):
    """Peer options outside their bounds, an unmarked shared link folder, or another site's name are refused."""
    w, tmp = plain_worker
    ack = _configure(w.address, [_piece()], options=json.dumps({"compute_threads": 10_000}))
    assert not ack.ok and "compute_threads" in ack.error
    ack = _configure(w.address, [_piece()], options=json.dumps({"links_shared_dir": str(tmp / "outside")}))
    assert not ack.ok and "links_shared_dir" in ack.error
    assert _written(tmp / "outside") == []
    ack = _configure(w.address, [_piece()], site="cloud")
    assert not ack.ok and "serves site 'phone'" in ack.error


def test_only_the_controller_certificate_may_configure_a_site(certs):
    """With TLS, Configure from a site's certificate is PERMISSION_DENIED; the controller's is served."""
    w = StageWorker("phone", "127.0.0.1:0", tls=TlsConfig.from_dir(certs[0], "phone"))
    w.start()
    try:
        with pytest.raises(grpc.RpcError) as e:
            _configure(w.address, [_piece()], tls=TlsConfig.from_dir(certs[0], "cloud"))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert _configure(w.address, [_piece()], tls=TlsConfig.from_dir(certs[0], CONTROLLER)).ok
    finally:
        w.stop()


def test_a_site_registers_only_with_its_own_certificate(certs):
    """With TLS the controller takes a site's Register only from that site's certificate."""
    from tierplan.planner.plan import Plan
    from tierplan.runtime.service import Service
    phone = StageWorker("phone", "127.0.0.1:0", tls=TlsConfig.from_dir(certs[0], "phone"))
    phone.start()
    svc = Service(Plan.model_validate_json(_plan_json()), tls=TlsConfig.from_dir(certs[0], CONTROLLER))
    try:
        svc.start_controller()

        def register(as_site: str) -> pb.Ack:
            ch = channel(svc.address, TlsConfig.from_dir(certs[0], as_site), GRPC_OPTIONS)
            try:
                return pbg.ControlStub(ch).Register(pb.RegisterRequest(site="phone", address=phone.address,
                                                                       pid=os.getpid()), timeout=10)
            finally:
                ch.close()
        with pytest.raises(grpc.RpcError) as e:
            register("cloud")
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and svc.sites["phone"].address == ""
        assert register("phone").ok and svc.sites["phone"].address == phone.address
    finally:
        svc.close()
        phone.stop()


# ---------------------------------------------------------------------------- listening: secure defaults
def _tierplan(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tierplan", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))


def _one_error_line(res: subprocess.CompletedProcess, *words: str) -> None:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("error: ") and "To fix:" in lines[0] and all(w in lines[0] for w in words), lines


def test_agent_beyond_loopback_without_tls_exits_2():
    """`tierplan agent --listen 0.0.0.0:PORT` without --tls-dir or --insecure exits 2 naming --listen."""
    _one_error_line(_tierplan("agent", "--site", "phone", "--listen", "0.0.0.0:0"), "--listen", "--tls-dir")


def test_agent_beyond_loopback_with_insecure_warns_and_serves():
    """With --insecure the agent serves on 0.0.0.0 and prints a one-line warning first."""
    proc = subprocess.Popen([sys.executable, "-m", "tierplan", "agent", "--site", "phone", "--listen", "0.0.0.0:0",
                             "--insecure"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert proc.stdout.readline().startswith("READY 0.0.0.0:")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "--listen 0.0.0.0:0" in warnings[0] and "--insecure" in warnings[0], err


@pytest.mark.parametrize("where", ["203.0.113.5:7001", "in-use"])
def test_agent_on_an_address_it_cannot_bind_exits_2(where):
    """An address this host does not have, or a port in use, is one error line naming --listen (exit 2)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        listen = where if where != "in-use" else f"127.0.0.1:{s.getsockname()[1]}"
        _one_error_line(_tierplan("agent", "--site", "phone", "--listen", listen), "--listen", listen)


def test_deploy_front_door_beyond_loopback_without_tls_exits_2(tmp_path):
    """`tierplan deploy --listen 0.0.0.0:PORT` without --tls-dir or --insecure exits 2 before starting anything."""
    from tierplan.planner.plan import Plan
    from tierplan.runtime.handplan import with_fleet
    from rt_helpers import three_tier_fleet
    with_fleet(Plan.model_validate_json(_plan_json()), three_tier_fleet()).save(tmp_path / "plan.json")
    _one_error_line(_tierplan("deploy", str(tmp_path / "plan.json"), "--listen", "0.0.0.0:0"), "--listen")


def test_deploy_refuses_a_plan_transform_it_does_not_allow(tmp_path):
    """`tierplan deploy` names a transform from a module not allowed before any site starts (exit 2)."""
    from tierplan.planner.plan import Plan
    from tierplan.runtime.handplan import with_fleet
    from rt_helpers import three_tier_fleet
    with_fleet(Plan.model_validate_json(_plan_json("os:system")), three_tier_fleet()).save(tmp_path / "plan.json")
    _one_error_line(_tierplan("deploy", str(tmp_path / "plan.json")), "transform t", "os:system")


def test_certs_command_names_the_bundles_and_keeps_ca_key_out_of_them(tmp_path):
    """`tierplan certs --json` lists ca/ and one bundle per site plus the controller's; no bundle holds ca.key."""
    res = _tierplan("certs", "--out", str(tmp_path / "c"), "--sites", "phone,cloud", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert set(info["bundles"]) == {"phone", "cloud", CONTROLLER} and info["ca"] == str(tmp_path / "c" / CA_DIR)
    for folder in info["bundles"].values():
        assert not (Path(folder) / "ca.key").exists() and (Path(folder) / "token").stat().st_mode & 0o077 == 0


def test_a_bad_allow_transforms_flag_exits_2():
    """`--allow-transforms` takes module names only; anything else is one error line naming the flag."""
    _one_error_line(_tierplan("agent", "--site", "phone", "--allow-transforms", "os;rm -rf /"), "--allow-transforms")


def test_files_of_pieces_no_longer_used_make_room_in_a_full_cache(plain_worker):
    """After a reconfiguration, the file of a piece the plan no longer uses is evicted when a new one needs room."""
    w, tmp = plain_worker
    first = _relu_onnx()
    assert _configure(w.address, [_piece(first)]).ok
    import onnx
    m = onnx.load_from_string(first)
    m.doc_string = "another model"
    second = m.SerializeToString()
    w._cache.limit_bytes = len(first) + len(second) - 1     # both do not fit
    assert _configure(w.address, [_piece(second)]).ok
    assert [p.name for p in _written(tmp / "cache")] == [f"{hashlib.sha256(second).hexdigest()}.onnx"]

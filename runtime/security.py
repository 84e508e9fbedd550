"""Mutual TLS and a shared token between sites: certificate generation, gRPC credentials, checks.

`make_certs(out_dir, sites)` writes a CA (`ca.pem`, `ca.key`), one key pair per site
(`<site>.pem`, `<site>.key`, signed by the CA, valid for DNS `<site>`, `localhost`, `tierplan`
and IP 127.0.0.1 plus any extra hosts) and a random `token`. A server demands a client
certificate signed by the CA (mutual TLS) and the token in the `authorization` header; peers
verify the server certificate against the CA with the name `tierplan` (every site certificate
carries it, so one CA-signed name check works for addresses that are bare IPs).
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc

from tierplan.errors import InputError

__all__ = ["TlsConfig", "make_certs", "server_credentials", "channel", "TokenInterceptor",
           "CONTROLLER", "TARGET_NAME"]

CONTROLLER = "controller"      # the deploying process's own certificate name
TARGET_NAME = "tierplan"       # name every site certificate carries; peers check it
_VALID_DAYS = 365


@dataclass(frozen=True)
class TlsConfig:
    """One site's view of the security material: CA, its own key pair, the shared token."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    token: str

    @classmethod
    def from_dir(cls, cert_dir: str | Path, site: str) -> "TlsConfig":
        """Load `<dir>/ca.pem`, `<dir>/<site>.pem|.key` and `<dir>/token`."""
        d = Path(cert_dir)
        files = [d / "ca.pem", d / f"{site}.pem", d / f"{site}.key", d / "token"]
        for f in files:
            if not f.is_file():
                raise InputError(f"{f}: missing. To fix: tierplan certs --out {d} --sites {site},...")
        return cls(files[0].read_bytes(), files[1].read_bytes(), files[2].read_bytes(),
                   files[3].read_text().strip())


def _hosts(site: str, extra: list[str]) -> list[str]:
    return list(dict.fromkeys([site, "localhost", TARGET_NAME, "127.0.0.1", *extra]))


def _make_with_cryptography(out: Path, sites: list[str], extra_hosts: list[str]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    until = now + datetime.timedelta(days=_VALID_DAYS)

    def pem_key(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tierplan CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (out / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (out / "ca.key").write_bytes(pem_key(ca_key))
    for site in sites:
        key = ec.generate_private_key(ec.SECP256R1())
        names = []
        for h in _hosts(site, extra_hosts):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                names.append(x509.DNSName(h))
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, site)]))
                .issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(until)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(ca_key, hashes.SHA256()))
        (out / f"{site}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (out / f"{site}.key").write_bytes(pem_key(key))


def _make_with_openssl(out: Path, sites: list[str], extra_hosts: list[str]) -> None:
    if shutil.which("openssl") is None:
        raise InputError("tierplan certs: needs the `cryptography` package or the openssl CLI. "
                         "To fix: pip install cryptography")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=out)

    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
    run("req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", str(_VALID_DAYS),
        "-subj", "/CN=tierplan CA", "-out", "ca.pem")
    for site in sites:
        san = ",".join(("IP:" if h.replace(".", "").isdigit() else "DNS:") + h
                       for h in _hosts(site, extra_hosts))
        (out / f"{site}.ext").write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n")
        run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{site}.key")
        run("req", "-new", "-key", f"{site}.key", "-subj", f"/CN={site}", "-out", f"{site}.csr")
        run("x509", "-req", "-in", f"{site}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", str(_VALID_DAYS), "-sha256", "-extfile", f"{site}.ext",
            "-out", f"{site}.pem")
        (out / f"{site}.csr").unlink()
        (out / f"{site}.ext").unlink()


def make_certs(out_dir: str | Path, sites: list[str], extra_hosts: list[str] | None = None) -> list[Path]:
    """Write a CA, per-site certificates (plus the controller's) and a token; returns the files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys([*sites, CONTROLLER]))
    try:
        import cryptography  # noqa: F401
        _make_with_cryptography(out, names, list(extra_hosts or []))
    except ImportError:
        _make_with_openssl(out, names, list(extra_hosts or []))
    (out / "token").write_text(secrets.token_hex(24) + "\n")
    for f in out.glob("*.key"):
        f.chmod(0o600)
    return sorted(out.iterdir())


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call whose `authorization` header is not `Bearer <token>`."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}"

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "tierplan: missing or wrong site token")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.stream_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        meta = dict(handler_call_details.invocation_metadata or ())
        if secrets.compare_digest(meta.get("authorization", ""), self._expected):
            return continuation(handler_call_details)
        streaming = handler_call_details.method.endswith("/Deliver")   # Stage, Control and the raw variants
        return self._deny_stream if streaming else self._deny_unary


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """Server side of mutual TLS: present the site's certificate, demand a CA-signed client one."""
    return grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)], root_certificates=tls.ca_pem,
                                       require_client_auth=True)


def channel(address: str, tls: TlsConfig | None, options: list[tuple]) -> grpc.Channel:
    """A channel to a peer: plain on loopback without TLS, else mutual TLS plus the token."""
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=tls.ca_pem, private_key=tls.key_pem,
                                     certificate_chain=tls.cert_pem),
        grpc.access_token_call_credentials(tls.token))
    return grpc.secure_channel(address, creds,
                               options=[*options, ("grpc.ssl_target_name_override", TARGET_NAME)])

"""Mutual TLS and a shared token between sites: certificate bundles, gRPC credentials, checks.

`make_certs(out_dir, sites)` writes the operator's CA into `out_dir/ca/` (`ca.pem`, `ca.key`: the
CA key never leaves the operator) and one bundle folder per site and for the controller,
`out_dir/<name>/` with `ca.pem`, `<name>.pem`, `<name>.key` (signed by the CA, valid for DNS
`<name>`, `localhost`, `tierplan` and IP 127.0.0.1 plus any extra hosts) and the random `token`.
Every key and the token are written 0600, folders 0700. A host gets only its own bundle.

A server demands a client certificate signed by the CA (mutual TLS) and the token in the
`authorization` header; peers verify the server certificate against the CA with the name
`tierplan` (every certificate carries it, so one CA-signed name check works for bare IPs).
`peer_name` reads the common name of the caller's certificate: a site accepts `Configure` from
the controller's certificate only, and the controller accepts a site's `Register` from that
site's certificate only. `check_listen` enforces that only loopback listens without TLS unless
the operator says `--insecure`.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc

from tierplan.runtime.shm import is_loopback_address
from tierplan.errors import InputError

__all__ = ["TlsConfig", "make_certs", "server_credentials", "channel", "TokenInterceptor", "peer_name",
           "check_listen", "CONTROLLER", "TARGET_NAME", "CA_DIR"]

CONTROLLER = "controller"      # the deploying process's own certificate name
TARGET_NAME = "tierplan"       # name every site certificate carries; peers check it
CA_DIR = "ca"                  # the operator's folder under `tierplan certs --out`: ca.pem + ca.key
_RESERVED = {CA_DIR, TARGET_NAME}
_VALID_DAYS = 365
log = logging.getLogger("tierplan.runtime")


def _private(path: Path) -> None:
    """Refuse a key or token that others may read (as ssh does)."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise InputError(f"{path}: permissions {mode:04o} are too open for a secret. To fix: chmod 600 {path}")


@dataclass(frozen=True)
class TlsConfig:
    """One site's view of the security material: CA, its own key pair, the shared token."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    token: str

    @classmethod
    def from_dir(cls, cert_dir: str | Path, site: str) -> "TlsConfig":
        """Load `ca.pem`, `<site>.pem|.key` and `token` from the site's bundle: `cert_dir` itself
        when it holds them (the folder copied to the site's host), else `cert_dir/<site>/` (a folder
        of bundles, such as `tierplan certs --out`), else the sibling `cert_dir/../<site>/` (a
        deployment passes its own bundle's path, e.g. certs/controller, to the Ray sites it starts:
        each finds certs/<site> on its host)."""
        d = Path(cert_dir)
        d = next((c for c in (d, d / site, d.parent / site) if (c / f"{site}.pem").is_file()), d)
        files = [d / "ca.pem", d / f"{site}.pem", d / f"{site}.key", d / "token"]
        for f in files:
            if not f.is_file():
                raise InputError(f"--tls-dir {cert_dir}: {f.name} missing for site {site!r}. "
                                 f"To fix: tierplan certs --out DIR --sites {site},... and use DIR/{site}")
        for f in files[2:]:
            _private(f)
        if (d / "ca.key").exists():
            log.warning("%s: ca.key is in a site's bundle; the CA key belongs with the operator only", d)
        return cls(files[0].read_bytes(), files[1].read_bytes(), files[2].read_bytes(),
                   files[3].read_text().strip())


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret created 0600 from the start (never readable by others, not even briefly)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def peer_name(context) -> str | None:
    """The common name of the caller's client certificate (None without TLS)."""
    try:
        names = (context.auth_context() or {}).get("x509_common_name") or []
    except Exception:  # a context without auth data (a plaintext channel): no name
        return None
    return names[0].decode(errors="replace") if names else None


def check_listen(listen: str, tls_dir, insecure: bool, flag: str = "--listen", probe: bool = True) -> str:
    """Check an operator's listen address before serving on it; returns it.

    HOST:PORT is required; a host other than loopback needs TLS (`tls_dir`) or `insecure` (then a
    one-line warning goes to stderr); with `probe` the address is bound once, so an address this
    host does not have or a port in use is an InputError naming `flag` (not a gRPC traceback).
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InputError(f"{flag} {listen!r}: expected HOST:PORT. To fix: e.g. {flag} 127.0.0.1:7001")
    if not is_loopback_address(listen):
        if not tls_dir and not insecure:
            raise InputError(f"{flag} {listen}: listening beyond loopback needs mutual TLS. To fix: add "
                             "--tls-dir DIR (from `tierplan certs`), or --insecure on a network you trust")
        if not tls_dir:
            print(f"warning: {flag} {listen} without TLS (--insecure): anyone who reaches this port can use it",
                  file=sys.stderr, flush=True)
    if probe:
        bare = host.strip("[]")
        family = socket.AF_INET6 if ":" in bare else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((bare, int(port)))
        except OSError as e:
            raise InputError(f"{flag} {listen}: cannot listen there ({e.strerror or e}). To fix: use an address "
                             "of this host and a free port, e.g. 127.0.0.1:0") from None
    return listen


def _hosts(site: str, extra: list[str]) -> list[str]:
    return list(dict.fromkeys([site, "localhost", TARGET_NAME, "127.0.0.1", *extra]))


def _make_with_cryptography(out: Path, sites: list[str], extra_hosts: list[str]) -> None:
    """CA into `out/ca/`, each site's key pair into `out/<site>/` (the folders exist, 0700)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
    from cryptography.x509.oid import NameOID

    ca_dir = out / CA_DIR
    now = datetime.datetime.now(datetime.timezone.utc)
    until = now + datetime.timedelta(days=_VALID_DAYS)

    def pem_key(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    if (ca_dir / "ca.key").is_file():     # the operator's CA already exists: sign more sites with it
        loaded = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
        if not isinstance(loaded, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, dsa.DSAPrivateKey,
                                   ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):   # e.g. X25519 cannot sign
            raise InputError(f"{ca_dir / 'ca.key'}: a {type(loaded).__name__} cannot sign certificates. "
                             "To fix: use an EC, RSA, DSA or Ed25519/Ed448 CA key, or remove the ca folder")
        ca_key: CertificateIssuerPrivateKeyTypes = loaded
        ca_name = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes()).subject
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tierplan CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now).not_valid_after(until)
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .sign(ca_key, hashes.SHA256()))
        (ca_dir / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        _write_private(ca_dir / "ca.key", pem_key(ca_key))
    for site in sites:
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
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
        (out / site / f"{site}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(out / site / f"{site}.key", pem_key(key))


def _make_with_openssl(out: Path, sites: list[str], extra_hosts: list[str]) -> None:
    """The same files as `_make_with_cryptography`, made by the openssl CLI (keys created 0600)."""
    if shutil.which("openssl") is None:
        raise InputError("tierplan certs: needs the `cryptography` package or the openssl CLI. "
                         "To fix: pip install cryptography")

    def run(cwd: Path, *args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=cwd,
                       preexec_fn=lambda: os.umask(0o077))

    ca_dir = out / CA_DIR
    if not (ca_dir / "ca.key").is_file():
        run(ca_dir, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
        run(ca_dir, "req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", str(_VALID_DAYS),
            "-subj", "/CN=tierplan CA", "-out", "ca.pem")
    for site in sites:
        d = out / site
        san = ",".join(("IP:" if h.replace(".", "").isdigit() else "DNS:") + h
                       for h in _hosts(site, extra_hosts))
        (d / f"{site}.ext").write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n")
        run(d, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{site}.key")
        run(d, "req", "-new", "-key", f"{site}.key", "-subj", f"/CN={site}", "-out", f"{site}.csr")
        run(d, "x509", "-req", "-in", f"{site}.csr", "-CA", str(ca_dir / "ca.pem"), "-CAkey", str(ca_dir / "ca.key"),
            "-CAcreateserial", "-days", str(_VALID_DAYS), "-sha256", "-extfile", f"{site}.ext",
            "-out", f"{site}.pem")
        (d / f"{site}.csr").unlink()
        (d / f"{site}.ext").unlink()


def _check_name(name: str) -> str:
    ok = name and name[0].isalnum() and all(c.isalnum() or c in "_.-" for c in name)
    if not ok or name in _RESERVED:
        raise InputError(f"--sites: {name!r} cannot name a site's bundle folder (letters, digits, _ . - only; "
                         f"not {', '.join(sorted(_RESERVED))}). To fix: rename the site class")
    return name


def make_certs(out_dir: str | Path, sites: list[str], extra_hosts: list[str] | None = None) -> list[Path]:
    """Write the operator's CA folder (`ca/`: ca.pem, ca.key, token) and one bundle folder per site
    and for the controller (`<name>/`: ca.pem, <name>.pem, <name>.key, token); returns every file.

    An existing `ca/` is kept: its CA signs the new sites' certificates and its token is reused,
    so sites can be added later without touching the hosts already set up.
    """
    out = Path(out_dir)
    names = [_check_name(n) for n in dict.fromkeys([*sites, CONTROLLER])]
    for d in (out, out / CA_DIR, *(out / n for n in names)):
        d.mkdir(parents=True, exist_ok=True)
    for d in (out / CA_DIR, *(out / n for n in names)):
        d.chmod(0o700)
    try:
        import cryptography  # noqa: F401
        _make_with_cryptography(out, names, list(extra_hosts or []))
    except ImportError:
        _make_with_openssl(out, names, list(extra_hosts or []))
    token_file = out / CA_DIR / "token"
    if not token_file.is_file():
        _write_private(token_file, (secrets.token_hex(24) + "\n").encode())
    token = token_file.read_bytes()
    for n in names:
        shutil.copyfile(out / CA_DIR / "ca.pem", out / n / "ca.pem")
        _write_private(out / n / "token", token)
    for f in out.rglob("*"):
        if f.is_file() and (f.suffix in (".key", ".srl") or f.name == "token"):
            f.chmod(0o600)
    return sorted(f for f in out.rglob("*") if f.is_file())


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

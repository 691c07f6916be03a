"""The HTTPS listener's certificate: the operator's, or one the appliance makes itself.

LXD and Incus read simplestreams only over HTTPS and refuse a certificate without a
subjectAltName (Go's "relies on legacy Common Name field"). Without `tls.cert`/`tls.key`
the appliance makes a self-signed certificate once, kept with its state
(`StateDir.tls`), naming every way it is reached: `archive.local` (its
discovery name), the host name, the listen addresses, loopback and `tls.names`. It makes
a new one only when those names grow. Clients pin it (`/keys/archive-local-tls.pem`, its
sha256 in `/.well-known/archive-local`): the cloud-init module installs it from there.

An operator's certificate is read again on `reload` into a new SSL context, checked (the
key is the certificate's), and only then serves new handshakes and is published; one that
cannot be used changes nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.cache.statedir import StateDir
from appliance.config import Config

if TYPE_CHECKING:  # cryptography (8 MB) is imported where used: only with `tls` set
    from cryptography import x509

log = logging.getLogger(__name__)

PEM_PATH = "/keys/archive-local-tls.pem"  # where clients fetch the certificate to pin
VALID_DAYS = 3650
WILDCARD = ("0.0.0.0", "::", "")


class TlsError(Exception):
    """The certificate or key cannot be used (the message says which and why)."""


def wanted_names(config: Config) -> list[str]:
    """Every name and address a client may reach the TLS listener by, for the
    subjectAltName of a self-signed certificate."""
    names: list[str] = [config.discovery.name, "localhost"]
    host = socket.gethostname()
    names += [host, socket.getfqdn(host)]
    addresses = ["127.0.0.1", "::1"]
    assert config.tls is not None
    for listen in (config.tls.listen, config.listen):
        if listen.host not in WILDCARD:
            addresses.append(listen.host)
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP):
            addresses.append(str(info[4][0]).split("%")[0])
    out: list[str] = []
    for name in [*names, *addresses, *config.tls.names]:
        name = _normal(name)
        if name and name not in out:
            out.append(name)
    return out


def _normal(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower().rstrip(".")


def _general_name(name: str) -> x509.GeneralName:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def names_of(cert: x509.Certificate) -> set[str]:
    """The DNS names and addresses in a certificate's subjectAltName (empty: none)."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {_normal(n) for n in san.get_values_for_type(x509.DNSName)} | {
        str(a) for a in san.get_values_for_type(x509.IPAddress)
    }


def make_self_signed(names: Iterable[str]) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM): P-256, every name in the subjectAltName."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    names = list(names)
    if not names:
        raise ValueError("a certificate needs at least one name")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def ensure_self_signed(state: Path, names: list[str]) -> tuple[Path, Path]:
    """The kept self-signed certificate and key, made (again) when missing or when it
    does not name all of `names`. Safe with several workers starting at once."""
    from cryptography import x509

    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = state / "cert.pem", state / "key.pem"
    with open(state / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            have = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if set(names) <= names_of(have) and key_path.exists():
                return cert_path, key_path
            log.info(
                "tls: the self-signed certificate does not name %s: making a new one",
                ", ".join(sorted(set(names) - names_of(have))),
            )
        except (OSError, ValueError):
            pass
        cert_pem, key_pem = make_self_signed(names)
        _write(key_path, key_pem, 0o600)
        _write(cert_path, cert_pem, 0o644)
        log.info("tls: made a self-signed certificate for %s", ", ".join(names))
    return cert_path, key_path


def _context(cert_path: Path, key_path: Path) -> tuple[ssl.SSLContext, x509.Certificate]:
    """A new server context with the pair, and its leaf certificate. The key must be the
    leaf's: OpenSSL takes a key of another type beside the certificate without a word,
    and a context that failed half-way must never serve (so never the one in use)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pair = cert_path.read_bytes(), key_path.read_bytes()
    leaf = x509.load_pem_x509_certificate(pair[0])
    key = serialization.load_pem_private_key(pair[1], password=None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise ValueError("the key is not the certificate's (its public key differs)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(cert_path, key_path)
    if (cert_path.read_bytes(), key_path.read_bytes()) != pair:  # OpenSSL read them again
        raise ValueError("the files changed while being read: reload again")
    return context, leaf


class Certificates:
    """The TLS listener's context and what clients are told of its certificate."""

    context: ssl.SSLContext  # for new handshakes: replaced whole by a reload

    def __init__(self, config: Config) -> None:
        self.pem = b""
        self.fingerprint = ""
        self.load(config)

    def load(self, config: Config) -> None:
        """Take the configured certificate (or the self-signed one); on a reload, new
        handshakes use it. A certificate that cannot be used raises TlsError and the
        one in use stays, served and published."""
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization

        tls = config.tls
        assert tls is not None
        if tls.cert is not None and tls.key is not None:
            cert_path, key_path = tls.cert, tls.key
        else:
            state = StateDir(config.cache.dir).tls
            cert_path, key_path = ensure_self_signed(state, wanted_names(config))
        try:
            context, leaf = _context(cert_path, key_path)
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm, ssl.SSLError) as exc:
            raise TlsError(f"tls: cannot use {cert_path} with {key_path}: {exc}") from None
        if not names_of(leaf):
            log.warning("tls: %s has no subjectAltName: LXD and Go clients refuse it", cert_path)
        self.context = context  # then what clients are told: the one they will be served
        self.pem = leaf.public_bytes(serialization.Encoding.PEM)
        self.fingerprint = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
        log.info("tls: serving %s (sha256 %s)", cert_path, self.fingerprint)

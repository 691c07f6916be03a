"""The HTTPS listener: a self-signed certificate with a subjectAltName, made once and
published; an operator's certificate, replaced and taken on reload; the forward proxy and
CONNECT only on the plain port."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.web.tls import make_self_signed
from tests.conftest import CURL_STATUS, Appliance, StartAppliance, free_port, http_get, require
from tests.upstream import Upstream


def _get(url: str, cafile: Path) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(cafile))
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _served_fingerprint(port: int) -> str:
    """sha256 of the certificate a new handshake gets (whatever it is: not verified)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def _wait_for_workers(cache: Path, n: int) -> None:
    """Until every worker listens (each makes its socket once it serves both ports)."""
    deadline = time.monotonic() + 20
    while not all((cache / f".state/workers/{i}.sock").exists() for i in range(n)):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _openssl(*args: str, data: bytes) -> str:
    return subprocess.run(
        ["openssl", *args], input=data, capture_output=True, check=True
    ).stdout.decode()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_self_signed_certificate_with_names_made_once_and_published(
    start_appliance: StartAppliance, tmp_path: Path, workers: int
) -> None:
    require("openssl", "openssl")
    port = free_port()
    cache = tmp_path / "cache"
    extra = {"tls": {"listen": f"127.0.0.1:{port}"}, "workers": workers}
    app = start_appliance({}, cache_dir=cache, extra=extra)
    if workers > 1:  # both workers made or took the same one (a lock around making it)
        _wait_for_workers(app.cache_dir, workers)
    code, pem = http_get(app.url + "/keys/archive-local-tls.pem")
    assert code == 200 and pem.startswith(b"-----BEGIN CERTIFICATE-----")
    san = _openssl("x509", "-noout", "-ext", "subjectAltName", data=pem)
    for name in ("DNS:archive.local", "DNS:localhost", "IP Address:127.0.0.1"):
        assert name in san, san
    (tmp_path / "cert.pem").write_bytes(pem)
    # a client that pins it reaches the same routes over HTTPS, by name or address
    assert _get(f"https://127.0.0.1:{port}/healthz", tmp_path / "cert.pem")[0] == 200
    assert _get(f"https://localhost:{port}/healthz", tmp_path / "cert.pem")[0] == 200
    doc = json.loads(http_get(app.url + "/.well-known/archive-local")[1])
    fingerprint = _openssl("x509", "-noout", "-fingerprint", "-sha256", data=pem)
    want = fingerprint.split("=", 1)[1].strip().replace(":", "").lower()
    assert doc["tls"]["sha256_fingerprint"] == want == _served_fingerprint(port)
    assert {_served_fingerprint(port) for _ in range(8)} == {want}  # whichever worker
    assert doc["tls"]["url"] == f"https://127.0.0.1:{port}/"
    over_tls = json.loads(
        _get(f"https://127.0.0.1:{port}/.well-known/archive-local", tmp_path / "cert.pem")[1]
    )
    assert over_tls["apt_proxy"] == f"http://127.0.0.1:{app.port}/"  # the proxy: plain port
    # the forward proxy and CONNECT are refused over HTTPS
    for args in (
        ["--request-target", "http://deb.example/x"],
        ["-X", "CONNECT", "--request-target", "deb.example:443"],
    ):
        r = subprocess.run(
            [
                *CURL_STATUS,
                "--cacert",
                str(tmp_path / "cert.pem"),
                *args,
                f"https://127.0.0.1:{port}/",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.stdout == "400", (args, r)
    key = cache / ".state/tls/key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    app.stop()  # kept with the state: the next start serves the same certificate
    again = start_appliance({}, cache_dir=cache, extra=extra)
    if workers > 1:
        _wait_for_workers(again.cache_dir, workers)
    assert http_get(again.url + "/keys/archive-local-tls.pem")[1] == pem
    assert _served_fingerprint(port) == want


@dataclass
class _OperatorTls:
    """An appliance serving HTTPS on `port` with an operator's certificate (`first`) from
    files the test may replace (`cert`, `key`) before a reload."""

    app: Appliance
    port: int
    cert: Path
    key: Path
    first: bytes


def _with_operator_certificate(start_appliance: StartAppliance, tmp_path: Path) -> _OperatorTls:
    port = free_port()
    cert, key = tmp_path / "op-cert.pem", tmp_path / "op-key.pem"
    first, first_key = make_self_signed(["cache.example", "127.0.0.1"])
    cert.write_bytes(first)
    key.write_bytes(first_key)
    app = start_appliance(
        {},
        extra={"tls": {"listen": f"127.0.0.1:{port}", "cert": str(cert), "key": str(key)}},
    )
    return _OperatorTls(app, port, cert, key, first)


def test_a_replaced_operator_certificate_is_taken_on_reload(
    start_appliance: StartAppliance, tmp_path: Path
) -> None:
    op = _with_operator_certificate(start_appliance, tmp_path)
    app, port, cert, key, first = op.app, op.port, op.cert, op.key, op.first
    before = _served_fingerprint(port)
    assert http_get(app.url + "/keys/archive-local-tls.pem")[1] == first
    second, second_key = make_self_signed(["cache.example", "127.0.0.1"])
    key.write_bytes(second_key)
    cert.write_bytes(second)
    app.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while _served_fingerprint(port) == before:
        assert time.monotonic() < deadline, app.log_text()
        time.sleep(0.1)
    assert http_get(app.url + "/keys/archive-local-tls.pem")[1] == second
    doc = json.loads(http_get(app.url + "/.well-known/archive-local")[1])
    assert doc["tls"]["sha256_fingerprint"] == _served_fingerprint(port)
    # a broken replacement: the certificate in use stays, and the reload says why
    cert.write_bytes(b"not a certificate")
    code, body = app.admin("reload")
    assert code == 200 and "tls_error" in json.loads(body), body
    assert _served_fingerprint(port) == doc["tls"]["sha256_fingerprint"]


def _rsa_certificate(tmp_path: Path) -> bytes:
    """A self-signed RSA certificate (its key is thrown away)."""
    require("openssl", "openssl")
    out = tmp_path / "rsa-cert.pem"
    args = ["-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=cache.example"]
    args += ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp_path / "rsa-key.pem")]
    subprocess.run(["openssl", "req", "-x509", *args, "-out", str(out)], check=True)
    return out.read_bytes()


@pytest.mark.parametrize("wrong", ["another EC certificate", "an RSA certificate"])
def test_a_certificate_that_is_not_the_keys_is_refused_on_reload(
    start_appliance: StartAppliance, tmp_path: Path, wrong: str
) -> None:
    op = _with_operator_certificate(start_appliance, tmp_path)
    app, port, cert, key, first = op.app, op.port, op.cert, op.key, op.first
    (tmp_path / "first.pem").write_bytes(first)
    served = _served_fingerprint(port)
    # a new certificate beside the old (EC) key: the operator forgot to replace the key
    if wrong == "an RSA certificate":
        cert.write_bytes(_rsa_certificate(tmp_path))
    else:
        cert.write_bytes(make_self_signed(["cache.example"])[0])
    code, body = app.admin("reload")
    assert code == 200 and "tls_error" in json.loads(body), body
    # every new handshake still gets the certificate in use, and it is the one published
    assert {_served_fingerprint(port) for _ in range(4)} == {served}
    assert _get(f"https://127.0.0.1:{port}/healthz", tmp_path / "first.pem")[0] == 200
    assert http_get(app.url + "/keys/archive-local-tls.pem")[1] == first
    doc = json.loads(http_get(app.url + "/.well-known/archive-local")[1])
    assert doc["tls"]["sha256_fingerprint"] == served
    # a good pair is then taken, presented and published
    second, second_key = make_self_signed(["cache.example", "127.0.0.1"])
    key.write_bytes(second_key)
    cert.write_bytes(second)
    code, body = app.admin("reload")
    assert code == 200 and "tls_error" not in json.loads(body), body
    now = _served_fingerprint(port)
    assert now != served
    assert http_get(app.url + "/keys/archive-local-tls.pem")[1] == second
    doc = json.loads(http_get(app.url + "/.well-known/archive-local")[1])
    assert doc["tls"]["sha256_fingerprint"] == now


def test_over_https_a_connection_is_kept_alive_files_are_sent_and_sigterm_drains(
    upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance
) -> None:
    data = os.urandom(32 * 1024 * 1024)  # more than the socket buffers: the last hit waits
    (upstream_root / "debian/pool").mkdir(parents=True)
    (upstream_root / "debian/pool/f.deb").write_bytes(data)
    port = free_port()
    extra = {"tls": {"listen": f"127.0.0.1:{port}"}, "limits": {"drain_timeout": "20s"}}
    app = start_appliance({"debian": [f"{upstream.url}/debian"]}, extra=extra)
    _served_fingerprint(port)  # listening
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context)
    sockets = []
    for _ in range(3):  # a miss, then hits from the file (asyncio's sendfile falls back to writes)
        conn.request("GET", "/debian/pool/f.deb")
        with conn.getresponse() as r:
            assert r.status == 200 and r.read() == data
        sockets.append(conn.sock)
    assert len(set(map(id, sockets))) == 1  # one connection, kept alive
    conn.request("GET", "/debian/pool/f.deb")
    r = conn.getresponse()
    first = r.read(65536)
    app.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(OSError):  # no longer listening
        socket.create_connection(("127.0.0.1", port), 1).close()
    assert first + r.read() == data  # the transfer in flight finishes
    conn.close()
    assert app.proc.wait(30) == 0
    assert "draining 1 connections" in app.log_text()
    assert upstream.count("f.deb") == 1


def test_transfer_encoding_in_http_1_0_is_refused_over_https_too(
    start_appliance: StartAppliance, tmp_path: Path
) -> None:
    """RFC 9112 §6.1 on the HTTPS port (the default `workers: auto`): 400, closed, nothing
    pipelined behind it answered."""
    port = free_port()
    app = start_appliance({}, extra={"tls": {"listen": f"127.0.0.1:{port}"}, "workers": "auto"})
    _wait_for_workers(app.cache_dir, os.cpu_count() or 1)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    smuggled = (
        b"GET /healthz HTTP/1.0\r\nHost: archive.local\r\nConnection: keep-alive\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nHost: archive.local\r\n\r\n"
    )
    started = time.monotonic()
    with (
        socket.create_connection(("127.0.0.1", port), 10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(smuggled)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    assert time.monotonic() - started < 5  # closed by the server
    assert answer.startswith(b"HTTP/1.0 400") and answer.count(b"HTTP/1.1 200") == 0, answer

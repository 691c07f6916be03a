"""The hot path reads a request head only when there is no doubt what it says: anything
else goes to aiohttp, byte for byte, so the hot path never answers what aiohttp would
read otherwise (request smuggling lives in such differences)."""

from __future__ import annotations

import pytest

from appliance.discovery.wellknown import WELL_KNOWN
from appliance.web.hotpath import Head, parse, router_target
from appliance.web.peers import FLIGHT
from appliance.web.tls import PEM_PATH
from appliance.web.workers import CACHE_EVENTS

PATH = b"/debian/pool/main/h/hello/hello_2.10-3_amd64.deb"


def head(*lines: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n"


def test_a_plain_get_head_and_proxy_form() -> None:
    assert parse(head(b"GET " + PATH + b" HTTP/1.1", b"Host: a", b"User-Agent: apt/2.6")) == Head(
        "GET", PATH.decode(), "apt/2.6", close=False, plain=True
    )
    got = parse(head(b"HEAD http://deb.example/x HTTP/1.1", b"Connection: Keep-Alive, close"))
    assert got == Head("HEAD", "http://deb.example/x", "", close=True, plain=True)
    assert parse(head(b"GET / HTTP/1.1")) == Head("GET", "/", "", False, True)


@pytest.mark.parametrize(
    "name", [b"Range", b"If-Range", b"If-Modified-Since", b"If-None-Match", b"If-Match",
             b"if-unmodified-since"],
)  # fmt: skip
def test_a_range_or_a_condition_is_not_plain(name: bytes) -> None:
    got = parse(head(b"GET " + PATH + b" HTTP/1.1", name + b": x"))
    assert got is not None and not got.plain


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /a HTTP/1.1\nHost: a\n\n",  # bare LF
        b"GET /a HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",  # bare CR
        head(b"GET /a HTTP/1.1", b"X-A: one", b" folded"),  # obs-fold
        head(b"GET /a HTTP/1.1", b"X-A: one", b"\tfolded"),
        head(b"GET /a HTTP/1.0"),  # its keep-alive rules are aiohttp's
        head(b"GET /a HTTP/2.0"),
        head(b"POST /a HTTP/1.1", b"Content-Length: 0"),
        head(b"PUT /a HTTP/1.1"),
        head(b"get /a HTTP/1.1"),
        head(b"GET /a HTTP/1.1", b"Content-Length: 0"),  # a body, however short
        head(b"GET /a HTTP/1.1", b"Transfer-Encoding: chunked"),
        head(b"GET /a HTTP/1.1", b"transfer-encoding : chunked"),  # space before colon
        head(b"GET /a HTTP/1.1", b"Expect: 100-continue"),
        head(b"GET /a HTTP/1.1", b"Upgrade: websocket", b"Connection: Upgrade"),
        head(b"GET /a HTTP/1.1", b"Connection: keep-alive, TE"),
        head(b"GET /a HTTP/1.1", b"Host: a", b"Host: b"),  # which one?
        head(b"GET /a HTTP/1.1", b"Connection: close", b"Connection: keep-alive"),
        head(b"GET /a HTTP/1.1", b"NoColon"),
        head(b"GET /a HTTP/1.1", b": empty name"),
        head(b"GET /a HTTP/1.1", b"X(y): z"),  # not a token
        head(b"GET /a HTTP/1.1", b"User-Agent: caf\xc3\xa9"),  # not ASCII
        head(b"GET /a HTTP/1.1", b"X: a\x00b"),  # a control character
        head(b"GET /a\xff HTTP/1.1"),
        head(b"GET /a b HTTP/1.1"),  # a space in the target
        head(b"GET  /a HTTP/1.1"),
        head(b"GET /a HTTP/1.1 "),
        head(b"GET /a HTTP/1.1", b"X: " + b"a" * 8200),  # longer than aiohttp reads
        head(b"GET /" + b"a" * 8200 + b" HTTP/1.1"),
        head(b"GET /a HTTP/1.1", *[b"X-%d: v" % i for i in range(101)]),  # too many
    ],
)
def test_anything_else_is_aiohttps(raw: bytes) -> None:
    assert parse(raw) is None


def test_the_appliances_own_pages_are_never_routed_as_apt() -> None:
    own = ["/", "/metrics", "/healthz", "/favicon.ico", "/api/status", "/api/admin/purge",
           WELL_KNOWN, PEM_PATH, FLIGHT + "x", CACHE_EVENTS, "/images/x/y.img",
           "/streams/v1/index.json", "/keys/archive-local.gpg"]  # fmt: skip
    assert [t for t in own if router_target(t)] == []
    assert router_target("/debian/pool/a.deb") and router_target("http://deb.example/a")
    assert not router_target("*") and not router_target("deb.example:443")

"""The hot path reads a request head only when there is no doubt what it says: anything
else goes to aiohttp, byte for byte, so the hot path never answers what aiohttp would
read otherwise (request smuggling lives in such differences)."""

from __future__ import annotations

import pytest

from appliance.discovery.wellknown import WELL_KNOWN
from appliance.web.hotpath import Head, may_start_a_head, parse, router_target
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
    got = parse(
        head(b"HEAD http://deb.example/x HTTP/1.1", b"host: d", b"Connection: Keep-Alive, close")
    )
    assert got == Head("HEAD", "http://deb.example/x", "", close=True, plain=True)
    assert parse(head(b"GET /a?b=c&d=%20 HTTP/1.1", b"Host: a")) is not None
    assert parse(head(b"GET http://[::1]:3142/a HTTP/1.1", b"Host: a")) is not None


@pytest.mark.parametrize(
    "name", [b"Range", b"If-Range", b"If-Modified-Since", b"If-None-Match", b"If-Match",
             b"if-unmodified-since"],
)  # fmt: skip
def test_a_range_or_a_condition_is_not_plain(name: bytes) -> None:
    got = parse(head(b"GET " + PATH + b" HTTP/1.1", b"Host: a", name + b": x"))
    assert got is not None and not got.plain


def test_only_the_start_of_a_head_is_held_for_more() -> None:
    """Bytes that cannot become a head `parse` reads go to aiohttp at once (its 400 is
    immediate, not after the idle timer)."""
    for start in (b"G", b"GET", b"GET /a HTTP/1.1\r", b"HEAD /a HTTP/1.1\r\nHo", b"HEA"):
        assert may_start_a_head(start)
    for start in (b"\x16\x03\x01\x02\x00", b"POST ", b"GET / HTTP/1.1\nHost: a", b"get "):
        assert not may_start_a_head(start)


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
        b"GET /a HTTP/1.1\r\n\r\n",  # no Host: aiohttp answers 400
        head(b"GET /a HTTP/1.1", b"Host: a", b"User-Agent: x", b"User-Agent: y"),  # twice
        head(b"GET /a HTTP/1.1", b"Host: a", b"X-A: 1", b"x-a: 2"),
        head(b"GET /a HTTP/1.1", b"Host: a", b"Sec-WebSocket-Key1: x"),  # aiohttp: 400
        head(b"GET /a#frag HTTP/1.1", b"Host: a"),
        head(b"GET http://[x/debian/a.deb HTTP/1.1", b"Host: a"),  # urlsplit: ValueError
        head(b"GET http://x]/debian/a.deb HTTP/1.1", b"Host: a"),
        head(b"GET http://a\\b@127.0.0.1:8080/debian/x HTTP/1.1", b"Host: a"),  # userinfo
        head(b"GET http://127.0.0.1:8080#x/debian/a HTTP/1.1", b"Host: a"),
        head(b"GET https://deb.example/a HTTP/1.1", b"Host: a"),
        head(b"GET deb.example:443 HTTP/1.1", b"Host: a"),
        head(b"GET * HTTP/1.1", b"Host: a"),
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

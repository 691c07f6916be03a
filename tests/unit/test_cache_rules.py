"""The cache's pure rules, as tables: the one freshness and offline decision
(`policy.decide`), what an upstream answer is (`exchange.classify`) and what a request
upstream carries (a copy's validators, a parked partial's Range)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from appliance.cache.exchange import (
    Answer,
    classify,
    conditional_headers,
    content_range,
    resume_headers,
    resume_urls,
    same_target,
)
from appliance.cache.fetcher import UpstreamFailure
from appliance.cache.policy import Decision, decide
from appliance.cache.route import NO_EXPECTATION, Expect, Freshness
from appliance.cache.store import Meta

V = Freshness.VOLATILE


def _meta(checked: float) -> Meta:
    return Meta(url="u", size=1, fetched=checked, checked=checked, sha256="x")


@pytest.mark.parametrize(
    ("meta", "freshness", "now", "failure", "decision"),
    [
        (None, V, 1000, None, Decision.ASK),
        (_meta(1000), V, 1299, None, Decision.HIT),
        (_meta(1000), V, 1300, None, Decision.ASK),  # the TTL is over
        (_meta(1000), V, 999, None, Decision.ASK),  # the clock went back: not trusted
        (_meta(0), Freshness.IMMUTABLE, 10**9, None, Decision.HIT),
        (_meta(0), Freshness.MANAGED, 10**9, None, Decision.HIT),
        (_meta(1000), V, 2000, UpstreamFailure(502, "reset"), Decision.STALE),
        (_meta(1000), V, 2000, UpstreamFailure(503, "busy"), Decision.STALE),
        (_meta(1000), V, 2000, UpstreamFailure(404, "gone"), Decision.FAIL),
        (None, V, 2000, UpstreamFailure(502, "reset"), Decision.FAIL),
    ],
)
def test_the_one_decision(meta, freshness, now, failure, decision) -> None:  # type: ignore[no-untyped-def]
    assert decide(meta, freshness, now, 300, failure) is decision


def _answer(status: int, length: int | None = 10, **headers: str) -> Any:
    """What `classify` reads of a response: its status, length and headers."""
    return SimpleNamespace(status=status, content_length=length, headers=headers)


SHA = Expect(size=10, algorithm="sha256", digest="0" * 64)


@pytest.mark.parametrize(
    ("response", "expect", "conditional", "resume_at", "answer"),
    [
        (_answer(200), NO_EXPECTATION, False, None, Answer.WHOLE),
        (_answer(304), NO_EXPECTATION, True, None, Answer.NOT_MODIFIED),
        (_answer(304), NO_EXPECTATION, False, None, Answer.UNASKED_304),
        (_answer(206, **{"Content-Range": "bytes 4-9/10"}), SHA, False, 4, Answer.RESUMED),
        (_answer(206, **{"Content-Range": "bytes 0-9/10"}), SHA, False, 4, Answer.WRONG_RANGE),
        (_answer(206, **{"Content-Range": "bytes 4-9/12"}), SHA, False, 4, Answer.WRONG_RANGE),
        (_answer(206, **{"Content-Range": "bytes 4-9/10"}), SHA, False, None, Answer.UNASKED_RANGE),
        (_answer(200, **{"Content-Encoding": "gzip"}), NO_EXPECTATION, False, None, Answer.ENCODED),
        (_answer(200, **{"Content-Encoding": "gzip"}), SHA, False, None, Answer.WHOLE),  # checked
        (_answer(200, None), NO_EXPECTATION, False, None, Answer.UNVERIFIABLE),
        (
            _answer(200, None, **{"Transfer-Encoding": "chunked"}),
            NO_EXPECTATION,
            False,
            None,
            Answer.WHOLE,
        ),
        (_answer(200, None), Expect(size=10), False, None, Answer.WHOLE),  # the size bounds it
    ],
)
def test_what_an_upstream_answer_is(response, expect, conditional, resume_at, answer) -> None:  # type: ignore[no-untyped-def]
    assert classify(response, expect, conditional=conditional, resume_at=resume_at) is answer


def test_what_a_request_upstream_carries() -> None:
    meta = Meta(url="u", size=1, fetched=0, checked=0, sha256="x", etag='"e"', last_modified="L")
    assert conditional_headers(meta) == {"If-None-Match": '"e"', "If-Modified-Since": "L"}
    assert conditional_headers(_meta(0)) == {}
    parked = {"url": "http://b/f", "written": 4, "etag": '"e"', "size": 10}
    parked |= {"algorithm": "sha256", "digest": "0" * 64}
    assert resume_headers(parked) == {"Range": "bytes=4-", "If-Range": '"e"'}
    assert resume_urls(parked, ["http://a/f", "http://b/f"]) == ("http://b/f", "http://a/f")
    assert same_target(parked, SHA) and not same_target(parked, Expect(size=10))
    assert content_range("bytes 4-9/*") == (4, None) and content_range("junk") == (-1, None)

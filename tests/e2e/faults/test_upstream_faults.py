"""Each way a mirror can misbehave, against the promise: the right bytes or an error.

One parametrised test per class of fault for apt files, and the resume path of mirrored
images (where the appliance itself sends `Range`) against upstreams that ignore it or
answer the wrong range.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import StartAppliance, run_sync, stop_gpg_agent, write_feed_config
from tests.e2e.faults.conftest import fetch, leftovers, report, stored, tracebacks
from tests.feed import Feed
from tests.hostile import (
    Behaviour,
    Conn,
    Hostile,
    Request,
    drip,
    head,
    long,
    new_bytes_on_conditional,
    range_answer,
    short,
    stall_after,
)

DATA = os.urandom(400_000)


def _wrong_length() -> Behaviour:
    """Content-Length says one thing, the body is another size, and the connection closes."""

    async def run(up: Hostile, req: Request, conn: Conn) -> None:
        await conn.send(head("200 OK", len(DATA) + 5000) + DATA)
        conn.close()

    return run


def _status(status: str) -> Behaviour:
    async def run(up: Hostile, req: Request, conn: Conn) -> None:
        await conn.send(head(status, 11) + b"not a file\n")

    return run


FAULTS: dict[str, Callable[[], Behaviour]] = {
    "reset-mid-body": lambda: short(150_000, reset=True),
    "closed-mid-body": lambda: short(150_000),
    "longer-than-announced": lambda: long(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"),
    "announced-more-than-sent": _wrong_length,
    "stall": lambda: stall_after(100_000, seconds=20),
    "drip": lambda: drip(0.2, 100),
    "206-unasked": lambda: range_answer("206 Partial Content", "bytes 0-9/10"),
    "500": lambda: _status("500 Internal Server Error"),
    "304-unasked": lambda: _status("304 Not Modified"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_a_misbehaving_mirror_gives_the_right_bytes_or_an_error(
    fault: str, hostile: Hostile, start_appliance: StartAppliance
) -> None:
    hostile.files["/debian/pool/f.deb"] = DATA
    hostile.behave["/debian/pool/f.deb"] = FAULTS[fault]()
    app = start_appliance(
        {"debian": [f"{hostile.url}/debian"]},
        extra={"upstream": {"read_timeout": 2, "min_rate": "50KiB", "rate_window": "2s"}},
    )
    url = f"{app.url}/debian/pool/f.deb"
    answers = await asyncio.gather(*(fetch(url) for _ in range(3)))
    wrong = sum(1 for a in answers if a.error is None and a.status == 200 and a.body != DATA)
    report(
        f"upstream-fault-{fault}",
        answers=len(answers),
        complete_right=sum(1 for a in answers if a.error is None and a.body == DATA),
        errors=sum(1 for a in answers if a.error is not None or a.status != 200),
        complete_wrong=wrong,
    )
    assert wrong == 0, f"{fault}: a complete answer with other bytes"
    await asyncio.sleep(0.3)
    assert set(stored(app.cache_dir).values()) <= {DATA}
    assert leftovers(app.cache_dir) == []
    del hostile.behave["/debian/pool/f.deb"]  # the mirror recovers
    good = await fetch(url)
    assert (good.status, good.body == DATA) == (200, True), (fault, good.status, good.error)
    assert tracebacks(app.log_text()) == []


async def test_new_bytes_in_answer_to_a_conditional_request_replace_the_copy(
    hostile: Hostile, start_appliance: StartAppliance
) -> None:
    old, new = b"Suite: old\n" * 100, b"Suite: new\n" * 120
    hostile.files["/debian/dists/x/InRelease"] = old
    app = start_appliance({"debian": [f"{hostile.url}/debian"]}, index_ttl=0.3)
    url = f"{app.url}/debian/dists/x/InRelease"
    assert (await fetch(url)).body == old
    hostile.behave["/debian/dists/x/InRelease"] = new_bytes_on_conditional(new)
    await asyncio.sleep(0.4)
    answers = await asyncio.gather(*(fetch(url) for _ in range(5)))
    assert {a.body for a in answers} <= {new, old} and answers[-1].body in (new, old)
    await asyncio.sleep(0.2)
    after = await fetch(url)
    assert after.body == new
    assert list(stored(app.cache_dir).values()) == [new]


# --- resuming mirrored images: the appliance's own Range requests ----------------------------


@pytest.fixture
def hostile_feed(feed: Feed, hostile: Hostile) -> Hostile:
    for path in feed.root.rglob("*"):
        if path.is_file():
            hostile.files["/" + str(path.relative_to(feed.root))] = path.read_bytes()
    return hostile


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda: range_answer("200 OK"), id="range-ignored"),
        pytest.param(
            lambda: range_answer("206 Partial Content", "bytes 0-99/100"), id="wrong-range"
        ),
    ],
)
def test_resuming_an_image_against_a_mirror_that_botches_range(
    request: pytest.FixtureRequest,
    answer: Callable[[], Behaviour],
    tmp_path: Path,
    feed: Feed,
    hostile_feed: Hostile,
) -> None:
    cfg = write_feed_config(tmp_path, feed, hostile_feed.url, max_items=1)
    request.addfinalizer(lambda: stop_gpg_agent(tmp_path / "appliance-gnupg"))
    items = [p for p in feed.files if p.endswith("disk1.img") and "noble" in p and "0401" in p]
    assert items
    for p in items:  # the first sync breaks off mid-image: the bytes are kept to resume
        hostile_feed.behave["/" + p] = short(len(feed.files[p]) // 2)
    code, outcomes, _err = run_sync(cfg)
    assert code != 0
    assert list((tmp_path / "cache").rglob("*.resume"))
    for p in items:  # the resume asks for a Range the mirror botches
        hostile_feed.behave["/" + p] = answer()
    code, outcomes, err = run_sync(cfg)
    ranged = [r for r in hostile_feed.requests if "range" in r.headers]
    assert ranged, "the second sync did not try to resume"
    for p in items:
        del hostile_feed.behave["/" + p]
    code, outcomes, err = run_sync(cfg)
    assert code == 0, err
    for key, data in stored(tmp_path / "cache").items():
        if key.endswith("disk1.img"):
            path = key.split("/", 1)[1]
            assert hashlib.sha256(data).digest() == hashlib.sha256(feed.files[path]).digest()
    assert json.dumps(outcomes)  # a JSON report, whatever happened

"""What the seed tests share, whatever the cloud (Glance, EC2): the config of a mirrored
feed with seed targets, the feed's publisher adding a version, and a seed run killed in
the middle of an upload."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tests.configs import write_config
from tests.conftest import FILTERS, ITEM_SIZE, SEED_SERIALS
from tests.feed import Feed, build_feed, qcow2_image
from tests.upstream import Upstream

T = TypeVar("T")


def write_seed_config(tmp_path: Path, feed: Feed, served: Upstream, targets: list[dict]) -> Path:
    """`tmp_path/config.yaml`: `feed` mirrored from `served` as feed `ex`, seeded to
    `targets` only when asked (`seed` runs, not after each sync)."""
    feeds = [
        {
            "name": "ex",
            "url": served.url + "/",
            "keyring": str(feed.key.keyring),
            "filters": FILTERS,
        }
    ]
    return write_config(
        tmp_path / "config.yaml",
        {
            "cache": {"dir": str(tmp_path / "cache")},
            "images": {"gnupg_home": str(tmp_path / "gnupg"), "feeds": feeds},
            "seed": {"after_sync": False, "targets": targets},
        },
    )


def publish_version(tmp_path: Path, feed: Feed, serial: str) -> None:
    """`qcow_feed` as its publisher updates it: one more version, signed with the same key,
    the earlier versions' files unchanged."""
    build_feed(
        tmp_path,
        item_size=ITEM_SIZE,
        key=feed.key,
        serials=(*SEED_SERIALS, serial),
        make_image=qcow2_image,
        files=feed.files,
    )


def big_feed(tmp_path: Path, feed: Feed, item_size: int) -> Feed:
    """A feed of one version whose qcow2 images are `item_size` bytes, signed with `feed`'s
    key (so served by `feed`'s upstream): an upload long enough to be killed midway."""
    return build_feed(
        tmp_path, item_size=item_size, key=feed.key, serials=("20240101",), make_image=qcow2_image
    )


def kill_seed_when(cfg: Path, seen: Callable[[], T | None], timeout: float = 60) -> T | None:
    """Runs `archive-local seed` and kills it (SIGKILL) once `seen()` returns something,
    or after `timeout`: what a crash in the middle of an upload leaves. What was seen."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "--config", str(cfg), "seed"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    caught = None
    try:
        while time.monotonic() < deadline and caught is None:
            caught = seen()
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return caught

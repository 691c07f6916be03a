"""The service's jobs (sync, seed) follow its configuration and keep their failures: a
reload that adds a feed syncs it, a shorter interval takes effect, a seed that cannot
even start is recorded."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import yaml

from tests.configs import write_config
from tests.conftest import FILTERS, StartAppliance, http_get
from tests.feed import Feed
from tests.upstream import Upstream


def _wait(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def _rewrite(app_config: Path, **changes: object) -> None:
    data = yaml.safe_load(app_config.read_text())
    for section, value in changes.items():
        if isinstance(value, dict):
            data.setdefault(section, {}).update(value)
        else:
            data[section] = value
    write_config(app_config, data)


def _feed_entry(feed: Feed, url: str) -> dict:
    return {
        "name": "ex",
        "url": url.rstrip("/") + "/",
        "keyring": str(feed.key.keyring),
        "filters": FILTERS,
        "max_items": 1,
    }


def test_feeds_added_by_reload_are_synced_and_the_interval_follows(
    feed: Feed, served: Upstream, start_appliance: StartAppliance
) -> None:
    """Started without feeds: a reload that adds one syncs it at once (no admin call),
    `POST sync` then runs it again, and a shorter `sync_interval` takes effect."""
    app = start_appliance({})
    assert app.config is not None
    assert app.admin("sync")[0] == 409  # nothing to sync: said, not pretended
    _rewrite(app.config, images={"feeds": [_feed_entry(feed, served.url)]})
    assert app.admin("reload")[0] == 200

    def runs() -> int:
        feeds = app.status()["sync"]["feeds"]
        return 1 if feeds.get("ex", {}).get("ok") else 0

    _wait(lambda: runs() == 1)
    assert app.admin("sync")[0] == 202
    metrics = lambda: http_get(f"{app.url}/metrics")[1].decode()  # noqa: E731
    _wait(lambda: 'archive_local_sync_runs_total{feed="ex"} 2.0' in metrics())
    _rewrite(app.config, images={"sync_interval": "1s"})
    os.kill(app.proc.pid, signal.SIGHUP)  # reload by signal, as a unit's ExecReload does
    _wait(lambda: 'archive_local_sync_runs_total{feed="ex"} 4.0' in metrics(), timeout=20)
    assert "Traceback" not in app.log_text()


def test_a_crashed_seed_is_recorded_not_lost(start_appliance: StartAppliance) -> None:
    """The seed lock cannot even be taken (its name is a directory): the failure shows
    on the status page and in the metrics instead of vanishing."""
    app = start_appliance(
        {},
        extra={
            "seed": {
                "after_sync": False,
                "targets": [
                    {
                        "name": "cloud",
                        "type": "glance",
                        "feeds": ["ex"],
                        "auth": {"endpoint": "http://127.0.0.1:9/", "token_env": "NO_TOKEN"},
                    }
                ],
            }
        },
    )
    (app.cache_dir / ".state/seed.lock").mkdir(parents=True)  # not a file to lock
    assert app.admin("seed")[0] == 202
    _wait(lambda: "cloud" in app.status()["seed"]["targets"])
    outcome = app.status()["seed"]["targets"]["cloud"]
    assert not outcome["ok"] and "seeding failed" in outcome["error"]
    metrics = http_get(f"{app.url}/metrics")[1].decode()
    assert 'archive_local_seed_failures_total{target="cloud"} 1.0' in metrics

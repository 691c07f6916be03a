"""The sync job: mirror feeds, then rebuild the curated feed when anything changed."""

from __future__ import annotations

from collections.abc import Sequence

from appliance.cache.engine import CacheEngine
from appliance.cache.fetcher import Fetcher
from appliance.config import Config, FeedConfig
from appliance.streams.curated import publish_curated
from appliance.streams.gpg import SignatureError, Signer, Verifier
from appliance.streams.layout import curated_key
from appliance.streams.sync import FeedFailed, FeedMirror, FeedOutcome, Report


async def sync_feeds(
    config: Config,
    engine: CacheEngine,
    fetcher: Fetcher,
    report: Report | None = None,
    dry_run: bool = False,
    feeds: Sequence[FeedConfig] | None = None,
) -> list[FeedOutcome]:
    """Sync `feeds` (default: every configured feed), then rebuild the curated feed.

    The caller holds the sync lock (`jobs.lock.exclusive(..., SYNC)`).
    """
    feeds = config.images.feeds if feeds is None else feeds
    outcomes: list[FeedOutcome] = []
    for feed in feeds:
        try:
            verifier = await _verifier(feed)
        except SignatureError as exc:
            outcomes.append(FeedOutcome(feed.name, feed.url, ok=False, error=str(exc)))
            if report:
                report(FeedFailed(outcomes[-1]))
            continue
        try:
            mirror = FeedMirror(engine, fetcher, feed, verifier, report)
            outcomes.append(await mirror.sync(dry_run=dry_run))
        finally:
            if verifier:
                verifier.close()
    changed = any(i.status.changed for o in outcomes for i in o.items)
    missing = await engine.lookup(curated_key("streams/v1/index.sjson")) is None
    if not dry_run and (changed or (missing and any(o.ok for o in outcomes))):
        try:
            await publish_curated(engine, await Signer.open(config.images.gnupg_home))
        except (OSError, SignatureError) as exc:
            outcomes.append(
                FeedOutcome(
                    "(curated feed)",
                    "/streams/v1/",
                    ok=False,
                    error=f"cannot publish the curated feed: {exc}",
                )
            )
    return outcomes


async def _verifier(feed: FeedConfig) -> Verifier | None:
    return await Verifier.open(feed.keyring) if feed.keyring else None

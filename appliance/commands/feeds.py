"""`archive-local query | sync | publish | keys`: the feed commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from urllib.parse import urlsplit

from appliance import config as configuration
from appliance import runtime
from appliance.commands.progress import Progress, mb
from appliance.config import FeedConfig
from appliance.config.filters import FilterError, parse_filters
from appliance.jobs.lock import SYNC, exclusive
from appliance.jobs.sync import sync_feeds
from appliance.streams.gpg import SignatureError, Signer, Verifier
from appliance.streams.layout import KEY_PATHS, curated_key
from appliance.streams.publish import Publisher, PublishError, load_products_file
from appliance.streams.query import format_rows, format_table, query
from appliance.streams.reader import FeedError, FeedReader, split_feed_url
from appliance.streams.sync import ItemStatus


def _err(message: str) -> int:
    print(f"archive-local: {message}", file=sys.stderr)
    return 1


async def run_query(args: argparse.Namespace, config: configuration.Config) -> int:
    url = args.url or f"http://127.0.0.1:{config.listen.port}/"
    try:
        filters = parse_filters(args.filters)
    except FilterError as exc:
        print(f"archive-local: {exc}", file=sys.stderr)
        return 2
    root, index_path = split_feed_url(url)
    try:
        verifier = await Verifier.open(args.keyring) if args.keyring else None
    except SignatureError as exc:
        return _err(str(exc))
    if verifier is None:
        print("archive-local: warning: signatures not verified (no --keyring)", file=sys.stderr)
    try:
        # the default is this appliance's own feed: its own port is a fine target here
        async with runtime.core(config, extra_urls=[url], own_port_allowed=True) as base:
            reader = FeedReader(root, base.fetcher, verifier)
            rows = [r async for r in query(reader, index_path, filters, args.max_versions)]
    except FeedError as exc:
        return _err(str(exc))
    finally:
        if verifier:
            verifier.close()
    if args.json:
        print(json.dumps(rows, indent=1, sort_keys=True))
    elif args.output_format:
        text, errors = format_rows(rows, args.output_format)
        sys.stdout.write(text)
        for e in errors:
            print(e, file=sys.stderr)
    else:
        sys.stdout.write(format_table(rows))
    return 0


def _adhoc_feed(args: argparse.Namespace) -> FeedConfig:
    url = configuration.parse_upstream(args.url, "URL")
    name = args.name or urlsplit(url).hostname or "feed"
    name = re.sub(r"[^A-Za-z0-9._-]", "-", name)
    keyring = args.keyring
    if keyring is None and not args.no_verify:
        raise configuration.ConfigError("--keyring FILE is required (or --no-verify)")
    return FeedConfig(
        name,
        url if url.endswith("json") else url + "/",
        keyring,
        tuple(args.filters),
        args.max_versions,
    )


async def run_sync(args: argparse.Namespace, config: configuration.Config) -> int:
    try:
        parse_filters(args.filters)
        if args.url:
            feeds = [_adhoc_feed(args)]
        else:
            feeds = [f for f in config.images.feeds if args.feed in (None, f.name)]
            if not feeds:
                raise configuration.ConfigError(
                    f"no feed named {args.feed!r} in images.feeds"
                    if args.feed
                    else "no feeds configured (images.feeds) and no URL given"
                )
    except (configuration.ConfigError, FilterError) as exc:
        print(f"archive-local: {exc}", file=sys.stderr)
        return 2
    async with runtime.core(config, extra_urls=[f.url for f in feeds]) as base:
        progress = Progress(sys.stderr.isatty() and not args.json, base.engine.downloading)
        ticker = asyncio.create_task(progress.ticker())
        try:
            async with exclusive(config.cache.dir, SYNC):
                outcomes = await sync_feeds(
                    config,
                    base.engine,
                    base.fetcher,
                    report=progress,
                    dry_run=args.dry_run,
                    feeds=feeds,
                )
        finally:
            ticker.cancel()
            progress.clear()
    if args.json:
        print(json.dumps([o.as_dict() for o in outcomes], indent=1))
    else:
        for o in outcomes:
            verb = "would fetch" if args.dry_run else "fetched"
            n = o.count(ItemStatus.WOULD_FETCH if args.dry_run else ItemStatus.FETCHED)
            removed = o.count(ItemStatus.WOULD_REMOVE if args.dry_run else ItemStatus.REMOVED)
            state = "ok" if o.ok else f"FAILED: {o.error}"
            print(
                f"{o.feed}: {verb} {n}, present {o.count('present')}, rejected "
                f"{o.count('failed')}, removed {removed}; {mb(o.bytes_fetched)} in "
                f"{o.seconds:.1f} s; {state}"
            )
    return 0 if all(o.ok for o in outcomes) else 1


async def run_keys(args: argparse.Namespace, config: configuration.Config) -> int:
    """Show the appliance's signing key; with `--create`, make it first (once) and
    publish its public half. Without it nothing is written (the service makes the key
    when it first signs a feed)."""
    home = config.images.gnupg_home
    try:
        if not args.create and not home.is_dir():
            return _err(f"no signing key yet in {home} (archive-local keys --create makes it)")
        signer = await Signer.open(home)
        if not args.create:
            fingerprint = await asyncio.to_thread(lambda: signer.fingerprint)
            if fingerprint is None:
                return _err(f"no signing key yet in {home} (archive-local keys --create makes it)")
        else:
            fingerprint = await asyncio.to_thread(signer.ensure_key)
            async with runtime.core(config) as base:
                for path, armor in KEY_PATHS.items():
                    key = await asyncio.to_thread(signer.public_key, armor)
                    await base.engine.put(curated_key(path), key)
    except (OSError, SignatureError) as exc:
        return _err(f"signing key: {exc}")
    port = config.listen.port
    urls = [f"http://archive.local:{port}/{p}" for p in KEY_PATHS]
    if args.json:
        print(
            json.dumps(
                {
                    "fingerprint": fingerprint,
                    "gnupg_home": str(signer.home),
                    "public_key_urls": urls,
                },
                indent=1,
            )
        )
    else:
        print(f"fingerprint: {fingerprint}")
        for url in urls:
            print(f"public key:  {url}")
    return 0


async def run_publish(args: argparse.Namespace, config: configuration.Config) -> int:
    if any(f.name == args.name for f in config.images.feeds):
        return _err(f"--name {args.name}: that name belongs to a mirrored feed (images.feeds)")
    if not configuration.valid_name(args.name):
        return _err(f"--name {args.name!r}: letters, digits, '.', '_' or '-'")
    try:
        spec = await asyncio.to_thread(load_products_file, args.products)
        signer = await Signer.open(config.images.gnupg_home)
        async with runtime.core(config) as base:
            publisher = Publisher(base.engine, signer, args.name)
            async with exclusive(config.cache.dir, SYNC):
                plan = await publisher.publish(args.build_dir, spec, args.version, args.dry_run)
    except (PublishError, SignatureError, OSError) as exc:
        return _err(f"publish: {exc}")
    if args.json:
        print(
            json.dumps(
                {
                    "feed": plan.feed,
                    "content_id": plan.content_id,
                    "version": plan.version,
                    "dry_run": args.dry_run,
                    "items": plan.items,
                },
                indent=1,
            )
        )
        return 0
    verb = "would publish" if args.dry_run else "published"
    for item in plan.items:
        print(
            f"{verb} {item['product']} {plan.version} {item['item']}: {item['path']} "
            f"({mb(item['size'])})"
        )
    print(f"feed: /images/{plan.feed}/streams/v1/index.sjson (and the curated /streams/v1/)")
    return 0

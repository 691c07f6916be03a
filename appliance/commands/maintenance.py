"""`archive-local verify` and `archive-local expire`: the cache's maintenance commands.

When the service is running (it answers on its configured address) the command asks
it through the admin API, so the removals go through the service's engine and nothing
stale stays in its memory; otherwise the command works on the cache directory itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from appliance import config as configuration
from appliance import runtime
from appliance.commands.claim import running_holder
from appliance.commands.status import DIRECT, listen_given, not_running, service_url
from appliance.config import human_size as size
from appliance.web.token import AdminUnavailable, load_token


class _NoService(Exception):
    pass


def _ask_service(config: configuration.Config, base: str, action: str, body: dict[str, Any]) -> Any:
    """POST to the running service's admin API at `base` (never through a proxy);
    _NoService when nothing listens."""
    url = f"{base}/api/admin/{action}"
    try:
        DIRECT.open(f"{base}/api/status", timeout=3).close()
    except urllib.error.HTTPError:
        pass  # something answers: the service
    except OSError:
        raise _NoService() from None
    token = load_token(config.admin.token_file)
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with DIRECT.open(req, timeout=None) as r:
        return json.loads(r.read())


def _run(
    config: configuration.Config,
    action: str,
    body: dict[str, Any],
    local: Any,
    listen_given: bool = False,
) -> Any:
    """The running service does it; else `local` on the cache directory, when that is a
    cache no service holds (never a directory the user did not mean: "0 files checked"
    of an empty default while the service runs elsewhere)."""
    base = service_url(config, listen_given)
    try:
        return _ask_service(config, base, action, body)
    except _NoService:
        holder = running_holder(config.cache.dir)
        if holder is not None:
            raise RuntimeError(
                f"{holder.describe()} holds {config.cache.dir} but does not answer on {base}"
            ) from None
        if local is None or not config.cache.dir.is_dir():
            raise RuntimeError(not_running(config, base)) from None
        return asyncio.run(local())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip()
        raise RuntimeError(f"the service answered {exc.code}: {detail}") from None
    except (OSError, AdminUnavailable) as exc:
        raise RuntimeError(f"cannot ask the running service: {exc}") from None


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, checked: int, nbytes: int) -> None:
        if self.enabled and checked % 100 == 0:
            sys.stderr.write(f"\rverify: {checked} files, {size(nbytes)} read")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def run_verify(args: argparse.Namespace, config: configuration.Config) -> int:
    progress = _Progress(sys.stderr.isatty() and not args.json)

    async def local() -> dict[str, Any]:
        async with runtime.maintenance(config) as runs:
            return await runs.verify(args.fix, progress)

    try:
        result = _run(config, "verify", {"fix": args.fix}, local, listen_given(args))
    except RuntimeError as exc:
        print(f"archive-local: verify: {exc}", file=sys.stderr)
        return 1
    progress.done()
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for p in result["problems"]:
            print(f"{'removed' if args.fix else 'bad'}: {p['key']}: {p['problem']}")
        print(
            f"verify: {result['checked']} files ({size(result['bytes'])}) checked in "
            f"{result['seconds']} s: {result['ok']} ok, {result['bad']} bad"
            + (f", {result['removed']} removed" if args.fix else "")
        )
    return 0 if result["bad"] == result["removed"] or not result["bad"] else 3


def run_expire(args: argparse.Namespace, config: configuration.Config) -> int:
    async def local() -> dict[str, Any]:
        async with runtime.maintenance(config) as runs:
            await runs.catalog.rebuild()  # no service keeps the table current
            return await runs.expire(config.cache.expire_after, dry_run=args.dry_run)

    try:
        result = _run(config, "expire", {"dry_run": args.dry_run}, local, listen_given(args))
    except RuntimeError as exc:
        print(f"archive-local: expire: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for key in result["removed"]:
        print(f"{verb} {key}")
    print(
        f"expire: {verb} {result['expired']} files ({size(result['expired_bytes'])}); "
        f"{result['referenced']} referenced, {result['waiting']} unreferenced but within "
        f"cache.expire_after, {result['unindexed']} of repositories without a cached index"
    )
    return 0


def _through_service(
    args: argparse.Namespace,
    config: configuration.Config,
    action: str,
    body: dict[str, Any],
    say: Callable[[Any], str],
) -> int:
    """An admin action only the running service can do: its answer as JSON or a line."""
    try:
        result = _run(config, action, body, None, listen_given(args))
    except RuntimeError as exc:
        print(f"archive-local: {action}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else say(result))
    return 0


def run_drain(args: argparse.Namespace, config: configuration.Config) -> int:
    """`archive-local drain [--off]`: /healthz 503 (or 200 again), through the service."""
    return _through_service(
        args,
        config,
        "drain",
        {"drain": not args.off},
        lambda r: (
            "draining: /healthz answers 503" if r["draining"] else "serving: /healthz answers 200"
        ),
    )


def run_purge(args: argparse.Namespace, config: configuration.Config) -> int:
    """`archive-local purge PATH|URL` or `--remap NAME`: remove cached files, through the
    service (its memory must forget them too)."""
    if bool(args.remap) == bool(args.target):
        print("archive-local: purge: give a path or URL, or --remap NAME", file=sys.stderr)
        return 2
    body = {"remap": args.remap} if args.remap else {"path": args.target}
    return _through_service(
        args, config, "purge", body, lambda r: f"purge: removed {r['removed']} files"
    )


def run_reload(args: argparse.Namespace, config: configuration.Config) -> int:
    """`archive-local reload`: the service re-reads its configuration file (as SIGHUP)."""

    def say(r: dict[str, Any]) -> str:
        restart = ", ".join(r.get("restart_needed_for") or []) or "nothing"
        return f"reloaded {r.get('reloaded')}; a restart is needed for: {restart}"

    return _through_service(args, config, "reload", {}, say)

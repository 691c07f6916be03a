"""Command line: parse the arguments, load the configuration, run one command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance import config as configuration

log = logging.getLogger("appliance")


class JsonFormatter(logging.Formatter):
    """One JSON object per line (`logging.format: json`), for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="archive-local", description="apt cache and image mirror")
    p.add_argument("--version", action="version", version=f"archive-local {__version__}")
    _common_options(p, argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)
    # `archive-local serve --config F` as much as `archive-local --config F serve`:
    # every subcommand accepts the common options too (a given one wins)
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, argparse.SUPPRESS)

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)

    _service_commands(command)
    _image_commands(command)
    _operator_commands(command)
    return p


Command = Callable[..., argparse.ArgumentParser]  # adds a subcommand with the common options


def _service_commands(command: Command) -> None:
    """`serve` and `config`."""
    serve = command("serve", help="run the apt proxy")
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by the master
    serve.add_argument("--inherit", help=argparse.SUPPRESS)  # the master's sockets and lock
    serve.add_argument(
        "--remap",
        action="append",
        default=[],
        metavar="NAME=URL[,URL...]",
        help="serve /NAME/ from these mirrors (repeatable; overrides apt.remaps.NAME)",
    )
    command("config", help="print the effective configuration and exit")


def _image_commands(command: Command) -> None:
    """`query`, `sync`, `publish`, `seed`: the simplestreams side."""
    q = command("query", help="list a simplestreams feed's items (like sstream-query)")
    q.add_argument(
        "url",
        nargs="?",
        help="mirror root or streams/v1/*.json|sjson URL or path "
        "(default: this appliance's own feed)",
    )
    q.add_argument(
        "filters",
        nargs="*",
        metavar="FILTER",
        help="key=value, key!=value, key~regex, key!~regex (all must match)",
    )
    q.add_argument("--keyring", type=Path, help="verify signatures with this keyring")
    q.add_argument("--max", type=int, dest="max_versions", help="newest N versions per product")
    out = q.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="a JSON list of flattened items")
    out.add_argument("-o", "--output-format", help="%%(key)s format per item")
    sy = command("sync", help="mirror image feeds into the cache (like sstream-mirror)")
    sy.add_argument("url", nargs="?", help="ad hoc: a feed's mirror root or index URL")
    sy.add_argument("filters", nargs="*", metavar="FILTER", help="ad hoc: item filters")
    sy.add_argument("--feed", help="sync only this configured feed")
    sy.add_argument("--name", help="ad hoc: serve the feed at /images/NAME/")
    sy.add_argument("--keyring", type=Path, help="ad hoc: keyring that verifies the feed")
    sy.add_argument("--no-verify", action="store_true", help="ad hoc: accept an unsigned feed")
    sy.add_argument("--max", type=int, dest="max_versions", help="ad hoc: versions per product")
    sy.add_argument("--dry-run", action="store_true", help="show what would change")
    sy.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    pub = command("publish", help="publish locally built images as a signed feed")
    pub.add_argument("build_dir", type=Path, help="directory holding the image files")
    pub.add_argument("--products", type=Path, required=True, help="products YAML (see docs)")
    pub.add_argument("--name", default="local", help="served at /images/NAME/ (default local)")
    pub.add_argument("--version", help="version name (default: today's YYYYMMDD[.N])")
    pub.add_argument("--dry-run", action="store_true", help="show what would be published")
    pub.add_argument("--json", action="store_true", help="machine-readable output")
    seed = command("seed", help="put mirrored images into Glance / EC2 clouds")
    seed.add_argument("targets", nargs="*", metavar="TARGET", help="seed only these targets")
    seed.add_argument("--dry-run", action="store_true", help="show what would change")
    seed.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def _operator_commands(command: Command) -> None:
    """What an operator asks of a cache or its running service."""
    st = command("status", help="summary of the running service (from /api/status)")
    st.add_argument("--url", help="the service (default: from 'listen')")
    ver = command("verify", help="re-check every cached file against its digest and indexes")
    ver.add_argument("--fix", action="store_true", help="remove the files that are wrong")
    exp = command("expire", help="remove pool files no cached index lists any more")
    exp.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    dr = command("drain", help="make /healthz answer 503 (load balancers stop sending clients)")
    dr.add_argument("--off", action="store_true", help="serve again: /healthz answers 200")
    keys = command("keys", help="show the appliance's signing key (--create: make it once)")
    keys.add_argument("--create", action="store_true", help="make the key if there is none")
    pu = command("purge", help="remove cached files (one path or URL, or a whole remap)")
    pu.add_argument("target", nargs="?", help="/REMAP/path or http://host/path as apt asks it")
    pu.add_argument("--remap", help="every file of this remap")
    rl = command("reload", help="make the service re-read its configuration file (as SIGHUP)")
    for parser in (st, ver, exp, dr, keys, pu, rl):  # each prints JSON for scripts instead of text
        parser.add_argument("--json", action="store_true", help="machine-readable output")


def _common_options(p: argparse.ArgumentParser, default: object) -> None:
    p.add_argument(
        "--config", type=Path, default=default, help="YAML configuration (default: embedded)"
    )
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")
    # the service's own flags: `serve` runs with them, the other commands find it by them
    p.add_argument("--listen", default=default, help="HOST:PORT (overrides 'listen')")
    p.add_argument("--cache-dir", default=default, help="cache directory (overrides 'cache.dir')")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments, with --config and -v accepted before or after the subcommand."""
    args = _parser().parse_args(argv)
    args.config = getattr(args, "config", None)
    args.verbose = getattr(args, "verbose", False)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "serve":  # a reload before the service handles it: nothing to
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reload yet (and not a kill)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = configuration.load(args.config)
        config = configuration.with_overrides(
            config,
            listen=getattr(args, "listen", None),
            cache_dir=getattr(args, "cache_dir", None),
            remaps=args.remap if args.command == "serve" else (),
        )
    except configuration.ConfigError as exc:
        print(f"archive-local: configuration error: {exc}", file=sys.stderr)
        return 2
    if config.logging.format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    if args.command == "config":
        print(configuration.dump(config), end="")
        return 0
    return _run(args, config)


def _run(args: argparse.Namespace, config: configuration.Config) -> int:
    """One subcommand; each builds what it needs through `runtime`."""
    if args.command == "query":
        from appliance.commands.feeds import run_query

        return asyncio.run(run_query(args, config))
    if args.command == "publish":
        from appliance.commands.feeds import run_publish

        return asyncio.run(run_publish(args, config))
    if args.command == "keys":
        from appliance.commands.feeds import run_keys

        return asyncio.run(run_keys(args, config))
    if args.command == "sync":
        from appliance.commands.feeds import run_sync

        return asyncio.run(run_sync(args, config))
    if args.command == "status":
        from appliance.commands.status import run_status

        return run_status(args, config)
    if args.command == "seed":
        from appliance.commands.seed import run_seed

        return asyncio.run(run_seed(args, config))
    if args.command == "drain":
        from appliance.commands.maintenance import run_drain

        return run_drain(args, config)
    if args.command in ("purge", "reload"):
        from appliance.commands import maintenance

        run = maintenance.run_purge if args.command == "purge" else maintenance.run_reload
        return run(args, config)
    if args.command in ("verify", "expire"):
        from appliance.commands import maintenance

        run = maintenance.run_verify if args.command == "verify" else maintenance.run_expire
        return run(args, config)
    return _serve(args, config)


def _serve(args: argparse.Namespace, config: configuration.Config) -> int:
    """`serve`: claim the cache directory and the ports, then run the service (or the
    master of several workers)."""
    from appliance.commands import claim  # (the master of workers imports no more)

    try:
        if args.worker_index is None:  # a worker runs on what its master claimed
            claim.prepare_cache_dir(config)
            lock = claim.lock_cache_dir(config)
            if config.workers > 1:
                from appliance.commands.workers import run_master

                return run_master(config, sys.argv[1:], lock, main)
            claim.probe_port(config.listen)
            if config.tls is not None:
                claim.probe_port(config.tls.listen, "tls.listen")
        from appliance.commands.serve import serve

        inherited = claim.Listeners.inherited(args.inherit) if args.inherit else None
        asyncio.run(serve(config, args.config, worker=args.worker_index, inherited=inherited))
    except claim.Refused as exc:
        print(f"archive-local: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"archive-local: cannot listen on {config.listen}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0

"""`archive-local status`: the running service's summary on a terminal (or its JSON)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from appliance import config as configuration
from appliance.commands.claim import running_holder
from appliance.config import human_size
from appliance.web.status import _ago


def _bytes(n: float | None) -> str:
    return "-" if n is None else human_size(n)


def service_url(config: configuration.Config) -> str:
    """Where the service of this configuration answers: the address the service holding
    `cache.dir` recorded (it may have been started with `--listen`), else `listen`."""
    listen = config.listen
    holder = running_holder(config.cache.dir)
    if holder is not None and holder.listen:
        with contextlib.suppress(configuration.ConfigError):
            listen = configuration.parse_listen(holder.listen.split(",", 1)[0], "listen")
    host = listen.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1" if host != "::" else "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{listen.port}"


def not_running(config: configuration.Config, url: str) -> str:
    """Why a command found no service, and how to name the one meant."""
    return (
        f"no archive-local answers on {url} and none holds {config.cache.dir}; give the"
        " --config, --listen or --cache-dir the service was started with"
    )


def summary(s: dict[str, Any]) -> str:
    lines = [f"archive-local {s['version']}, up {int(s['uptime_seconds'] // 60)} min"]
    ratio = "-" if s["hit_ratio"] is None else f"{s['hit_ratio'] * 100:.1f} %"
    lines.append(
        f"hit ratio {ratio}; served from cache {_bytes(s['bytes']['cache'])}, "
        f"from upstream {_bytes(s['bytes']['upstream'])}"
    )
    c = s["cache"]
    lines.append(
        f"cache {_bytes(c['bytes'])} in {c['entries']} files (max {_bytes(c['max_bytes'])}), "
        f"{c['evictions']} evictions"
    )
    for svc, r in s["requests"].items():
        lines.append(f"  {svc:<7} " + ", ".join(f"{k} {v}" for k, v in r.items()))
    for name, u in s["upstreams"].items():
        err = (
            f", last error {u['last_error']} {_ago(u['last_error_at'])}" if u["last_error"] else ""
        )
        lines.append(f"upstream {name}: {u['requests']} requests, {u['errors']} errors{err}")
    for d in s["downloads"]:
        lines.append(f"downloading {d['key']}: {_bytes(d['written'])}, {d['clients']} clients")
    for name, o in s["sync"]["feeds"].items():
        lines.append(f"sync {name}: {'ok' if o['ok'] else 'FAILED: ' + str(o['error'])}")
    for name, o in s["seed"]["targets"].items():
        lines.append(f"seed {name}: {'ok' if o['ok'] else 'FAILED: ' + str(o['error'])}")
    for p in s["images"]:
        for v in p["versions"]:
            where = ", ".join(f"{x['target']}/{x['region']}" for x in v["seeded"]) or "not seeded"
            lines.append(f"image {p['feed']} {p['product']} {v['version']}: {where}")
    return "\n".join(lines) + "\n"


def run_status(args: argparse.Namespace, config: configuration.Config) -> int:
    url = (args.url or service_url(config)).rstrip("/") + "/api/status"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            data = json.loads(r.read())
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError) and not args.url:
            print(f"archive-local: status: {not_running(config, url)}", file=sys.stderr)
        else:
            print(f"archive-local: cannot read {url}: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"archive-local: cannot read {url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        sys.stdout.write(summary(data))
    return 0

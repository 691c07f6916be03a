"""`archive-local status`: the running service's summary on a terminal (or its JSON)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from appliance import config as configuration
from appliance.cache.egress import is_local_address
from appliance.commands.claim import running_holder
from appliance.config import human_size
from appliance.web import clouds, glance, holdings
from appliance.web.status.tables import ago as _ago


def _bytes(n: float | None) -> str:
    return "-" if n is None else human_size(n)


# the service is asked directly, never through an `http_proxy` of the environment (an
# apt-proxy host often has one): the admin token must not travel to another host
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def service_url(config: configuration.Config, listen_given: bool = False) -> str:
    """Where the service of this configuration answers: unless `--listen` named it, the
    address the service holding `cache.dir` recorded (it may have been started with
    `--listen`) when that is an address of this machine, else `listen`."""
    listen = config.listen
    holder = None if listen_given else running_holder(config.cache.dir)
    if holder is not None and holder.listen:
        with contextlib.suppress(configuration.ConfigError, ValueError):
            recorded = configuration.parse_listen(holder.listen.split(",", 1)[0], "listen")
            if recorded.host in ("", "0.0.0.0", "::") or is_local_address(recorded.host):
                listen = recorded
    host = listen.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1" if host != "::" else "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{listen.port}"


def listen_given(args: argparse.Namespace) -> bool:
    return getattr(args, "listen", None) is not None


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
    lines += glance.lines(s)
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
        median = glance.latency(u.get("median_seconds")).replace("\u00a0", " ")
        lines.append(
            f"upstream {name}: {u['requests']} requests, {u['errors']} errors{err}"
            f"; {u.get('state', 'unknown')}, median {median}"
        )
    for d in s["downloads"]:
        lines.append(f"downloading {d['key']}: {_bytes(d['written'])}, {d['clients']} clients")
    for name, o in s["sync"]["feeds"].items():
        lines.append(f"sync {name}: {'ok' if o['ok'] else 'FAILED: ' + str(o['error'])}")
    for name, o in s["seed"]["targets"].items():
        lines.append(
            f"seed {name}: {'ok' if o['ok'] else 'FAILED: ' + str(o['error'])}, "
            f"{o['seconds']:.1f} s, {_ago(o.get('finished'))}"
        )
    lines += clouds.summary(s.get("clouds"))  # each image and where it is seeded
    lines += holdings.text(s.get("cached"), _bytes, _ago)
    for c in (s.get("clients") or [])[:5]:
        lines.append(
            f"client {c['address']} ({c['agent']}): {c['requests']} requests, "
            f"{_bytes(c['bytes'])} in 24 h"
        )
    lines += _use(s.get("use") or {})
    events = s.get("events") or []
    if events:
        lines.append(f"recent events ({len(events)}, newest first):")
    for e in events[:10]:
        at = time.strftime("%H:%M:%S", time.gmtime(e.get("time", 0)))
        lines.append(f"  {at} {e.get('level', '')} {e.get('source', '')}: {e.get('message', '')}")
    return "\n".join(lines) + "\n"


def _use(use: dict[str, Any]) -> list[str]:
    """The lines to paste into clients (named for the host the service was asked on:
    from this machine, the discovery name)."""
    if "apt_proxy" not in use:
        return []
    out = [f"use: {use['apt_proxy_file']}"]
    out += [f"  {r['line']}" for r in use.get("remap_lines", [])]
    if use.get("lxd"):
        out += [f"  {use['lxd']['certificate']}", f"  {use['lxd']['remote']}"]
    if use.get("juju"):
        out.append(f"  {use['juju']}")
    return out


def run_status(args: argparse.Namespace, config: configuration.Config) -> int:
    url = (args.url or service_url(config, listen_given(args))).rstrip("/") + "/api/status"
    try:
        with DIRECT.open(url, timeout=10) as r:
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

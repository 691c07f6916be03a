"""`make bench-fleet`: several units on one object store (a real Swift, S3 API, loopback).

Measures, medians of ROUNDS:
- 40 files of 1 MiB through one unit: missed with a store behind (HEAD, lease, upstream,
  upload), missed without one (the plain appliance), copied in from the store by a unit
  whose disk is empty, and hit on local disk;
- a 64 MiB file: the same four ways, time to first byte and to the last;
- 20 clients on 3 units asking for one uncached 16 MiB file at once: upstream fetches,
  time to first byte for the clients of the unit that fetches and of the others, with
  the units knowing each other (`peer_url`/`peers`: the others stream the holder's
  download) and without (the others wait for the object).

Usage: python bench/fleet_bench.py [--rounds 3] [--out results.json] [--python PY]
       [--no-fleet-key]
`--python`: the interpreter whose `appliance` runs the units (another build's venv, to
compare); `--no-fleet-key`: no `cache.store.fleet_key_file` (builds before it; without one a
unit copies in only what an index vouches for, so the copies here would go upstream).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.components import swift_aio  # noqa: E402
from tests.conftest import free_port, free_port_block  # noqa: E402
from tests.upstream import Upstream  # noqa: E402

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str) -> tuple[float, float, int]:
    started = time.monotonic()
    with OPENER.open(url, timeout=300) as r:
        first = r.read(1)
        ttfb = time.monotonic() - started
        n = len(first)
        while chunk := r.read(1 << 20):
            n += len(chunk)
    return ttfb, time.monotonic() - started, n


PYTHON = sys.executable  # the units' interpreter (--python)


class Unit:
    def __init__(
        self, work: Path, name: str, upstream: Upstream, store: dict | None, port: int = 0
    ) -> None:
        self.port = port or free_port()
        cache = work / name
        config = {
            "listen": f"127.0.0.1:{self.port}",
            "cache": {"dir": str(cache), "max_size": "4GiB", **({"store": store} if store else {})},
            "apt": {"remaps": {"debian": [f"{upstream.url}/debian"]}},
            "admin": {"token_file": str(work / f"token-{name}")},
            "images": {"gnupg_home": str(work / f"gnupg-{name}")},
            "discovery": {"mdns": False},
            "logging": {"access_log": "off"},
            "workers": 1,
        }
        work.mkdir(parents=True, exist_ok=True)
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "appliance", "--config", str(path), "serve"],
            stdout=open(work / f"{name}.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            cwd=work,  # never the source tree: `-m appliance` would import it from there
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                OPENER.open(self.url + "/healthz", timeout=1).read()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def many(base: str, paths: list[str], threads: int = 4) -> float:
    """Seconds to get every path, `threads` at a time."""
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda p: get(base + p), paths))
    return time.monotonic() - started


def fleet_round(upstream: Upstream, units: list[Unit], path: str, label: str, note: Any) -> None:
    """20 clients on the units at once for one uncached file."""
    before = upstream.count(path)
    urls = [units[i % 3].url + path for i in range(20)]
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(get, urls))
    note(f"fleet, {label}: upstream fetches", upstream.count(path) - before)
    ttfbs = sorted(a[0] for a in answers)
    note(f"fleet, {label}: ttfb fastest", ttfbs[0])
    note(f"fleet, {label}: ttfb median", statistics.median(ttfbs))
    note(f"fleet, {label}: ttfb slowest", ttfbs[-1])
    note(f"fleet, {label}: last byte slowest", max(a[1] for a in answers))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--no-fleet-key", dest="fleet_key", action="store_false")
    args = ap.parse_args()
    global PYTHON
    PYTHON = args.python
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    root = work / "upstream"
    small = [f"/debian/pool/main/s/small{i:02d}.deb" for i in range(40)]
    for p in small:
        (root / p.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / p.lstrip("/")).write_bytes(os.urandom(1 << 20))
    upstream = Upstream(root).start()
    swift = swift_aio.start(work / "swift", free_port_block(5))
    creds = work / "creds"
    creds.write_text(
        f"[default]\naws_access_key_id = {swift_aio.ACCESS_KEY}\n"
        f"aws_secret_access_key = {swift_aio.SECRET_KEY}\n"
    )
    key = work / "fleet-key"
    key.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    results: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    try:
        for r in range(args.rounds):
            bucket = f"bench-{uuid.uuid4().hex[:10]}"
            store = {
                "type": "s3",
                "endpoint": swift.endpoint,
                "bucket": bucket,
                "region": swift_aio.REGION,
                "credentials_file": str(creds),
                **({"fleet_key_file": str(key)} if args.fleet_key else {}),
            }
            big = f"/debian/pool/main/b/big{r}.deb"
            fleet = f"/debian/pool/main/f/fleet{r}.deb"
            waiting = f"/debian/pool/main/f/fleet{r}w.deb"
            for p, size in ((big, 64 << 20), (fleet, 16 << 20), (waiting, 16 << 20)):
                (root / p.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
                (root / p.lstrip("/")).write_bytes(os.urandom(size))
            ports = [free_port() for _ in range(3)]
            urls = [f"http://127.0.0.1:{p}" for p in ports]
            units = [
                Unit(
                    work / f"r{r}",
                    f"u{i}",
                    upstream,
                    {**store, "peer_url": urls[i], "peers": urls[:i] + urls[i + 1 :]},
                    ports[i],
                )
                for i in range(3)
            ]
            plain = Unit(work / f"r{r}", "plain", upstream, None)
            try:
                note("small: miss with store", many(units[0].url, small))
                note("small: miss, no store", many(plain.url, small))
                note("small: copied from store", many(units[1].url, small))
                note("small: local hit", many(units[1].url, small))
                for label, unit in (
                    ("miss with store", units[0]),
                    ("miss, no store", plain),
                    ("copied from store", units[1]),
                    ("local hit", units[1]),
                ):
                    ttfb, total, _ = get(unit.url + big)
                    note(f"64 MiB: {label}: ttfb", ttfb)
                    note(f"64 MiB: {label}: total", total)
                fleet_round(upstream, units, fleet, "streamed", note)
            finally:
                for u in (*units, plain):
                    u.stop()
            # the same without peers: the units that do not fetch wait for the object
            units = [Unit(work / f"r{r}w", f"u{i}", upstream, store) for i in range(3)]
            try:
                fleet_round(upstream, units, waiting, "waiting", note)
            finally:
                for u in units:
                    u.stop()
    finally:
        swift.stop()
        upstream.close()
    summary = {k: round(statistics.median(v), 3) for k, v in results.items()}
    for k, v in summary.items():
        extra = ""
        if k.startswith("small:"):
            extra = f"  ({40 / v:.0f} files/s, {40 / v:.0f} MiB/s)"
        print(f"{k:40s} {v:8.3f}{extra}")
    if args.out:
        args.out.write_text(json.dumps({"rounds": args.rounds, "runs": results, "median": summary}))


if __name__ == "__main__":
    main()

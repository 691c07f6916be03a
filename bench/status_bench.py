"""`make bench-status`: the status page of a big cache (10,000 cached files, 200 images).

Builds the cache directory (tests/bigcache.py), starts `archive-local serve` with the
defaults (`workers: auto`), waits until every worker answers, then times ROUNDS requests
each of `/` (the HTML page), `/api/status` and `/metrics`, one after another, and reports
the median and slowest time and the size of each. Also reports how long the service took
from its start until every worker answered.

Usage: python bench/status_bench.py [--rounds 20] [--entries 10000] [--images 200]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.apt.catalog import IndexCatalog  # noqa: E402
from appliance.cache.keys import UpstreamBase  # noqa: E402
from appliance.cache.store import FilesystemStore  # noqa: E402
from appliance.web import holdings  # noqa: E402
from tests.bigcache import (  # noqa: E402
    all_workers_status,
    fill_apt,
    publish_images,
    unreachable_targets,
)
from tests.conftest import free_port  # noqa: E402

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url: str, accept: str = "*/*") -> tuple[float, int]:
    started = time.monotonic()
    req = urllib.request.Request(url, headers={"Accept": accept})
    with OPENER.open(req, timeout=60) as r:
        body = r.read()
    return time.monotonic() - started, len(body)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--images", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="al-status-") as tmp:
        work = Path(tmp)
        cache = work / "cache"
        cache.mkdir()
        remaps = {
            "debian": ["http://127.0.0.1:9/debian"],
            "ubuntu": ["http://127.0.0.1:9/ubuntu"],
            "security": ["http://127.0.0.1:9/debian-security"],
        }
        fill_apt(cache, {n: u[0] for n, u in remaps.items()}, args.entries)
        port = free_port()
        config = work / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "listen": f"127.0.0.1:{port}",
                    "cache": {"dir": str(cache), "max_size": "50GiB"},
                    "apt": {"remaps": remaps},
                    "admin": {"token_file": str(work / "token")},
                    "discovery": {"mdns": False},
                    "images": {"gnupg_home": str(work / "gnupg")},
                    "seed": {"after_sync": False, "targets": unreachable_targets(work)},
                }
            )
        )
        publish_images(config, work, args.images)
        url = f"http://127.0.0.1:{port}"
        log = (work / "serve.log").open("wb")
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "--config", str(config), "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            workers = all_workers_status(url, config, timeout=120)["workers"]
            ready = time.monotonic() - started
            print(f"{args.entries} cached files, {args.images} images, workers {workers}")
            print(f"start until every worker answers: {ready:.1f} s")
            for path, accept in (("/", "text/html"), ("/api/status", "*/*"), ("/metrics", "*/*")):
                times, size = [], 0
                for _ in range(args.rounds):
                    seconds, size = fetch(url + path, accept)
                    times.append(seconds)
                print(
                    f"{path}: median {statistics.median(times) * 1000:.0f} ms, "
                    f"slowest {max(times) * 1000:.0f} ms, {size / 1024:.1f} KiB "
                    f"({args.rounds} requests)"
                )
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            subprocess.run(["gpgconf", "--homedir", str(work / "gnupg"), "--kill", "all"])
        # "What is cached" groups every entry off the event loop and keeps the result until
        # the cache changes: its cost, in this process, on the same directory
        store = FilesystemStore(cache)
        catalog = IndexCatalog(cache, store)
        prefixes = holdings.remap_prefixes(
            {n: UpstreamBase.parse(u[0]).key() for n, u in remaps.items()}
        )
        times = []
        try:
            for _ in range(5):
                cpu = time.process_time()
                holdings.compute(store, catalog.listed_by, prefixes)
                times.append(time.process_time() - cpu)
        finally:
            catalog.close()
        print(
            f"grouping {args.entries} files for What is cached: median "
            f"{statistics.median(times) * 1000:.0f} ms of CPU (5 runs)"
        )


if __name__ == "__main__":
    main()

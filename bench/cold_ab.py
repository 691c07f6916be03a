"""A/B of one case: 10 clients at once for one never-seen 60 MB file (unthrottled loopback
upstream, `workers: 1`, a fresh cache directory per round), two builds alternating.
One process on purpose: the per-core figure, as bench/profiles/archive-local-w1.sh measures it
(the default profile, `workers: auto`, gives the service's).

Usage: python bench/cold_ab.py --before OTHER_VENV/bin/python [--rounds 7]
Prints, per build, the median over rounds of the median client's total seconds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402
from tests.upstream import Upstream  # noqa: E402

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str) -> float:
    started = time.monotonic()
    with OPENER.open(url, timeout=120) as r:
        while r.read(1 << 20):
            pass
    return time.monotonic() - started


@contextlib.contextmanager
def appliance(
    argv: list[str], work: Path, url: str, settings: str = "", env: dict[str, str] | None = None
) -> Iterator[int]:
    """One build (`argv`: how to run its `appliance` module) serving the remap `debian`
    of `url` from a fresh cache under `work`, with the defaults but `settings` (YAML
    lines); its port, once it answers."""
    port = free_port()
    work.mkdir()
    config = work / "config.yaml"
    config.write_text(
        f"admin: {{token_file: {work}/token}}\nimages: {{gnupg_home: {work}/gnupg}}\n"
        "discovery: {mdns: false}\n" + settings
    )
    argv = [*argv, "--config", str(config), "serve", "--listen", f"127.0.0.1:{port}"]
    argv += ["--cache-dir", str(work / "cache"), "--remap", f"debian={url}/debian"]
    with open(work / "log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(150):
            try:
                OPENER.open(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


def one_round(python: str, work: Path, upstream: Upstream, path: str) -> float:
    one = "workers: 1\nlogging: {access_log: 'off'}\n"
    with (
        appliance([python, "-m", "appliance"], work, upstream.url, one) as port,
        concurrent.futures.ThreadPoolExecutor(10) as pool,
    ):
        totals = list(pool.map(get, [f"http://127.0.0.1:{port}{path}"] * 10))
    return statistics.median(totals)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, help="the other build's python")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    builds = {"now": sys.executable, "before": args.before}
    work = Path(tempfile.mkdtemp(prefix="cold-ab-"))
    root = work / "upstream"
    (root / "debian/pool").mkdir(parents=True)
    upstream = Upstream(root).start()
    results: dict[str, list[float]] = {name: [] for name in builds}
    try:
        for r in range(args.rounds):
            for name, python in builds.items():
                path = f"/debian/pool/f{r}{name}.deb"
                (root / path.lstrip("/")).write_bytes(os.urandom(60 << 20))
                results[name].append(one_round(python, work / f"{name}{r}", upstream, path))
                (root / path.lstrip("/")).unlink()
    finally:
        upstream.close()
    for name, values in results.items():
        rounds = ", ".join(f"{v:.3f}" for v in values)
        print(f"{name}: median {statistics.median(values):.3f} s (rounds {rounds})")


if __name__ == "__main__":
    main()

"""A/B of apt's cold download through an upstream with a round-trip time: one client
pipelining like apt (one connection, up to ten requests out, the next sent as an answer
ends) asks N never-seen files; the upstream (127.0.0.1) waits `--rtt` seconds before each
answer, as a mirror a few countries away does. Both builds run with the defaults
(`workers: auto`), a fresh cache directory per round, alternating.

Usage: python bench/pipeline_bench.py --before OTHER_PYTHON [--before-path TREE]
           [--rounds 5] [--files 40] [--size 262144] [--rtt 0.03]
`--before-path`: a source tree run as `PYTHONPATH=TREE python -P -m appliance` (a
worktree of another commit with this venv). Prints, per build, the median seconds.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cold_ab import appliance  # noqa: E402
from tests.upstream import Upstream  # noqa: E402

DEPTH = 10  # apt's Acquire::http::Pipeline-Depth


def pipelined(port: int, paths: list[str]) -> float:
    """Seconds to get every path over one connection, DEPTH requests out at a time."""
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port))
    reader = sock.makefile("rb")
    sent = 0

    def send() -> None:
        nonlocal sent
        sock.sendall(f"GET {paths[sent]} HTTP/1.1\r\nHost: archive.local\r\n\r\n".encode())
        sent += 1

    while sent < min(DEPTH, len(paths)):
        send()
    for _ in paths:
        status = reader.readline()
        if b" 200 " not in status:
            raise SystemExit(f"bench: {status!r}")
        length = 0
        while (line := reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        reader.read(length)
        if sent < len(paths):
            send()
    sock.close()
    return time.monotonic() - started


def one_round(
    argv: list[str], env: dict[str, str], work: Path, url: str, paths: list[str]
) -> float:
    with appliance(argv, work, url, env=env) as port:
        return pipelined(port, paths)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, help="the other build's python")
    ap.add_argument("--before-path", help="the other build's source tree (PYTHONPATH)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--size", type=int, default=256 * 1024)
    ap.add_argument("--rtt", type=float, default=0.03)
    args = ap.parse_args()
    now_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before_env = dict(os.environ)
    if args.before_path:
        before_env["PYTHONPATH"] = args.before_path
    builds = {
        "now": ([sys.executable, "-P", "-m", "appliance"], now_env),
        "before": ([args.before, "-P", "-m", "appliance"], before_env),
    }
    work = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    root = work / "upstream"
    (root / "debian/pool").mkdir(parents=True)
    upstream = Upstream(root).start()
    results: dict[str, list[float]] = {name: [] for name in builds}
    try:
        for r in range(args.rounds):
            for name, (argv, env) in builds.items():
                paths = [f"/debian/pool/r{r}{name}/f{i}.deb" for i in range(args.files)]
                (root / f"debian/pool/r{r}{name}").mkdir()
                for path in paths:
                    (root / path.lstrip("/")).write_bytes(os.urandom(args.size))
                    upstream.delay[path] = args.rtt
                results[name].append(one_round(argv, env, work / f"{name}{r}", upstream.url, paths))
    finally:
        upstream.close()
    print(
        f"{args.files} files of {args.size} B, upstream RTT {args.rtt * 1000:.0f} ms, "
        f"one connection pipelining {DEPTH} deep; {args.rounds} alternating rounds"
    )
    for name, values in results.items():
        rounds = ", ".join(f"{v:.3f}" for v in values)
        print(f"{name}: median {statistics.median(values):.3f} s (rounds {rounds})")


if __name__ == "__main__":
    main()

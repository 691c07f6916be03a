"""A bounded random fuzzer for the HTTP front, with everything that must stay zero counted.

Cases are built from a seeded generator (request lines, methods, absolute URIs, CONNECT
targets, percent-encodings, headers, long lines, bytes flipped) and sent over raw
sockets, 48 at a time, to an appliance running under strace. Counted:

- cases run; answers by status; 500s (a client can never cause one);
- tracebacks and ERROR lines in the service log;
- crashes (the process gone);
- connections to anything but the configured upstream (canary listeners on another
  loopback address and on another port of the upstream's address);
- requests the upstream saw outside the configured remap, and files the service opened
  outside its cache directory (strace of open/openat/creat/rename/unlink/mkdir).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.configs import write_config
from tests.conftest import free_port, unavailable
from tests.e2e.faults.conftest import SCALE, report, tracebacks
from tests.hostile import Canary, Hostile

CASES = 5000 * SCALE

SEGMENTS = [
    "pool",
    "main",
    "dists",
    "by-hash",
    "SHA256",
    "InRelease",
    "a.deb",
    "..",
    ".",
    "%2e%2e",
    "%2E%2e%2f",
    "%00",
    "%ff%fe",
    "%c0%ae%c0%ae",
    "..%5c",
    ".meta",
    ".a.deb.meta",
    "%2f",
    "x" * 300,
    "%",
    "%zz",
    "~",
    "a b",
    "é",
    "\u202e",
    "a?b=c",
    "#frag",
    "",
    "-",
    "\\",
    "a.deb.part-00",
    ".state",
    "apt-index.sqlite",
    "..;",
    "%252e%252e",
    "images",
    "api",
]
GOOD = [
    "pool",
    "main",
    "a",
    "a.deb",
    "dists",
    "bookworm",
    "InRelease",
    "binary-amd64",
    "Packages.xz",
    "by-hash",
    "SHA256",
    "0" * 64,
    "a_1.0_all.deb",
    "x%2By",
    "%7Ea",
]
METHODS = [
    "GET",
    "GET",
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "OPTIONS",
    "TRACE",
    "CONNECT",
    "PATCH",
    "get",
    "G ET",
    "GET\x00",
    "PRI",
    "\x16\x03\x01",
    "M" * 100,
]
VERSIONS = ["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/0.9", "HTTP/2.0", "HTTP/1.1x", "", "HTTP/9"]


class Corpus:
    def __init__(self, seed: int, upstream: str, canaries: list[str]) -> None:
        self.rng = random.Random(seed)
        self.upstream = upstream  # host:port of the configured upstream
        self.canaries = canaries  # host:port that must never see a connection

    def path(self) -> str:
        r = self.rng
        parts = [r.choice(SEGMENTS if r.random() < 0.3 else GOOD) for _ in range(r.randint(0, 6))]
        prefix = r.choice(
            [
                "/debian/",
                "/debian/",
                "/",
                "/images/",
                "/streams/",
                "/keys/",
                "/api/",
                "/api/admin/",
                "/.well-known/",
                "//",
                "/debian/../",
                "",
            ]
        )
        return prefix + "/".join(parts)

    def target(self) -> str:
        r = self.rng
        kind = r.randrange(10)
        host = r.choice(
            [
                self.upstream,
                *self.canaries,
                "127.0.0.1",
                "[::1]:80",
                "localhost",
                "169.254.169.254",
                "user:pw@" + self.upstream,
                "example.invalid:99",
                self.upstream + ":80",
                "[fe80::1%25lo]",
                "0x7f.1",
                "127.1",
            ]
        )
        if kind < 5:
            return self.path()
        if kind < 8:
            scheme = r.choice(["http", "http", "https", "ftp", "file", "gopher", "HTTP"])
            return f"{scheme}://{host}{self.path()}"
        if kind == 8:
            return host  # CONNECT-style authority form
        return "*" if r.random() < 0.5 else r.choice(SEGMENTS)

    def headers(self) -> list[str]:
        r = self.rng
        one = r.choice
        hosts = [self.upstream, "archive.local", "", "a" * 300, *self.canaries]
        pool = [
            "Host: " + one(hosts),
            "Range: bytes=" + one(["0-", "-1", "5-2", "0-0,1-1", "9" * 30 + "-", "-", "x"]),
            "Range: " + one(["bytes=" + "9" * 5000, "items=0-1", "bytes= 1 - 2"]),
            "If-Range: " + one(['W/"x"', "Mon, 32 Foo 99999 25:61:61 GMT", ""]),
            "If-Modified-Since: " + one(["Mon, 01 Jan 2024 00:00:00 GMT", "yesterday", "9" * 40]),
            "If-None-Match: " + one(["*", '"a", W/"b"', ",,,", "x" * 500]),
            "Content-Length: " + one(["0", "5", "-1", "99999999999999999999", "abc"]),
            "Transfer-Encoding: chunked",
            "Connection: " + one(["close", "keep-alive", "upgrade", "Upgrade, close"]),
            "Upgrade: websocket",
            "Authorization: Bearer " + one(["x", "a" * 64, ""]),
            "Accept: " + one(["text/html", "*/*", "x" * 1000]),
            "Accept-Encoding: " + one(["gzip", "identity", "br"]),
            "X-Status-Fragment: " + one(["1", ""]),
            "Expect: " + one(["100-continue", "x"]),
            "X-Long: " + "v" * one([10, 8000, 9000]),
            "Bad Header Without Colon",
            "X-Injected: a\r\nX-Smuggled: b",
        ]
        return r.sample(pool, r.randint(0, 6))

    def case(self) -> bytes:
        """Two cases in three are well framed (so they reach routing and the cache)."""
        r = self.rng
        framed = r.random() < 0.67
        method = r.choice(["GET", "GET", "HEAD", "CONNECT", "POST"] if framed else METHODS)
        target = self.target()
        if method == "CONNECT" and r.random() < 0.7:
            target = r.choice([*self.canaries, self.upstream, "127.0.0.1:443", "x:0", ":443"])
        version = "HTTP/1.1" if framed else r.choice(VERSIONS)
        line = f"{method} {target} {version}".rstrip()
        headers = self.headers()
        if framed:  # HTTP/1.1 needs a Host: without one aiohttp answers 400 at once
            headers = [h for h in headers if ": " in h and "\r" not in h and "X-Long" not in h]
            headers = [h for h in headers if not h.startswith(("Content-Length", "Transfer"))]
            if not any(h.startswith("Host:") for h in headers):
                headers.insert(0, "Host: " + r.choice([self.upstream, "archive.local"]))
        lines = [line, *headers]
        body = b""
        if r.random() < 0.2 and not framed:
            body = r.choice([b"{}", b"[" * 5000, b"0\r\n\r\n", os.urandom(64), b'{"path":"/x"}'])
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogatepass") + body
        if not framed and r.random() < 0.4:  # flip, insert or cut bytes
            data = bytearray(data)
            for _ in range(r.randint(1, 4)):
                i = r.randrange(len(data))
                choice = r.randrange(3)
                if choice == 0:
                    data[i] = r.randrange(256)
                elif choice == 1:
                    data[i:i] = r.choice([b"\r\n", b"\x00", b"%", b" ", b"\n\n"])
                else:
                    del data[i:]
                    break
            data = bytes(data)
        if r.random() < 0.1:  # pipelined: the same again on the connection
            data = data * 2
        return data


async def _send(port: int, data: bytes) -> int | None:
    """Send one case; the status of the first answer (None: no answer, closed)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except (OSError, TimeoutError):
        return -1
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.read(64), 2)  # a cut request gets no answer
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return None
    finally:
        writer.close()
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return int(m.group(1)) if m else None


_OPEN = re.compile(
    r"^\d+\s+(\S+)\s+(open|openat|openat2|creat|mkdir|mkdirat|unlink|unlinkat|"
    r'rename|renameat|renameat2)\((?:AT_FDCWD, |\d+<[^>]*>, )?"([^"]*)"'
)


def _outside(trace: Path, started: float, allowed: list[str]) -> list[str]:
    """Files touched after `started` (strace -tt times) outside the allowed prefixes."""
    bad = []
    for line in trace.read_text(errors="replace").splitlines():
        m = _OPEN.match(line)
        if not m:
            continue
        h, mi, s = m.group(1).split(":")
        when = int(h) * 3600 + int(mi) * 60 + float(s)
        if when < started:
            continue
        path = os.path.normpath(m.group(3))
        if not any(path == a or path.startswith(a.rstrip("/") + "/") for a in allowed):
            bad.append(f"{m.group(2)} {path}")
    return bad


async def test_fuzz_the_http_front(tmp_path: Path) -> None:
    if shutil.which("strace") is None:
        unavailable("strace not found: apt-get install strace (make test installs it)")
    up = Hostile().start()
    up.files["/debian/pool/a.deb"] = os.urandom(5000)
    up.files["/debian/dists/InRelease"] = b"Origin: fuzz\n"
    canaries = [Canary("127.0.0.3"), Canary("127.0.0.1")]
    port = free_port()
    cache = tmp_path / "cache"
    config = write_config(
        tmp_path / "fuzz.yaml",
        {
            "listen": f"127.0.0.1:{port}",
            "cache": {"dir": str(cache)},
            "apt": {"remaps": {"debian": [f"{up.url}/debian"]}, "allow": []},
            "admin": {"token_file": str(tmp_path / "token")},
            "discovery": {"mdns": False},
            "upstream": {"connect_timeout": 2, "read_timeout": 5},
        },
    )
    trace, log = tmp_path / "strace.txt", tmp_path / "fuzz.log"
    proc = subprocess.Popen(
        [
            "strace",
            "-f",
            "-tt",
            "-qq",
            "-y",
            "--seccomp-bpf",
            "-o",
            str(trace),
            "-e",
            "trace=open,openat,openat2,creat,mkdir,mkdirat,unlink,unlinkat,rename,"
            "renameat,renameat2",
            sys.executable,
            "-m",
            "appliance",
            "--config",
            str(config),
            "serve",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # strace and the service in one group: both get the signal
    )
    try:
        deadline = time.monotonic() + 30
        while await _send(port, b"GET /debian/pool/a.deb HTTP/1.1\r\nHost: x\r\n\r\n") != 200:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.1)
        now = time.time()
        local = time.localtime(now)
        started = local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec + now % 1
        corpus = Corpus(1234, up.hostport, [f"{c.host}:{c.port}" for c in canaries])
        cases = [corpus.case() for _ in range(CASES)]
        statuses: Counter[int | None] = Counter()
        sem = asyncio.Semaphore(48)

        async def one(data: bytes) -> None:
            async with sem:
                statuses[await _send(port, data)] += 1

        t0 = time.monotonic()
        await asyncio.gather(*(one(c) for c in cases))
        took = time.monotonic() - t0
        crashed = proc.poll() is not None
        await asyncio.sleep(1.2)  # the access log is flushed once a second
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        up.close()
        for c in canaries:
            c.close()
    text = log.read_text(errors="replace")
    allowed = [
        str(cache),
        "/proc",
        "/dev",
        "/sys",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/nsswitch.conf",
        "/etc/host.conf",
        "/etc/gai.conf",
        "/etc/localtime",
        "/usr/share/zoneinfo",
        sys.prefix,
        sys.base_prefix,
        "/usr/lib",
        "/lib",
        str(Path(__file__).parents[3] / "appliance"),
        "/tmp/pytest-of-root",
    ]
    allowed = [a for a in allowed if a not in ("/tmp/pytest-of-root",)]
    outside = _outside(trace, started, allowed)
    # the upstream may be asked for any path (its host is configured), never one that climbs
    stray = [
        r.path
        for r in up.requests
        if re.search(r"(^|/)(\.|%2e)", r.path, re.I) or "//" in r.path or "\\" in r.path
    ]
    figures = {
        "cases": CASES,
        "seconds": round(took, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
        "status_500": statuses[500],
        "tracebacks": len(tracebacks(text)),
        "error_lines": text.count(" ERROR "),
        "crashed": crashed,
        "canary_connections": sum(c.hits for c in canaries),
        "upstream_requests": len(up.requests),
        "upstream_paths_escaping": len(stray),
        "files_outside_cache": len(outside),
    }
    report("fuzz-http-front", **figures)
    print(figures)
    assert not crashed, text[-3000:]
    assert statuses[500] == 0, figures
    assert tracebacks(text) == [], tracebacks(text)[:5]
    assert figures["error_lines"] == 0, [ln for ln in text.splitlines() if " ERROR " in ln][:5]
    assert figures["canary_connections"] == 0
    assert stray == [], stray[:10]
    assert outside == [], outside[:10]

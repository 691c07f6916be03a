"""Fixtures of the fault and abuse suite: a hostile upstream, strict checks of the cache."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.hostile import Hostile

# `make soak` sets FAULTS_SCALE (e.g. 10): more trials, more load, same assertions
SCALE = max(1, int(os.environ.get("FAULTS_SCALE", "1")))


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def report(name: str, **figures: object) -> None:
    """Figures of a run for docs/reliability.md: appended to $FAULTS_REPORT when set."""
    target = os.environ.get("FAULTS_REPORT")
    if target:
        with open(target, "a") as f:
            f.write(json.dumps({"test": name, "scale": SCALE, **figures}) + "\n")


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    up = Hostile().start()
    yield up
    up.close()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    error: str | None = None  # the transfer broke (never a complete wrong body)


async def fetch(
    url: str,
    headers: dict[str, str] | None = None,
    session: aiohttp.ClientSession | None = None,
    method: str = "GET",
) -> Answer:
    own = session is None
    s = session or aiohttp.ClientSession(auto_decompress=False)
    try:
        async with s.request(method, url, headers=headers or {}) as r:
            try:
                body = await r.read()
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
                return Answer(r.status, dict(r.headers), b"", f"{type(exc).__name__}: {exc}")
            return Answer(r.status, dict(r.headers), body)
    except (aiohttp.ClientError, OSError) as exc:
        return Answer(0, {}, b"", f"{type(exc).__name__}: {exc}")
    finally:
        if own:
            await s.close()


def stored(cache_dir: Path) -> dict[str, bytes]:
    """Every committed entry (a file with its sidecar): key -> bytes."""
    out = {}
    for path in cache_dir.rglob("*"):
        rel = path.relative_to(cache_dir)
        if rel.parts[0].startswith(".") or not path.is_file() or path.name.startswith("."):
            continue
        if (path.parent / f".{path.name}.meta").exists():
            out[str(rel)] = path.read_bytes()
    return out


def leftovers(cache_dir: Path) -> list[str]:
    """Temp files, sidecars without data and data without sidecars (must be none)."""
    bad = []
    for path in cache_dir.rglob("*"):
        rel = path.relative_to(cache_dir)
        if rel.parts[0] == ".state" or not path.is_file():
            continue
        name = path.name
        if ".part-" in name:
            bad.append(f"temp file {rel}")
        elif name.startswith(".") and name.endswith(".meta"):
            if not (path.parent / name[1 : -len(".meta")]).exists():
                bad.append(f"sidecar without data {rel}")
        elif not name.startswith(".") and not (path.parent / f".{name}.meta").exists():
            bad.append(f"data without sidecar {rel}")
    return bad


def tracebacks(log_text: str) -> list[str]:
    """Tracebacks in a service log: each one a bug (bad input must get a clean error)."""
    lines = log_text.splitlines()
    return [
        lines[i + 1] if i + 1 < len(lines) else ""
        for i, line in enumerate(lines)
        if line.startswith("Traceback")
    ]


def meta(cache_dir: Path, key: str) -> dict:
    path = cache_dir / key
    return json.loads((path.parent / f".{path.name}.meta").read_text())


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs the test fills up (mounted under the test's directory)."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (the tests run as root in CI)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill the file system up to `leave` free bytes (in 4 KiB pages)."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(filler, "ab") as f:
        f.write(b"\0" * max(0, free - leave))
    while True:  # the last pages
        try:
            with open(filler, "ab") as f:
                if os.statvfs(disk).f_bavail * st.f_frsize <= leave:
                    break
                f.write(b"\0" * 4096)
        except OSError:
            break
    return filler

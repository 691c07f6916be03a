"""The console script: configuration errors are clear, `config` shows what is in effect,
and `serve` refuses in one line to start where it could not serve (exit status 2)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.configs import write_config
from tests.conftest import StartAppliance, free_port, require, unavailable
from tests.upstream import Upstream


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("cache: {max_size: plenty}\n")
    r = run("--config", str(cfg), "serve")
    assert r.returncode == 2
    assert f"{cfg}: cache.max_size: expected a size" in r.stderr


def test_bad_remap_flag(tmp_path: Path) -> None:
    r = run("serve", "--remap", "debian=gopher://x", "--cache-dir", str(tmp_path))
    assert r.returncode == 2 and "apt.remaps.debian[0]" in r.stderr


def test_config_prints_effective_settings() -> None:
    r = run("config")
    assert r.returncode == 0
    assert "listen: 0.0.0.0:3142" in r.stdout and "debian-security:" in r.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        # not UTF-8 (a Latin-1 file): was a UnicodeDecodeError traceback
        (b"cache:\n  dir: /srv/cach\xe9\n", "{f}: not UTF-8 text: byte 0xe9 at offset 23 (line 2)"),
        # a YAML error: was a multi-line message without the file's line and column
        (b"apt:\n  allow: [a\n  index_ttl: 3\n", "{f}:3:12: expected ',' or ']', but got ':'"),
        (b"listen: '127.0.0.1:3142\n", "{f}:2:1: found unexpected end of stream"),
        (b"a: \x01\n", "{f}:1:4: unacceptable character #x0001"),
        # the following were all accepted (a duplicate key: the last one silently)
        (b"cache:\n  dir: /a\n  dir: /b\n", "{f}:3:3: cache.dir: given twice (first on line 2)"),
        (b"workers: 3\nworkers: 2\n", "{f}:2:1: workers: given twice (first on line 1)"),
        (b"apt: {allow: ['mirror.example:99999']}\n", "{f}: apt.allow[0]: port must be 1-65535"),
        (b"apt: {allow: ['mirror.example:0']}\n", "{f}: apt.allow[0]: port must be 1-65535"),
        (b"apt: {allow: ['[1::2::3]:80']}\n", "{f}: apt.allow[0]: [1::2::3] is not an IPv6"),
        (b"listen: 999.1.2.3:3142\n", "{f}: listen: '999.1.2.3' is not an IP address"),
        (b"listen: my host:3142\n", "{f}: listen: 'my host' is not an IP address"),
        (b"listen: '[::::]:3142'\n", "{f}: listen: '::::' is not an IP address"),
        (b"tls: {listen: 'web:8443'}\n", "{f}: tls.listen: 'web' is not an IP address"),
    ],
)
def test_config_file_errors_are_one_line_naming_file_and_key(
    tmp_path: Path, content: bytes, message: str
) -> None:
    f = tmp_path / "config.yaml"
    f.write_bytes(content)
    r = run("--config", str(f), "config")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("archive-local: configuration error: "), r.stderr
    assert message.format(f=f) in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_config_prints_workers_auto_as_written(tmp_path: Path) -> None:
    """It printed the count `auto` came to on this machine (`workers: 2`): copied to a
    machine with more cores, the file would no longer use them all."""
    r = run("config")  # the embedded default: auto
    assert f"\nworkers: auto  # {os.cpu_count()} on this machine\n" in r.stdout, r.stdout
    f = tmp_path / "back.yaml"
    f.write_text(r.stdout)  # read back as written
    again = run("--config", str(f), "config")
    assert (again.returncode, again.stdout) == (0, r.stdout), again.stderr
    f.write_text("workers: 3\n")  # a number stays a number
    assert "\nworkers: 3\n" in run("--config", str(f), "config").stdout


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = write_config(
            tmp_path / "config.yaml", {"admin": {"token_file": str(tmp_path / "token")}}
        )
        r = run(
            "--config",
            str(cfg),
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--cache-dir",
            str(tmp_path / "cache"),
        )
    assert r.returncode == 2, r.stderr
    line = f"listen 127.0.0.1:{port}: the port is in use by pid {os.getpid()} ("
    assert r.stderr.startswith(f"archive-local: {line}") and r.stderr.count("\n") == 1, r.stderr


def refused(*args: str, timeout: float = 20, prefix: Sequence[str] = ()) -> str:
    """`archive-local ARGS` that must exit 2 at once: its stderr. If it starts instead
    (and its workers with it), its whole process group is stopped before the test fails."""
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "appliance", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        raise AssertionError(f"it started instead of refusing: {err[-2000:]}") from None
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one line
    return err


def _config(tmp_path: Path, name: str, **settings: object) -> Path:
    """A configuration for a second service; everything it writes under `tmp_path`."""
    base = {
        "admin": {"token_file": str(tmp_path / f"token-{name}")},
        "images": {"gnupg_home": str(tmp_path / f"gnupg-{name}")},
        "discovery": {"mdns": False},
    }
    return write_config(tmp_path / f"{name}.yaml", {**base, **settings})


def test_a_second_service_on_the_port_or_the_cache_is_refused_naming_the_first(
    start_appliance: StartAppliance, tmp_path: Path
) -> None:
    """With SO_REUSEPORT a second service on the port started and took a share of the
    clients into its own, empty cache; on the cache directory it swept the first one's
    temp files. Both are refused now, naming the service that holds them."""
    first = start_appliance({}, extra={"workers": "auto"})
    holder = f"archive-local (pid {first.proc.pid}, listening on 127.0.0.1:{first.port}"
    other_cache = _config(tmp_path, "other-cache", cache={"dir": str(tmp_path / "other")})
    err = refused("--config", str(other_cache), "serve", "--listen", f"127.0.0.1:{first.port}")
    assert f"listen 127.0.0.1:{first.port}: the port is in use by {holder}" in err, err
    for listen in (f"0.0.0.0:{first.port}", f"[::]:{first.port}"):  # every address
        err = refused("--config", str(other_cache), "serve", "--listen", listen)
        assert f"the port is in use by {holder}" in err, err
    same_cache = _config(tmp_path, "same-cache", cache={"dir": str(first.cache_dir)})
    err = refused("--config", str(same_cache), "serve", "--listen", f"127.0.0.1:{free_port()}")
    assert f"cache.dir {first.cache_dir} is in use by {holder}" in err, err

    def health(_n: int) -> int:  # a new connection each: every one reaches the first
        with urllib.request.urlopen(f"{first.url}/healthz", timeout=10) as r:
            return r.status

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert set(pool.map(health, range(12))) == {200}
    assert first.proc.poll() is None


def _read_only(*paths: Path) -> list[str]:
    """A command prefix that runs the rest in a private mount namespace where `paths` are
    read-only bind mounts: unwritable for root too (permission bits are not; the tests run
    as root), and gone with the process."""
    if os.geteuid() != 0:
        unavailable("a read-only bind mount in a private mount namespace needs root")
    require("unshare", "util-linux")
    mounts = " && ".join(f"mount --bind {p} {p} && mount -o remount,ro,bind {p}" for p in paths)
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$@"', "-"]


def test_a_cache_directory_it_cannot_write_is_refused(tmp_path: Path) -> None:
    """One process used to start ("serving on ...") and pass every request through
    (X-Cache: PASS) with /healthz failing; several workers died at start one after the
    other until the master gave up, blaming the port. A cache path that is a file said
    only "File exists"."""
    cfg = _config(tmp_path, "ro", listen=f"127.0.0.1:{free_port()}")
    cache = tmp_path / "cache"
    (cache / ".state").mkdir(parents=True)
    serve = ("--config", str(cfg), "serve", "--cache-dir", str(cache))
    err = refused(*serve, prefix=_read_only(cache))
    assert f"cache.dir {cache}: cannot write in {cache} (Read-only file system)" in err, err
    state = cache / ".state"  # the service's own state beside the cache: the lock, the index
    err = refused(*serve, prefix=_read_only(state))
    assert f"cache.dir {cache}: cannot write in {state} (Read-only file system)" in err, err
    (tmp_path / "file").write_text("not a directory")
    err = refused("--config", str(cfg), "serve", "--cache-dir", str(tmp_path / "file"))
    assert f"cache.dir {tmp_path / 'file'}: not a directory" in err, err
    err = refused("--config", str(cfg), "serve", "--cache-dir", str(tmp_path / "file/cache"))
    assert f"cache.dir {tmp_path / 'file/cache'}: not a directory" in err, err


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.slow
def test_commands_find_the_service_by_the_flags_it_was_started_with(
    tmp_path: Path, upstream_root: Path, upstream: Upstream
) -> None:
    """`serve --listen --cache-dir` (the README's way), then every command that talks to
    the service with the same flags (`--cache-dir` alone finds its address); without
    them, a one-line refusal that says which flags to give, never a report on another
    directory; and the read-only commands create nothing."""
    (upstream_root / "debian/pool").mkdir(parents=True)
    (upstream_root / "debian/pool/a.deb").write_bytes(b"a" * 5000)
    port = free_port()
    cache = tmp_path / "al"
    cfg = _config(
        tmp_path,
        "flags",
        listen=f"127.0.0.1:{free_port()}",  # where nothing answers: the flags say where
        cache={"dir": str(tmp_path / "configured")},
        apt={"remaps": {"debian": [f"{upstream.url}/debian"]}},
    )
    flags = ("--listen", f"127.0.0.1:{port}", "--cache-dir", str(cache))
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve", "--config", str(cfg), *flags],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/debian/pool/a.deb") as r:
            assert r.read() == b"a" * 5000
        c = ("--config", str(cfg))
        for how in (flags, ("--cache-dir", str(cache)), ("--listen", f"127.0.0.1:{port}")):
            r = run(*c, "status", *how)
            assert r.returncode == 0 and "apt     hit 0, miss 1" in r.stdout, r.stdout + r.stderr
        r = run(*c, "verify", "--cache-dir", str(cache))
        assert r.returncode == 0 and "verify: 1 files" in r.stdout, r.stdout + r.stderr
        r = run(*c, "expire", "--dry-run", "--json", "--cache-dir", str(cache))
        assert r.returncode == 0 and json.loads(r.stdout)["expired"] == 0, r.stderr
        with socket.socket() as trap:  # an http_proxy of the environment: never used
            trap.bind(("127.0.0.1", 0))
            trap.listen(8)
            trap.settimeout(0.5)
            proxy = {"http_proxy": f"http://127.0.0.1:{trap.getsockname()[1]}"}
            r = run(*c, "drain", "--cache-dir", str(cache), env=proxy)
            assert r.returncode == 0 and "503" in r.stdout, r.stderr
            with pytest.raises(TimeoutError):
                trap.accept()[0].close()  # the admin token did not travel there
        # an explicit --listen wins over the address the cache directory's service recorded
        r = run(*c, "status", "--cache-dir", str(cache), "--listen", f"127.0.0.1:{free_port()}")
        assert r.returncode == 1, r.stdout
        r = run(*c, "drain", "--off", "--cache-dir", str(cache))
        assert r.returncode == 0 and "200" in r.stdout, r.stderr
        r = run(*c, "purge", "/debian/pool/a.deb", "--cache-dir", str(cache), "--json")
        assert r.returncode == 0 and json.loads(r.stdout) == {"removed": 1}, r.stderr
        assert not (cache / f"{upstream.url.split('://')[1]}/debian/pool/a.deb").exists()
        r = run(*c, "reload", "--cache-dir", str(cache))
        assert r.returncode == 0 and f"reloaded {cfg}" in r.stdout, r.stderr
        # without the flags: the configured address and directory, where nothing runs
        for command in ("status", "verify", "drain", "purge --remap debian", "reload"):
            r = run(*c, *command.split())
            assert r.returncode == 1, r.stdout + r.stderr
            assert "give the --config, --listen or --cache-dir" in r.stderr, r.stderr
            assert r.stderr.count("\n") == 1 and "0 files" not in r.stdout
        before = _tree(tmp_path)
        for command in ("status", "expire --dry-run", "keys", "verify"):
            run(*c, *command.split())
        assert _tree(tmp_path) == before  # nothing made: no cache, no key, no index
        r = run(*c, "keys")
        assert r.returncode == 1 and "keys --create" in r.stderr, r.stderr
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)

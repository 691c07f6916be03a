"""What `archive-local serve` claims before it starts: its cache directory, which it must be
able to write, for itself alone; and its port, for itself alone.

A second service on the same cache directory would sweep the first one's temp files and
take over its workers' sockets; one on the same port would take a share of its clients
into another cache. So one service holds an exclusive `flock` on its
`StateDir.service_lock` for its life (its workers inherit the open file, so
the lock lasts as long as any of them runs), and the file names the holder for the
one-line refusal the next one prints. The port is bound without SO_REUSEPORT: the master
of several workers binds it once and they share that socket (see `commands.workers`);
Linux lets any process of the same user join a SO_REUSEPORT group, so that option alone
would let a second service in unnoticed.

Each refusal is a `Refused`: one line, exit status 2, before anything is started.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.cache.statedir import StateDir
from appliance.config import Config, Listen
from appliance.web.sockets import bind


class Refused(Exception):
    """The service cannot start here: one line for the operator (exit status 2)."""


def prepare_cache_dir(config: Config) -> None:
    """The cache directory exists (made if missing) and this process can write in it and
    in its state directory: else the service would start and pass every request through
    (`X-Cache: PASS`) with `/healthz` failing, which nobody reads at start."""
    d = config.cache.dir
    if d.exists() and not d.is_dir():
        raise Refused(f"cache.dir {d}: not a directory")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file on the way to it
        raise Refused(f"cache.dir {d}: not a directory (a file is in its path)") from None
    except OSError as exc:
        raise Refused(f"cache.dir {d}: cannot create it ({exc.strerror})") from None
    for where in (d, StateDir(d).path):
        probe = where / f".probe-{secrets.token_hex(4)}"
        try:
            where.mkdir(exist_ok=True)
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            probe.unlink()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # full: hits are still served
                continue
            raise Refused(f"cache.dir {d}: cannot write in {where} ({exc.strerror})") from None


@dataclass
class Holder:
    """Who holds a cache directory, as its lock file says."""

    pid: int | None
    cache: str | None = None
    listen: str | None = None

    def describe(self) -> str:
        parts = [f"pid {self.pid}" if self.pid else "pid unknown"]
        if self.listen:
            parts.append(f"listening on {self.listen}")
        if self.cache:
            parts.append(f"cache {self.cache}")
        return f"archive-local ({', '.join(parts)})"


def _read_holder(fd: int, state: StateDir) -> Holder:
    """What the lock file (open, checked to be a regular file) records."""
    try:
        data = json.loads(os.pread(fd, 4096, 0))
        return Holder(int(data["pid"]), str(data["cache"]), str(data["listen"]))
    except (OSError, ValueError, KeyError, TypeError):
        return Holder(None, str(state.cache_dir))


def _holder_at(state: StateDir) -> Holder:
    try:
        fd = os.open(state.service_lock, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return Holder(None, str(state.cache_dir))
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return _read_holder(fd, state)
        return Holder(None, str(state.cache_dir))
    finally:
        os.close(fd)


def running_holder(cache_dir: Path) -> Holder | None:
    """The service that holds `cache_dir` now, as its lock file names it (None: none
    does). Only reads: a command asking creates nothing."""
    state = StateDir(cache_dir)
    path = state.service_lock
    try:  # (not through a link, never waiting on a FIFO planted there)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return _read_holder(fd, state)
        return None
    finally:
        os.close(fd)  # (a shared lock we got goes with it)
    return None


def _lock_soon(fd: int, within: float = 1.0) -> None:
    """The exclusive lock, asked again for `within` seconds: a command checking who holds
    the directory (`running_holder`) holds a shared lock for an instant."""
    deadline = time.monotonic() + within
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def lock_cache_dir(config: Config) -> int:
    """Take the service's lock on its cache directory; the open descriptor (held until
    the process and every worker it passes it to have exited)."""
    d, state = config.cache.dir, StateDir(config.cache.dir)
    path = state.service_lock
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o600)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise Refused(f"cache.dir {d}: {path} is not a regular file")
    except OSError as exc:
        raise Refused(f"cache.dir {d}: cannot open {path} ({exc.strerror})") from None
    try:
        _lock_soon(fd)
    except OSError as exc:
        holder = _read_holder(fd, state)
        os.close(fd)
        if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise Refused(f"cache.dir {d}: cannot lock {path} ({exc.strerror})") from None
        raise Refused(
            f"cache.dir {d} is in use by {holder.describe()}: one service per cache directory"
        ) from None
    listen = str(config.listen) + (f", https {config.tls.listen}" if config.tls else "")
    record = {"pid": os.getpid(), "cache": str(d), "listen": listen}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    return fd


def probe_port(listen: Listen, what: str = "listen") -> None:
    """Refuse now if another process listens on `listen`'s port: binding (without listening)
    conflicts with a listening socket even with SO_REUSEADDR, and leaves nothing behind.
    (A process of one worker binds for real only once it is ready to answer.)"""
    try:
        infos = socket.getaddrinfo(
            listen.host or None, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise Refused(f"{what} {listen}: {exc.strerror or exc}") from None
    bound, unavailable = 0, None
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and listen.host == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                sock.bind(address)
                bound += 1
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise port_refused(listen, exc, what) from None
                unavailable = exc  # `localhost` without IPv6: served on IPv4 alone
    if not bound and unavailable is not None:  # not an address of this machine
        raise port_refused(listen, unavailable, what)


def port_refused(listen: Listen, exc: OSError, what: str = "listen") -> Refused:
    """The refusal for a failed bind of `listen`, naming who holds the port if it can."""
    if exc.errno != errno.EADDRINUSE:
        return Refused(f"{what} {listen}: cannot listen ({exc.strerror or exc})")
    holder = port_holder(listen.port)
    return Refused(
        f"{what} {listen}: the port is in use by {holder or 'another process'}"
        + (": one service per port" if holder and holder.startswith("archive-local") else "")
    )


def port_holder(port: int) -> str | None:
    """Who listens on TCP `port` in this network namespace: archive-local (its pid, address,
    cache, from the lock file it holds) or another program's pid and name; None when
    /proc does not show it (another user's process under ProtectProc=invisible)."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):  # this network namespace's (readable under ProcSubset=pid)
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]:
                f = line.split()  # sl local_address rem_address st ... uid timeout inode
                if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{f[9]}]")  # 0A: LISTEN
    if not inodes:
        return None
    for pid in sorted(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()):
        proc = Path(f"/proc/{pid}")  # the oldest first: a master before its workers
        if pid == os.getpid():
            continue
        try:
            links = {os.readlink(fd) for fd in (proc / "fd").iterdir()}
        except OSError:
            continue
        if not links & inodes:
            continue
        for link in links:
            if (state := StateDir.of_service_lock(Path(link))) is not None:
                return _holder_at(state).describe()
        try:
            name = (proc / "comm").read_text().strip()
        except OSError:
            name = "?"
        return f"pid {pid} ({name})"
    return None


@dataclass
class Listeners:
    """The service's listening sockets (plain port, HTTPS port), bound once: by the only
    process, or by the master of several workers, which pass them on (`--inherit`)."""

    plain: list[socket.socket]
    tls: list[socket.socket]

    @classmethod
    def bind(cls, config: Config) -> Listeners:
        """Bind `listen` (and `tls.listen`) now; a port in use is a `Refused` naming who
        holds it."""
        plain = _bind(config.listen, "listen")
        try:
            tls = _bind(config.tls.listen, "tls.listen") if config.tls is not None else []
        except Refused:
            for sock in plain:
                sock.close()
            raise
        return cls(plain, tls)

    def fds(self) -> list[int]:
        return [s.fileno() for s in (*self.plain, *self.tls)]

    def spec(self, lock: int | None) -> str:
        """The `--inherit` argument of a worker: which inherited descriptor is what."""
        parts = [f"plain={s.fileno()}" for s in self.plain]
        parts += [f"tls={s.fileno()}" for s in self.tls]
        if lock is not None:
            parts.append(f"lock={lock}")
        return ",".join(parts)

    @classmethod
    def inherited(cls, spec: str) -> Listeners:
        """A worker's sockets from its master's `--inherit` spec (the lock's descriptor is
        only kept open, never passed on to the programs a worker runs)."""
        out = cls([], [])
        for part in spec.split(","):
            kind, _, fd = part.partition("=")
            os.set_inheritable(int(fd), False)
            if kind in ("plain", "tls"):
                sock = socket.socket(fileno=int(fd))
                sock.setblocking(False)
                getattr(out, kind).append(sock)
        return out

    def close(self) -> None:
        for sock in (*self.plain, *self.tls):
            sock.close()


def _bind(listen: Listen, what: str) -> list[socket.socket]:
    try:
        return bind(listen)
    except OSError as exc:
        raise port_refused(listen, exc, what) from None

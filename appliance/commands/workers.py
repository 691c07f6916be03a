"""`archive-local serve` with `workers: N`: a master that starts N worker processes (forks
of itself running the same command with `--worker-index I`, named `al-worker-I`,
which share the pages of the code they import with it and each other) and passes the
signals on: SIGTERM/SIGINT drain and stop them all, SIGHUP reloads them all. A worker
that dies is started again alone (its siblings keep serving); one that keeps dying
(`RESTARTS` times within `RESTART_WINDOW`) stops the service: the others are stopped and
the master exits 1, for systemd's
Restart=. Exit status 0 when every worker stopped cleanly.

Before starting them it does what they would otherwise race for: the admin token, and the
start-up sweep of the cache directory (the workers only index it: a sibling, or a worker
started again beside running ones, may be writing the temp files a sweep removes). It
binds the listening sockets once and every worker serves them (the kernel hands each new
connection to whichever accepts first): no SO_REUSEPORT, so no other process can bind the
port while the service runs. The workers inherit those sockets and the cache directory's
lock (`commands.claim`); the master keeps them open for workers started again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence

from appliance.commands.claim import Listeners
from appliance.config import Config
from appliance.runtime.sweeps import sweep_cache, sweep_dead_worker
from appliance.web.token import AdminUnavailable, load_token

log = logging.getLogger("appliance")

NAME = "al-worker"  # a worker's process name, NAME-INDEX (15 bytes at most: up to 9999)
SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}  # what the master passes on
RESTARTS = 3  # a worker dying this often within RESTART_WINDOW seconds stops the service
RESTART_WINDOW = 60.0


def run_master(
    config: Config, argv: Sequence[str], lock: int, main: Callable[[list[str]], int]
) -> int:
    """Run the workers until they stop; `lock`: the cache directory's lock descriptor;
    `main`: the command line's entry point, which each worker runs with its arguments.
    A port in use is a `Refused` before anything starts."""
    # a signal before the handlers below waits for them (the sweep and the imports take
    # a while): a reload then must not kill the master
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        listeners = Listeners.bind(config)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        raise
    _prepare(config)

    inherit = ["--inherit", listeners.spec(lock)]
    keep = {*listeners.fds(), lock}
    _preload(config)
    sweeps: list[threading.Thread] = []
    stopping = False

    def spawn(i: int) -> Worker:
        for sweep in sweeps:  # no thread of the master's runs across a fork
            sweep.join()
        sweeps.clear()
        if stopping:  # (asked while a sweep was joined)
            return Worker.gone()
        return Worker.fork(i, main, [*argv, "--worker-index", str(i), *inherit], keep)

    workers = [spawn(i) for i in range(config.workers)]
    log.info(
        "serving with %d workers (pids %s)", len(workers), ", ".join(str(w.pid) for w in workers)
    )
    deaths: list[list[float]] = [[] for _ in workers]

    def pass_on(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
            listeners.close()  # the port closes as the workers close theirs
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    for sig in SIGNALS:
        signal.signal(sig, pass_on)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    while True:
        codes = [w.poll() for w in workers]
        if stopping and all(c is not None for c in codes):
            break  # (all dead at once otherwise: each is started again below)
        for i, code in enumerate(codes):
            if stopping or code is None:
                continue
            now = time.monotonic()
            deaths[i] = [t for t in deaths[i] if now - t < RESTART_WINDOW] + [now]
            if len(deaths[i]) >= RESTARTS:
                log.error(
                    "worker %d exited (%s) %d times in %.0f s: stopping the others",
                    i,
                    code,
                    len(deaths[i]),
                    RESTART_WINDOW,
                )
                listeners.close()
                return _stop_all(workers, config)
            dead = workers[i].pid
            workers[i] = spawn(i)
            log.error("worker %d exited (%s): started it again (pid %d)", i, code, workers[i].pid)
            sweeps.append(threading.Thread(target=_sweep_after, args=(config, i, dead)))
            sweeps[-1].start()
        time.sleep(0.2)
    return 0 if all(w.returncode == 0 for w in workers) and stopping else 1


def _prepare(config: Config) -> None:
    """What the workers would race for: the admin token, the start-up sweep."""
    try:
        load_token(config.admin.token_file)
    except (OSError, AdminUnavailable) as exc:
        log.warning("admin API: %s (each worker says so too)", exc)
    try:
        log.info("cache: %d files after the start-up sweep", sweep_cache(config))
    except OSError as exc:  # each worker reports the disk's problem on its own
        log.warning("cache: start-up sweep failed: %s", exc)


class Worker:
    """A worker: a fork of the master once it has imported what workers run (`_preload`),
    so the pages of that code are the master's and every worker's at once (the kernel
    copies a page only when one of them writes it), not a copy per process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    @classmethod
    def gone(cls) -> Worker:
        """A worker never started (the service is stopping)."""
        worker = cls(-1)
        worker.returncode = 0
        return worker

    @classmethod
    def fork(
        cls, index: int, main: Callable[[list[str]], int], argv: list[str], keep: set[int]
    ) -> Worker:
        """Worker `index`, named `al-worker-INDEX` (its command line is the master's:
        `ps -o comm`, `pgrep` and `top` tell them apart by that name); of the master's
        descriptors it keeps stdio and `keep` (the sockets, the lock), as an exec'd
        worker given only those did."""
        for stream in (sys.stdout, sys.stderr):  # nothing buffered is written twice
            stream.flush()
        # no signal is handled between the fork and the child's own dispositions (the
        # master's handler would run in the child)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        pid = os.fork()
        if pid == 0:  # the worker: `archive-local ARGV` from here, never back
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                # a reload before the worker's loop handles it would kill the worker:
                # it reads the configuration as it starts anyway
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
                _close_all_but({0, 1, 2, *keep})
                _name(f"{NAME}-{index}")
                # PR_SET_PDEATHSIG: a master killed stops it too
                _libc("prctl", 1, signal.SIGTERM, 0, 0, 0)
                code = main(argv)
            except BaseException:  # (its traceback, and its status, as an exec'd one)
                logging.getLogger("appliance").exception("worker failed")
            finally:
                logging.shutdown()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # (blocked until its handlers are set)
        return cls(pid)

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by the system (SIGCHLD ignored): ended
                self.returncode = 0
                return 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _preload(config: Config) -> None:
    """Import what a worker runs, in the master, before the forks, and keep the garbage
    collector off those objects (`gc.freeze`): a collection writes to every object it
    visits, which would copy the shared pages into each worker. glibc's malloc arenas
    are capped at two for the workers' threads (one per executor thread otherwise)."""
    import gc

    import appliance.commands.serve  # (the caller, `cli`, is imported already)

    if config.discovery.mdns:  # (only shared: a worker that cannot import it says so)
        with contextlib.suppress(Exception):
            import appliance.discovery.mdns  # noqa: F401
    _cap_arenas(2)
    gc.collect()
    gc.freeze()


def _close_all_but(keep: set[int]) -> None:
    """Close every descriptor but `keep` (what the master inherited from its caller)."""
    low = 0
    for fd in (*sorted(keep), os.sysconf("SC_OPEN_MAX")):
        if fd > low:  # (closerange(n, n) closes every descriptor on Linux: close_range)
            os.closerange(low, fd)
        low = fd + 1


def _name(name: str) -> None:
    """The process's name (`/proc/PID/comm`, 15 bytes at most)."""
    _libc("prctl", 15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


def _cap_arenas(count: int) -> None:
    """mallopt(M_ARENA_MAX): inherited by the forks (an operator's MALLOC_ARENA_MAX wins)."""
    if "MALLOC_ARENA_MAX" not in os.environ:
        _libc("mallopt", -8, count)  # M_ARENA_MAX


def _libc(function: str, *args: int | bytes) -> None:
    """A C library call that tunes the process; not a worker's concern where the system
    refuses it or the library has no such call (not glibc: its own rules)."""
    try:
        import ctypes

        getattr(ctypes.CDLL(None), function)(*args)
    except (OSError, AttributeError):
        pass


def _sweep_after(config: Config, index: int, pid: int) -> None:
    """Remove the temp files a killed worker left (its siblings' are left alone: each
    names its process), beside the serving workers, off the master's loop."""
    try:
        removed = sweep_dead_worker(config, pid)
    except OSError as exc:
        log.warning("cache: cannot sweep after worker %d: %s", index, exc)
        return
    log.info("cache: removed %d temp files worker %d (pid %d) left", removed, index, pid)


def _stop_all(workers: list[Worker], config: Config) -> int:
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + config.limits.drain_timeout + 10
    while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    for w in workers:
        if w.poll() is None:
            w.kill()
    return 1

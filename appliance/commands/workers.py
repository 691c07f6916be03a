"""`archive-local serve` with `workers: N`: a master that starts N worker processes (the
same command with `--worker-index I`) and passes the signals on: SIGTERM/SIGINT drain and
stop them all, SIGHUP reloads them all. If one worker dies the others are stopped and the
master exits 1 (systemd's Restart= starts the service again). Exit status 0 when every
worker stopped cleanly.

Before starting them it makes what they would otherwise race to create: the admin token.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from appliance.config import Config
from appliance.web.admin import AdminUnavailable, load_token

log = logging.getLogger("appliance")


def run_master(config: Config, argv: Sequence[str]) -> int:
    try:
        load_token(config.admin.token_file)
    except (OSError, AdminUnavailable) as exc:
        log.warning("admin API: %s (each worker says so too)", exc)
    workers = [
        subprocess.Popen([sys.executable, "-m", "appliance", *argv, "--worker-index", str(i)])
        for i in range(config.workers)
    ]
    log.info(
        "serving with %d workers (pids %s)", len(workers), ", ".join(str(w.pid) for w in workers)
    )
    stopping = False

    def pass_on(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, pass_on)
    while True:
        codes = [w.poll() for w in workers]
        if all(c is not None for c in codes):
            break
        if not stopping and any(c is not None for c in codes):
            dead = [i for i, c in enumerate(codes) if c is not None]
            log.error("worker %s exited (%s): stopping the others", dead, [codes[i] for i in dead])
            stopping = True
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
        time.sleep(0.2)
    return 0 if all(w.returncode == 0 for w in workers) and stopping else 1

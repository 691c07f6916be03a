"""A real systemd as PID 1 of private pid, mount, net, uts and ipc namespaces (root only).

Inside, `/etc`, `/var` and `/opt` are overlays whose writes land in the test's own
directory, `/run` and the unit folders are fresh tmpfs (host units hidden, stub targets
only), and the network is loopback alone: the unit under test can create its user, its
StateDirectory and CacheDirectory without touching the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

TARGETS = (
    "sysinit",
    "basic",
    "shutdown",
    "multi-user",
    "network",
    "network-online",
    "local-fs",
    "sockets",
    "timers",
    "paths",
    "slices",
    "test-default",
)

BOOT = """#!/bin/sh
set -e
ip link set lo up
for top in etc var opt; do
  mkdir -p "$S/$top-up" "$S/$top-work"
  mount -t overlay overlay -o "lowerdir=/$top,upperdir=$S/$top-up,workdir=$S/$top-work" "/$top"
done
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /etc/systemd/system
mount -t tmpfs tmpfs /lib/systemd/system
mkdir -p /run/systemd/system
cd /run/systemd/system
for t in $TARGETS; do
  printf '[Unit]\\nDescription=%s (stub)\\nDefaultDependencies=no\\n' "$t" > "$t.target"
done
printf '[Unit]\\nDescription=exit (stub)\\nDefaultDependencies=no\\nSuccessAction=exit-force\\n' \\
  > exit.target
exec env container=archive-local-test /lib/systemd/systemd --system \\
  --unit=test-default.target --show-status=no --log-target=console
"""


class SystemdNamespace:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.pid: int | None = None  # systemd, as seen from outside
        self._outer: subprocess.Popen[bytes] | None = None
        self._cgroups_before: set[str] = set()

    def start(self, timeout: float = 15.0) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self._cgroups_before = _cgroups()
        boot = self.state / "boot.sh"
        boot.write_text(BOOT)
        boot.chmod(0o755)
        log = (self.state / "systemd.log").open("wb")
        self._outer = subprocess.Popen(
            [
                "unshare",
                "--fork",
                "--pid",
                "--mount",
                "--net",
                "--uts",
                "--ipc",
                "--mount-proc",
                "--propagation",
                "private",
                str(boot),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "S": str(self.state), "TARGETS": " ".join(TARGETS)},
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children = subprocess.run(
                ["pgrep", "-P", str(self._outer.pid)], capture_output=True, text=True
            ).stdout.split()
            if children:
                self.pid = int(children[0])
                state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            if self._outer.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"systemd did not come up: {self.log()[-2000:]}")

    def log(self) -> str:
        return (self.state / "systemd.log").read_text(errors="replace")

    def run(
        self, *argv: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`argv` inside the namespaces (systemctl, journal-less checks, curl...)."""
        assert self.pid is not None
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-p", "-n", "-u", "-i", *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            input=input,
        )

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """A file inside (through the overlay, so it lands in the state folder)."""
        self.run("install", "-D", "-m", oct(mode)[2:], "/dev/stdin", path, input=text)

    def stop(self) -> None:
        if self.pid is not None:
            self.run("systemctl", "exit", check=False, timeout=20)
            for _ in range(50):
                if not Path(f"/proc/{self.pid}").exists():
                    break
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self._outer is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._outer.pid, signal.SIGKILL)
            self._outer.wait(10)
        # systemd made these in the machine's cgroup trees (there is no cgroup namespace
        # here): remove the ones that were not there before, deepest first (empty ones only)
        deadline = time.monotonic() + 5  # killed processes leave their cgroups shortly
        while (left := _cgroups() - self._cgroups_before) and time.monotonic() < deadline:
            for d in left:
                for sub, _dirs, _files in sorted(os.walk(d), key=lambda w: -len(w[0])):
                    with contextlib.suppress(OSError):
                        os.rmdir(sub)
            time.sleep(0.1)
        shutil.rmtree(self.state / "var-work", ignore_errors=True)


def _cgroups() -> set[str]:
    return {
        str(d)
        for top in Path("/sys/fs/cgroup").glob("*")
        for d in (top / "init.scope", top / "system.slice", Path("/sys/fs/cgroup") / "init.scope")
        if d.is_dir()
    }

"""A real HAProxy (Debian's) in front of several units for tests: its own config, in the
foreground, health checks `GET /healthz` every second, a stats socket to read the
backends' state. Listens on 127.0.0.1 only."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.components import stop

CONFIG = """\
global
    stats socket {sock} mode 600 level admin
    maxconn 2000

defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    option redispatch
    retries 2

frontend fleet
    bind 127.0.0.1:{port}
    default_backend units

backend units
    balance {balance}
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 1s fall 2 rise 2
{servers}
"""


def installed() -> bool:
    return shutil.which("haproxy") is not None


@dataclass
class HAProxy:
    port: int
    datadir: Path
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.datadir / "admin.sock"))
            s.sendall(line.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode()

    def states(self) -> dict[str, str]:
        """Each unit's state as HAProxy sees it: UP, DOWN, ..."""
        lines = self.command("show stat").splitlines()
        head = lines[0].lstrip("# ").split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(head, line.split(","), strict=False))
            if row.get("pxname") == "units" and row.get("svname") not in ("BACKEND", None):
                out[row["svname"]] = row["status"].split(" ")[0]
        return out

    def wait_for(self, wanted: dict[str, str], timeout: float = 20) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (now := self.states()) != wanted:
            if time.monotonic() > deadline:
                raise AssertionError(f"haproxy: {now}, wanted {wanted}")
            time.sleep(0.2)
        return now

    def log_text(self) -> str:
        return (self.datadir / "haproxy.log").read_text(errors="replace")

    def stop(self) -> None:
        stop(self.process)


def start(
    datadir: Path, port: int, backends: dict[str, str], balance: str = "roundrobin"
) -> HAProxy:
    datadir.mkdir(parents=True, exist_ok=True)
    servers = "".join(f"    server {name} {addr} check\n" for name, addr in backends.items())
    config = datadir / "haproxy.cfg"
    config.write_text(
        CONFIG.format(sock=datadir / "admin.sock", port=port, balance=balance, servers=servers)
    )
    check = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy config: {check.stdout}{check.stderr}")
    log = open(datadir / "haproxy.log", "wb")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=log, stderr=log)
    proxy = HAProxy(port, datadir, process)
    deadline = time.monotonic() + 10
    while not (datadir / "admin.sock").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            proxy.stop()
            raise RuntimeError("haproxy did not start:\n" + proxy.log_text())
        time.sleep(0.05)
    return proxy

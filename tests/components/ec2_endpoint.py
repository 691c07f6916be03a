"""An EC2 + S3 + EBS-direct endpoint on 127.0.0.1 (moto, with moto_server.py's RegisterImage)."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.components import stop

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("MOTO_VENV", ROOT / ".components/moto"))


def installed() -> bool:
    return (VENV / "bin/python").exists() and (VENV / ".installed").exists()


@dataclass
class Moto:
    endpoint: str
    process: subprocess.Popen
    log: Path

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def stop(self) -> None:
        stop(self.process)


def start(datadir: Path, port: int, timeout: float = 30.0) -> Moto:
    datadir.mkdir(parents=True, exist_ok=True)
    log = datadir / "moto.log"
    process = subprocess.Popen(
        [
            str(VENV / "bin/python"),
            str(Path(__file__).with_name("moto_server.py")),
            "-H",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env={**os.environ, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    moto = Moto(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{moto.endpoint}/moto-api/data.json", timeout=2).close()
            return moto
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                moto.stop()
                raise RuntimeError("moto did not start:\n" + log.read_text()[-3000:]) from None
            time.sleep(0.1)

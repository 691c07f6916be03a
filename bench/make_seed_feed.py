"""Write a signed feed whose jammy/amd64 disk image is one multi-GB qcow2 (bench/seed_bench.sh)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.feed import build_feed


def big_qcow2(size: int) -> bytes:
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        raw, qcow = Path(tmp) / "raw", Path(tmp) / "disk.qcow2"
        with open(raw, "wb") as f:
            for _ in range(size // (64 << 20)):
                f.write(os.urandom(64 << 20))
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow)], check=True)
        return qcow.read_bytes()


if __name__ == "__main__":
    out, image_mb = Path(sys.argv[1]), int(sys.argv[2])
    calls = iter(range(1 << 30))

    def make_image(_size: int) -> bytes:  # the first disk built is jammy/amd64
        return big_qcow2(image_mb << 20) if next(calls) == 0 else os.urandom(4096)

    feed = build_feed(out, item_size=4096, serials=("20240101",), make_image=make_image)
    feed.key.close()
    print(max(len(b) for b in feed.files.values()))

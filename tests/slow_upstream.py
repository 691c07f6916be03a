"""A plain HTTP upstream that sends files slowly (RATE bytes/s), for transfers that must
survive a reload or a drain: `python3 slow_upstream.py HOST PORT ROOT RATE`."""

from __future__ import annotations

import sys
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class Slow(SimpleHTTPRequestHandler):
    rate = 1 << 20

    def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
        step = max(1, self.rate // 20)
        while chunk := source.read(step):
            outputfile.write(chunk)
            time.sleep(0.05)

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    host, port, root, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    Slow.rate = rate
    ThreadingHTTPServer((host, port), partial(Slow, directory=root)).serve_forever()

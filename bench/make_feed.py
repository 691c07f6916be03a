"""Write a signed simplestreams feed of large random items for bench/sync_bench.sh."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.feed import build_feed

if __name__ == "__main__":
    out, item_mb = Path(sys.argv[1]), int(sys.argv[2])
    feed = build_feed(out, item_size=item_mb * 1024 * 1024)
    feed.key.close()
    total = sum(len(b) for b in feed.files.values())
    print(f"{len(feed.files)} items, {total / 2**20:.0f} MiB in {feed.root}")

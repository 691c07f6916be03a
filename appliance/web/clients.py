"""Who uses the cache: requests and bytes per client address over the last 24 hours.

An operator wants to see which instances go through the appliance (and which hammer it)
without reading the access log. Counts are kept per hour so that the figures are the last
24 hours', and the table is bounded: past `LIMIT` addresses the least recently seen go.
`/api/status` adds up the workers' tables by address.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

HOURS = 24
LIMIT = 1000  # addresses tracked per process
TOP = 20  # shown


def agent_family(agent: str) -> str:
    """`Debian APT-HTTP/1.3 (2.6.2)` -> `apt 2.6.2`; else the first product token."""
    if agent.startswith("Debian APT-HTTP/"):
        version = agent.rsplit("(", 1)[-1].rstrip(")") if "(" in agent else ""
        return f"apt {version}".strip()
    first = agent.split(" ", 1)[0].split("/", 1)[0]
    return first[:40] or "-"


class Clients:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        # address -> {hour: [requests, bytes]}, last seen, user agent family
        self._hours: dict[str, dict[int, list[int]]] = {}
        self._seen: dict[str, float] = {}
        self._agent: dict[str, str] = {}

    def add(self, address: str, agent: str, nbytes: int) -> None:
        now = self.clock()
        hour = int(now // 3600)
        counts = self._hours.setdefault(address, {}).setdefault(hour, [0, 0])
        counts[0] += 1
        counts[1] += nbytes
        self._seen[address] = now
        self._agent[address] = agent_family(agent)
        if len(self._hours) > LIMIT:
            oldest = min(self._seen, key=self._seen.__getitem__)
            for table in (self._hours, self._seen, self._agent):
                table.pop(oldest, None)

    def figures(self, n: int = TOP) -> list[dict[str, Any]]:
        """The busiest addresses of the last 24 hours, by requests."""
        since = int(self.clock() // 3600) - HOURS + 1
        rows = []
        for address, hours in self._hours.items():
            for old in [h for h in hours if h < since]:
                del hours[old]
            requests = sum(c[0] for c in hours.values())
            if requests:
                rows.append(
                    {
                        "address": address,
                        "requests": requests,
                        "bytes": sum(c[1] for c in hours.values()),
                        "agent": self._agent.get(address, "-"),
                        "last_seen": round(self._seen.get(address, 0), 3),
                    }
                )
        return _top(rows, n)


def _top(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    rows.sort(key=lambda r: (-r["requests"], r["address"]))
    return rows[:n]


def merge_clients(
    lists: Iterable[Iterable[Mapping[str, Any]]], n: int = TOP
) -> list[dict[str, Any]]:
    """The workers' tables added up by address (the agent and time of the latest)."""
    merged: dict[str, dict[str, Any]] = {}
    for rows in lists:
        for row in rows:
            into = merged.setdefault(row["address"], {**row, "requests": 0, "bytes": 0})
            into["requests"] += row["requests"]
            into["bytes"] += row["bytes"]
            if row.get("last_seen", 0) >= into.get("last_seen", 0):
                into["last_seen"], into["agent"] = row.get("last_seen", 0), row.get("agent", "-")
    return _top(list(merged.values()), n)

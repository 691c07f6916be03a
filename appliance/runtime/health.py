"""`GET /healthz` and draining: what load balancers read to send clients here or not."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from appliance.cache.engine import CacheEngine

log = logging.getLogger(__name__)

HEALTH_TTL = 2.0  # seconds a store check answers /healthz (load balancers poll often)


class Health:
    """Serving, draining (the operator's word) or unhealthy (the store's)."""

    def __init__(self, engine: CacheEngine) -> None:
        self.engine = engine
        self.draining = False  # /healthz answers 503: load balancers send no new clients
        self._store_check: tuple[float, str | None] = (-HEALTH_TTL, None)

    def drain(self, on: bool) -> dict[str, Any]:
        """Turn draining on or off; transfers in progress are not touched."""
        if on != self.draining:
            log.info("drain %s: /healthz answers %s", "on" if on else "off", 503 if on else 200)
        self.draining = on
        return {"draining": on}

    async def check(self) -> tuple[int, dict[str, Any]]:
        """200 while serving; 503 while draining or when the store cannot take entries
        (the directory is gone or read-only)."""
        store = self.engine.store
        at, problem = self._store_check
        if time.monotonic() - at > HEALTH_TTL:
            problem = await asyncio.to_thread(store.problem)
            self._store_check = (time.monotonic(), problem)
        problems = [problem] if problem else []
        state = "draining" if self.draining else "unhealthy" if problems else "serving"
        doc: dict[str, Any] = {
            "status": state,
            "problems": problems,
            "downloads": len(self.engine.in_flight()),
        }
        if (shared := store.shared_status()) is not None:  # degraded, still serving
            doc["shared_store"] = "up" if shared["up"] else f"unavailable: {shared['problem']}"
        return (200 if state == "serving" else 503), doc

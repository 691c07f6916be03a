"""The admin API's bearer token file: made once (0600), refused when others may read it.
Without aiohttp, for the master of several workers, which makes it before they start."""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger("appliance.web.admin")


class AdminUnavailable(RuntimeError):
    pass


def load_token(path: Path) -> str:
    """The admin token; created (0600) when the file does not exist yet."""
    try:
        info = path.stat()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        log.info("admin API: created a token in %s", path)
        return token
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise AdminUnavailable(f"{path} must be readable by its owner only (chmod 600)")
    token = path.read_text().strip()
    if len(token) < 16:
        raise AdminUnavailable(f"{path}: the token must be at least 16 characters")
    return token

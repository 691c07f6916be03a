"""The admin API under /api/admin/: sync, seed, purge, reload. Bearer token + address check.

The token lives in a file only its owner can read (created with a random token on
first start); the API answers only to addresses in `admin.allow` (loopback by
default), whatever address the service listens on.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from typing import Any, Protocol

from aiohttp import web
from yarl import URL

from appliance.apt.paths import BadPath
from appliance.apt.routing import Forbidden
from appliance.config import AdminConfig
from appliance.web.token import AdminUnavailable, load_token
from appliance.web.workers import is_internal

log = logging.getLogger(__name__)


class ReloadError(Exception):
    """A reload that changed nothing: no file to read again (`conflict`: 409), or a bad
    one (400). The admin API answers with it; SIGHUP logs it."""

    def __init__(self, message: str, conflict: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict


class Actions(Protocol):
    """What the admin API may ask of the running appliance (and nothing else)."""

    def sync(self) -> bool:
        """Start a sync; False when no feeds are configured."""
        ...

    def seed(self) -> bool | None:
        """Start a seed: True started, False one is running, None no targets configured."""
        ...

    async def purge_remap(self, name: str) -> int | None:
        """Files removed below a remap's mirrors; None when there is no such remap."""
        ...

    async def purge(self, path: str) -> int:
        """Remove one cached file (0: not cached); BadPath or Forbidden for a bad path."""
        ...

    async def reload(self) -> dict[str, Any]:
        """Read the configuration file again; ReloadError when nothing changed."""
        ...

    def drain(self, on: bool) -> dict[str, Any]: ...
    def maintenance_busy(self) -> bool: ...
    async def verify(self, fix: bool) -> dict[str, Any]: ...
    async def expire(self, dry_run: bool) -> dict[str, Any]: ...


MAX_BODY = 64 * 1024


async def _json_body(request: web.BaseRequest, action: str) -> dict[str, Any]:
    """The request's JSON object ({} when empty); anything else is a 400."""
    if (request.content_length or 0) > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(MAX_BODY, request.content_length or 0)
    try:
        body: Any = json.loads(await request.read() or b"{}")  # read() is capped at 1 MiB
    except (ValueError, RecursionError):
        raise web.HTTPBadRequest(text=f"{action}: the body must be a JSON object\n") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=f"{action}: the body must be a JSON object\n")
    return body


def _origin(scheme: str, authority: str) -> tuple[str, str, int | None] | None:
    try:
        url = URL(f"{scheme}://{authority}") if scheme else URL(authority)
    except ValueError:
        return None
    if not url.scheme or not url.host or url.path not in ("", "/") or url.query_string:
        return None
    return url.scheme.lower(), url.host.lower(), url.port


def foreign_origin(request: web.BaseRequest) -> str | None:
    """Why a browser request from another site's page is refused (None: no `Origin`, or
    this service's own). The bearer token already keeps such pages out (a browser never
    adds it by itself); this refuses them before the token is even looked at."""
    origin = request.headers.get("Origin")
    if origin is None:  # curl, scripts, a same-origin GET: nothing to compare
        return None
    host = request.headers.get("Host", "")
    own = _origin(request.scheme, host)
    if own is None or _origin("", origin) != own:

        def shown(text: str) -> str:
            return "".join(c if " " <= c <= "~" else "?" for c in text)[:200]

        return (
            f"cross-origin request refused: Origin {shown(origin)} is not this "
            f"service's own ({request.scheme}://{shown(host)})"
        )
    return None


class Admin:
    def __init__(self, config: AdminConfig) -> None:
        self.configure(config)

    def configure(self, config: AdminConfig) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in config.allow]
        try:
            self.token: str | None = load_token(config.token_file)
            self.problem: str | None = None
        except (OSError, AdminUnavailable) as exc:
            self.token, self.problem = None, str(exc)
            log.warning("admin API disabled: %s", exc)

    def allowed(self, remote: str | None) -> bool:
        try:
            address = ipaddress.ip_address((remote or "").split("%")[0])
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in self.networks)

    def check(self, request: web.BaseRequest) -> None:
        internal = is_internal(request)  # a sibling worker: the first one checked all this
        if not (self.allowed(request.remote) or internal):
            raise web.HTTPForbidden(text=f"admin API: not allowed from {request.remote}\n")
        if not internal and (why := foreign_origin(request)):
            raise web.HTTPForbidden(text=f"admin API: {why}\n")
        if self.token is None:
            raise web.HTTPServiceUnavailable(text=f"admin API disabled: {self.problem}\n")
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), self.token.encode()
        ):
            raise web.HTTPUnauthorized(
                text="admin API: missing or wrong bearer token\n",
                headers={"WWW-Authenticate": 'Bearer realm="archive-local"'},
            )

    async def handle(self, request: web.BaseRequest, actions: Actions) -> web.StreamResponse:
        self.check(request)
        action = request.raw_path.removeprefix("/api/admin/").strip("/")
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        if action == "sync":
            if not actions.sync():
                raise web.HTTPConflict(text="no feeds configured (images.feeds)\n")
            return web.json_response({"status": "started"}, status=202)
        if action == "seed":
            started = actions.seed()
            if started is None:
                raise web.HTTPConflict(text="no seed targets configured (seed.targets)\n")
            return web.json_response({"status": "started" if started else "running"}, status=202)
        if action == "purge":
            return await self._purge(request, actions)
        if action == "reload":
            try:
                return web.json_response(await actions.reload())
            except ReloadError as exc:
                refused = web.HTTPConflict if exc.conflict else web.HTTPBadRequest
                raise refused(text=f"reload: {exc}\n") from None
        if action == "drain":
            body = await _json_body(request, action)
            value = body.get("drain", True)
            if set(body) - {"drain"} or not isinstance(value, bool):
                raise web.HTTPBadRequest(text='drain: the body is {"drain": true|false}\n')
            return web.json_response(actions.drain(value))
        if action in ("verify", "expire"):
            body = await _json_body(request, action)
            flag = "fix" if action == "verify" else "dry_run"
            value = body.get(flag, False)
            if set(body) - {flag} or not isinstance(value, bool):
                raise web.HTTPBadRequest(text=f'{action}: the body is {{"{flag}": true|false}}\n')
            if actions.maintenance_busy():
                raise web.HTTPConflict(text=f"{action}: a verify or expiry run is in progress\n")
            if action == "verify":
                return web.json_response(await actions.verify(fix=value))
            return web.json_response(await actions.expire(dry_run=value))
        raise web.HTTPNotFound(text=f"admin API: no action {action!r}\n")

    async def _purge(self, request: web.BaseRequest, actions: Actions) -> web.StreamResponse:
        body = await _json_body(request, "purge")
        if len(body.keys() & {"path", "remap"}) != 1:
            raise web.HTTPBadRequest(
                text='purge: give {"path": "/remap/..."} or {"remap": "NAME"}\n'
            )
        if "remap" in body:
            name = body["remap"]
            removed = await actions.purge_remap(name) if isinstance(name, str) else None
            if removed is None:
                raise web.HTTPNotFound(text=f"purge: no remap named {name!r}\n")
            log.info("admin: purged remap %s (%d files)", name, removed)
            return web.json_response({"removed": removed})
        path = body["path"]
        if not isinstance(path, str) or not path.startswith(("/", "http://")):
            raise web.HTTPBadRequest(text="purge: path must be a request path or URL\n")
        try:
            removed = await actions.purge(path)
        except (BadPath, Forbidden) as exc:
            raise web.HTTPBadRequest(text=f"purge: {exc}\n") from None
        if not removed:
            raise web.HTTPNotFound(text=f"purge: {path} is not cached\n")
        log.info("admin: purged %s", path)
        return web.json_response({"removed": removed})

"""Read simplestreams documents from a mirror root (http(s):// URL or local directory).

With a keyring, every document must carry a good signature: `.sjson` clearsigned,
or `.json` with its detached `.json.gpg`. Without one, documents are read unverified
(the caller says so to the user).
"""

from __future__ import annotations

import asyncio
import errno
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from appliance.cache.fetcher import Fetcher, UpstreamFailure, body_chunks
from appliance.streams.gpg import SignatureError, Verifier
from appliance.streams.model import FormatError, safe_path

DEFAULT_INDEX = "streams/v1/index.sjson"
MAX_DOCUMENT = 64 * 1024 * 1024


class FeedError(Exception):
    """A feed that cannot be read: unreachable, malformed or badly signed."""


def split_feed_url(url: str) -> tuple[str, str]:
    """(mirror root, index path): a root gets `streams/v1/index.sjson` appended."""
    m = re.match(r"^(.*?/?)(streams/v1/[^/]+\.s?json)$", url)
    if m:
        return m.group(1).rstrip("/") or ".", m.group(2)
    return url.rstrip("/") or "/", DEFAULT_INDEX


def unarmor_clearsigned(data: bytes) -> bytes:
    """The cleartext of a clearsigned message, unverified (for --no-verify only)."""
    text = data.decode("utf-8", errors="strict")
    try:
        head, rest = text.split("\n\n", 1)
        body, _sig = rest.split("\n-----BEGIN PGP SIGNATURE-----", 1)
    except ValueError:
        raise FeedError("not a clearsigned document") from None
    if "-----BEGIN PGP SIGNED MESSAGE-----" not in head:
        raise FeedError("not a clearsigned document")
    lines = [ln[2:] if ln.startswith("- ") else ln for ln in body.split("\n")]
    return "\n".join(lines).encode()


def parse_json(data: bytes | str, where: str) -> Any:
    """JSON from upstream: malformed or absurdly nested documents are a FeedError."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FeedError(f"{where}: not JSON ({str(exc)[:200]})") from None
    except RecursionError:
        raise FeedError(f"{where}: JSON nested too deeply") from None


def signed_twin(index_path: str, entry_path: str) -> str:
    """A signed index points at signed products: its `.json` paths become `.sjson`."""
    if index_path.endswith(".sjson") and entry_path.endswith(".json"):
        return entry_path[: -len(".json")] + ".sjson"
    return entry_path


def stored_json(data: bytes) -> bytes:
    """The JSON inside a document the appliance stored after verifying it."""
    if data.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----"):
        return unarmor_clearsigned(data)
    return data


@dataclass
class FeedReader:
    root: str
    fetcher: Fetcher | None = None
    verifier: Verifier | None = None
    # `.json` path -> the `.json.gpg` that verified it (so it is fetched once)
    signatures: dict[str, bytes] = field(default_factory=dict)

    @property
    def is_remote(self) -> bool:
        return self.root.startswith(("http://", "https://"))

    def url(self, path: str) -> str:
        return f"{self.root}/{path}"

    async def raw(self, path: str) -> bytes:
        try:
            safe_path(path, "document")
        except FormatError as exc:
            raise FeedError(str(exc)) from None
        if not self.is_remote:
            try:
                return await asyncio.to_thread(
                    _read_local, Path(self.root.removeprefix("file://")) / path
                )
            except OSError as exc:
                raise FeedError(f"{self.url(path)}: {exc.strerror}") from None
        assert self.fetcher is not None
        resp = await self.fetcher.open([self.url(path)])
        if isinstance(resp, UpstreamFailure):
            raise FeedError(resp.reason)
        too_big = FeedError(f"{self.url(path)}: document larger than {MAX_DOCUMENT} bytes")
        clean = False
        try:
            if resp.status != 200:
                raise FeedError(f"{self.url(path)}: HTTP {resp.status}")
            if (resp.content_length or 0) > MAX_DOCUMENT:
                raise too_big
            # read to the end: one read() returns what is buffered, not the document
            parts: list[bytes] = []
            size = 0
            async for chunk in body_chunks(resp, self.fetcher.limits):
                size += len(chunk)
                if size > MAX_DOCUMENT:
                    raise too_big
                parts.append(chunk)
            clean = True
            return b"".join(parts)
        except aiohttp.ClientError as exc:
            raise FeedError(f"{self.url(path)}: transfer failed ({exc})") from None
        finally:
            if clean:
                resp.release()
            else:
                resp.close()

    async def document(self, path: str) -> tuple[dict[str, Any], bytes]:
        """(parsed JSON, the raw bytes as served), after the signature check."""
        raw = await self.raw(path)
        url = self.url(path)
        try:  # gpg runs as a child process: in a thread, never on the event loop
            if path.endswith(".sjson"):
                content = (
                    await asyncio.to_thread(self.verifier.clearsigned, raw, url)
                    if self.verifier
                    else unarmor_clearsigned(raw)
                )
            else:
                if self.verifier:
                    signature = await self.raw(path + ".gpg")
                    await asyncio.to_thread(self.verifier.detached, raw, signature, url)
                    self.signatures[path] = signature
                content = raw
        except SignatureError as exc:
            raise FeedError(f"bad signature: {exc}") from None
        doc = await asyncio.to_thread(parse_json, content, url)
        if not isinstance(doc, dict):
            raise FeedError(f"{self.url(path)}: not a JSON object")
        return doc, raw

    def entry_path(self, index_path: str, entry_path: str) -> str:
        return signed_twin(index_path, entry_path)


def _read_local(path: Path) -> bytes:
    """A local feed document, no larger than a remote one may be."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_DOCUMENT + 1)
    if len(data) > MAX_DOCUMENT:
        raise OSError(errno.EFBIG, f"document larger than {MAX_DOCUMENT} bytes")
    return data


__all__ = ["FeedError", "FeedReader", "FormatError", "split_feed_url"]

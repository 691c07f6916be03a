"""Safe request paths and cache keys from upstream URLs (`host[:port]/decoded/path`)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

# A name becomes a file with a sidecar `.NAME.meta.part-XXXXXXXXXXXX` beside it: it must
# fit the file system's 255-byte limit with room to spare, and be refused before fetching.
MAX_NAME = 200  # bytes of one segment, UTF-8
MAX_PATH = 2048  # bytes of the whole decoded path


class BadPath(ValueError):
    """A path that is malformed or tries to escape; answered with 400."""


def split_path(raw: str) -> tuple[str, ...]:
    """Split a raw (still percent-encoded) path into decoded, safe segments.

    Refuses `.`/`..`, encoded slashes or traversal, NUL and control characters,
    backslashes, and hidden names (which the store keeps for its own files).
    """
    if "?" in raw or "#" in raw:
        raw = raw.split("?", 1)[0].split("#", 1)[0]
    if not raw.startswith("/"):
        raise BadPath("path must start with '/'")
    segments = []
    total = 0
    for piece in raw[1:].split("/"):
        if piece == "":
            continue  # tolerate '//' like other mirrors do
        try:
            seg = unquote(piece, errors="strict")
        except UnicodeDecodeError:
            raise BadPath("path is not valid UTF-8") from None
        if seg in (".", "..") or seg.startswith("."):
            raise BadPath(f"path segment {piece[:80]!r} is not allowed")
        if "/" in seg or "\\" in seg or any(ord(c) < 0x20 or ord(c) == 0x7F for c in seg):
            raise BadPath(f"path segment {piece[:80]!r} contains a forbidden character")
        try:
            length = len(seg.encode())
        except UnicodeEncodeError:  # surrogates smuggled in by a non-UTF-8 request line
            raise BadPath("path is not valid UTF-8") from None
        if length > MAX_NAME:
            raise BadPath(f"path segment longer than {MAX_NAME} bytes")
        total += length + 1
        segments.append(seg)
    if total > MAX_PATH:
        raise BadPath(f"path longer than {MAX_PATH} bytes")
    return tuple(segments)


def encode_path(segments: tuple[str, ...]) -> str:
    """Segments back to an encoded path for the upstream request ('%' -> '%25')."""
    return "/".join(quote(s, safe="~+:@!$&'()*,;=") for s in segments)


def hostport(host: str, port: int | None, scheme: str = "http") -> str:
    """`host[:port]`, lower-case, IPv6 bracketed, the port only when not the scheme default."""
    host = host.lower()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    default = 443 if scheme == "https" else 80
    return host if port in (None, default) else f"{host}:{port}"


@dataclass(frozen=True)
class UpstreamBase:
    scheme: str
    hostport: str  # lower-case host, ':port' only when not the scheme default
    base: tuple[str, ...]  # decoded path segments of the mirror root

    @classmethod
    def parse(cls, url: str) -> UpstreamBase:
        parts = urlsplit(url)
        return cls(
            parts.scheme,
            hostport(parts.hostname or "", parts.port, parts.scheme),
            split_path(parts.path or "/"),
        )

    def url(self, rest: tuple[str, ...]) -> str:
        return f"{self.scheme}://{self.hostport}/{encode_path(self.base + rest)}"

    def key(self, rest: tuple[str, ...] = ()) -> str:
        return "/".join((self.hostport, *self.base, *rest))

"""The "Use it" lines: what to paste into apt, LXD and Juju to use this appliance.

They name the host the asker used to reach the status page or `/api/status` (its Host
header), so a line copied from a browser works from where that browser is. The Host
header is the client's to write: only a plain host name or address (and a port) is
taken, anything else, and loopback (an operator on the appliance itself, whose clients
are elsewhere), gives the discovery name (`archive.local`).
"""

from __future__ import annotations

import html
import ipaddress
import re
from typing import Any

from appliance.web.tls import PEM_PATH

_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253})(:\d{1,5})?$")
SUITE = "<suite> <components>"  # what apt adds after a remap's URL: the client knows it


def _loopback(host: str) -> bool:
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def client_base(host_header: str | None, name: str, port: int, secure: bool) -> tuple[str, str]:
    """(the host name clients are told, the plain port's base URL on it). A plain request's
    Host is kept whole (its port is the one that reached us, through any forwarding); a
    request over HTTPS names the TLS port, so the plain port is the configured one."""
    m = _HOST.match(host_header or "")
    if m is None or _loopback(m.group(1)):
        return name, f"http://{name}:{port}"
    host = m.group(1)
    return host, f"http://{host}:{port}" if secure or not m.group(2) else f"http://{m.group(0)}"


def lines(
    use: dict[str, Any] | None,
    host_header: str | None,
    secure: bool,
    published: list[str] | None = None,
) -> dict[str, Any] | None:
    """`usage()`'s facts plus the lines to paste, for the host the asker used.
    `published`: feeds the appliance holds (synced or built here by `publish`)."""
    if not use:
        return use
    port = use["port"]
    host, base = client_base(host_header, use.get("name") or "archive.local", port, secure)
    feeds = sorted({*use.get("feeds", ()), *(published or ())})
    tls_port = use.get("tls_port")
    lxd = None
    if feeds and tls_port:
        lxd = {
            "certificate": "curl -so ~/snap/lxd/common/config/servercerts/archive-local.crt "
            f"{base}{PEM_PATH}",
            "remote": f"lxc remote add archive-local https://{host}:{tls_port} "
            "--protocol simplestreams --public",
        }
    return {
        **use,
        "host": host,
        "feeds": feeds,
        "apt_proxy": f'Acquire::http::Proxy "{base}";',
        "apt_proxy_file": f"echo 'Acquire::http::Proxy \"{base}\";' "
        "> /etc/apt/apt.conf.d/01archive-local",
        "path_form": f"deb {base}/<remap>/ {SUITE}",
        "remap_lines": [
            {"name": n, "upstreams": ups, "line": f"deb {base}/{n}/ {SUITE}"}
            for n, ups in sorted(use.get("remaps", {}).items())
        ],
        "lxd": lxd,
        "juju": f"juju model-config image-metadata-url={base}/" if feeds else None,
    }


def _copyable(text: str, label: str = "") -> str:
    """A line and its copy button (the button shows with JavaScript only: see CSS)."""
    lead = f"<span>{html.escape(label)}</span> " if label else ""
    return (
        f'<div class="line">{lead}<code>{html.escape(text)}</code> '
        '<button type="button" class="copy" title="copy this line">copy</button></div>'
    )


def render(use: dict[str, Any] | None) -> str:
    """The "Use it" card's body; every string escaped (the host came from a header)."""
    if not use:
        return "<p>-</p>"
    if "apt_proxy" not in use:  # a document without lines (an older service): compute them
        use = lines(use, None, False) or use
    parts = [
        "<p>apt, as a proxy (sources stay as they are):</p>",
        _copyable(use["apt_proxy_file"]),
    ]
    if use["remap_lines"]:
        parts.append(
            "<p>or by path, a line per archive (with your suite and components):</p>"
            '<ul id="remaps">'
        )
        for r in use["remap_lines"]:
            parts.append(
                f'<li title="{html.escape(", ".join(r["upstreams"]))}">'
                f"{_copyable(r['line'])}<small>/{html.escape(r['name'])}/ → "
                f"{html.escape(', '.join(r['upstreams']))}</small></li>"
            )
        parts.append("</ul>")
    if use["lxd"]:
        parts.append("<p>LXD (pin the certificate, then add the remote):</p>")
        parts += [_copyable(use["lxd"]["certificate"]), _copyable(use["lxd"]["remote"])]
    elif use["feeds"]:
        parts.append(
            '<p class="muted">LXD reads image feeds over HTTPS only: configure '
            "<code>tls.listen</code> to get its <code>lxc remote add</code> line.</p>"
        )
    if use["juju"]:
        parts += ["<p>Juju (signed image metadata):</p>", _copyable(use["juju"])]
    accepted = "".join(f"<li>{html.escape(line)}</li>" for line in use["accepted"])
    parts.append(f'<p>Accepted upstreams:</p><ul id="accepted">{accepted}</ul>')
    return f'<div id="use">{"".join(parts)}</div>'


CSS = (
    "#use .line{display:flex;gap:.4rem;align-items:baseline;margin:.15rem 0}"
    "#use .line code{flex:1;min-width:0;overflow-wrap:anywhere;background:#f4f6f9;"
    "padding:.1rem .3rem;border-radius:4px}"
    "#use ul{padding-left:1.1rem;margin:.2rem 0}#use small{color:#667}"
    ".copy{display:none;font-size:.75rem}html.js .copy{display:inline-block}"
)

# Delegated: the card is inside <main>, which the refresh replaces every few seconds.
SCRIPT = """
document.addEventListener('click', async e => {
  const b = e.target.closest && e.target.closest('button.copy');
  if (!b) return;
  const code = b.parentElement.querySelector('code');
  try {
    await navigator.clipboard.writeText(code.textContent);
    b.textContent = 'copied';
  } catch (err) {  // plain http is no secure context: select the line for Ctrl+C
    const range = document.createRange();
    range.selectNodeContents(code);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    b.textContent = document.execCommand('copy') ? 'copied' : 'selected';
  }
});
"""

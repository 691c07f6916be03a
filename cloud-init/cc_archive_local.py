"""archive_local: find an archive-local appliance at boot and point apt at it.

Discovery, in order, all under one time bound (`timeout`, default 2 s), the lookups
running side by side so that an absent appliance costs only the slowest of them:

1. `url` from the configuration, if given;
2. the system resolver for `archive.local` (works with nss-mdns or a DNS entry);
3. a one-shot multicast DNS query for `archive.local` (stdlib only: cloud images ship
   no avahi or zeroconf);
4. the DNS SRV record `_apt_proxy._tcp.<search domain>`, asked of the resolv.conf servers.

A candidate counts only when `GET /.well-known/archive-local` answers with archive-local's
document. Found: apt's proxy goes to /etc/apt/apt.conf.d/90archive-local-proxy and what
was found (feed URLs, key fingerprint) to /run/archive-local/client.json. Not found: nothing
is written (a file of ours from an earlier boot is removed), one line is logged, and the
boot goes on. The module never raises.

Configuration (all optional; none: discovery). Give it where cloud-init does not check it
against its schema: a file in /etc/cloud/cloud.cfg.d/ baked into the image, or vendor-data.
In user-data (cloud-init 23.4 and later) an `archive_local:` key degrades the boot. An
explicit `apt: proxy` (or http_proxy, ...) in the cloud-config is kept: then no proxy file
is written.

    archive_local:
      enabled: true
      url: http://10.0.0.5:3142/     # skip discovery
      timeout: 2                      # seconds for the whole discovery
      name: archive.local
      port: 3142
      services: [apt]                 # apt: write the proxy setting; [] records only
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import struct
import threading
import time
import urllib.request

try:  # cloud-init >= 22.4
    from cloudinit.distros import ALL_DISTROS
    from cloudinit.settings import PER_ALWAYS
except ImportError:  # imported outside cloud-init (documentation, tests of the helpers)
    ALL_DISTROS, PER_ALWAYS = "all", "always"

LOG = logging.getLogger(__name__)

APT_FILE = "/etc/apt/apt.conf.d/90archive-local-proxy"
RECORD_FILE = "/run/archive-local/client.json"
WELL_KNOWN = "/.well-known/archive-local"
MDNS_GROUP, MDNS_PORT = "224.0.0.251", 5353
MDNS_WAIT = 0.3  # unique records are answered at once (RFC 6762 6.); 0.3 s is plenty

meta = {
    "id": "cc_archive_local",
    "name": "archive-local discovery",
    "title": "Find an archive-local appliance and point apt at it",
    "description": __doc__,
    "distros": [ALL_DISTROS],
    "frequency": PER_ALWAYS,  # the appliance may come or go between boots
    "examples": [],
    "activate_by_schema_keys": [],
}


# --- DNS messages (just enough for A and SRV answers) ----------------------------------


def _query(name: str, qtype: int, qid: int = 0) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    return (
        struct.pack("!6H", qid, 0x0100 if qid else 0, 1, 0, 0, 0)
        + labels
        + b"\0"
        + struct.pack("!2H", qtype, 1)
    )


def _name(msg: bytes, pos: int) -> tuple[str, int]:
    labels, end, jumps = [], None, 0
    while True:
        length = msg[pos]
        if length & 0xC0 == 0xC0:  # compression pointer
            if end is None:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | msg[pos + 1]
            jumps += 1
            if jumps > 20:
                raise ValueError("pointer loop")
            continue
        if length == 0:
            return ".".join(labels).lower(), end if end is not None else pos + 1
        labels.append(msg[pos + 1 : pos + 1 + length].decode("ascii", "replace"))
        pos += 1 + length


def _records(msg: bytes) -> list[tuple[str, int, bytes, int]]:
    """(name, type, rdata, rdata offset) of every answer/authority/additional record."""
    _id, _flags, qd, an, ns, ar = struct.unpack("!6H", msg[:12])
    pos = 12
    for _ in range(qd):
        _n, pos = _name(msg, pos)
        pos += 4
    out = []
    for _ in range(an + ns + ar):
        name, pos = _name(msg, pos)
        rtype, _cls, _ttl, length = struct.unpack("!2HIH", msg[pos : pos + 10])
        pos += 10
        out.append((name, rtype, msg[pos : pos + length], pos))
        pos += length
    return out


def _addresses(msg: bytes, name: str) -> list[str]:
    found = []
    for rname, rtype, rdata, _ in _records(msg):
        if rname == name.lower().rstrip(".") and rtype == 1 and len(rdata) == 4:
            found.append(socket.inet_ntop(socket.AF_INET, rdata))
        elif rname == name.lower().rstrip(".") and rtype == 28 and len(rdata) == 16:
            found.append(socket.inet_ntop(socket.AF_INET6, rdata))
    return found


# --- the lookups ------------------------------------------------------------------------


def by_resolver(name: str, port: int, wait: float) -> list[tuple[str, int]]:
    box: list[list[tuple[str, int]]] = []

    def run() -> None:
        try:
            infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
            box.append([(i[4][0], port) for i in infos])
        except OSError:
            box.append([])

    t = threading.Thread(target=run, daemon=True)  # getaddrinfo has no timeout of its own
    t.start()
    t.join(wait)
    return box[0] if box else []


def by_mdns(name: str, port: int, wait: float) -> list[tuple[str, int]]:
    """One-shot mDNS query from an ephemeral port: responders answer by unicast."""
    found: list[tuple[str, int]] = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
            s.sendto(_query(name, 1), (MDNS_GROUP, MDNS_PORT))
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                try:
                    msg, _src = s.recvfrom(9000)
                except OSError:  # timeout
                    break
                try:
                    found += [(a, port) for a in _addresses(msg, name) if (a, port) not in found]
                except (ValueError, IndexError, struct.error):
                    continue  # a malformed packet from someone else
                if found:
                    break
    except OSError as exc:  # no multicast route: nothing to find this way
        LOG.debug("archive_local: mDNS query: %s", exc)
    return found


def _resolv_conf(path: str = "/etc/resolv.conf") -> tuple[list[str], list[str]]:
    servers, domains = [], []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    servers.append(parts[1])
                elif len(parts) >= 2 and parts[0] in ("search", "domain"):
                    domains += parts[1:]
    except OSError:
        pass
    return servers, domains


def by_srv(wait: float) -> list[tuple[str, int]]:
    """`_apt_proxy._tcp.<domain>` SRV for each search domain, in priority order."""
    deadline = time.monotonic() + wait
    servers, domains = _resolv_conf()
    found: list[tuple[int, int, str, int]] = []
    for domain in dict.fromkeys(domains):
        qname = f"_apt_proxy._tcp.{domain}"
        for server in servers[:3]:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            qid = random.randrange(1, 65535)
            family = socket.AF_INET6 if ":" in server else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as s:
                    s.settimeout(min(left, 1.0))
                    s.sendto(_query(qname, 33, qid), (server, 53))
                    msg = s.recv(4096)
            except OSError:
                continue
            if len(msg) < 12 or struct.unpack("!H", msg[:2])[0] != qid:
                continue
            try:
                records = _records(msg)
                for rname, rtype, rdata, offset in records:
                    if rtype == 33 and rname == qname.lower():
                        prio, weight, srv_port = struct.unpack("!3H", rdata[:6])
                        target, _ = _name(msg, offset + 6)
                        addrs = _addresses(msg, target) or [
                            a
                            for a, _p in by_resolver(
                                target, srv_port, max(0.0, deadline - time.monotonic())
                            )
                        ]
                        found += [(prio, -weight, a, srv_port) for a in addrs]
            except (ValueError, IndexError, struct.error):
                continue
            break  # this server answered
    return [(a, p) for _prio, _w, a, p in sorted(found)]


def confirm(base: str, wait: float) -> dict | None:
    """The appliance's well-known document, or None for anything else."""
    if wait <= 0:
        return None
    try:
        req = urllib.request.Request(
            base.rstrip("/") + WELL_KNOWN, headers={"Accept": "application/json"}
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
        with opener.open(req, timeout=wait) as r:
            doc = json.loads(r.read(65536))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("service") != "archive-local":
        return None
    if not isinstance(doc.get("apt_proxy"), str):
        return None
    return doc


def _base(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def discover(cfg: dict) -> tuple[str, str, dict] | None:
    """(method, base URL, well-known document) of the first confirmed candidate."""
    timeout = float(cfg.get("timeout", 2))
    deadline = time.monotonic() + timeout
    name, port = str(cfg.get("name", "archive.local")), int(cfg.get("port", 3142))
    if cfg.get("url"):
        base = str(cfg["url"]).rstrip("/")
        doc = confirm(base, timeout)
        return ("url", base, doc) if doc else None
    results: dict[str, list[tuple[str, int]]] = {}
    lookups = {
        "resolver": lambda: by_resolver(name, port, timeout),
        "mdns": lambda: by_mdns(name, port, min(MDNS_WAIT, timeout)),
        "srv": lambda: by_srv(timeout),
    }
    threads = {}
    for method, fn in lookups.items():
        t = threading.Thread(target=lambda m=method, f=fn: results.__setitem__(m, f()), daemon=True)
        t.start()
        threads[method] = t
    for method in ("resolver", "mdns", "srv"):  # the discovery order
        threads[method].join(max(0.0, deadline - time.monotonic()))
        for host, p in results.get(method, []):
            base = _base(host, p)
            doc = confirm(base, min(1.0, deadline - time.monotonic()))
            if doc:
                return method, base, doc
            LOG.debug(
                "archive_local: %s candidate %s is not an archive-local appliance", method, base
            )
    return None


def _write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


APT_PROXY_KEYS = ("proxy", "http_proxy", "https_proxy", "ftp_proxy")
LEGACY_PROXY_KEYS = ("apt_proxy", "apt_http_proxy", "apt_https_proxy", "apt_ftp_proxy")


def explicit_proxy(cloud_cfg: dict) -> str | None:
    """The cloud-config key that already chooses apt's proxy (cloud-init's `apt: proxy`
    and its legacy spellings), if any: an explicit choice is never overwritten."""
    apt = cloud_cfg.get("apt")
    if isinstance(apt, dict):
        for key in APT_PROXY_KEYS:
            if apt.get(key):
                return f"apt: {key}"
    for key in LEGACY_PROXY_KEYS:
        if cloud_cfg.get(key):
            return key
    return None


def _drop_stale() -> bool:
    if os.path.exists(APT_FILE):
        os.unlink(APT_FILE)
        return True
    return False


def run(cfg: dict, explicit: str | None = None) -> str:
    """Discover and configure; returns the one line that is logged. `explicit`: the
    cloud-config key that already sets apt's proxy (then ours is not written)."""
    started = time.monotonic()
    if cfg.get("enabled", True) is False:
        return "archive_local: disabled"
    found = discover(cfg)
    took = time.monotonic() - started
    if found is None:
        stale = _drop_stale()
        tried = "url" if cfg.get("url") else "resolver, mDNS, SRV"
        return f"archive_local: no appliance found ({tried}) in {took:.2f} s; nothing written" + (
            "; removed the proxy setting of an earlier boot" if stale else ""
        )
    method, base, doc = found
    proxy = f"{base}/"
    services = cfg.get("services", ["apt"])
    if "apt" in services and explicit:
        _drop_stale()
        services = [s for s in services if s != "apt"]
    if "apt" in services:
        _write(
            APT_FILE,
            f'# written by cloud-init (archive_local): {method}\nAcquire::http::Proxy "{proxy}";\n',
        )
    record = {
        "found_by": method,
        "url": base,
        "apt_proxy": proxy,
        "well_known": doc,
        "images": doc.get("images", {}),
    }
    _write(RECORD_FILE, json.dumps(record, indent=1) + "\n")
    apt = "set" if "apt" in services else "not set"
    if explicit:
        apt = f"left as configured ({explicit})"
    return f"archive_local: found {base} by {method} in {took:.2f} s; apt proxy {apt}"


def handle(*args, **kwargs) -> None:
    """cloud-init <= 23.1 calls handle(name, cfg, cloud, log, args); >= 23.2 by keyword."""
    cfg = args[1] if len(args) > 1 else kwargs.get("cfg", {})
    mine = (cfg or {}).get("archive_local") or {}
    if not isinstance(mine, dict):
        LOG.warning("archive_local: the archive_local key must be a mapping; skipped")
        return
    try:
        LOG.info(run(mine, explicit_proxy(cfg or {})))
    except Exception as exc:  # never fail the boot
        LOG.warning("archive_local: discovery failed (%s); nothing written", exc)

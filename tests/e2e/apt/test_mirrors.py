"""Stock apt sources work out of the box: every official Debian and Ubuntu mirror a stock
image names is accepted in proxy form by the embedded default configuration, and every
mirror of one archive shares that archive's cache entries (no network: routing only)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from appliance import runtime
from appliance.apt import mirrors
from appliance.apt.routing import Forbidden, Router
from appliance.cache.egress import EgressPolicy, EgressRefused, GuardedResolver
from appliance.config import ConfigError
from appliance.config.parse import load, parse
from tests.conftest import unavailable

TEMPLATES = Path("/usr/share/python-apt/templates")
REPO = Path(__file__).parents[3]
ACNG_LISTS = REPO / ".components/apt-cacher-ng/usr/lib/apt-cacher-ng"
# what stock images, cloud images and the distributions' installers write
STOCK = {
    "debian": [
        "ftp.debian.org",
        "ftp.fr.debian.org",
        "ftp.us.debian.org",
        "debian.map.fastlydns.net",
    ],
    "debian-security": ["security.debian.org"],
    "ubuntu": [
        "archive.ubuntu.com",
        "security.ubuntu.com",
        "fr.archive.ubuntu.com",
        "us-east-1.ec2.archive.ubuntu.com",
        "nova.clouds.archive.ubuntu.com",
        "azure.archive.ubuntu.com",
    ],
    "ubuntu-ports": ["ports.ubuntu.com", "de.ports.ubuntu.com"],
}
ARCHIVE = {"debian": "debian", "debian-security": "debian-security"}


def _router(config_data: dict | None = None) -> Router:
    """The router exactly as the service builds it (runtime.apt_mirrors)."""
    config = load(None) if config_data is None else parse(config_data)
    return Router(config.apt.remaps, config.apt.allow, runtime.apt_mirrors(config))


def _canonical(router: Router, remap: str) -> str:
    return router.route(f"/{remap}/dists/x/InRelease").key.removesuffix("/dists/x/InRelease")


def _list_urls(path: Path) -> list[str]:
    data = path.read_bytes()
    text = (gzip.decompress(data) if path.suffix == ".gz" else data).decode()
    return [u for u in text.split() if u.startswith(("http://", "https://"))]


def _lists() -> dict[str, list[str]]:
    """The python-apt lists (make test installs python-apt-common)."""
    found = {}
    for name, remap in (("Debian.mirrors", "debian"), ("Ubuntu.mirrors", "ubuntu")):
        path = TEMPLATES / name
        if not path.exists():
            unavailable(f"{path} missing: apt-get install python-apt-common (make test does)")
        found[remap] = _list_urls(path)
    return found


def _archive_of(url: str, remap: str) -> str | None:
    """The archive a list entry serves: its list's, unless its path or host names a kin
    archive (`ubuntu-ports` in Ubuntu's list, `debian-security` in Debian's); None for an
    entry that may be a ports archive without saying which (`http://ports.x.net/`)."""
    host, _, path = url.split("://", 1)[1].lower().partition("/")
    words = set(path.split("/")) | set(host.split("."))
    kin = {"debian": "debian-security", "ubuntu": "ubuntu-ports"}[remap]
    if kin in words:
        return kin
    return None if "ports" in url.lower() else remap


def _check_list(router: Router, remap: str, urls: list[str]) -> int:
    """Every entry is accepted and shares its archive's entries (an ambiguous one is
    refused: never another archive's files); the count checked."""
    checked = 0
    for url in urls:
        request = "http://" + url.split("://", 1)[1].rstrip("/") + "/dists/stable/InRelease"
        archive = _archive_of(url, remap)
        if archive is None:
            with pytest.raises(Forbidden):
                router.route(request)
            continue
        route = router.route(request)  # Forbidden fails the test
        assert route.key == f"{_canonical(router, archive)}/dists/stable/InRelease", url
        assert route.urls[0] == request  # the mirror the client named is asked first
        checked += 1
    return checked


def test_every_official_mirror_in_the_distributions_lists_is_accepted_by_default() -> None:
    router = _router()
    checked = sum(_check_list(router, remap, urls) for remap, urls in _lists().items())
    assert checked > 800  # (Debian.mirrors and Ubuntu.mirrors: several hundred each)


def test_apt_cacher_ng_lists_are_read_where_it_keeps_them() -> None:
    """An operator moving from apt-cacher-ng: its lists (as its package ships them, here
    unpacked by `make test`) are read in the place the default configuration names."""
    lists = {"debian": "deb_mirrors.gz", "ubuntu": "ubuntu_mirrors"}
    if not all((ACNG_LISTS / f).exists() for f in lists.values()):
        unavailable(f"{ACNG_LISTS} missing: make test unpacks apt-cacher-ng's package there")
    default = load(None)
    named = {s for specs in default.apt.mirrors.values() for s in specs}
    assert {f"file:/usr/lib/apt-cacher-ng/{f}" for f in lists.values()} <= named
    data = {
        "apt": {"mirrors": {r: [f"file:{ACNG_LISTS / f}"] for r, f in lists.items()}},
    }
    router = _router(data)
    checked = sum(_check_list(router, r, _list_urls(ACNG_LISTS / f)) for r, f in lists.items())
    assert checked > 700


def test_stock_image_hosts_and_this_machines_own_sources_are_accepted() -> None:
    router = _router()
    for remap, hosts in STOCK.items():
        canonical = _canonical(router, remap)
        archive = ARCHIVE.get(remap, remap)
        for host in hosts:
            route = router.route(f"http://{host}/{archive}/pool/main/h/hello/hello_1_all.deb")
            assert route.key == f"{canonical}/pool/main/h/hello/hello_1_all.deb", host
    own = list(mirrors.source_uris(["/etc/apt/sources.list", "/etc/apt/sources.list.d"]))
    assert own, "this machine has no apt sources"
    for uri in own:
        if uri.startswith("http://"):
            router.route(uri.rstrip("/") + "/dists/stable/InRelease")  # not Forbidden


def test_what_the_default_configuration_does_not_name_is_refused_with_the_reason() -> None:
    router = _router()
    with pytest.raises(Forbidden, match=r"Not a configured upstream: deb\.example\.org \(add"):
        router.route("http://deb.example.org/debian/pool/a.deb")
    # an official domain outside an archive's path is not an archive
    with pytest.raises(Forbidden):
        router.route("http://people.debian.org/~someone/x.deb")
    with pytest.raises(Forbidden, match=r"No remap named nope \(remaps: /debian/"):
        router.route("/nope/pool/a.deb")


def test_a_list_that_mixes_archives_keeps_each_archive_apart(tmp_path: Path) -> None:
    """Ubuntu's lists hold ports mirrors beside the archive's: an InRelease of one is not
    the other's, so each goes to the remap its path or host names."""
    listed = tmp_path / "Ubuntu.mirrors"
    listed.write_text(
        "#LOC:XX\nhttp://m.example/ubuntu/\nhttp://m.example/ubuntu-ports/\nhttp://ports.example.net/\n"
        "http://ubuntu-ports.example/\nftp://old.example/ubuntu/\nmirror://x/mirrors.txt\n"
    )
    router = _router(
        {"apt": {"mirrors": {"ubuntu": [f"file:{listed}"], "ubuntu-ports": []}, "sources": []}}
    )
    ports = _canonical(router, "ubuntu-ports")
    archive = _canonical(router, "ubuntu")
    assert router.route("http://m.example/ubuntu/dists/n/InRelease").key.startswith(archive)
    assert router.route("http://m.example/ubuntu-ports/dists/n/InRelease").key.startswith(ports)
    assert router.route("http://ubuntu-ports.example/dists/n/InRelease").key.startswith(ports)
    with pytest.raises(Forbidden):
        router.route("http://old.example/ubuntu/dists/n/InRelease")  # ftp:// is not http
    with pytest.raises(Forbidden):  # a ports archive, but whose? Not the archive's
        router.route("http://ports.example.net/dists/n/InRelease")
    # a configuration without a ports remap: the ports mirrors of the lists are refused
    without = _router({"apt": {"remaps": {"ubuntu": ["http://archive.ubuntu.com/ubuntu"]}}})
    with pytest.raises(Forbidden):
        without.route("http://m.example/ubuntu-ports/dists/n/InRelease")
    with pytest.raises(Forbidden):
        without.route("http://ports.ubuntu.com/ubuntu-ports/dists/n/InRelease")
    assert without.route("http://fr.archive.ubuntu.com/ubuntu/dists/n/InRelease").key.startswith(
        "archive.ubuntu.com/ubuntu/"
    )


def test_mirror_entries_are_checked_when_the_configuration_is_read() -> None:
    for bad, where in (
        ({"debian": "file:/x"}, "apt.mirrors.debian"),
        ({"debian": ["file:relative"]}, r"apt.mirrors.debian\[0\]"),
        ({"debian": ["ftp://x/debian/"]}, r"apt.mirrors.debian\[0\]"),
        ({"debian": ["http://x/*/debian/"]}, r"apt.mirrors.debian\[0\]"),
    ):
        with pytest.raises(ConfigError, match=where):
            parse({"apt": {"mirrors": bad}})


async def test_a_host_only_a_mirror_list_names_must_resolve_to_a_public_address(
    tmp_path: Path,
) -> None:
    """A list holds a thousand hosts nobody here chose; one whose domain lapsed and now
    resolves into the LAN must not make the cache fetch from it. A host the operator
    configured (or an official name) may resolve anywhere the egress rules allow."""
    listed = tmp_path / "Debian.mirrors"
    listed.write_text("http://localhost/debian/\n")
    data = {"apt": {"mirrors": {"debian": [f"file:{listed}"]}, "sources": []}}
    config = parse(data)
    allowed, public_only = runtime.upstream_rule(config, runtime.apt_mirrors(config))
    assert allowed("localhost")
    resolver = GuardedResolver(EgressPolicy(allowed, public_only=public_only))
    with pytest.raises(EgressRefused, match="not a public address"):
        await resolver.resolve("localhost", 80)
    data["apt"]["remaps"] = {"debian": ["http://localhost/debian"]}  # the operator's choice
    config = parse(data)
    allowed, public_only = runtime.upstream_rule(config, runtime.apt_mirrors(config))
    resolver = GuardedResolver(EgressPolicy(allowed, public_only=public_only))
    assert await resolver.resolve("localhost", 80)


def test_this_machines_own_mirror_of_an_archive_shares_its_entries(
    tmp_path: Path,
) -> None:
    """The mirror the appliance machine's own apt uses (a CDN name, say): proxy-form
    requests to it share the archive's entries."""
    sources = tmp_path / "own.sources"
    sources.write_text(
        "Types: deb\nURIs: http://cdn.example/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\nURIs: http://repo.example/tools\nSuites: stable\nComponents: main\n"
    )
    router = _router({"apt": {"sources": [str(sources)]}})
    canonical = _canonical(router, "debian")
    route = router.route("http://cdn.example/debian/pool/main/h/hello/hello_1_all.deb")
    assert route.key == f"{canonical}/pool/main/h/hello/hello_1_all.deb"
    assert route.urls[0].startswith("http://cdn.example/debian/")
    other = router.route("http://repo.example/tools/dists/stable/InRelease")
    assert other.key == "repo.example/tools/dists/stable/InRelease"  # not an archive here

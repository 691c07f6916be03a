"""Table tests for the pure parts: config, path rules, routing, ranges, LRU."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance import config
from appliance.apt.paths import BadPath, freshness, split_path
from appliance.apt.routing import Forbidden, Router
from appliance.cache.lru import LruIndex
from appliance.cache.route import Freshness
from appliance.web.ranges import Plan, plan

# --- config ---------------------------------------------------------------------------------


def test_embedded_default() -> None:
    c = config.load()
    assert c.listen == config.Listen("0.0.0.0", 3142)
    assert c.cache.max_size == 50 * 1024**3
    assert c.apt.index_ttl == 300
    assert set(c.apt.remaps) == {"debian", "debian-security", "ubuntu", "ubuntu-ports"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"listen": "nowhere"}, "listen: expected HOST:PORT"),
        ({"listen": "1.2.3.4:70000"}, "listen: port must be 1-65535"),
        ({"cache": {"max_size": "lots"}}, "cache.max_size: expected a size"),
        ({"cache": {"max_size": -1}}, "cache.max_size: must be positive"),
        ({"cache": {"colour": 1}}, "cache.colour: unknown key"),
        ({"apt": {"index_ttl": "soon"}}, "apt.index_ttl: expected seconds"),
        ({"apt": {"remaps": {"debian": "ftp://x/debian"}}}, "apt.remaps.debian[0]: expected"),
        ({"apt": {"remaps": {"debian": []}}}, "apt.remaps.debian: expected a non-empty list"),
        ({"apt": {"remaps": {"../x": ["http://x/"]}}}, "apt.remaps.../x: a remap name"),
        ({"apt": {"allow": ["bad host!"]}}, "apt.allow[0]: expected host[:port]"),
        ({"apt": {"allow": "x"}}, "apt.allow: expected a list"),
        ({"images": {"colour": 1}}, "images.colour: unknown key"),
        ({"images": {"feeds": [{"name": "u", "url": "http://x/"}]}}, "images.feeds[0].keyring"),
        ({"images": {"sync_interval": "often"}}, "images.sync_interval: expected a duration"),
        (
            {
                "images": {
                    "feeds": [
                        {"name": "u", "url": "http://x/", "keyring": "/k", "filters": ["arch"]}
                    ]
                }
            },
            "images.feeds[0].filters[0]: bad filter",
        ),
        (["a list"], "<top level>: expected a mapping"),
        ({"upstream": {"read_timeout": 0}}, "upstream.read_timeout: expected seconds > 0"),
        ({"upstream": {"retries": 3}}, "upstream.retries: unknown key"),
    ],
)
def test_config_errors_name_the_key(data: object, message: str) -> None:
    with pytest.raises(config.ConfigError, match=f"^{re.escape(message)}"):
        config.parse(data)


@pytest.mark.parametrize(
    ("text", "size"), [("50GiB", 50 * 2**30), ("500MB", 500 * 10**6), ("1.5KiB", 1536), (7, 7)]
)
def test_sizes(text: object, size: int) -> None:
    assert config.parse_size(text, "k") == size


def test_file_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("listen: '[::1]:3150'\napt: {remaps: {local: [http://127.0.0.1:8/d/]}}\n")
    c = config.load(f)
    assert c.listen == config.Listen("::1", 3150) and dict(c.apt.remaps) == {
        "local": ("http://127.0.0.1:8/d",)
    }
    c = config.with_overrides(
        c,
        listen="127.0.0.1:3199",
        cache_dir="/tmp/x",
        remaps=["debian=http://a/debian,https://b/debian"],
    )
    assert str(c.listen) == "127.0.0.1:3199" and c.cache.dir == Path("/tmp/x")
    assert c.apt.remaps["debian"] == ("http://a/debian", "https://b/debian")
    with pytest.raises(config.ConfigError, match="--remap"):
        config.with_overrides(c, remaps=["nourl"])
    f.write_text("listen: [unclosed\n")
    with pytest.raises(config.ConfigError, match=f"^{re.escape(str(f))}:2:1: expected ','"):
        config.load(f)


# --- paths and routing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/pool/main/h/hello/hello_2.10-3_amd64.deb", Freshness.IMMUTABLE),
        ("/pool/main/h/hello/hello_2.10.orig.tar.gz", Freshness.IMMUTABLE),
        ("/pool/main/h/hello/hello_2.10-3.debian.tar.xz", Freshness.IMMUTABLE),
        ("/pool/main/h/hello/hello_2.10-3.dsc", Freshness.IMMUTABLE),
        ("/pool/main/d/di/di_1_amd64.udeb", Freshness.IMMUTABLE),
        ("/dists/stable/main/binary-amd64/by-hash/SHA256/" + "a" * 64, Freshness.IMMUTABLE),
        ("/dists/stable/InRelease", Freshness.VOLATILE),
        ("/dists/stable/Release.gpg", Freshness.VOLATILE),
        ("/dists/stable/main/binary-amd64/Packages.xz", Freshness.VOLATILE),
        ("/dists/stable/main/source/Sources.gz", Freshness.VOLATILE),
        ("/dists/stable/main/i18n/Translation-en.bz2", Freshness.VOLATILE),
        ("/dists/stable/main/Contents-amd64.gz", Freshness.VOLATILE),
        ("/dists/stable/main/dep11/Components-amd64.yml.gz", Freshness.VOLATILE),
        ("/dists/stable/main/cnf/Commands-amd64.xz", Freshness.VOLATILE),
        ("/dists/stable/main/by-hash/SHA256/not-a-hash", Freshness.VOLATILE),
        ("/README", Freshness.VOLATILE),
    ],
)
def test_freshness_classes(path: str, kind: Freshness) -> None:
    assert freshness(split_path(path)) is kind


def test_split_path_decodes_once() -> None:
    assert split_path("/pool/a_1%253a2_all.deb") == ("pool", "a_1%3a2_all.deb")
    for bad in ("/a/../b", "/a/%2e%2e/b", "/a%2fb", "/a%00", "/.hidden", "/a/%C0%AE", "relative"):
        with pytest.raises(BadPath):
            split_path(bad)


def test_router_keys_share_remap_and_forward_forms() -> None:
    r = Router(
        {"debian": ("http://mirror.example/debian", "https://other.example:8443/deb")},
        allow=("extra.example:8080",),
    )
    via_remap = r.route_path("/debian/pool/a_1%253a2_all.deb")
    via_proxy = r.route_url("http://mirror.example/debian/pool/a_1%253a2_all.deb")
    assert via_remap.key == via_proxy.key == "mirror.example/debian/pool/a_1%3a2_all.deb"
    assert via_remap.urls == (
        "http://mirror.example/debian/pool/a_1%253a2_all.deb",
        "https://other.example:8443/deb/pool/a_1%253a2_all.deb",
    )
    second = r.route_url("http://other.example:8443/deb/pool/x.deb")
    assert second.key == "mirror.example/debian/pool/x.deb"
    assert second.urls[0] == "https://other.example:8443/deb/pool/x.deb"  # asked-for mirror first
    assert r.route_url("http://extra.example:8080/x/y.deb").key == "extra.example:8080/x/y.deb"
    for url in ("http://extra.example/x/y.deb", "http://evil.example/debian/pool/x.deb"):
        with pytest.raises(Forbidden):
            r.route_url(url)
    with pytest.raises(Forbidden):
        r.route_path("/ubuntu/pool/x.deb")
    assert r.allow_connect("mirror.example", 443) and r.allow_connect("extra.example", 443)
    assert not r.allow_connect("mirror.example", 22) and not r.allow_connect("evil.example", 443)


# --- ranges ---------------------------------------------------------------------------------

LM = "Wed, 21 Oct 2026 07:28:00 GMT"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, Plan(200, 0, 100)),
        ({"Range": "bytes=0-9"}, Plan(206, 0, 10)),
        ({"Range": "bytes=90-200"}, Plan(206, 90, 100)),
        ({"Range": "bytes=-10"}, Plan(206, 90, 100)),
        ({"Range": "bytes=-1000"}, Plan(206, 0, 100)),
        ({"Range": "bytes=100-"}, Plan(416)),
        ({"Range": "bytes=5-2"}, Plan(416)),
        ({"Range": "bytes=0-1,5-6"}, Plan(200, 0, 100)),
        ({"Range": "items=1-2"}, Plan(200, 0, 100)),
        ({"If-None-Match": '"e1"'}, Plan(304)),
        ({"If-None-Match": 'W/"e1"'}, Plan(304)),
        ({"If-None-Match": '"x", "e1"'}, Plan(304)),
        ({"If-None-Match": '"x"', "If-Modified-Since": LM}, Plan(200, 0, 100)),
        ({"If-Modified-Since": LM}, Plan(304)),
        ({"If-Modified-Since": "Wed, 21 Oct 2026 07:27:59 GMT"}, Plan(200, 0, 100)),
        ({"If-Modified-Since": "garbage"}, Plan(200, 0, 100)),
        ({"Range": "bytes=0-0", "If-Range": '"e1"'}, Plan(206, 0, 1)),
        ({"Range": "bytes=0-0", "If-Range": '"old"'}, Plan(200, 0, 100)),
    ],
)
def test_plan(headers: dict[str, str], expected: Plan) -> None:
    assert plan(headers, 100, '"e1"', LM) == expected


# --- LRU ------------------------------------------------------------------------------------


def test_lru_evicts_oldest_unpinned() -> None:
    lru = LruIndex(max_size=10)
    for key in "abcd":
        lru.add(key, 3)
    lru.touch("a")  # a is now the most recent
    lru.pin("b")
    assert lru.victims() == ["c"]  # b pinned; 12 - 3 = 9 fits
    assert lru.total == 9
    lru.unpin("b")
    lru.add("e", 5)
    assert lru.victims() == ["b", "d"]


def _with_store(store: object) -> dict:
    data = config.default_data()
    data["cache"] = {**data["cache"], "store": store}
    return data


def test_cache_store_is_parsed_checked_and_printed_back() -> None:
    store = {
        "type": "s3",
        "endpoint": "http://127.0.0.1:8080",
        "bucket": "archive-fleet",
        "credentials_file": "/etc/archive-local/store-credentials",
        "prefix": "units",
    }
    parsed = config.parse(_with_store(store), "test")
    s = parsed.cache.store
    assert s is not None and (s.bucket, s.prefix, s.region) == (
        "archive-fleet",
        "units/",
        "us-east-1",
    )
    again = config.parse(config.to_data(parsed), "printed")  # `archive-local config` reads back
    assert again.cache.store == s
    assert config.parse(config.default_data(), "d").cache.store is None  # the default: disk only
    for bad, message in (
        ({**store, "bucket": "A"}, "cache.store.bucket: a bucket name"),
        ({k: v for k, v in store.items() if k != "endpoint"}, "cache.store.endpoint: required"),
        ({**store, "endpoint": "ftp://x/"}, "cache.store.endpoint"),
        ({**store, "type": "swift"}, "cache.store.type"),
        ({**store, "prefix": "/abs"}, "cache.store.prefix"),
        ({**store, "secret_key": "x"}, "cache.store"),
    ):
        with pytest.raises(config.ConfigError, match=re.escape(message)):
            config.parse(_with_store(bad), "test")
    plain = config.parse(config.default_data(), "d")
    assert config.restart_needed(plain, parsed) == ["cache.store"]  # a reload cannot switch it


def test_the_appliances_own_pages_are_not_counted_as_apt_traffic() -> None:
    from appliance.web.accesslog import service_of

    for path in ("/", "/healthz", "/metrics", "/api/status", "/.well-known/archive-local"):
        assert service_of(path) is None, path  # a load balancer's checks are no apt hits
    assert service_of("/debian/pool/main/h/hello.deb") == "apt"


def test_no_credentials_in_any_url_and_none_shown_in_the_error() -> None:
    store = {
        "endpoint": "http://AKIAEXAMPLE:s3cr3t@127.0.0.1:8080",
        "bucket": "archive-fleet",
        "credentials_file": "/etc/archive-local/store-credentials",
    }
    with pytest.raises(config.ConfigError) as caught:
        config.parse(_with_store(store), "test")
    assert "cache.store.endpoint: no credentials" in str(caught.value)
    assert "s3cr3t" not in str(caught.value) and "AKIAEXAMPLE" not in str(caught.value)
    data = config.default_data()
    data["apt"]["remaps"] = {"debian": ["http://user:pw@deb.example/debian"]}
    with pytest.raises(config.ConfigError, match="credentials") as caught:
        config.parse(data, "test")
    assert "pw@" not in str(caught.value)


def test_urls_in_problem_messages_lose_their_credentials() -> None:
    from appliance.config import redact

    said = 'Could not connect to the endpoint URL: "http://key:se%2Fcret@swift.example:8080/b"'
    assert (
        redact(said) == 'Could not connect to the endpoint URL: "http://***@swift.example:8080/b"'
    )
    assert redact("https://u@h/x and http://h2/y") == "https://***@h/x and http://h2/y"
    assert redact("http://user:p@ss@host/x") == "http://***@host/x"  # an @ in the password
    data = config.default_data()
    data["apt"]["remaps"] = {"debian": ["http://[::1"]}
    with pytest.raises(config.ConfigError, match="not a URL"):
        config.parse(data, "test")


def test_a_fleet_key_file_is_parsed_and_printed_back(tmp_path: Path) -> None:
    store = {
        "endpoint": "http://127.0.0.1:8080",
        "bucket": "archive-fleet",
        "credentials_file": "/etc/archive-local/store-credentials",
        "fleet_key_file": "/etc/archive-local/fleet-key",
    }
    parsed = config.parse(_with_store(store), "test")
    assert parsed.cache.store is not None
    assert parsed.cache.store.fleet_key_file == Path("/etc/archive-local/fleet-key")
    assert config.parse(config.to_data(parsed), "printed").cache.store == parsed.cache.store
    from appliance.cache.fleetkey import FleetKey

    short = tmp_path / "short"
    short.write_text("tiny\n")
    with pytest.raises(ValueError, match=re.escape(f"{short}: a fleet key needs")):
        FleetKey.read(short)


def test_a_secret_key_may_hold_any_character_and_errors_never_show_it(tmp_path: Path) -> None:
    """configparser's interpolation made `%` in a secret a traceback at `serve`."""
    from appliance.cache.objectstore import read_credentials

    creds = tmp_path / "creds"
    creds.write_text("[default]\naws_access_key_id = AKIA1\naws_secret_access_key = a%b%(c)s\n")
    assert read_credentials(creds).secret_key == "a%b%(c)s"
    creds.write_text("aws_secret_access_key = hunter2-no-section\n")
    with pytest.raises(ValueError) as caught:
        read_credentials(creds)
    assert str(creds) in str(caught.value) and "hunter2" not in str(caught.value)

"""The pure rules behind the fault suite: egress, index parsing, bounded inputs (tables)."""

from __future__ import annotations

import pytest

from appliance.apt.indexes import classify, package_files, release_files, stanzas
from appliance.cache.egress import EgressPolicy
from appliance.cache.keys import BadPath, split_path
from appliance.cache.lru import LruIndex
from appliance.web.ranges import plan

POLICY = EgressPolicy({"mirror.example", "cdn.example:8080"}.__contains__, own_ports=(3142,))


@pytest.mark.parametrize(
    ("origin", "target", "refused"),
    [
        ("http://deb.example/debian/x", "http://deb.example/other/x", None),  # same host
        ("http://deb.example/x", "https://deb.example/x", None),  # http -> https, same host
        ("http://deb.example/x", "http://mirror.example/x", None),  # configured
        ("http://deb.example/x", "http://cdn.example:8080/x", None),
        ("http://deb.example/x", "http://cdn.example/x", "not a configured upstream"),
        ("http://deb.example/x", "http://evil.example/x", "not a configured upstream"),
        ("http://deb.example/x", "ftp://deb.example/x", "only http(s)"),
        ("http://deb.example/x", "file:///etc/passwd", "only http(s)"),
        ("http://169.254.169.254/", "http://169.254.169.254/latest", "metadata"),
        ("http://[fd00:ec2::254]/", "http://[fd00:ec2::254]/x", "metadata"),
        ("http://127.0.0.1:3142/", "http://127.0.0.1:3142/api/status", "this appliance"),
        ("http://127.0.0.1:9/", "http://127.0.0.1:9/x", None),  # another port: not us
        ("http://deb.example/x", "http://deb.example:99999/x", "bad port"),
    ],
)
def test_redirect_rules(origin: str, target: str, refused: str | None) -> None:
    problem = POLICY.redirect_problem(origin, target)
    if refused is None:
        assert problem is None
    else:
        assert problem is not None and refused in problem


@pytest.mark.parametrize(
    ("address", "port", "refused"),
    [
        ("169.254.169.254", 80, True),
        ("169.254.1.1", 443, True),
        ("::ffff:169.254.169.254", 80, True),  # IPv4-mapped
        ("fe80::1", 80, True),
        ("fd00:ec2::254", 80, True),
        ("127.0.0.1", 3142, True),  # ourselves
        ("0.0.0.0", 3142, True),
        ("127.0.0.1", 80, False),
        ("192.0.2.1", 3142, False),  # not an address of this machine
        ("not-an-address", 80, True),
    ],
)
def test_address_rules(address: str, port: int, refused: bool) -> None:
    assert (POLICY.address_problem(address, port) is not None) == refused


@pytest.mark.parametrize(
    ("key", "kind", "base"),
    [
        ("h/debian/dists/bookworm/InRelease", "release", "h/debian/dists/bookworm"),
        ("h/debian/dists/bookworm/Release", "release", "h/debian/dists/bookworm"),
        ("h/debian/dists/bookworm/main/binary-amd64/Packages.xz", "packages", "h/debian"),
        ("h/debian/dists/bookworm/main/source/Sources.gz", "sources", "h/debian"),
        ("h/debian/dists/b/main/binary-amd64/by-hash/SHA256/" + "a" * 64, "by-hash", "h/debian"),
        ("h/debian/dists/b/main/i18n/by-hash/SHA256/" + "a" * 64, None, None),
        ("h/debian/dists/b/main/Contents-amd64.gz", None, None),
        ("h/flat/Packages.gz", "packages", "h/flat"),
        ("h/debian/pool/main/a/a_1_all.deb", None, None),
    ],
)
def test_which_keys_are_indexes(key: str, kind: str | None, base: str | None) -> None:
    index = classify(key)
    assert (index.kind if index else None, index.base if index else None) == (kind, base)


def test_release_files_from_a_clearsigned_inrelease() -> None:
    sha = "ab" * 32
    text = (
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n"
        "Origin: x\nAcquire-By-Hash: yes\nMD5Sum:\n"
        f" {'cd' * 16} 120 main/binary-amd64/Packages.xz\n"
        "SHA256:\n"
        f" {sha} 120 main/binary-amd64/Packages.xz\n"
        f" {sha} 999999999999999999999 main/huge\n"  # size beyond reason: skipped
        f" {sha} 5 ../../escape\n"  # climbs out: skipped
        "- -----not a signature, dash-escaped\n"
        "-----BEGIN PGP SIGNATURE-----\nxyz\n-----END PGP SIGNATURE-----\n"
    )
    listed, by_hash = release_files(text.splitlines(keepends=True))
    assert by_hash
    assert [(i.path, i.size, i.algorithm, i.digest) for i in listed] == [
        ("main/binary-amd64/Packages.xz", 120, "sha256", sha)
    ]
    assert listed[0].also == (("md5", "cd" * 16),)


def test_packages_and_sources_paragraphs() -> None:
    text = (
        "Package: a\nFilename: pool/a_1.deb\nSize: 10\nSHA256: " + "1" * 64 + "\n"
        "Description: x\n long\n .\n text\n\n"
        "Package: b\nFilename: pool/b.deb\nSize: ten\nSHA256: " + "2" * 64 + "\n\n"
        "Package: s\nDirectory: pool/s\nChecksums-Sha256:\n"
        " " + "3" * 64 + " 7 s_1.dsc\n " + "4" * 64 + " 8 ../evil\n"
    )
    listed = list(package_files(stanzas(text.splitlines(keepends=True))))
    assert [(i.path, i.size) for i in listed] == [("pool/a_1.deb", 10), ("pool/s/s_1.dsc", 7)]


@pytest.mark.parametrize(
    "path",
    ["/debian/" + "n" * 201, "/debian/" + "/".join(["d" * 150] * 14), "/debian/\udc80.deb"],
)
def test_names_the_file_system_cannot_hold_are_bad_paths(path: str) -> None:
    with pytest.raises(BadPath):
        split_path(path)


def test_ranges_with_absurd_numbers() -> None:
    assert plan({"Range": "bytes=0-" + "9" * 5000}, 10, None, None).status == 206
    assert plan({"Range": "bytes=" + "9" * 5000 + "-"}, 10, None, None).status == 416
    assert plan({"If-Modified-Since": "Mon, 01 Jan 99999999 00:00:00 GMT"}, 10, None, "x").status
    assert plan({"Range": "bytes=-" + "9" * 30}, 10, None, None) == plan(
        {"Range": "bytes=0-"}, 10, None, None
    )


def test_eviction_for_room_frees_at_least_that_much() -> None:
    lru = LruIndex(max_size=1000)
    for i in range(5):
        lru.add(f"k{i}", 100)
    lru.pin("k0")
    assert lru.victims(room=250) == ["k1", "k2", "k3"]
    assert lru.total == 200

"""The simplestreams model: validation, flattening as the reference does it, condensing."""

from __future__ import annotations

import copy

import pytest

from appliance.streams.filters import Filter, FilterError, matches, parse_filters
from appliance.streams.model import (
    FormatError,
    condense,
    flatten,
    iter_items,
    parse_index,
    safe_path,
    strongest_checksum,
    validate_products,
)
from appliance.streams.reader import split_feed_url, unarmor_clearsigned

DOC = {
    "format": "products:1.0",
    "content_id": "c:d",
    "updated": "now",
    "license": ["not", "scalar"],
    "products": {
        "p:1": {
            "arch": "amd64",
            "release": "jammy",
            "supported": True,
            "versions": {
                "20240301.2": {
                    "label": "release",
                    "items": {
                        "disk": {
                            "ftype": "disk1.img",
                            "path": "a/b.img",
                            "size": 10,
                            "sha256": "AB",
                        }
                    },
                },
                "20240301.10": {
                    "label": "daily",
                    "arch": "override",
                    "items": {
                        "disk": {"ftype": "disk1.img", "path": "a/c.img", "size": 11, "md5": "cd"}
                    },
                },
            },
        },
    },
}


def test_flatten_inherits_scalars_as_strings() -> None:
    flat = flatten(DOC, "p:1", "20240301.2", "disk")
    assert flat["size"] == "10" and flat["supported"] == "True"
    assert flat["content_id"] == "c:d" and flat["release"] == "jammy" and flat["label"] == "release"
    assert (flat["product_name"], flat["version_name"], flat["item_name"]) == (
        "p:1",
        "20240301.2",
        "disk",
    )
    assert "license" not in flat and "versions" not in flat
    assert flatten(DOC, "p:1", "20240301.10", "disk")["arch"] == "override"  # deeper wins


def test_versions_sort_as_plain_strings_like_the_reference() -> None:
    order = [v for _p, v, _i, _f in iter_items(DOC)]
    assert order == ["20240301.2", "20240301.10"]  # '.2' > '.10' as strings


def test_validate_products_errors_say_where() -> None:
    bad = copy.deepcopy(DOC)
    bad["products"]["p:1"]["versions"]["20240301.2"]["items"]["disk"]["size"] = None
    with pytest.raises(FormatError, match=r"p:1/20240301.2/disk: invalid size None"):
        validate_products(bad)
    bad = copy.deepcopy(DOC)
    del bad["products"]["p:1"]["versions"]["20240301.2"]["items"]["disk"]["sha256"]
    with pytest.raises(FormatError, match="needs one of"):
        validate_products(bad)
    bad = copy.deepcopy(DOC)
    bad["products"]["p:1"]["versions"]["20240301.2"]["items"]["disk"]["path"] = "../../etc/x"
    with pytest.raises(FormatError, match="unsafe path"):
        validate_products(bad)
    with pytest.raises(FormatError, match="format must be"):
        validate_products({"format": "index:1.0"})
    assert validate_products(DOC) is DOC


@pytest.mark.parametrize("path", ["/abs", "../up", "a/../../up", "a/.hidden", "a\\b", ""])
def test_unsafe_paths(path: str) -> None:
    with pytest.raises(FormatError):
        safe_path(path, "x")


def test_parse_index() -> None:
    entries = parse_index(
        {
            "format": "index:1.0",
            "index": {
                "c:d": {
                    "path": "streams/v1/c:d.json",
                    "format": "products:1.0",
                    "datatype": "image-ids",
                }
            },
        }
    )
    assert [(e.content_id, e.path, e.datatype) for e in entries] == [
        ("c:d", "streams/v1/c:d.json", "image-ids")
    ]
    with pytest.raises(FormatError, match="index: format"):
        parse_index({"format": "products:1.0"})


def test_strongest_checksum() -> None:
    assert strongest_checksum({"md5": "a", "sha256": "B"}) == ("sha256", "b")
    assert strongest_checksum({"sha512": "c", "sha256": "b"}) == ("sha512", "c")
    assert strongest_checksum({"size": 1}) is None


def test_condense_hoists_shared_values_and_keeps_sticky() -> None:
    doc = {
        "products": {
            "p": {
                "versions": {
                    "1": {
                        "items": {
                            "a": {"ftype": "x", "size": 1, "os": "u"},
                            "b": {"ftype": "y", "size": 1, "os": "u"},
                        }
                    },
                    "2": {"items": {"a": {"ftype": "x", "size": 2, "os": "u"}}},
                }
            }
        }
    }
    before = {(p, v, i): f for p, v, i, f in iter_items(copy.deepcopy(doc))}
    condense(doc, sticky=frozenset({"size"}))
    v1 = doc["products"]["p"]["versions"]["1"]
    assert doc["products"]["p"]["os"] == "u"  # shared by every item of every version
    assert "os" not in v1 and "size" in v1["items"]["a"]
    assert {(p, v, i): f for p, v, i, f in iter_items(doc)} == before  # same effective data


def test_filters() -> None:
    props = {"release": "jammy", "arch": "amd64", "ftype": "disk1.img"}
    assert matches(parse_filters(["arch=amd64", "release~^(jammy|noble)$"]), props)
    assert not matches(parse_filters(["release~^(focal|noble)$"]), props)
    assert matches(parse_filters(["arch!=arm64", "ftype!~^root"]), props)
    assert matches(parse_filters(["release~amm"]), props)  # unanchored, like re.search
    assert matches(parse_filters(["missing="]), props)  # missing keys compare as ""
    for bad in ("nothing", "a~(", "=x"):
        with pytest.raises(FilterError):
            Filter.parse(bad)


def test_split_feed_url() -> None:
    assert split_feed_url("https://h/releases/") == ("https://h/releases", "streams/v1/index.sjson")
    assert split_feed_url("https://h/r/streams/v1/index.json") == (
        "https://h/r",
        "streams/v1/index.json",
    )
    assert split_feed_url("/srv/feed/streams/v1/x.sjson") == ("/srv/feed", "streams/v1/x.sjson")


def test_unarmor_clearsigned_undoes_dash_escaping() -> None:
    msg = (
        b'-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n{"a": 1}\n- -- x\n'
        b"-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n"
    )
    assert unarmor_clearsigned(msg) == b'{"a": 1}\n-- x'


def test_an_alias_stays_with_one_product_per_architecture() -> None:
    """LXD resolves an alias to one image per arch: across the feeds the curated feed
    merges, the first product keeps a shared alias, the others lose only that one."""
    from appliance.streams.curated import unclash_aliases

    merged = {
        "a:released": {
            "products": {
                "a:24.04:amd64": {"arch": "amd64", "aliases": "24.04,noble,lts"},
                "a:24.04:arm64": {"arch": "arm64", "aliases": "24.04,noble,lts"},
            }
        },
        "b:daily": {
            "products": {
                "b:24.04:amd64": {"arch": "amd64", "aliases": "noble,daily/noble"},
                "b:lts:amd64": {"arch": "amd64", "aliases": "lts"},
            }
        },
    }
    unclash_aliases(merged)
    assert merged["a:released"]["products"]["a:24.04:amd64"]["aliases"] == "24.04,noble,lts"
    assert merged["a:released"]["products"]["a:24.04:arm64"]["aliases"] == "24.04,noble,lts"
    assert merged["b:daily"]["products"]["b:24.04:amd64"]["aliases"] == "daily/noble"
    assert "aliases" not in merged["b:daily"]["products"]["b:lts:amd64"]

"""Seeding a real Glance (glance 33 under gunicorn, sqlite) from a mirrored feed."""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.components import glance as glance_server
from tests.conftest import (
    StartAppliance,
    actions,
    free_port,
    http_get,
    require,
    run_sync,
    unavailable,
)
from tests.conftest import run_seed as seed
from tests.feed import Feed
from tests.hostile import Behaviour, Conn, Hostile, Request, head
from tests.seeding import big_feed, kill_seed_when, publish_version, write_seed_config
from tests.upstream import Upstream


@pytest.fixture(scope="session")
def glances(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[glance_server.Glance]]:
    if not glance_server.installed():
        msg = "glance venv missing: `make test` builds it (.components/glance)"
        unavailable(msg)
    base = tmp_path_factory.mktemp("glance")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        started = list(
            pool.map(lambda i: glance_server.start(base / f"g{i}", free_port()), range(2))
        )
    yield started
    for g in started:
        g.stop()


def client(g: glance_server.Glance, token: str | None = None) -> Any:
    from glanceclient import Client

    return Client(endpoint=g.endpoint + "/v2", token=token or g.token)


@pytest.fixture
def glance_pair(glances: list[glance_server.Glance]) -> list[glance_server.Glance]:
    for g in glances:
        c = client(g)
        for image in list(c.images.list()):
            c.images.delete(image.id)
    return glances


def glance_target(name: str, g: glance_server.Glance, token_file: Path, **kw: Any) -> dict:
    return {
        "name": name,
        "type": "glance",
        "auth": {"endpoint": g.endpoint, "token_file": str(token_file)},
        "feeds": ["ex"],
        "max_items": 2,
        "visibility": "public",
        "name_prefix": "auto-sync/",
        **kw,
    }


def token_file(tmp_path: Path, token: str = glance_server.TOKEN) -> Path:
    path = tmp_path / f"token-{hashlib.md5(token.encode()).hexdigest()[:6]}"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def images_of(g: glance_server.Glance) -> dict[str, Any]:
    return {i.id: i for i in client(g).images.list()}


def test_seed_properties_bytes_idempotence_and_adoption(
    tmp_path: Path, glance_pair: list, qcow_feed: Feed, qcow_served: Upstream
) -> None:
    g = glance_pair[0]
    cfg = write_seed_config(
        tmp_path,
        qcow_feed,
        qcow_served,
        [
            glance_target(
                "region-one",
                g,
                token_file(tmp_path),
                set_latest=True,
                properties={"hw_disk_bus": "virtio"},
            )
        ],
    )
    assert run_sync(cfg)[0] == 0
    c = client(g)
    # an image sstream-mirror-glance uploaded earlier: same identity properties and bytes
    ref_path = "server/releases/jammy/release-20240101/ubuntu-22.04-server-cloudimg-amd64.disk1.img"
    ref_bytes = qcow_feed.files[ref_path]
    adopted = c.images.create(
        name="auto-sync/by-the-reference-tool",
        disk_format="qcow2",
        container_format="bare",
        content_id="auto.sync",
        source_content_id="com.example.cloud:released:download",
        product_name="com.example.cloud:server:22.04:amd64",
        version_name="20240101",
        item_name="disk1.img",
    )
    c.images.upload(adopted.id, io.BytesIO(ref_bytes))
    foreign = c.images.create(name="someone-elses", disk_format="raw", container_format="bare")

    code, [out], err = seed(cfg)
    assert code == 0, err
    assert len(actions(out, "uploaded")) == 3 and len(actions(out, "present")) == 1, out
    ours = [i for i in c.images.list() if i.get("archive_local_target") == "region-one"]
    assert len(ours) == 3
    for image in ours:
        path = next(
            p
            for p in qcow_feed.files
            if f"release-{image.version_name}/" in p
            and image.os_version in p
            and p.endswith("amd64.disk1.img")
        )
        data = qcow_feed.files[path]
        assert image.status == "active" and image.size == len(data)
        assert image.checksum == hashlib.md5(data).hexdigest()
        assert b"".join(c.images.data(image.id)) == data
        assert image.content_id == "auto.sync"
        assert image.source_content_id == "com.example.cloud:released:download"
        assert image.product_name == f"com.example.cloud:server:{image.os_version}:amd64"
        assert image.item_name == "disk1.img" and image.os_distro == "ubuntu"
        assert image.architecture == "x86_64" and image.hw_disk_bus == "virtio"
        assert image.disk_format == "qcow2" and image.container_format == "bare"
        assert image.visibility == "public"
        assert image.name == (
            f"auto-sync/ubuntu-{'jammy' if image.os_version == '22.04' else 'noble'}-"
            f"{image.os_version}-amd64-server-{image.version_name}-disk1.img"
        )
        meta = json.loads(image.simplestreams_metadata)
        assert meta["sha256"] == hashlib.sha256(data).hexdigest() and "path" not in meta
        assert (image.get("latest") == "true") == (image.version_name == "20240301")

    before = {i.id: i.updated_at for i in c.images.list()}
    code, [again], err = seed(cfg)
    assert code == 0, err
    assert actions(again, "uploaded") == [] and len(actions(again, "present")) == 4
    assert {i.id: i.updated_at for i in c.images.list()} == before  # nothing touched
    assert foreign.id in before and adopted.id in before


def test_new_version_prunes_the_oldest_and_moves_latest(
    tmp_path: Path, glance_pair: list, qcow_feed: Feed, qcow_served: Upstream
) -> None:
    g = glance_pair[0]
    cfg = write_seed_config(
        tmp_path,
        qcow_feed,
        qcow_served,
        [glance_target("region-one", g, token_file(tmp_path), set_latest=True)],
    )
    assert run_sync(cfg)[0] == 0
    assert seed(cfg)[0] == 0
    c = client(g)
    # not ours: another tool's image of the oldest version stays
    other = c.images.create(
        name="another-tool",
        disk_format="raw",
        container_format="bare",
        content_id="auto.sync",
        product_name="com.example.cloud:server:22.04:amd64",
        version_name="20240101",
        item_name="disk1.img",
        source_content_id="x",
    )
    publish_version(tmp_path, qcow_feed, "20240401")
    assert run_sync(cfg)[0] == 0
    code, [out], err = seed(cfg)
    assert code == 0, err
    assert sorted(a["version"] for a in actions(out, "uploaded")) == ["20240401"] * 2
    assert sorted(a["version"] for a in actions(out, "removed")) == ["20240101"] * 2
    images = [i for i in c.images.list() if i.get("archive_local_target") == "region-one"]
    assert sorted(i.version_name for i in images) == ["20240301"] * 2 + ["20240401"] * 2
    latest = {i.version_name for i in images if i.get("latest") == "true"}
    assert latest == {"20240401"}
    assert other.id in {i.id for i in c.images.list()}


@pytest.mark.slow
def test_killed_mid_upload_leaves_no_orphan(
    tmp_path: Path, glance_pair: list, qcow_feed: Feed, qcow_served: Upstream
) -> None:
    g = glance_pair[0]
    big = big_feed(tmp_path, qcow_feed, 96 * 1024 * 1024)
    cfg = write_seed_config(
        tmp_path, big, qcow_served, [glance_target("one", g, token_file(tmp_path))]
    )
    assert run_sync(cfg)[0] == 0
    c = client(g)
    caught = kill_seed_when(
        cfg, lambda: next((i for i in c.images.list() if i.status == "saving"), None)
    )
    assert caught is not None, "never saw an upload in progress"
    time.sleep(1)
    left = [i for i in c.images.list() if i.status != "active"]
    assert left, "the kill left nothing half-done (upload finished first?)"
    assert all(i.get("archive_local_target") == "one" for i in left)  # marked at creation

    code, [out], err = seed(cfg)
    assert code == 0, err
    assert {a["image_id"] for a in actions(out, "cleaned")} >= {i.id for i in left}
    final = list(c.images.list())
    assert all(i.status == "active" for i in final) and len(final) == 2


def test_corrupt_cache_file_is_rejected_and_deleted(
    tmp_path: Path, glance_pair: list, qcow_feed: Feed, qcow_served: Upstream
) -> None:
    g = glance_pair[0]
    cfg = write_seed_config(
        tmp_path, qcow_feed, qcow_served, [glance_target("one", g, token_file(tmp_path))]
    )
    assert run_sync(cfg)[0] == 0
    victim = next((tmp_path / "cache").rglob("release-20240301/*22.04*amd64.disk1.img"))
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF  # bit rot after the verified download: same size, other bytes
    victim.write_bytes(bytes(data))
    code, [out], _ = seed(cfg)
    assert code == 1
    [failed] = actions(out, "failed")
    assert failed["version"] == "20240301" and "checksum" in failed["error"]
    assert len(actions(out, "uploaded")) == 3
    images = list(client(g).images.list())
    assert len(images) == 3 and all(i.status == "active" for i in images)


def test_two_glances_and_one_with_wrong_credentials(
    tmp_path: Path, glance_pair: list, qcow_feed: Feed, qcow_served: Upstream
) -> None:
    g1, g2 = glance_pair
    bad_token = "not-the-token-" + os.urandom(4).hex()
    cfg = write_seed_config(
        tmp_path,
        qcow_feed,
        qcow_served,
        [
            glance_target("cloud-a", g1, token_file(tmp_path)),
            glance_target("broken", g1, token_file(tmp_path, bad_token)),
            glance_target("cloud-b", g2, token_file(tmp_path), max_items=1),
        ],
    )
    assert run_sync(cfg)[0] == 0
    code, outcomes, err = seed(cfg)
    assert code == 1
    by_name = {o["target"]: o for o in outcomes}
    assert by_name["cloud-a"]["ok"] and len(actions(by_name["cloud-a"], "uploaded")) == 4
    assert by_name["cloud-b"]["ok"] and len(actions(by_name["cloud-b"], "uploaded")) == 2
    broken = by_name["broken"]
    assert not broken["ok"] and broken["error"].startswith("broken: authentication failed")
    assert bad_token not in err and bad_token not in json.dumps(outcomes)
    assert len(images_of(g1)) == 4 and len(images_of(g2)) == 2
    # people read the same summary without --json
    r = subprocess.run(
        [sys.executable, "-m", "appliance", "--config", str(cfg), "seed", "broken"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "broken: " in r.stdout and "FAILED" in r.stdout
    assert bad_token not in r.stdout + r.stderr


def test_image_ids_feed_is_read_by_the_reference_client(
    tmp_path: Path,
    glance_pair: list,
    qcow_feed: Feed,
    qcow_served: Upstream,
    start_appliance: StartAppliance,
) -> None:
    from tests.e2e.streams.test_interop import reference

    require("gpgv", "gpgv")
    g1, g2 = glance_pair
    cfg = write_seed_config(
        tmp_path,
        qcow_feed,
        qcow_served,
        [
            glance_target("cloud-a", g1, token_file(tmp_path), region="RegionOne"),
            glance_target("cloud-b", g2, token_file(tmp_path), region="RegionTwo"),
        ],
    )
    assert run_sync(cfg)[0] == 0
    assert seed(cfg)[0] == 0
    app = start_appliance(
        {"debian": ["http://127.0.0.1:9/debian"]},
        cache_dir=tmp_path / "cache",
        images={"gnupg_home": str(tmp_path / "gnupg")},
    )
    keyring = tmp_path / "appliance.gpg"
    keyring.write_bytes(http_get(f"{app.url}/keys/archive-local.gpg")[1])
    r = reference(
        "sstream-query", "--json", "--keyring", str(keyring), f"{app.url}/", "datatype=image-ids"
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 8
    glance_ids = {**images_of(g1), **images_of(g2)}
    for row in rows:
        image = glance_ids[row["id"]]
        assert row["region"] == ("RegionOne" if row["id"] in images_of(g1) else "RegionTwo")
        assert row["endpoint"] in (g1.endpoint, g2.endpoint)
        assert row["product_name"] == image.product_name
        assert row["version_name"] == image.version_name and row["name"] == image.name
    _, index = http_get(f"{app.url}/streams/v1/index.json")
    entries = json.loads(index)["index"]
    ids = {k: v for k, v in entries.items() if v["datatype"] == "image-ids"}
    assert sorted(ids) == ["archive-local:image-ids:cloud-a", "archive-local:image-ids:cloud-b"]
    assert ids["archive-local:image-ids:cloud-b"]["clouds"] == [
        {"region": "RegionTwo", "endpoint": g2.endpoint}
    ]


def test_service_seeds_after_each_sync_and_on_demand(
    tmp_path: Path,
    glance_pair: list,
    qcow_feed: Feed,
    qcow_served: Upstream,
    start_appliance: StartAppliance,
) -> None:
    g = glance_pair[0]
    cfg = yaml.safe_load(
        write_seed_config(
            tmp_path, qcow_feed, qcow_served, [glance_target("one", g, token_file(tmp_path))]
        ).read_text()
    )
    cfg["seed"]["after_sync"] = True
    app = start_appliance(
        {"debian": ["http://127.0.0.1:9/debian"]},
        cache_dir=tmp_path / "cache",
        images=cfg["images"],
        extra={"seed": cfg["seed"]},
    )
    deadline = time.monotonic() + 120
    status: dict = {}
    while time.monotonic() < deadline:
        status = app.status()["seed"]
        if "one" in status["targets"]:
            break
        time.sleep(0.3)
    one = status["targets"]["one"]
    assert one["ok"] and len(actions(one, "uploaded")) == 4, status
    assert len(images_of(g)) == 4
    code, body = app.admin("seed")
    assert code == 202 and json.loads(body)["status"] in ("started", "running")
    while time.monotonic() < deadline:
        status = app.status()["seed"]
        if not status["running"] and status["targets"]["one"]["finished"] > one["finished"]:
            break
        time.sleep(0.3)
    again = status["targets"]["one"]
    assert again["ok"] and actions(again, "uploaded") == [] and len(actions(again, "present")) == 4
    metrics = http_get(f"{app.url}/metrics")[1].decode()
    assert 'archive_local_seed_runs_total{target="one"} 2.0' in metrics
    assert 'archive_local_images_seeded{target="one"} 4.0' in metrics
    # the status page lists each mirrored version and where it is seeded
    images = app.status()["images"]
    rows = {(p["product"], v["version"]): v["seeded"] for p in images for v in p["versions"]}
    assert len(rows) == 4
    ids = images_of(g)
    for seeded in rows.values():
        assert [(x["target"], x["region"]) for x in seeded] == [("one", "RegionOne")]
        assert seeded[0]["id"] in ids
    req = urllib.request.Request(app.url + "/", headers={"Accept": "text/html"})
    with urllib.request.urlopen(req, timeout=10) as r:
        page = r.read().decode()
    # the images x targets matrix: each version present in one/RegionOne, with its id
    clouds = app.status()["clouds"]
    assert [(t["target"], t["region"]) for t in clouds["targets"]] == [("one", "RegionOne")]
    assert sorted(c["id"] for i in clouds["images"] for c in i["cells"]) == sorted(ids)
    assert page.count('class="s-present"') == 4
    assert all(f"<i>{image_id}</i>" in page for image_id in ids)


def keystone(glance_endpoint: str, password: str, region: str) -> Behaviour:
    """A keystone v3 identity endpoint: password auth issues the token Glance accepts and a
    catalog with Glance's endpoint in one region. (No keystone server is packaged for this
    machine; Glance, keystoneauth1 and glanceclient behind it are real.)"""

    async def run(up: Hostile, req: Request, conn: Conn) -> None:
        if req.method != "POST":
            await conn.send(head("501 Not Implemented", 0))
            return
        body = json.loads(req.body)
        pw = body["auth"]["identity"].get("password", {}).get("user", {})
        if req.path != "/v3/auth/tokens" or pw.get("password") != password:
            error = b'{"error": {"code": 401, "message": "bad credentials"}}'
            await conn.send(
                head("401 Unauthorized", len(error), Content_Type="application/json") + error
            )
            return
        token = {
            "methods": ["password"],
            "expires_at": "2099-01-01T00:00:00.000000Z",
            "issued_at": "2026-01-01T00:00:00.000000Z",
            "user": {
                "id": "u1",
                "name": pw["name"],
                "domain": {"id": "default", "name": "Default"},
            },
            "project": {
                "id": glance_server.PROJECT,
                "name": "admin",
                "domain": {"id": "default", "name": "Default"},
            },
            "roles": [{"id": "r1", "name": "admin"}],
            "catalog": [
                {
                    "type": "image",
                    "name": "glance",
                    "id": "s1",
                    "endpoints": [
                        {
                            "id": "e1",
                            "interface": "public",
                            "region": region,
                            "region_id": region,
                            "url": glance_endpoint,
                        }
                    ],
                }
            ],
        }
        data = json.dumps({"token": token}).encode()
        await conn.send(
            head(
                "201 Created",
                len(data),
                Content_Type="application/json",
                X_Subject_Token=glance_server.TOKEN,
            )
            + data
        )

    return run


def test_keystone_password_auth_finds_glance_in_the_catalog(
    tmp_path: Path, glance_pair: list, qcow_feed: Feed, qcow_served: Upstream
) -> None:
    g = glance_pair[0]
    identity = Hostile().start()
    identity.default = keystone(g.endpoint, "right-password", "RegionTwo")
    auth_url = f"{identity.url}/v3"
    try:
        good, bad = tmp_path / "pw", tmp_path / "bad-pw"
        good.write_text("right-password\n")
        bad.write_text("wrong-password\n")

        def target(name: str, pw: Path) -> dict:
            t = glance_target(name, g, pw)
            t["auth"] = {
                "keystone": {
                    "auth_url": auth_url,
                    "username": "sync",
                    "password_file": str(pw),
                    "project_name": "admin",
                    "user_domain_name": "Default",
                    "project_domain_name": "Default",
                    "region_name": "RegionTwo",
                }
            }
            return t

        cfg = write_seed_config(
            tmp_path, qcow_feed, qcow_served, [target("ks", good), target("ks-bad", bad)]
        )
        assert run_sync(cfg)[0] == 0
        code, outcomes, err = seed(cfg)
        by = {o["target"]: o for o in outcomes}
        assert code == 1
        assert by["ks"]["ok"] and len(actions(by["ks"], "uploaded")) == 4, by["ks"]
        assert not by["ks-bad"]["ok"]
        assert by["ks-bad"]["error"].startswith("ks-bad: authentication failed"), by["ks-bad"]
        assert "wrong-password" not in err + json.dumps(outcomes)
        assert {i["region"] for i in by["ks"]["images"]} == {"RegionTwo"}
        assert {i["endpoint"] for i in by["ks"]["images"]} == {auth_url}
        first = next(json.loads(r.body) for r in identity.requests if r.method == "POST")
        scoped = first["auth"]["scope"]["project"]
        assert scoped["name"] == "admin" and scoped["domain"]["name"] == "Default"
    finally:
        identity.close()

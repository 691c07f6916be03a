"""The status page's Maintenance card and "Use it" lines, in a real headless Chromium:
the buttons call the admin API with the token typed into the page (401 without it, the
action's result with it), the card survives the page's refresh, another site's page is
refused; the lines name the host the browser used."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest
import yaml

from appliance.web import use
from tests.browser import Browser
from tests.configs import write_config
from tests.conftest import Appliance, StartAppliance, http_get, require
from tests.upstream import Upstream

HELLO = "/debian/pool/main/h/hello_1.0_amd64.deb"
RESULT = "document.getElementById('maint-result')"
DONE = f"{RESULT}.textContent && !{RESULT}.textContent.endsWith('running')"


@pytest.fixture
def app(upstream_root: Path, upstream: Upstream, start_appliance: StartAppliance) -> Appliance:
    pool = upstream_root / "debian/pool/main/h"
    pool.mkdir(parents=True)
    (pool / "hello_1.0_amd64.deb").write_bytes(b"\x21" * 5000)
    # two workers (what `workers: auto` gives a 2-core machine): an admin call goes to
    # whichever answers, and is forwarded (jobs) or broadcast (drain) from there
    return start_appliance({"debian": [f"{upstream.url}/debian"]}, extra={"workers": 2})


def click(browser: Browser, action: str) -> str:
    """Click a Maintenance button; what the page shows as its result."""
    browser.run(f"document.querySelector('#maintenance [data-action=\"{action}\"]').click()")
    browser.wait(DONE, timeout=30)
    text: str = browser.run(f"{RESULT}.textContent")
    browser.run(f"{RESULT}.textContent = ''")
    return text


def admin(
    app: Appliance, action: str, headers: dict[str, str], method: str = "POST"
) -> tuple[int, Message, str]:
    """(status, headers, body) of an admin call with these headers."""
    req = urllib.request.Request(
        f"{app.url}/api/admin/{action}", data=b"{}", method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def test_maintenance_card_and_use_lines_in_chromium(
    app: Appliance, upstream: Upstream, upstream_root: Path, tmp_path: Path
) -> None:
    """One appliance of two workers and one browser for all of it (each costs seconds)."""
    require("chromium", "chromium")
    assert http_get(app.url + HELLO)[0] == 200
    time.sleep(0.3)  # committed
    with Browser(tmp_path / "chromium") as browser:
        buttons(browser, app)
        origin_header(app)  # these two while the page waits for its refresh
        use_lines(app)
        refreshed(browser, app)
        another_site(browser, app, upstream, upstream_root)
        copy_buttons(browser, app)
        without_javascript(browser, app)
        not_allowed(browser, app)


def buttons(browser: Browser, app: Appliance) -> None:
    """401 shown without the token; with it each action runs and its answer is shown,
    whichever worker answers; the token and the result outlive the refresh of <main>."""
    browser.open(f"{app.url}/")
    # JavaScript on: the buttons show, the curl lines for a page without it do not
    assert browser.run("getComputedStyle(document.querySelector('.needjs')).display") == "block"
    assert browser.run("getComputedStyle(document.querySelector('.nojs')).display") == "none"
    browser.run("document.querySelector('main > section').dataset.old = '1'")  # see the end
    browser.run(f"document.getElementById('maint-path').value = '{HELLO}'")
    shown = click(browser, "purge")
    assert shown.startswith("purge: 401") and "missing or wrong bearer token" in shown
    with urllib.request.urlopen(app.url + HELLO, timeout=10) as r:
        assert r.headers["X-Cache"] == "HIT"  # nothing purged
    browser.run(f"document.getElementById('maint-token').value = '{app.token}'")
    shown = click(browser, "purge")
    assert shown.startswith("purge: 200") and '"removed": 1' in shown, shown
    assert app.admin("purge", {"path": HELLO})[0] == 404  # gone, for every worker
    shown = click(browser, "verify")
    assert shown.startswith("verify: 200") and '"checked"' in shown, shown
    now = "document.querySelector('[data-action=\"expire\"]').hidden"
    assert browser.run(now)  # the real run is offered after a dry run only
    shown = click(browser, "expire-dry")
    assert shown.startswith("expire: 200") and '"dry_run": true' in shown, shown
    assert not browser.run(now)
    shown = click(browser, "expire")  # the confirmation
    assert shown.startswith("expire: 200") and '"dry_run": false' in shown, shown
    assert browser.run(now)
    assert click(browser, "drain-on").startswith("drain: 200")
    assert {http_get(f"{app.url}/healthz")[0] for _ in range(6)} == {503}  # both workers
    assert click(browser, "drain-off").startswith("drain: 200")
    assert {http_get(f"{app.url}/healthz")[0] for _ in range(6)} == {200}
    shown = click(browser, "sync")  # forwarded to the primary, its refusal shown
    assert shown.startswith("sync: 409") and "no feeds configured" in shown, shown
    browser.run(f"{RESULT}.textContent = 'kept'")


def refreshed(browser: Browser, app: Appliance) -> None:
    """The refresh replaced <main>; the card (outside it) kept the token and the result."""
    browser.wait("!document.querySelector('main > section').dataset.old", timeout=8)
    assert browser.run("document.getElementById('maint-token').value") == app.token
    assert browser.run(f"{RESULT}.textContent") == "kept"
    assert browser.run("document.cookie + JSON.stringify(localStorage)") == "{}"


def another_site(browser: Browser, app: Appliance, upstream: Upstream, root: Path) -> None:
    """A page of another origin: a POST without the token (sent as is, no preflight) and
    one with it (its preflight is refused): neither purges."""
    assert http_get(app.url + HELLO)[0] == 200
    time.sleep(0.3)
    (root / "other.html").write_text("<!doctype html><title>other</title>")
    browser.open(f"{upstream.url}/other.html")
    target = json.dumps(f"{app.url}/api/admin/purge")
    body = json.dumps(json.dumps({"path": HELLO}))
    got = browser.run(
        f"fetch({target}, {{method: 'POST', mode: 'no-cors', body: {body}}})"
        ".then(r => r.type, e => 'error')"
    )
    assert got == "opaque"  # sent; its answer is not the page's to read
    got = browser.run(
        f"fetch({target}, {{method: 'POST', body: {body}, headers: "
        f"{{'Authorization': 'Bearer {app.token}', 'Content-Type': 'application/json'}}}})"
        ".then(r => 'read ' + r.status, e => 'refused')"
    )
    assert got == "refused"
    with urllib.request.urlopen(app.url + HELLO, timeout=10) as r:
        assert r.headers["X-Cache"] == "HIT"  # still cached


def origin_header(app: Appliance) -> None:
    """An `Origin` that is not the service's own is refused before the token is looked
    at; no answer of the admin API carries CORS headers."""
    token = {"Authorization": f"Bearer {app.token}"}
    own = f"http://127.0.0.1:{app.port}"

    def cors(headers: Message) -> list[str]:
        return [h for h in headers if h.lower().startswith("access-control-")]

    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{app.port + 1}"):
        code, headers, text = admin(app, "verify", {**token, "Origin": origin})
        assert code == 403 and "cross-origin request refused" in text, (origin, text)
        assert not cors(headers)
    code, headers, _ = admin(app, "verify", {"Origin": "http://evil.example"}, method="OPTIONS")
    assert code == 403 and not cors(headers)  # a preflight
    code, _, text = admin(app, "verify", {"Origin": own})  # its own page, no token
    assert code == 401 and "missing or wrong bearer token" in text
    code, headers, text = admin(app, "verify", {**token, "Origin": own})
    assert code == 200 and "checked" in json.loads(text) and not cors(headers)


def use_lines(app: Appliance) -> None:
    """The lines name the host asked for (a header, validated); from loopback or with a
    Host that is not a host name, the discovery name."""

    def status(host: str) -> dict:
        req = urllib.request.Request(f"{app.url}/api/status", headers={"Host": host})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())["use"]

    u = status(f"cache.example.internal:{app.port}")
    base = f"http://cache.example.internal:{app.port}"
    assert u["apt_proxy"] == f'Acquire::http::Proxy "{base}";'
    assert [r["line"] for r in u["remap_lines"]] == [f"deb {base}/debian/ <suite> <components>"]
    assert u["lxd"] is None and u["juju"] is None  # no feeds configured
    for host in (f"127.0.0.1:{app.port}", "<script>x</script>", "a b"):
        assert status(host)["host"] == "archive.local", host
    page = urllib.request.Request(
        f"{app.url}/", headers={"Accept": "text/html", "Host": "<script>x</script>"}
    )
    with urllib.request.urlopen(page, timeout=10) as r:
        html = r.read().decode()
    assert "<script>x" not in html and "onclick" not in html  # no inline handlers either
    r = app.cli("status")
    assert r.returncode == 0, r.stderr
    assert f"  deb http://archive.local:{app.port}/debian/ <suite> <components>" in r.stdout


def copy_buttons(browser: Browser, app: Appliance) -> None:
    """The page's lines, and their buttons: the line copied, or selected for Ctrl+C."""
    browser.open(f"http://localhost:{app.port}/")
    lines = browser.run("[...document.querySelectorAll('#use code')].map(c => c.textContent)")
    assert f"deb http://archive.local:{app.port}/debian/ <suite> <components>" in lines
    copy = "document.querySelector('#remaps .copy')"
    assert browser.run(f"getComputedStyle({copy}).display") != "none"
    browser.run(f"{copy}.click()")
    browser.wait(f"{copy}.textContent !== 'copy'")
    got = browser.run(f"{copy}.textContent")
    assert got in ("copied", "selected")
    if got == "selected":  # no clipboard on plain http: the line is selected instead
        assert browser.run("getSelection().toString()").startswith("deb ")


def without_javascript(browser: Browser, app: Appliance) -> None:
    """No buttons; the card says they need JavaScript and shows the curl lines."""
    browser.call("Emulation.setScriptExecutionDisabled", value=True)
    browser.open(f"{app.url}/")
    style = "(s => getComputedStyle(document.querySelector(s)).display)"
    shown = browser.run(f"[{style}('.nojs'), {style}('.needjs'), {style}('.copy')]")
    assert shown == ["block", "none", "none"]
    text = browser.run("document.querySelector('.nojs').textContent")
    assert "These buttons need JavaScript" in text and "/api/admin/verify" in text
    browser.call("Emulation.setScriptExecutionDisabled", value=False)


def not_allowed(browser: Browser, app: Appliance) -> None:
    """An address outside `admin.allow`: the page shows the 403 and its reason."""
    config = yaml.safe_load(app.config.read_text())
    config["admin"]["allow"] = ["192.0.2.0/24"]
    write_config(app.config, config)
    assert app.admin("reload")[0] == 200  # every worker
    browser.open(f"{app.url}/")
    browser.run(f"document.getElementById('maint-token').value = '{app.token}'")
    shown = click(browser, "verify")
    assert shown.startswith("verify: 403") and "not allowed from 127.0.0.1" in shown, shown


def test_lxd_and_juju_lines_when_feeds_are_configured() -> None:
    facts = {
        "port": 3142,
        "name": "archive.local",
        "tls_port": 8443,
        "remaps": {"debian": ["http://deb.example/debian"]},
        "feeds": ["ubuntu"],
        "accepted": [],
    }
    u = use.lines(facts, "cache.example.internal:3142", False)
    assert u is not None
    assert u["lxd"]["remote"] == (
        "lxc remote add archive-local https://cache.example.internal:8443 "
        "--protocol simplestreams --public"
    )
    assert u["juju"] == "juju model-config image-metadata-url=http://cache.example.internal:3142/"
    without_tls = use.lines({**facts, "tls_port": None}, None, False)
    assert without_tls is not None and without_tls["lxd"] is None
    assert "tls.listen" in use.render(without_tls)
    published = use.lines({**facts, "feeds": []}, None, False, published=["local"])
    assert published is not None and published["juju"] and published["lxd"]
    assert use.lines({**facts, "feeds": []}, None, False)["juju"] is None  # type: ignore[index]

"""Found at boot: the appliance advertises itself (mDNS, the well-known document, the 406 that
auto-apt-proxy looks for) and the cloud-init module finds it, run by Debian's real cloud-init.

The appliance and the client live in two network namespaces joined by a veth pair with
real multicast; nothing here touches the machine's own network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.aptclient import AptClient
from tests.aptrepo import AptRepo
from tests.configs import write_config
from tests.conftest import CURL_STATUS, require, unavailable
from tests.netns import Link, linked_namespaces

ROOT = Path(__file__).resolve().parents[3]
MODULE_DIR = ROOT / "cloud-init"
HARNESS = Path(__file__).parents[3] / "tests/cloudinit_harness.py"
AUTO_APT_PROXY = ROOT / ".components/auto-apt-proxy/usr/bin/auto-apt-proxy"
PORT = 3142  # what auto-apt-proxy probes; free inside the appliance's own namespace
DOMAIN = "archive-test.internal"


# the cloud-inits the module runs under: Debian 12's own (installed) and Debian 13's 25.1,
# unpacked by `make components` and imported in its place
MODERN = ROOT / ".components/cloud-init-trixie/usr/lib/python3/dist-packages"
CLOUD_INITS = {"22.4": None, "25.1": MODERN}


def need_cloud_init(version: str = "22.4") -> None:
    if subprocess.run(
        ["/usr/bin/python3", "-c", "import cloudinit"], capture_output=True
    ).returncode:
        msg = "cloud-init missing: apt-get install cloud-init (make test does)"
        unavailable(msg)
    if CLOUD_INITS[version] is not None and not (MODERN / "cloudinit").is_dir():
        unavailable(f"cloud-init {version} missing: `make components` unpacks it into {MODERN}")


@pytest.fixture(params=list(CLOUD_INITS))
def cloud_init(request: pytest.FixtureRequest) -> str:
    """The cloud-init version a test boots with (each test that takes it runs under both)."""
    need_cloud_init(request.param)
    return request.param


class Site:
    """The appliance side (namespace a): an apt repository, the appliance, maybe dnsmasq."""

    def __init__(self, link: Link, tmp: Path, repo: AptRepo | None) -> None:
        self.link, self.tmp = link, tmp
        self.procs: list[subprocess.Popen] = []
        self.repo_url = f"http://{link.a_addr}:8080/debian"
        if repo is not None:
            self.serve_dir(repo.root.parent, 8080)

    def serve_dir(self, root: Path, port: int) -> None:
        """A static web server for `root` on the site's address (stopped with the site)."""
        self.procs.append(
            self.link.popen_a(
                sys.executable,
                "-m",
                "http.server",
                "-b",
                self.link.a_addr,
                "-d",
                str(root),
                str(port),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def appliance(self, mdns: bool = True, port: int = PORT) -> str:
        cfg = write_config(
            self.tmp / f"appliance-{port}.yaml",
            {
                "listen": f"0.0.0.0:{port}",
                "cache": {"dir": str(self.tmp / f"cache-{port}")},
                "apt": {"remaps": {"debian": [self.repo_url]}},
                "images": {"gnupg_home": str(self.tmp / "gnupg")},
                "admin": {"token_file": str(self.tmp / f"token-{port}")},
                "discovery": {"mdns": mdns},
                "logging": {"access_log": "off"},
            },
        )
        log = (self.tmp / f"appliance-{port}.log").open("wb")
        self.procs.append(
            self.link.popen_a(
                sys.executable,
                "-m",
                "appliance",
                "--config",
                str(cfg),
                "serve",
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        url = f"http://{self.link.a_addr}:{port}"
        for _ in range(100):
            r = self.link.run_a("curl", "-sf", "-m", "1", url + "/.well-known/archive-local")
            if r.returncode == 0:
                return url
            time.sleep(0.1)
        raise AssertionError((self.tmp / f"appliance-{port}.log").read_text())

    def dns(self, srv_port: int, target_addr: str) -> None:
        """dnsmasq in namespace a: SRV _apt_proxy._tcp.<DOMAIN> -> archive.<DOMAIN>:port."""
        require("dnsmasq", "dnsmasq-base")
        self.procs.append(
            self.link.popen_a(
                shutil.which("dnsmasq") or "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                f"--listen-address={self.link.a_addr}",
                "--except-interface=lo",
                "--user=root",
                f"--pid-file={self.tmp}/dnsmasq.pid",
                f"--srv-host=_apt_proxy._tcp.{DOMAIN},archive.{DOMAIN},{srv_port}",
                f"--host-record=archive.{DOMAIN},{target_addr}",
                "--log-facility=-",
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        time.sleep(0.5)

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def site_factory(tmp_path: Path) -> Iterator:
    sites: list[Site] = []

    def make(link: Link, repo: AptRepo | None = None) -> Site:
        sites.append(Site(link, tmp_path, repo))
        return sites[-1]

    yield make
    for s in sites:
        s.close()


def boot(
    link: Link,
    tmp: Path,
    user_data: dict,
    apt_file: str | None = None,
    cloud_init: str = "22.4",
    vendor_data: dict | None = None,
    system_cfg: dict | None = None,
) -> dict:
    """cloud-init's own init, config and final stages in namespace b (archive_local and
    apt_configure the config modules), then its own `cloud-init status`."""
    need_cloud_init(cloud_init)
    work = tmp / f"ci-{time.monotonic_ns()}"
    work.mkdir()
    ud = work / "user-data"
    ud.write_text("#cloud-config\n" + yaml.safe_dump(user_data))
    extra = ["--resolv", Path(link.resolv).read_text()]
    if apt_file is not None:
        (work / "90archive-local-proxy").write_text(apt_file)
        extra += ["--apt-file", str(work / "90archive-local-proxy")]
    if vendor_data is not None:
        (work / "vendor-data").write_text("#cloud-config\n" + yaml.safe_dump(vendor_data))
        extra += ["--vendor-data", str(work / "vendor-data")]
    if system_cfg is not None:
        (work / "system.cfg").write_text(yaml.safe_dump(system_cfg))
        extra += ["--system-cfg", str(work / "system.cfg")]
    if CLOUD_INITS[cloud_init] is not None:
        extra += ["--cloudinit", str(CLOUD_INITS[cloud_init])]
    r = link.run_b(
        "/usr/bin/python3",
        str(HARNESS),
        "--workdir",
        str(work),
        "--user-data",
        str(ud),
        "--module-path",
        str(MODULE_DIR),
        "--modules",
        "archive_local,apt_configure",
        *extra,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["version"].startswith(cloud_init), report["version"]
    return report


def clean(report: dict) -> bool:
    """What `cloud-init status` says is a clean boot: done, exit 0, nothing recoverable."""
    status = report["cloud_init_status"]
    return (
        status["exit_code"] == 0
        and status["status"] == "done"
        and not status.get("errors")
        and not status.get("recoverable_errors")
    )


PROXY_FILE = "/etc/apt/apt.conf.d/90archive-local-proxy"
RECORD = "/run/archive-local/client.json"


def test_well_known_and_406(site_factory, tmp_path: Path) -> None:
    with linked_namespaces("wk", 51) as link:
        url = site_factory(link).appliance(mdns=False)
        doc = json.loads(link.run_b("curl", "-sf", f"{url}/.well-known/archive-local").stdout)
        assert doc["service"] == "archive-local" and doc["apt_proxy"] == f"{url}/"
        assert doc["remaps"] == {"debian": f"{url}/debian/"}
        assert doc["images"]["curated"] == f"{url}/streams/v1/index.sjson"
        head = link.run_b(*CURL_STATUS, f"{url}/")
        assert head.stdout == "406"
        status = link.run_b("curl", "-si", f"{url}/")
        assert status.stdout.startswith("HTTP/1.1 406 Usage Information")
        page = link.run_b("curl", "-s", "-H", "Accept: text/html", f"{url}/")
        assert "<title>archive-local</title>" in page.stdout  # browsers: the status page


def test_mdns_discovery_by_cloud_init_then_apt_update(
    site_factory, apt_repo: AptRepo, tmp_path: Path, cloud_init: str
) -> None:
    with linked_namespaces("md", 52) as link:
        site = site_factory(link, apt_repo)
        url = site.appliance(mdns=True)
        time.sleep(2)  # zeroconf probes and announces before it answers
        with link.sniff() as seen:
            report = boot(link, tmp_path, {}, cloud_init=cloud_init)  # no key: discovery
        assert report["failed"] == {} and clean(report), report
        assert link.leaving(seen) == [], seen  # the lookups stayed on the test's link
        assert {"dst": "224.0.0.251", "port": 5353} in [
            {k: p[k] for k in ("dst", "port")} for p in seen
        ]  # the mDNS query went out, and was seen
        assert report["etc_apt"].get(PROXY_FILE, "").endswith(f'Acquire::http::Proxy "{url}/";\n')
        record = json.loads(report["run_archive_local"][RECORD])
        assert record["found_by"] == "mdns" and record["apt_proxy"] == f"{url}/"
        assert record["images"]["curated"].startswith(url)
        assert any(f"found {url} by mdns" in line for line in report["log"]), report["log"]
        # apt-get update in the client namespace through the discovered proxy
        proxy = report["etc_apt"][PROXY_FILE].split('"')[1]
        client = AptClient(
            tmp_path / "apt",
            site.repo_url,
            apt_repo.keyring,
            apt_repo.arch,
            proxy=proxy,
            prefix=("ip", "netns", "exec", link.b),
        )
        r = client.update()
        assert r.returncode == 0 and "Err:" not in r.stdout, r.stdout + r.stderr
        r = client.download("al-tools")
        assert r.returncode == 0, r.stdout + r.stderr
        assert set(client.archives) == {"al-tools", "al-hello"}
        # the service record that auto-apt-proxy / squid-deb-proxy-client look for
        r = link.run_b("/usr/bin/python3", "-c", SERVICE_QUERY, str(MODULE_DIR))
        assert r.stdout.split() == ["archive.local", str(PORT)], r.stdout + r.stderr
        # a clean shutdown withdraws the records (goodbye: TTL 0), seen by a multicast listener
        listener = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                link.b,
                "/usr/bin/python3",
                "-c",
                GOODBYE_LISTENER,
                str(MODULE_DIR),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)
        appliance = site.procs[-1]
        appliance.terminate()
        appliance.wait(15)
        out, _ = listener.communicate(timeout=15)
        assert "goodbye archive.local" in out, out
        gone = boot(
            link, tmp_path, {}, apt_file=report["etc_apt"][PROXY_FILE], cloud_init=cloud_init
        )
        assert gone["run_archive_local"] == {} and PROXY_FILE in gone["removed"]


# joins the mDNS group and prints the records announced with TTL 0 (withdrawn)
GOODBYE_LISTENER = """
import socket, struct, sys, time
sys.path.insert(0, sys.argv[1])
import cc_archive_local as m
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", m.MDNS_PORT))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             socket.inet_aton(m.MDNS_GROUP) + socket.inet_aton("0.0.0.0"))
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    s.settimeout(deadline - time.monotonic())
    try:
        msg = s.recv(9000)
    except OSError:
        break
    for name, rtype, rdata, offset in m._records(msg):
        ttl = struct.unpack("!I", msg[offset - 6 : offset - 2])[0]
        if rtype == 1 and ttl == 0:
            print("goodbye", name, flush=True)
            sys.exit(0)
"""


# a one-shot mDNS query for the _apt_proxy._tcp service, printing its SRV target and port
SERVICE_QUERY = """
import socket, struct, sys, time
sys.path.insert(0, sys.argv[1])
import cc_archive_local as m
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(m._query("_apt_proxy._tcp.local", 12), (m.MDNS_GROUP, m.MDNS_PORT))
s.settimeout(2)
msg = s.recv(9000)
for name, rtype, rdata, offset in m._records(msg):
    if rtype == 33:
        _prio, _weight, port = struct.unpack("!3H", rdata[:6])
        print(m._name(msg, offset + 6)[0], port)
"""


def test_srv_discovery_and_rogue_answers(site_factory, tmp_path: Path) -> None:
    resolv = f"nameserver 10.231.53.1\nsearch {DOMAIN}\n"
    with linked_namespaces("srv", 53, resolv_b=resolv) as link:
        site = site_factory(link)
        url = site.appliance(mdns=False, port=3150)
        site.dns(3150, link.a_addr)
        report = boot(link, tmp_path, {"archive_local": {"timeout": 2}})
        record = json.loads(report["run_archive_local"][RECORD])
        assert record["found_by"] == "srv" and record["url"] == url
        assert report["etc_apt"][PROXY_FILE].endswith(f'"{url}/";\n')


def test_rogue_answers_are_ignored(site_factory, tmp_path: Path) -> None:
    resolv = f"nameserver 10.231.54.1\nsearch {DOMAIN}\n"
    with linked_namespaces("rog", 54, resolv_b=resolv) as link:
        site = site_factory(link)
        rogue = tmp_path / "rogue"
        (rogue / ".well-known").mkdir(parents=True)
        site.serve_dir(rogue, 3142)
        site.dns(3142, link.a_addr)
        for body in ("this is not json", '{"service": "apt-cacher-ng", "apt_proxy": "x"}'):
            (rogue / ".well-known/archive-local").write_text(body)
            report = boot(
                link,
                tmp_path,
                {"archive_local": {"timeout": 2}},
                apt_file='Acquire::http::Proxy "http://10.9.9.9:3142/";\n',
            )
            assert report["failed"] == {}
            assert PROXY_FILE in report["removed"]  # the stale setting of an earlier boot
            assert report["run_archive_local"] == {}
            assert any("no appliance found" in line for line in report["log"]), report["log"]


def test_no_appliance_costs_nothing(tmp_path: Path, cloud_init: str) -> None:
    with linked_namespaces("none", 55) as link:
        with link.sniff() as seen:
            report = boot(link, tmp_path, {}, cloud_init=cloud_init)
        assert (
            report["failed"] == {} and report["etc_apt"] == {} and report["run_archive_local"] == {}
        )
        assert clean(report), report["cloud_init_status"]  # an absent appliance degrades nothing
        assert link.leaving(seen) == [], seen
        assert report["seconds"]["archive_local"] < 1.0, report  # the 2 s bound is not used up
        [line] = [x for x in report["log"] if not x.startswith("DEBUG")]  # one line, INFO
        assert line.startswith("INFO archive_local: no appliance found (resolver, mDNS, SRV)")
        system = {"archive_local": {"url": "http://10.231.55.1:3142"}}
        explicit = boot(link, tmp_path, {}, cloud_init=cloud_init, system_cfg=system)
        assert explicit["etc_apt"] == {} and explicit["seconds"]["archive_local"] < 2.5
        assert clean(explicit)
        off = boot(
            link,
            tmp_path,
            {},
            cloud_init=cloud_init,
            system_cfg={"archive_local": {"enabled": False}},
        )
        assert off["etc_apt"] == {} and any("disabled" in x for x in off["log"]), off["log"]


def test_explicit_url_and_auto_apt_proxy(site_factory, tmp_path: Path, cloud_init: str) -> None:
    if not AUTO_APT_PROXY.exists():
        msg = "auto-apt-proxy missing: make test unpacks Debian's package into .components"
        unavailable(msg)
    with linked_namespaces("aap", 56) as link:
        url = site_factory(link).appliance(mdns=False)
        system = {"archive_local": {"url": url + "/"}}
        report = boot(link, tmp_path, {}, cloud_init=cloud_init, system_cfg=system)
        assert json.loads(report["run_archive_local"][RECORD])["found_by"] == "url"
        assert report["etc_apt"][PROXY_FILE].endswith(f'"{url}/";\n') and clean(report)
        # Debian's auto-apt-proxy in the client: no SRV record, so it probes the default
        # gateway on 3142 and recognises apt-cacher-ng's 406 answer
        env = {**os.environ, "TMPDIR": str(tmp_path)}
        r = link.run_b(str(AUTO_APT_PROXY), env=env)
        assert r.stdout.strip() == url, r.stdout + r.stderr


def test_where_the_configuration_comes_from(site_factory, tmp_path: Path, cloud_init: str) -> None:
    """The documented paths give a clean boot under every cloud-init: a file baked into the
    image (cloud.cfg.d) or vendor-data; cloud-init's own `apt: proxy` wins over discovery;
    an `archive_local:` key in user-data works, and from 23.4 on (25.1 here) it degrades the
    boot: cloud-init's schema check records a warning and `cloud-init status` exits 2."""
    with linked_namespaces("cfg", 57) as link:
        url = site_factory(link).appliance(mdns=False)
        settings = {"archive_local": {"url": url + "/", "timeout": 2}}

        def found(report: dict) -> str:
            return json.loads(report["run_archive_local"][RECORD])["found_by"]

        with link.sniff() as seen:
            baked = boot(link, tmp_path, {}, cloud_init=cloud_init, system_cfg=settings)
            vendor = boot(link, tmp_path, {}, cloud_init=cloud_init, vendor_data=settings)
            chosen = {"apt": {"proxy": "http://10.231.57.1:3128/"}}
            theirs = boot(link, tmp_path, chosen, cloud_init=cloud_init, system_cfg=settings)
            user = boot(link, tmp_path, settings, cloud_init=cloud_init)
        assert link.leaving(seen) == [], seen
        for report in (baked, vendor):
            assert found(report) == "url" and PROXY_FILE in report["etc_apt"]
            assert clean(report), report["cloud_init_status"]
        if cloud_init != "22.4":  # 22.4 warns of any module name it does not know (harmless:
            assert baked["warnings"] == vendor["warnings"] == []  # it records no warnings)
        # an explicit proxy in the instance's own cloud-config is kept
        assert found(theirs) == "url" and PROXY_FILE not in theirs["etc_apt"] and clean(theirs)
        [aptproxy] = [t for p, t in theirs["etc_apt"].items() if "aptproxy" in p]
        assert "http://10.231.57.1:3128/" in aptproxy
        assert any("apt proxy left as configured (apt: proxy)" in x for x in theirs["log"])
        # the user-data key: works everywhere, degrades the boot from 23.4 on
        assert found(user) == "url"
        status = user["cloud_init_status"]
        if cloud_init == "22.4":
            assert clean(user), status
        else:
            assert status["exit_code"] == 2 and status["extended_status"] == "degraded done"
            [warning, *_] = status["recoverable_errors"]["WARNING"]
            assert "cloud-config failed schema validation" in warning

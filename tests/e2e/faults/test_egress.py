"""Names that resolve to metadata addresses: refused before any connection is made.

The appliance runs in a network namespace of the test's own (loopback and one veth
to the host side, where the hostile upstream listens), with an /etc/hosts the test
writes (bind-mounted in a private mount namespace): `metadata.test` and `rebind.test`
resolve to 169.254.169.254, which exists only on that namespace's loopback, where a
canary listens. Whatever the appliance did, no packet could leave the namespace.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.error import HTTPError

from tests.configs import write_config
from tests.hostile import Hostile, redirect
from tests.netns import veth_pair

CANARY = """
import socket, sys, threading
hits = open(sys.argv[1], "a")
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("169.254.169.254", port)); s.listen(16)
    while True:
        c, _ = s.accept(); hits.write(f"{port}\\n"); hits.flush(); c.close()
for port in (80, 443):
    threading.Thread(target=serve, args=(port,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


def _get(url: str, proxy: str | None = None, timeout: float = 15) -> tuple[int, bytes]:
    handlers = [urllib.request.ProxyHandler({"http": proxy} if proxy else {})]
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.status, r.read()
    except HTTPError as exc:
        return exc.code, exc.read()


def test_metadata_addresses_are_never_connected_to(tmp_path: Path) -> None:
    with veth_pair("eg", 61) as net:
        subprocess.run(
            ["ip", "-n", net.ns, "addr", "add", "169.254.169.254/32", "dev", "lo"], check=True
        )
        hits = tmp_path / "canary-hits"
        hits.write_text("")
        canary = subprocess.Popen(
            ["ip", "netns", "exec", net.ns, sys.executable, "-c", CANARY, str(hits)],
            stdout=subprocess.PIPE,
            text=True,
        )
        up = Hostile(host=net.host_addr).start()
        app = None
        try:
            assert canary.stdout is not None and canary.stdout.readline().strip() == "ready"
            up.files["/debian/pool/ok.deb"] = b"through a name"
            up.files["/debian/pool/m.deb"] = b"x"
            up.behave["/debian/pool/m.deb"] = redirect("http://metadata.test/latest/meta-data/")
            hosts = tmp_path / "hosts"
            hosts.write_text(
                "127.0.0.1 localhost\n"
                f"{net.host_addr} ok.test\n"
                "169.254.169.254 metadata.test rebind.test\n"
            )
            port = 3142
            config = write_config(
                tmp_path / "egress.yaml",
                {
                    "listen": f"{net.ns_addr}:{port}",
                    "cache": {"dir": str(tmp_path / "cache")},
                    "apt": {
                        "remaps": {"debian": [f"{up.url}/debian"]},
                        # configured on purpose: the address rule holds all the same
                        "allow": [
                            "metadata.test",
                            "rebind.test",
                            "169.254.169.254",
                            f"ok.test:{up.port}",
                        ],
                    },
                    "admin": {"token_file": str(tmp_path / "token")},
                    "discovery": {"mdns": False},
                },
            )
            log = tmp_path / "egress.log"
            script = 'mount --bind "$1" /etc/hosts && exec "$2" -m appliance --config "$3" serve'
            app = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    net.ns,
                    "unshare",
                    "-m",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    script,
                    "sh",
                    str(hosts),
                    sys.executable,
                    str(config),
                ],
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).parents[3],
                env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])},
            )
            base = f"http://{net.ns_addr}:{port}"
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    socket.create_connection((net.ns_addr, port), 0.2).close()
                    break
                except OSError:
                    assert app.poll() is None, log.read_text()
                    time.sleep(0.05)
            # the names resolve through the test's hosts file: a name to the upstream works
            assert _get(f"http://ok.test:{up.port}/debian/pool/ok.deb", proxy=base) == (
                200,
                b"through a name",
            )
            # a redirect to a name of the metadata address
            assert _get(f"{base}/debian/pool/m.deb")[0] == 502
            # a configured name that resolves there (DNS rebinding), and the literal
            assert _get("http://rebind.test/latest/meta-data/", proxy=base)[0] == 502
            assert _get("http://169.254.169.254/latest/meta-data/", proxy=base)[0] == 502
            with socket.create_connection((net.ns_addr, port), 5) as s:
                s.sendall(b"CONNECT rebind.test:443 HTTP/1.1\r\nHost: rebind.test:443\r\n\r\n")
                s.settimeout(15)
                assert s.recv(200).startswith(b"HTTP/1.1 502")
            time.sleep(0.3)
            assert hits.read_text() == "", "a connection reached the metadata address"
            text = log.read_text()
            assert text.count("link-local/metadata address") >= 3, text
            assert "Traceback" not in text
        finally:
            if app is not None:
                app.terminate()
                app.wait(10)
            up.close()
            canary.kill()
            canary.wait()

"""Transparent interception: iptables REDIRECT in a network namespace, SO_ORIGINAL_DST.

A namespace of the test's own holds "service" addresses on its loopback; the app's TCP to
the service range is redirected to the proxy's outbound port, as a pod's proxy-init does. The
proxy runs as uid 2102 (with only CAP_DAC_OVERRIDE, to read the interpreter wherever it is) and
its own traffic is left out by owner, so its connections to the
original destination are not redirected back to itself. Needs root and iptables (CI runs as root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PROXY_UID = 2102

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("iptables") is None or shutil.which("ip") is None,
    reason="needs root, iproute2 and iptables",
)


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"weft-t-{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", name)
    try:
        ns = ("ip", "netns", "exec", name)
        sh(*ns, "ip", "link", "set", "lo", "up")
        for addr in ("10.96.0.10/32", "10.96.0.11/32"):  # "service" addresses, local to the ns
            sh(*ns, "ip", "addr", "add", addr, "dev", "lo")
        sh(*ns, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "10.96.0.0/16",
           "-m", "owner", "!", "--uid-owner", str(PROXY_UID),
           "-j", "REDIRECT", "--to-ports", "4140")  # fmt: skip
        yield name
    finally:
        subprocess.run(["ip", "netns", "pids", name], capture_output=True)
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        for pid in pids.stdout.split():
            subprocess.run(["kill", "-9", pid], capture_output=True)
        subprocess.run(["ip", "netns", "delete", name], check=False)


BACKEND = textwrap.dedent(
    """
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            body = (sys.argv[2] + " " + self.path).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[3])), H).serve_forever()
    """
)


def wait_http(ns: str, url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(
            ["ip", "netns", "exec", ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url],
            capture_output=True,
            text=True,
        )
        if r.stdout == "200":
            return
        time.sleep(0.1)
    raise TimeoutError(url)


def test_redirected_connections_use_their_original_destination(netns: str, tmp_path: Path) -> None:
    ns = ("ip", "netns", "exec", netns)
    script = tmp_path / "backend.py"
    script.write_text(BACKEND)
    discovery = tmp_path / "discovery.yaml"
    discovery.write_text(
        "destinations:\n"
        "  - target: 10.96.0.10:80\n"
        "    labels: {service: web, namespace: default}\n"
        "    endpoints:\n"
        "      - address: 127.0.0.1:8081\n"
        "        labels: {pod: web-1}\n"
    )
    os.chmod(tmp_path, 0o755)
    os.chmod(discovery, 0o644)
    procs = [
        subprocess.Popen([*ns, sys.executable, str(script), "127.0.0.1", "endpoint", "8081"]),
        subprocess.Popen([*ns, sys.executable, str(script), "10.96.0.11", "direct", "8080"]),
        # the proxy's own port number at another address: redirected all the same
        subprocess.Popen([*ns, sys.executable, str(script), "10.96.0.11", "same-port", "4140"]),
        subprocess.Popen(
            [
                *ns,
                "setpriv",
                f"--reuid={PROXY_UID}",
                f"--regid={PROXY_UID}",
                "--clear-groups",
                "--inh-caps=-all,+dac_override",
                "--ambient-caps=+dac_override",
                sys.executable,
                "-m",
                "weft",
                "proxy",
                "--outbound",
                "127.0.0.1:4140",
                "--inbound",
                "",
                "--admin",
                "127.0.0.1:4191",
                "--discovery-file",
                str(discovery),
                "--log-level",
                "warning",
            ],
        ),
    ]
    try:
        wait_http(netns, "http://127.0.0.1:4191/ready")
        # a known service address goes to its discovered endpoint
        out = sh(*ns, "curl", "-s", "http://10.96.0.10/known")
        assert out == "endpoint /known"
        # an address discovery does not know is forwarded to the original destination as is
        out = sh(*ns, "curl", "-s", "http://10.96.0.11:8080/unknown")
        assert out == "direct /unknown"
        out = sh(*ns, "curl", "-s", "http://10.96.0.11:4140/kept")
        assert out == "same-port /kept"
        metrics = sh(*ns, "curl", "-s", "http://127.0.0.1:4191/metrics")
        assert 'target_addr="10.96.0.10:80"' in metrics
        assert 'dst_service="web"' in metrics
        assert 'target_addr="10.96.0.11:8080"' in metrics
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_not_redirected_connection_without_target_is_closed(netns: str) -> None:
    _ = urllib.request  # (plain connections to the listener have no original destination)
    ns = ("ip", "netns", "exec", netns)
    proxy = subprocess.Popen(
        [*ns, sys.executable, "-m", "weft", "proxy", "--outbound", "127.0.0.1:4140",
         "--inbound", "", "--admin", "127.0.0.1:4191", "--log-level", "warning"],
    )  # fmt: skip
    try:
        wait_http(netns, "http://127.0.0.1:4191/ready")
        r = subprocess.run([*ns, "curl", "-s", "-m", "5", "http://127.0.0.1:4140/"],
                           capture_output=True, text=True)  # fmt: skip
        assert r.returncode != 0  # closed without an answer: nowhere to send it
    finally:
        proxy.kill()
        proxy.wait()

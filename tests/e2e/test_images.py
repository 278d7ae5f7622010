"""Weft's OCI images (``make images``: ``images/oci``, tags proxy, control, proxy-init), run with
podman straight from the OCI layout, as a node would pull and run them.

The proxy image runs ``weft version`` and ``weft proxy --help`` as its non-root user, and relays
HTTP from the host's loopback to a backend (the container shares the host's network here, so
the test can reach it); the proxy-init image installs the mesh's iptables rules in a network
namespace of the test's own, as the injected init container does in a pod.

Podman runs them with runc: crun refuses this machine's hybrid cgroup hierarchy ("cgroups in
hybrid mode not supported, drop all controllers from cgroupv2"), and the sandbox refuses to
raise resource limits, so the containers get limits below the machine's (``--ulimit``). Podman's
storage is a temporary directory of the test's own, removed after."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYOUT = REPO / "images" / "oci"


@pytest.fixture(scope="module")
def layout() -> Path:
    if not (LAYOUT / "index.json").exists():  # make test builds them first; alone, build here
        subprocess.run(["make", "-C", str(REPO), "images"], check=True, timeout=1800)
    return LAYOUT


def tags(layout: Path) -> dict[str, dict[str, Any]]:
    index = json.loads((layout / "index.json").read_text())
    out = {}
    for m in index["manifests"]:
        blob = layout / "blobs" / "sha256" / m["digest"].split(":", 1)[1]
        out[m["annotations"]["org.opencontainers.image.ref.name"]] = json.loads(blob.read_text())
    return out


class Podman:
    """podman with a storage of its own (removed after) and the settings this machine needs."""

    def __init__(self, root: Path) -> None:
        self.base = [
            "podman", "--root", str(root / "storage"), "--runroot", str(root / "run"),
            "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
        ]  # fmt: skip

    def run_args(self, tag: str, *args: str, options: tuple[str, ...] = ()) -> list[str]:
        return [
            *self.base, "run", "--rm", "--ulimit", "nofile=4096:4096", "--ulimit",
            "nproc=4096:4096", *options, f"oci:{LAYOUT}:{tag}", *args,
        ]  # fmt: skip

    def run(
        self, tag: str, *args: str, options: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.run_args(tag, *args, options=options), capture_output=True,
                              text=True, timeout=300, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def podman(layout: Path) -> Iterator[Podman]:
    root = Path(tempfile.mkdtemp(prefix="weft-podman-"))  # podman wants a short run root
    p = Podman(root)
    try:
        yield p
    finally:
        subprocess.run([*p.base, "rm", "--all", "--force"], capture_output=True, check=False)
        subprocess.run([*p.base, "system", "reset", "--force"], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_the_images_and_their_sizes(layout: Path) -> None:
    images = tags(layout)
    assert set(images) == {"proxy", "control", "proxy-init"}
    # control is the proxy's layers with another user and command; proxy-init adds one layer
    assert images["control"]["layers"] == images["proxy"]["layers"]
    assert images["proxy-init"]["layers"][:-1] == images["proxy"]["layers"]


def test_weft_runs_in_the_proxy_image_as_its_own_user(layout: Path, podman: Podman) -> None:
    for tag, user, cmd in (("proxy", "2102:2102", ["proxy"]), ("control", "2103:2103",
                           ["control"]), ("proxy-init", "0:0", ["proxy-init"])):  # fmt: skip
        manifest = tags(layout)[tag]
        blob = layout / "blobs" / "sha256" / manifest["config"]["digest"].split(":", 1)[1]
        config = json.loads(blob.read_text())["config"]
        assert (config["User"], config["Entrypoint"], config["Cmd"]) == (
            user,
            ["/usr/local/bin/weft"],
            cmd,
        )
    done = podman.run("proxy", "version", options=("--network", "none"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("weft ") and "Python 3.11" in done.stdout
    done = podman.run("proxy", "proxy", "--help", options=("--network", "none"))
    assert done.returncode == 0, done.stderr
    assert "--inbound-target" in done.stdout
    done = podman.run("control", "version", options=("--network", "none"))
    assert done.returncode == 0, done.stderr


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from the backend\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_proxy_image_relays_traffic(podman: Podman) -> None:
    # the image's command is `weft proxy`: the arguments after the image are its flags
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    inbound, outbound, admin = _port(), _port(), _port()
    name = f"weft-test-{os.getpid()}"
    proc = subprocess.Popen(
        podman.run_args(
            "proxy", "proxy",
            "--inbound", f"127.0.0.1:{inbound}", "--outbound", f"127.0.0.1:{outbound}",
            "--admin", f"127.0.0.1:{admin}",
            "--inbound-target", f"127.0.0.1:{backend.server_address[1]}",
            options=("--network", "host", "--name", name),
        ),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120  # the first run copies the image into the storage
        answer = b""
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
            try:
                with socket.create_connection(("127.0.0.1", inbound), timeout=2) as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
                    answer = b"".join(iter(lambda: s.recv(65536), b""))
                break
            except OSError:
                time.sleep(0.2)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert answer.endswith(b"hello from the backend\n")
    finally:
        subprocess.run([*podman.base, "stop", "--time", "10", name], capture_output=True,
                       check=False, timeout=60)  # fmt: skip
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        backend.shutdown()
        backend.server_close()


def test_the_proxy_init_image_installs_the_rules_in_a_pods_network(podman: Podman) -> None:
    netns = f"weft-img-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        done = podman.run(
            "proxy-init", "proxy-init", "--outbound-skip-ports", "5432",
            options=("--network", f"ns:/var/run/netns/{netns}", "--cap-add", "NET_ADMIN",
                     "--cap-add", "NET_RAW"),
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        rules = ""
        for binary in ("iptables-nft-save", "iptables-legacy-save", "iptables-save"):
            out = subprocess.run(["ip", "netns", "exec", netns, binary, "-t", "nat"],
                                 capture_output=True, text=True, check=False)  # fmt: skip
            if "4143" in out.stdout:
                rules = out.stdout
                break
        assert "4143" in rules and "4140" in rules and "5432" in rules, rules
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=False)

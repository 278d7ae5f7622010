"""The proxies' way to a cluster's control plane is HTTPS, verified as the control plane's mesh
identity: a real ``weft proxy`` (configured as the injector configures it: an https control
plane, its identity, the anchors in its environment) is certified over it with a projected token
the real API server reviews; a client expecting another identity, trusting other anchors or
speaking plaintext gets nothing; an issuer rotation gives the API a new certificate that the
clients go on verifying."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.kube.conftest import Kube
from tests.kube.test_tokenreview_contract import pod_with_account, token
from weft.control.client import ControlClient, ControlTLS, ControlUnreachable
from weft.control.config import ControlConfig
from weft.control.incluster import ClusterControlPlane
from weft.identity import ca
from weft.identity.names import dns_identity, spiffe_id
from weft.install.inject import CONTROL_ANCHORS_ENV
from weft.testing import wait_until

pytestmark = pytest.mark.timeout(180)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def plane(kube: Kube) -> AsyncIterator[ClusterControlPlane]:
    state = tempfile.mkdtemp(prefix="weft-tls-", dir="/tmp")
    config = ControlConfig(
        state_dir=state,
        kubeconfig=str(kube.kubeconfig),
        http_listen=("127.0.0.1", 0),
        http_tls=True,
        tls_namespace=kube.namespace,
        tls_service_account="weft-control",
    )
    p = ClusterControlPlane(config)
    await p.start()
    try:
        yield p
    finally:
        await p.stop(grace=0.5)
        shutil.rmtree(state, ignore_errors=True)


def _anchors(plane: ClusterControlPlane) -> bytes:
    return plane.identity.material.bundle.to_pem()


def _url(plane: ClusterControlPlane) -> str:
    assert plane.tcp_address is not None
    return f"https://127.0.0.1:{plane.tcp_address[1]}"


async def test_clients_verify_the_control_plane_and_nothing_else_gets_through(
    kube: Kube, plane: ClusterControlPlane
) -> None:
    ns = kube.namespace
    name = dns_identity(ns, "weft-control")
    good = ControlClient(_url(plane), tls=ControlTLS(_anchors(plane), name), timeout=5.0)
    assert await good.healthz()
    assert (await good.call("GET", "/api/v1/identity/trust"))["trustAnchors"]
    # another identity than the control plane's: refused, saying why
    other = ControlClient(
        _url(plane), tls=ControlTLS(_anchors(plane), dns_identity(ns, "web")), timeout=5.0
    )
    with pytest.raises(ControlUnreachable) as info:
        await other.call("GET", "/healthz")
    assert "cannot verify the control plane" in str(info.value)
    assert dns_identity(ns, "web") in str(info.value)
    # other anchors (another mesh's): refused
    stranger = ca.Authority.new_anchor("cluster.local", now=plane.identity.clock())
    foreign = ControlClient(
        _url(plane), tls=ControlTLS(ca.cert_pem(stranger.cert), name), timeout=5.0
    )
    with pytest.raises(ControlUnreachable) as info:
        await foreign.call("GET", "/healthz")
    assert "cannot verify the control plane" in str(info.value)
    # plaintext on the TLS port: no answer (the token would otherwise cross in the clear)
    assert plane.tcp_address is not None
    plain = ControlClient(f"http://127.0.0.1:{plane.tcp_address[1]}", timeout=3.0)
    assert not await plain.healthz()
    # the identity's trust stream arrives on the verified channel; a rotation's new anchors
    # are taken from it (the proxy does that on every trust update)
    tls = ControlTLS(_anchors(plane), name)
    assert not tls.set_anchors(_anchors(plane))
    with pytest.raises(ValueError):
        tls.set_anchors(b"not pem")
    assert tls.anchors_pem == _anchors(plane)


async def test_a_proxy_is_certified_over_https_and_a_new_issuer_is_served(
    kube: Kube, plane: ClusterControlPlane, tmp_path: Path
) -> None:
    ns = kube.namespace
    uid = await pod_with_account(kube, "web-1", "web")
    tokens = tmp_path / "token"
    tokens.write_text(await token(kube, "web", pod="web-1", uid=uid))
    admin = free_port()
    env = {
        **os.environ,
        # as the injector gives it: the PEM text in the environment
        CONTROL_ANCHORS_ENV: _anchors(plane).decode(),
        "WEFT_LOG": "info",
    }
    proxy = subprocess.Popen(  # noqa: ASYNC220 - a process for the test's whole life
        [sys.executable, "-m", "weft", "proxy",
         "--outbound", f"127.0.0.1:{free_port()}", "--inbound", "",
         "--admin", f"127.0.0.1:{admin}",
         "--control", _url(plane), "--control-identity", dns_identity(ns, "weft-control"),
         "--identity-token-file", str(tokens),
         "--label", "pod=web-1", "--label", f"namespace={ns}", "--label", "serviceaccount=web"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def identity() -> dict[str, Any]:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/identity", timeout=2) as r:
                data: dict[str, Any] = json.loads(r.read())
                return data

        for _ in range(120):  # the proxy's admin port, polled off the loop the plane runs on
            assert proxy.poll() is None, "the proxy exited"
            with contextlib.suppress(OSError, ValueError):
                if (await asyncio.to_thread(identity)).get("pem"):
                    break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError("the proxy was not certified over https within 60 s")
        assert dns_identity(ns, "web") in json.dumps(await asyncio.to_thread(identity))
        # a new issuer: the API's own certificate follows (checked every 5 s), and a client
        # verifying with the anchors goes on connecting
        assert plane.serving_cert is not None
        before = plane.serving_cert.issued
        local = ControlClient(plane.endpoint)
        await local.call("POST", "/api/v1/identity/issuer", {})
        await wait_until(
            lambda: plane.serving_cert is not None and plane.serving_cert.issued > before,
            within=20,
            what="a certificate from the new issuer",
        )
        name = dns_identity(ns, "weft-control")
        client = ControlClient(_url(plane), tls=ControlTLS(_anchors(plane), name), timeout=5.0)
        assert await client.healthz()
        issuer = plane.identity.material.issuer.cert
        assert plane.serving_cert.issuer_fp == ca.fingerprint(issuer)
        # and the proxy is certified again by the new issuer, over the same verified channel
        csr = ca.make_csr(ca.new_key(), dns_identity(ns, "web"), spiffe_id(ns, "web")).decode()
        answer = await client.call(
            "POST", "/api/v1/identity/certify", {"token": tokens.read_text(), "csr": csr}
        )
        assert answer["chain"] == [ca.cert_pem(issuer).decode()]
    finally:
        proxy.terminate()
        try:
            _, err = proxy.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proxy.kill()
            _, err = proxy.communicate()
    assert "Traceback" not in err, err

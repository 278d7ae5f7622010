"""How an HTTPS control plane is configured, and every way of getting it wrong: the proxy needs
both the identity and the anchors (and only for https), anchors come as PEM text or a file and
anything else is refused naming it, the injector's anchors file is read again only when it
changes, and ``weft control --http-tls`` is only for a cluster's TCP listener."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from weft.control.client import ControlClient, ControlTLS
from weft.control.config import ControlConfig
from weft.control.injector import AnchorsFile
from weft.identity.ca import Authority, cert_pem
from weft.proxy.config import ProxyConfig
from weft.proxy.server import control_client

NAME = "weft-control.weft-system.serviceaccount.identity.cluster.local"
URL = "https://weft-control.weft-system.svc.cluster.local:8086"


def anchor() -> bytes:
    return cert_pem(Authority.new_anchor("cluster.local", now=time.time()).cert)


def test_an_https_control_plane_needs_its_identity_and_anchors_and_only_it_does() -> None:
    with pytest.raises(ValueError, match="--control-identity and --control-trust-anchors"):
        ProxyConfig(control=URL)
    with pytest.raises(ValueError, match="--control-identity and --control-trust-anchors"):
        ProxyConfig(control=URL, control_identity=NAME)
    with pytest.raises(ValueError, match="for an https:// control plane"):
        ProxyConfig(control="unix:/run/weft/control.sock", control_identity=NAME)
    config = ProxyConfig(
        control=URL, control_identity=NAME, control_trust_anchors=anchor().decode()
    )
    client = control_client(config)
    assert client is not None and client.tls is not None
    assert client.tls.server_name == NAME
    assert control_client(ProxyConfig()) is None


def test_anchors_come_as_pem_text_or_a_file_and_nothing_else(tmp_path: Path) -> None:
    pem = anchor()
    f = tmp_path / "anchors.pem"
    f.write_bytes(pem)
    config = ProxyConfig(control=URL, control_identity=NAME, control_trust_anchors=str(f))
    client = control_client(config)
    assert client is not None and client.tls is not None and client.tls.anchors_pem == pem
    missing = ProxyConfig(
        control=URL, control_identity=NAME, control_trust_anchors=str(tmp_path / "none")
    )
    with pytest.raises(ValueError, match="cannot read the control plane's trust anchors"):
        control_client(missing)
    (tmp_path / "junk").write_text("junk\n")
    junk = ProxyConfig(
        control=URL, control_identity=NAME, control_trust_anchors=str(tmp_path / "junk")
    )
    with pytest.raises(ValueError, match="no PEM certificate"):
        control_client(junk)
    broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(ValueError, match="not valid"):
        ControlTLS(broken.encode(), NAME)
    with pytest.raises(ValueError, match="identity is required"):
        ControlTLS(pem, "")


def test_the_client_takes_https_urls_and_refuses_anchors_for_plaintext() -> None:
    assert ControlClient("https://weft-control").endpoint == "https://weft-control"
    with pytest.raises(ValueError, match="not https"):
        ControlClient("http://127.0.0.1:8086", tls=ControlTLS(anchor(), NAME))
    with pytest.raises(ValueError, match="https://HOST:PORT"):
        ControlClient("ftp://weft-control")


def test_the_injectors_anchors_file_is_read_again_only_when_it_changes(tmp_path: Path) -> None:
    f = tmp_path / "ca-bundle.crt"
    first = anchor()
    f.write_bytes(first)
    anchors = AnchorsFile(str(f))
    assert anchors.pem == first.decode() and not anchors.reload()
    second = first + anchor()
    f.write_bytes(second)
    os.utime(f, (time.time() + 5, time.time() + 5))
    assert anchors.reload() and anchors.pem == second.decode()
    f.write_text("not a certificate\n")  # a bad update keeps what was read before
    os.utime(f, (time.time() + 10, time.time() + 10))
    with pytest.raises(ValueError, match="no PEM certificate"):
        anchors.reload()
    assert anchors.pem == second.decode()


def test_http_tls_is_for_a_clusters_tcp_listener() -> None:
    with pytest.raises(ValueError, match="http-tls"):
        ControlConfig(http_tls=True, http_listen=("127.0.0.1", 8086))
    with pytest.raises(ValueError, match="http-tls"):
        ControlConfig(http_tls=True, kubeconfig="in-cluster")
    ControlConfig(http_tls=True, kubeconfig="in-cluster", http_listen=("0.0.0.0", 8086))

"""One L7 suite, two protocols: every test here runs over HTTP/1.1 and over HTTP/2 (prior
knowledge over cleartext), as uvicorn runs one suite over its protocol implementations, so any
difference between the proxy's two request paths is a failing test.

What this module gives the suites:

- ``protocol``: the fixture parametrized ``["http1", "http2"]``;
- the peers (:mod:`tests.integration.l7.peers`, re-exported): :class:`DualBackend`, a backend
  that speaks both protocols, and :func:`open_client`, a client of either protocol;
- :func:`mesh`: a proxy (``running_proxy``) whose discovery file names the service ``web`` at
  ``SERVICE`` with the given policy and endpoints; the app dials ``SERVICE`` and the proxy's
  ``outbound_target`` sends it there;
- :func:`samples` / :func:`sample`: the proxy's metrics, parsed with ``prometheus_client``.

Not for: protocol-specific behaviour (gRPC, flow control, framing errors); those stay in the
protocol's own test module.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.l7.peers import (
    AUTHORITY,
    DROP,
    Client,
    DualBackend,
    Reply,
    open_client,
)
from weft.addr import Address
from weft.proxy.server import ProxyServer
from weft.proxy.static_discovery import StaticDiscovery
from weft.testing.proxy import running_proxy
from weft.testing.servers import Request, Response

__all__ = [
    "AUTHORITY",
    "DROP",
    "SERVICE",
    "Client",
    "DualBackend",
    "Mesh",
    "Reply",
    "Request",
    "Response",
    "mesh",
    "open_client",
    "sample",
    "samples",
]

PROTOCOLS = ["http1", "http2"]
SERVICE: Address = ("127.0.0.1", 9)  # the address the app dials; only discovery knows it


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- the proxy and its discovery ------------------------------------------------------------------


def write_discovery(path: Path, policy: dict[str, Any] | None, endpoints: list[Address],
                    backends: dict[str, list[Address]] | None = None) -> None:  # fmt: skip
    """The service ``web`` at ``SERVICE`` (with ``policy``) and the route backends' services."""

    def dest(target: str, eps: list[Address], name: str) -> dict[str, Any]:
        return {
            "target": target,
            "labels": {"service": name, "namespace": "default"},
            "endpoints": [
                {"address": f"{h}:{p}", "labels": {"pod": f"{name}-{p}", "namespace": "default"}}
                for h, p in eps
            ],
        }

    doc = [dest(f"{SERVICE[0]}:{SERVICE[1]}", endpoints, "web")]
    if policy is not None:
        doc[0]["policy"] = policy
    for target, eps in (backends or {}).items():
        doc.append(dest(target, eps, target.split(".")[0]))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"destinations": doc}))
    tmp.replace(path)


@dataclass
class Mesh:
    proxy: ProxyServer
    file: Path

    @property
    def address(self) -> Address:
        return self.proxy.addresses["outbound"]

    def client(self, protocol: str) -> contextlib.AbstractAsyncContextManager[Client]:
        return open_client(protocol, self.address)

    def update(self, policy: dict[str, Any] | None, endpoints: list[Address],
               backends: dict[str, list[Address]] | None = None) -> None:  # fmt: skip
        write_discovery(self.file, policy, endpoints, backends)


@contextlib.asynccontextmanager
async def mesh(tmp_path: Path, policy: dict[str, Any] | None, endpoints: list[Address],
               backends: dict[str, list[Address]] | None = None,
               **overrides: Any) -> AsyncIterator[Mesh]:  # fmt: skip
    f = tmp_path / "discovery.yaml"
    write_discovery(f, policy, endpoints, backends)
    async with running_proxy(
        StaticDiscovery(str(f), interval=0.05), outbound_target=SERVICE, **overrides
    ) as proxy:
        yield Mesh(proxy, f)


# -- metrics --------------------------------------------------------------------------------------


def samples(proxy: ProxyServer, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name``: (labels, value)."""
    out = []
    for fam in text_string_to_metric_families(proxy.metrics.expose().decode()):
        for s in fam.samples:
            if s.name == name:
                out.append((dict(s.labels), s.value))
    return out


def sample(proxy: ProxyServer, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` that carry ``labels``."""
    return sum(
        value
        for got, value in samples(proxy, name)
        if all(got.get(k) == v for k, v in labels.items())
    )

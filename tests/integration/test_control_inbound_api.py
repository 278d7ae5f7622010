"""Integration tests for the inbound policy API over a real control plane (unix socket in a
temporary state directory, real client): the NDJSON stream sends a pod's policy at once and a
changed one within a second of an apply or delete; ``?once=1``; errors."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from weft.control.client import ApiError, ControlClient
from weft.control.config import ControlConfig
from weft.control.inbound import InboundPolicies
from weft.control.server import ControlPlane
from weft.inbound import Authorization, PodInboundPolicy

WAIT = 5.0  # generous bound for "arrives"
CHANGE = 1.0  # issue 4: policy changes apply within a second
API = "policy.weft.io/v1beta1"
PATH = "/api/v1/inbound/default/web-1"


@pytest.fixture
def state_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="weft-in-", dir="/tmp")  # unix socket paths are short
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def plane(state_dir: str) -> AsyncIterator[ControlPlane]:
    p = ControlPlane(ControlConfig(state_dir=state_dir, scrape_interval=3600.0, heartbeat=0.2))
    policies = InboundPolicies(p.store, cluster_networks=[p.config.pod_cidr], heartbeat=0.2)
    p.api.handlers["inbound"] = policies.handle
    await p.start()
    yield p
    await p.stop(grace=1.0)
    policies.close()


@pytest.fixture
def client(plane: ControlPlane) -> ControlClient:
    return ControlClient(plane.endpoint)


def pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {
            "serviceAccountName": "web",
            "containers": [
                {
                    "name": "app",
                    "command": ["serve"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"port": "http", "path": "/ready"}},
                }
            ],
        },
    }


def server() -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Server",
        "metadata": {"name": "web-http"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "port": "http"},
    }


def authz() -> dict[str, Any]:
    return {
        "apiVersion": "policy.linkerd.io/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "web-clients"},
        "spec": {
            "targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "web-http"},
            "requiredAuthenticationRefs": [{"kind": "ServiceAccount", "name": "client"}],
        },
    }


async def next_policy(stream: AsyncIterator[Any], within: float) -> PodInboundPolicy | None:
    """The next policy line (heartbeats skipped) within ``within`` seconds."""

    async def take() -> PodInboundPolicy | None:
        while True:
            line = await stream.__anext__()
            if line == {}:
                continue
            assert set(line) == {"policy"}, line
            raw = line["policy"]
            return None if raw is None else PodInboundPolicy.from_json(raw)

    return await asyncio.wait_for(take(), within)


async def test_the_stream_sends_the_policy_and_every_change_within_a_second(
    client: ControlClient,
) -> None:
    stream = client.stream(PATH)
    try:
        assert await next_policy(stream, WAIT) is None  # no such pod yet

        await client.apply([pod()])
        first = await next_policy(stream, CHANGE)
        assert first is not None
        (http,) = first.ports
        assert (http.port, http.server, http.probes) == (8080, None, ("/ready",))
        assert http.default_policy == "all-unauthenticated"

        await client.apply([server()])
        served = await next_policy(stream, CHANGE)
        assert served is not None
        assert served.for_port(8080).server == "default/web-http"
        assert served.for_port(8080).authorizations == ()  # accessPolicy deny

        await client.apply([authz()])
        allowed = await next_policy(stream, CHANGE)
        assert allowed is not None
        assert allowed.for_port(8080).authorizations == (
            Authorization(
                "authorizationpolicy",
                "web-clients",
                authenticated=True,
                identities=("client.default.serviceaccount.identity.cluster.local",),
            ),
        )

        await client.delete([authz()])
        assert await next_policy(stream, CHANGE) == served

        await client.delete([pod()])
        assert await next_policy(stream, CHANGE) is None
    finally:
        await stream.aclose()


async def test_an_idle_stream_sends_heartbeats(client: ControlClient) -> None:
    await client.apply([pod()])
    stream = client.stream(PATH)
    try:
        assert await next_policy(stream, WAIT) is not None
        assert await asyncio.wait_for(stream.__anext__(), WAIT) == {}
    finally:
        await stream.aclose()


async def test_once_returns_the_policy_and_its_warnings(client: ControlClient) -> None:
    assert await client.call("GET", f"{PATH}?once=1") == {"policy": None, "warnings": []}
    bad = pod()
    bad["metadata"]["annotations"] = {"config.weft.io/default-inbound-policy": "open"}
    await client.apply([bad])
    got = await client.call("GET", f"{PATH}?once=1")
    policy = PodInboundPolicy.from_json(got["policy"])
    assert policy.default.default_policy == "all-unauthenticated"
    (warning,) = got["warnings"]
    assert "invalid config.weft.io/default-inbound-policy 'open'" in warning


@pytest.mark.parametrize(
    ("method", "path", "status", "text"),
    [
        ("GET", "/api/v1/inbound/default", 404, "/api/v1/inbound/<namespace>/<pod>"),
        ("GET", "/api/v1/inbound/default/web-1/extra", 404, "no such endpoint"),
        ("GET", "/api/v1/inbound/Bad_NS/web-1", 400, "namespace: invalid name"),
        ("GET", "/api/v1/inbound/default/WEB", 400, "pod: invalid name"),
        ("POST", PATH, 405, "use GET"),
    ],
)
async def test_bad_requests_are_refused_clearly(
    client: ControlClient, method: str, path: str, status: int, text: str
) -> None:
    with pytest.raises(ApiError) as info:
        await client.call(method, path, {} if method == "POST" else None)
    assert info.value.status == status
    assert text in str(info.value)


async def test_invalid_policy_documents_are_refused_with_their_field_paths(
    client: ControlClient,
) -> None:
    bad = authz()
    bad["spec"]["requiredAuthenticationRefs"].append({"kind": "ServiceAccount", "name": "other"})
    with pytest.raises(ApiError) as info:
        await client.apply([server(), bad], source="policy.yaml")
    assert info.value.status == 422
    (detail,) = info.value.details
    assert detail["path"] == "spec.requiredAuthenticationRefs[1]"
    assert detail["document"] == 1 and detail["source"] == "policy.yaml"
    assert await client.list("Server") == []  # nothing was applied

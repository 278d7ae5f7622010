"""The node agent gets its pods' identity tokens as a kubelet does, from the local mesh's API
(TokenRequest bound to the Pod), and the tokens review as on a cluster (TokenReview through
``KubeTokenReviewer``, the reviewer the control plane uses on a real cluster): accepted for the
bound pod, refused for another audience, for a pod that was deleted, and for a pod recreated
under the same name; rotation; bad requests are clear errors."""

from __future__ import annotations

import ipaddress
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError

from weft.control.client import ControlClient
from weft.control.config import ControlConfig
from weft.control.kube.client import connect_endpoint
from weft.control.server import ControlPlane
from weft.control.tokenreview import ROTATE_AFTER, KubeTokenReviewer, ReviewedToken
from weft.identity.tokens import InvalidToken
from weft.runtime.local import net
from weft.runtime.local.agent import NodeAgent, _Pod
from weft.runtime.local.net import MeshNetwork
from weft.runtime.local.nodeconfig import NodeConfig
from weft.testing.proxy import wait_until

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="tokens are handed to the proxy's uid: needs root"
)


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    # unix socket paths are limited to 107 bytes: keep the state directory's short
    state = tempfile.mkdtemp(prefix="weft-tk-", dir="/tmp")
    p = ControlPlane(ControlConfig(state_dir=state, scrape_interval=3600.0))
    await p.start()
    try:
        yield p
    finally:
        await p.stop(grace=1.0)
        shutil.rmtree(state, ignore_errors=True)


def pod(name: str, account: str = "web") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"serviceAccountName": account, "containers": [{"name": "w", "command": ["x"]}]},
    }


async def uid_of(client: ControlClient, name: str) -> str:
    stored = await client.get("Pod", "default", name)
    assert stored is not None
    return str(stored["metadata"]["uid"])


@needs_root
async def test_tokens_come_from_the_api_and_review_as_on_a_cluster(
    plane: ControlPlane, tmp_path: Path
) -> None:
    client = ControlClient(plane.endpoint)
    await client.apply([pod("web-1")])
    uid = await uid_of(client, "web-1")
    node = NodeAgent(NodeConfig(tmp_path, MeshNetwork.parse(), "iptables", plane.endpoint))
    path = await node.tokens.issue("default", "web-1", uid, "web")
    assert path == tmp_path / "pods" / "default" / "web-1" / "identity" / "token"
    st = path.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (net.PROXY_UID, 0o400)
    reviewer = KubeTokenReviewer(connect_endpoint(plane.endpoint))
    token = path.read_text()
    assert await reviewer.review(token) == ReviewedToken("default", "web", "web-1", uid)
    # another audience is refused by the API, as on a cluster
    other = KubeTokenReviewer(connect_endpoint(plane.endpoint), audience="vault")
    with pytest.raises(InvalidToken, match="audiences"):
        await other.review(token)
    # the pod recreated under the same name: the old token no longer holds, a new one does
    await client.delete([{"kind": "Pod", "metadata": {"name": "web-1"}}])
    with pytest.raises(InvalidToken, match="does not exist"):
        await reviewer.review(token)
    await client.apply([pod("web-1")])
    new_uid = await uid_of(client, "web-1")
    with pytest.raises(InvalidToken, match="earlier pod"):
        await reviewer.review(token)
    await node.tokens.issue("default", "web-1", new_uid, "web")
    assert (await reviewer.review(path.read_text())).pod_uid == new_uid


@needs_root
async def test_running_pods_get_a_new_token_before_theirs_expires(
    plane: ControlPlane, tmp_path: Path
) -> None:
    client = ControlClient(plane.endpoint)
    await client.apply([pod("web-1")])
    uid = await uid_of(client, "web-1")
    node = NodeAgent(NodeConfig(tmp_path, MeshNetwork.parse(), "iptables", plane.endpoint))
    running = _Pod("default", "web-1", uid, {}, ipaddress.IPv4Address("10.244.0.2"), "n")
    node._pods[running.key] = running
    path = await node.tokens.issue("default", "web-1", uid, "web")
    first = path.read_text()
    issued_at = node.tokens.issued[running.key][0]
    assert node.rotate_tokens(issued_at + ROTATE_AFTER - 60) == []
    assert node.rotate_tokens(issued_at + ROTATE_AFTER + 1) == [("default", "web-1")]
    await wait_until(lambda: path.read_text() != first, within=5, what="a new token")
    # a pod that is leaving is not renewed, and forgotten
    running.terminating = True
    assert node.rotate_tokens(issued_at + 3 * ROTATE_AFTER) == []
    assert node.tokens.issued == {}


async def test_token_requests_the_api_refuses_say_why(plane: ControlPlane, tmp_path: Path) -> None:
    client = ControlClient(plane.endpoint)
    await client.apply([pod("web-1")])
    uid = await uid_of(client, "web-1")
    node = NodeAgent(NodeConfig(tmp_path, MeshNetwork.parse(), "iptables", plane.endpoint))
    with pytest.raises(ValueError, match=r"default/web-1 has no metadata.uid"):
        await node.tokens.issue("default", "web-1", None, "web")
    # another service account than the pod's, a pod that does not exist, a stale uid
    with pytest.raises(ApiError, match="runs as service account 'web'"):
        await node.api.request_token(("default", "web-1"), uid, "admin")
    with pytest.raises(ApiError, match='pods "nope" not found'):
        await node.api.request_token(("default", "nope"), "u", "web")
    with pytest.raises(ApiError, match="has uid"):
        await node.api.request_token(("default", "web-1"), "stale", "web")
    assert not (tmp_path / "pods").exists()

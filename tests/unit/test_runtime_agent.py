"""Unit tests for the node agent's pure parts: its configuration, the pods' identity tokens,
``weft node``'s flags. (Rollouts are the control plane's: tests/unit/test_workloads.py.)"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest

from weft.cli.main import main
from weft.control.tokenreview import ROTATE_AFTER
from weft.identity.tokens import TokenClaims, TokenKey
from weft.runtime.local import net
from weft.runtime.local.agent import NodeAgent, NodeConfig, _Pod
from weft.runtime.local.net import MeshNetwork
from weft.runtime.local.pod import (
    token_path,
    write_token,
)
from weft.runtime.local.state import MeshRecord, StateDir

TEMPLATE = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "w"}]}}


def test_node_config_validation(tmp_path: Path) -> None:
    network = MeshNetwork.parse()
    NodeConfig(tmp_path, network, "iptables-nft", "unix:/x")
    with pytest.raises(ValueError, match="drain_delay"):
        NodeConfig(tmp_path, network, "iptables-nft", "unix:/x", drain_delay=-1)
    with pytest.raises(ValueError, match="iptables must name"):
        NodeConfig(tmp_path, network, "rm", "unix:/x")
    with pytest.raises(ValueError, match="absolute"):
        NodeConfig(Path("rel"), network, "iptables", "unix:/x")
    with pytest.raises(ValueError, match="trust domain"):
        NodeConfig(tmp_path, network, "iptables", "unix:/x", trust_domain="Not A Domain")
    assert NodeConfig(tmp_path, network, "iptables", "unix:/x").trust_domain == "cluster.local"


# -- identity tokens ------------------------------------------------------------------------


def agent(state: Path) -> NodeAgent:
    config = NodeConfig(state, MeshNetwork.parse(), "iptables", f"unix:{state}/control.sock")
    return NodeAgent(config)


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="tokens are handed to the proxy's uid: needs root"
)


@needs_root
def test_agent_issues_a_token_bound_to_the_pod_object(tmp_path: Path) -> None:
    node = agent(tmp_path)
    path = node.issue_token("shop", "web-1", "uid-1", "web")
    assert path == tmp_path / "pods" / "shop" / "web-1" / "identity" / "token"
    st = path.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (net.PROXY_UID, 0o400)
    # the key is the mesh's (the control plane verifies with the same file)
    key = TokenKey.load_or_create(tmp_path / "identity" / "token.key")
    claims = key.verify(path.read_text())
    assert isinstance(claims, TokenClaims)
    assert (claims.namespace, claims.pod, claims.uid, claims.service_account) == (
        "shop",
        "web-1",
        "uid-1",
        "web",
    )
    # the same name with a new object (a new uid): a new token in the same place
    node.issue_token("shop", "web-1", "uid-2", "web")
    assert key.verify(path.read_text()).uid == "uid-2"


def test_running_pods_get_a_new_token_before_theirs_expires(tmp_path: Path) -> None:
    node = agent(tmp_path)
    key = TokenKey.load_or_create(tmp_path / "identity" / "token.key")
    running = _Pod("shop", "web-1", "uid-1", {}, ipaddress.IPv4Address("10.244.0.2"), "n")
    node._pods[running.key] = running
    path = node.issue_token("shop", "web-1", "uid-1", "web")
    first = key.verify(path.read_text()).issued_at
    assert node.rotate_tokens(first + ROTATE_AFTER - 60) == []
    assert node.rotate_tokens(first + ROTATE_AFTER + 1) == [("shop", "web-1")]
    renewed = key.verify(path.read_text())
    assert renewed.issued_at > first and (renewed.uid, renewed.service_account) == ("uid-1", "web")
    # a pod that is leaving is not renewed, and forgotten
    running.terminating = True
    assert node.rotate_tokens(renewed.issued_at + 2 * ROTATE_AFTER) == []
    assert node._tokens == {}


def test_no_token_without_a_uid(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"shop/web-1 has no metadata.uid"):
        agent(tmp_path).issue_token("shop", "web-1", None, "web")
    assert not (tmp_path / "pods").exists()


def test_a_damaged_token_key_is_an_error_not_a_token(tmp_path: Path) -> None:
    (tmp_path / "identity").mkdir(mode=0o700)
    (tmp_path / "identity" / "token.key").write_bytes(b"short")
    with pytest.raises(ValueError, match="token key"):
        agent(tmp_path).issue_token("shop", "web-1", "uid-1", "web")


def test_stale_tokens_are_removed_and_logs_kept(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    for name in ("web-1", "web-2"):
        write_token(token_path(state.pod_dir("shop", name)), "t", owner=None)
        state.container_log("shop", name, "web").write_text("log\n")
    state.pod_dir("shop", "job-1").mkdir(parents=True)  # a finished pod: logs only
    removed = agent(tmp_path).remove_stale_tokens()
    assert sorted(p.parent.parent.name for p in removed) == ["web-1", "web-2"]
    for name in ("web-1", "web-2"):
        assert not token_path(state.pod_dir("shop", name)).parent.exists()
        assert state.container_log("shop", name, "web").exists()
    assert agent(tmp_path).remove_stale_tokens() == []


def test_node_command_takes_the_trust_domain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    StateDir(tmp_path).write_record(
        MeshRecord(str(tmp_path), "10.244.0.0/16", "10.96.0.0/16", "iptables")
    )
    assert main(["node", "--state-dir", str(tmp_path), "--trust-domain", "Bad_Domain"]) == 2
    assert "trust domain 'Bad_Domain'" in capsys.readouterr().err

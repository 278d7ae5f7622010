"""Unit tests for the node agent's pure parts: its configuration, stale tokens, ``weft node``'s
flags. (Tokens from the API: tests/integration/test_node_tokens.py; rollouts are the control
plane's: tests/unit/test_workloads.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from weft.cli.main import main
from weft.runtime.local.agent import NodeAgent
from weft.runtime.local.net import MeshNetwork
from weft.runtime.local.nodeconfig import NodeConfig
from weft.runtime.local.podplan import token_path, write_token
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


def test_a_cluster_node_watches_only_its_own_pods(tmp_path: Path) -> None:
    from weft.control.kube.client import connect_endpoint

    config = NodeConfig(tmp_path, MeshNetwork.parse(), "iptables", "", kubeconfig="kc",
                        node_name="node-1", kube_listen=None)  # fmt: skip
    node = NodeAgent(config, client=connect_endpoint("127.0.0.1:1"))
    assert node.node is not None
    assert node.cluster.informers["Pod"].fields == {"spec.nodeName": "node-1"}
    assert "EndpointSlice" in node.cluster.informers  # for the service rules
    local = agent(tmp_path)  # the local mesh's agent: every pod, no Node
    assert local.node is None and local.cluster.informers["Pod"].fields is None


# -- identity tokens ------------------------------------------------------------------------


def agent(state: Path) -> NodeAgent:
    config = NodeConfig(state, MeshNetwork.parse(), "iptables", f"unix:{state}/control.sock")
    return NodeAgent(config)


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

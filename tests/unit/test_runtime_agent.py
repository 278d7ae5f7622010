"""Unit and property tests for the node agent's pure parts: pod names, template hashes, and the
rollout planner (maxSurge/maxUnavailable invariants over whole simulated rollouts); the pods'
identity tokens; ``weft node``'s flags."""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.cli.main import main
from weft.control.client import ControlClient
from weft.control.server import ControlConfig, ControlPlane
from weft.control.tokenreview import ROTATE_AFTER
from weft.identity.tokens import TokenClaims, TokenKey
from weft.resources.models import Pod, RollingUpdate
from weft.runtime.local import net
from weft.runtime.local.agent import (
    NodeAgent,
    NodeConfig,
    PodView,
    _Pod,
    plan_rollout,
    pod_name,
    rollout_limits,
    template_hash,
)
from weft.runtime.local.net import MeshNetwork
from weft.runtime.local.pod import (
    NetnsLauncher,
    NetnsProbes,
    PodRunner,
    pod_spec,
    token_path,
    write_token,
)
from weft.runtime.local.state import MeshRecord, StateDir

TEMPLATE = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "w"}]}}


def test_template_hash_is_stable_and_sensitive() -> None:
    h = template_hash(TEMPLATE)
    assert len(h) == 10 and set(h) <= set("bcdfghjklmnpqrstvwxz2456789")
    reordered = {"spec": {"containers": [{"name": "w"}]}, "metadata": {"labels": {"app": "web"}}}
    assert template_hash(reordered) == h
    changed = {**TEMPLATE, "spec": {"containers": [{"name": "w", "env": []}]}}
    assert template_hash(changed) != h


def test_pod_names() -> None:
    rng = random.Random(7)
    name = pod_name("web", "bcdfghjklm", rng)
    prefix, hash10, suffix = name.rsplit("-", 2)
    assert (prefix, hash10, len(suffix)) == ("web", "bcdfghjklm", 5)
    long = pod_name("a" * 60 + "-" + "b" * 100, "bcdfghjklm", rng)
    assert len(long) <= 63 and not long.split("-bcdfghjklm-")[0].endswith("-")
    assert pod_name("web", "h", random.Random(1)) == pod_name("web", "h", random.Random(1))


def test_rollout_limits_follow_kubernetes_rounding() -> None:
    default = RollingUpdate()  # 25% / 25%
    assert rollout_limits(default, 1) == (1, 0)
    assert rollout_limits(default, 3) == (1, 0)
    assert rollout_limits(default, 4) == (1, 1)
    assert rollout_limits(default, 10) == (3, 2)
    assert rollout_limits(RollingUpdate(0, 0), 3) == (1, 0)
    assert rollout_limits(RollingUpdate(2, 1), 3) == (2, 1)
    assert rollout_limits(default, 3, "Recreate") == (0, 3)


def v(name: str, h: str, ready: bool, seq: int, **kw: bool) -> PodView:
    return PodView(name=name, template_hash=h, ready=ready, seq=seq, **kw)


def test_fresh_deployment_creates_all_replicas() -> None:
    plan = plan_rollout(replicas=3, template_hash="h2", pods=[], max_surge=1, max_unavailable=0)
    assert (plan.create, plan.terminate) == (3, ())


def test_rolling_update_one_at_a_time_without_unavailability() -> None:
    old = [v("o1", "h1", True, 1), v("o2", "h1", True, 2)]
    plan = plan_rollout(replicas=2, template_hash="h2", pods=old, max_surge=1, max_unavailable=0)
    assert (plan.create, plan.terminate) == (1, ())
    # the new pod exists but is not ready: nothing else happens
    pods = [*old, v("n1", "h2", False, 3)]
    plan = plan_rollout(replicas=2, template_hash="h2", pods=pods, max_surge=1, max_unavailable=0)
    assert plan.idle
    # ready: one old pod goes (the newest of the old), and room for the next new pod opens once
    # it is gone
    pods = [*old, v("n1", "h2", True, 3)]
    plan = plan_rollout(replicas=2, template_hash="h2", pods=pods, max_surge=1, max_unavailable=0)
    assert (plan.create, plan.terminate) == (0, ("o2",))


def test_unready_old_pods_are_removed_first_and_at_once() -> None:
    pods = [v("o1", "h1", False, 1), v("o2", "h1", True, 2), v("o3", "h1", False, 3)]
    plan = plan_rollout(replicas=3, template_hash="h2", pods=pods, max_surge=1, max_unavailable=0)
    assert set(plan.terminate) == {"o1", "o3"}
    assert plan.create == 1


def test_scale_down_prefers_unready_then_newest() -> None:
    pods = [v("a", "h", True, 1), v("b", "h", False, 2), v("c", "h", True, 3), v("d", "h", True, 4)]
    plan = plan_rollout(replicas=2, template_hash="h", pods=pods, max_surge=1, max_unavailable=0)
    assert plan.terminate == ("b", "d") and plan.create == 0


def test_terminating_and_finished_pods_do_not_count() -> None:
    pods = [v("a", "h", True, 1, terminating=True), v("b", "h", False, 2, finished=True)]
    plan = plan_rollout(replicas=1, template_hash="h", pods=pods, max_surge=1, max_unavailable=0)
    assert (plan.create, plan.terminate) == (1, ())


def test_recreate_waits_for_old_pods_to_be_gone() -> None:
    pods = [v("o1", "h1", True, 1)]
    plan = plan_rollout(
        replicas=1, template_hash="h2", pods=pods, max_surge=0, max_unavailable=1, recreate=True
    )
    assert (plan.create, plan.terminate) == (0, ("o1",))
    leaving = [v("o1", "h1", False, 1, terminating=True)]
    plan = plan_rollout(
        replicas=1, template_hash="h2", pods=leaving, max_surge=0, max_unavailable=1, recreate=True
    )
    assert plan.idle
    plan = plan_rollout(
        replicas=1, template_hash="h2", pods=[], max_surge=0, max_unavailable=1, recreate=True
    )
    assert plan.create == 1


def test_plan_rejects_negative_numbers() -> None:
    with pytest.raises(ValueError):
        plan_rollout(replicas=-1, template_hash="h", pods=[], max_surge=1, max_unavailable=0)


@settings(max_examples=300, deadline=None)
@given(
    old_replicas=st.integers(0, 6),
    replicas=st.integers(0, 6),
    surge=st.integers(0, 3),
    unavailable=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_simulated_rollouts_converge_within_the_limits(
    old_replicas: int, replicas: int, surge: int, unavailable: int, seed: int
) -> None:
    """Drive the planner like the agent does (new pods become ready at random later steps,
    terminated pods leave at once) and check the invariants at every step."""
    if surge == 0 and unavailable == 0:
        surge = 1
    rng = random.Random(seed)
    seq = 0
    pods: list[PodView] = []
    for _ in range(old_replicas):
        seq += 1
        pods.append(v(f"p{seq}", "old", True, seq))
    min_ready = min(old_replicas, max(0, replicas - unavailable))
    for _step in range(200):
        plan = plan_rollout(
            replicas=replicas,
            template_hash="new",
            pods=pods,
            max_surge=surge,
            max_unavailable=unavailable,
        )
        doomed = set(plan.terminate)
        assert len(doomed) == len(plan.terminate)
        pods = [p for p in pods if p.name not in doomed]
        ready = sum(p.ready for p in pods)
        # never below the floor because of the planner (scale-downs excepted)
        if replicas >= old_replicas:
            assert ready >= min_ready
        for _ in range(plan.create):
            seq += 1
            pods.append(v(f"p{seq}", "new", False, seq))
        assert len(pods) <= max(old_replicas, replicas + surge)
        if plan.idle and all(p.ready for p in pods) and all(p.template_hash == "new" for p in pods):
            break
        # some not-ready pods become ready
        pods = [
            v(p.name, p.template_hash, True, p.seq) if not p.ready and rng.random() < 0.5 else p
            for p in pods
        ]
    assert len(pods) == replicas
    assert all(p.template_hash == "new" and p.ready for p in pods)


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
    return NodeAgent(config, ControlClient(config.control_endpoint))


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
    running = _Pod(
        "shop", "web-1", 1, {}, ipaddress.IPv4Address("10.244.0.2"), "n", None, None, uid="uid-1"
    )
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


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    # unix socket paths are limited to 107 bytes: keep the state directory's short
    state = tempfile.mkdtemp(prefix="weft-ag-", dir="/tmp")
    p = ControlPlane(ControlConfig(state_dir=state, scrape_interval=3600.0))
    await p.start()
    try:
        yield p
    finally:
        await p.stop(grace=1.0)
        shutil.rmtree(state, ignore_errors=True)


@needs_root
async def test_the_token_follows_the_uid_of_the_pod_object(
    plane: ControlPlane, tmp_path: Path
) -> None:
    client = ControlClient(plane.endpoint)
    config = NodeConfig(tmp_path, MeshNetwork.parse(), "iptables", plane.endpoint)
    node = NodeAgent(config, client)
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "default"},
        "spec": {"nodeName": "local", "containers": [{"name": "web", "command": ["true"]}]},
    }
    ip = ipaddress.IPv4Address("10.244.0.2")
    pod = _Pod("default", "web-1", 1, doc, ip, "weft-default-web-1", None, None)
    assert await node._apply_pod_object(pod)
    stored = await client.get("Pod", "default", "web-1")
    assert stored is not None and pod.uid == stored["metadata"]["uid"]
    spec = pod_spec(Pod.from_dict(doc), str(ip))
    pod.runner = PodRunner(
        spec,
        launcher=NetnsLauncher(None),
        probes=NetnsProbes(None, str(ip), None),
        log_dir=tmp_path,
        on_status=lambda status: None,
        proxy_argv=["true"],
        base_env={},
    )
    path = node.issue_token("default", "web-1", pod.uid, spec.service_account)
    key = TokenKey.load_or_create(tmp_path / "identity" / "token.key")
    first = key.verify(path.read_text())
    assert (first.uid, first.service_account) == (pod.uid, "default")
    # the store lost the object (a control plane restarted without its state): the agent applies
    # it again, the store gives it a new uid, and the proxy's token follows
    await client.delete([{"kind": "Pod", "metadata": {"name": "web-1", "namespace": "default"}}])
    await node._reapply(pod)
    stored = await client.get("Pod", "default", "web-1")
    assert stored is not None and stored["metadata"]["uid"] not in (None, first.uid)
    assert key.verify(path.read_text()).uid == stored["metadata"]["uid"]

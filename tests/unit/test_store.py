"""Unit and property tests for the control plane's store, IP allocation and persistence."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.control.events import Event
from weft.control.ipam import RangeFull, ServiceIPAllocator
from weft.control.persist import StateFile
from weft.control.store import Expired, NotFound, Store
from weft.resources import InvalidResources
from weft.testing.clock import FakeClock

T0 = 1_700_000_000.0


def make_store(**kw: Any) -> Store:
    counter = itertools.count(1)
    return Store(clock=FakeClock(T0), uid=lambda: f"uid-{next(counter)}", **kw)


def ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def svc(name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80}], **spec},
    }


def deploy(name: str, replicas: int = 1, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "command": ["sleep", "1000"]}]},
            },
        },
    }


def pod(name: str, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "command": ["sleep", "1000"]}]},
    }


def drain(store: Store, kinds: list[str] | None = None, rv: int | None = None) -> list[Event]:
    return store.watch(kinds, rv).take()


# -- apply ---------------------------------------------------------------------------------


def test_default_namespace_exists() -> None:
    store = make_store()
    assert store.get("Namespace", None, "default") is not None
    assert store.resource_version == 1


def test_create_assigns_metadata() -> None:
    store = make_store()
    (result,) = store.apply([deploy("web")])
    assert result.action == "created"
    meta = result.object["metadata"]
    assert meta["uid"] == "uid-2"
    assert meta["resourceVersion"] == "2"
    assert meta["generation"] == 1
    assert meta["creationTimestamp"] == "2023-11-14T22:13:20Z"
    assert meta["namespace"] == "default"
    assert store.get("Deployment", "default", "web") == result.object


def test_reapply_identical_is_unchanged_and_silent() -> None:
    store = make_store()
    store.apply([deploy("web")])
    watch = store.watch(["Deployment"])
    watch.take()
    (result,) = store.apply([deploy("web")])
    assert result.action == "unchanged"
    assert store.resource_version == 2
    assert watch.take() == []


def test_spec_change_bumps_generation_metadata_change_does_not() -> None:
    store = make_store()
    store.apply([deploy("web")])
    (r,) = store.apply([deploy("web", replicas=3)])
    assert r.action == "configured"
    assert r.object["metadata"]["generation"] == 2
    assert r.object["metadata"]["uid"] == "uid-2"
    labelled = deploy("web", replicas=3)
    labelled["metadata"]["labels"] = {"team": "a"}
    (r,) = store.apply([labelled])
    assert r.action == "configured"
    assert r.object["metadata"]["generation"] == 2
    assert r.object["metadata"]["resourceVersion"] == "4"


def test_apply_is_all_or_nothing() -> None:
    store = make_store()
    bad = svc("api")
    bad["spec"]["ports"][0]["port"] = 0
    with pytest.raises(InvalidResources) as info:
        store.apply([deploy("web"), bad], source="app.yaml")
    (err,) = info.value.errors
    assert (err.document, err.path, err.source) == (1, "spec.ports[0].port", "app.yaml")
    assert store.list("Deployment") == []
    assert store.resource_version == 1


def test_namespace_must_exist_or_come_in_the_same_batch() -> None:
    store = make_store()
    with pytest.raises(InvalidResources) as info:
        store.apply([svc("web", "shop")])
    assert info.value.errors[0].path == "metadata.namespace"
    assert 'namespace "shop" does not exist' in info.value.errors[0].message
    results = store.apply([svc("web", "shop"), ns("shop")])
    assert [r.action for r in results] == ["created", "created"]


def test_duplicates_in_one_batch_are_rejected() -> None:
    store = make_store()
    with pytest.raises(InvalidResources) as info:
        store.apply([deploy("web"), deploy("web", 2)])
    assert info.value.errors[0].document == 1
    assert "duplicate of document 1" in info.value.errors[0].message


def test_status_is_taken_on_create_only() -> None:
    store = make_store()
    p = pod("web-1")
    p["status"] = {"phase": "Running", "podIP": "10.244.0.3", "ready": True}
    (r,) = store.apply([p])
    assert r.object["status"]["podIP"] == "10.244.0.3"
    p["status"] = {"phase": "Failed"}
    p["metadata"]["labels"] = {"app": "web", "x": "y"}
    (r,) = store.apply([p])
    assert r.object["status"]["phase"] == "Running"


def test_new_pod_gets_pending_status() -> None:
    store = make_store()
    (r,) = store.apply([pod("web-1")])
    assert r.object["status"]["phase"] == "Pending"
    assert r.object["status"]["ready"] is False


# -- cluster IPs ---------------------------------------------------------------------------


def test_cluster_ips_allocated_and_stable() -> None:
    store = make_store()
    a, b = store.apply([svc("a"), svc("b")])
    assert a.object["spec"]["clusterIP"] == "10.96.0.2"
    assert b.object["spec"]["clusterIP"] == "10.96.0.3"
    changed = svc("a")
    changed["spec"]["ports"] = [{"port": 8080}]
    (a2,) = store.apply([changed])
    assert a2.action == "configured"
    assert a2.object["spec"]["clusterIP"] == "10.96.0.2"


def test_cluster_ip_is_immutable() -> None:
    store = make_store()
    store.apply([svc("a")])
    with pytest.raises(InvalidResources) as info:
        store.apply([svc("a", clusterIP="10.96.0.9")])
    assert info.value.errors[0].path == "spec.clusterIP"
    assert "field is immutable" in info.value.errors[0].message
    (same,) = store.apply([svc("a", clusterIP="10.96.0.2")])
    assert same.action == "unchanged"


def test_requested_cluster_ip_must_be_free_and_in_range() -> None:
    store = make_store()
    (r,) = store.apply([svc("a", clusterIP="10.96.3.4")])
    assert r.object["spec"]["clusterIP"] == "10.96.3.4"
    for ip, message in [
        ("10.96.3.4", "already allocated"),
        ("192.168.0.1", "not a usable address of the service range 10.96.0.0/16"),
        ("10.96.0.1", "not a usable address"),
        ("10.96.255.255", "not a usable address"),
    ]:
        with pytest.raises(InvalidResources) as info:
            store.apply([svc("b", clusterIP=ip)])
        assert message in info.value.errors[0].message, ip
    with pytest.raises(InvalidResources, match="already allocated"):
        store.apply([svc("b", clusterIP="10.96.9.9"), svc("c", clusterIP="10.96.9.9")])


def test_deleted_service_releases_its_ip() -> None:
    store = make_store()
    store.apply([svc("a"), svc("b")])
    store.delete([svc("a")])
    (c,) = store.apply([svc("c")])
    assert c.object["spec"]["clusterIP"] == "10.96.0.2"


def test_range_exhaustion_names_the_field() -> None:
    store = make_store(service_cidr="10.96.0.0/29")  # 8 addresses: .2 .. .6 usable
    store.apply([svc(f"s{i}") for i in range(5)])
    with pytest.raises(InvalidResources) as info:
        store.apply([svc("extra")])
    assert info.value.errors[0].path == "spec.clusterIP"
    assert "no free address left in the service range 10.96.0.0/29" in info.value.errors[0].message


def test_allocator_basics() -> None:
    a = ServiceIPAllocator("10.0.0.0/30")
    assert a.capacity == 1
    assert a.allocate() == "10.0.0.2"
    with pytest.raises(RangeFull):
        a.allocate()
    a.release("10.0.0.2")
    assert a.next_free() == "10.0.0.2"
    assert not a.reserve("10.0.1.2")
    with pytest.raises(ValueError, match="invalid service CIDR"):
        ServiceIPAllocator("10.0.0.1/16")
    with pytest.raises(ValueError, match="too small"):
        ServiceIPAllocator("10.0.0.0/31")
    assert (
        repr(ServiceIPAllocator("10.96.0.0/16")) == "<ServiceIPAllocator 10.96.0.0/16 used=0/65533>"
    )


# -- status and delete ---------------------------------------------------------------------


def test_put_status() -> None:
    store = make_store()
    store.apply([pod("web-1")])
    obj = store.put_status("Pod", "default", "web-1", {"phase": "Running", "ready": True})
    assert obj["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    assert obj["metadata"]["resourceVersion"] == "3"
    same = store.put_status("Pod", "default", "web-1", obj["status"])
    assert same["metadata"]["resourceVersion"] == "3"
    with pytest.raises(NotFound, match="Pod default/nope not found"):
        store.put_status("Pod", "default", "nope", {})
    with pytest.raises(InvalidResources) as info:
        store.put_status("Pod", "default", "web-1", {"phase": "Sleeping"})
    assert info.value.errors[0].path == "status.phase"


def test_delete_reports_not_found_and_validates_refs() -> None:
    store = make_store()
    store.apply([deploy("web")])
    results = store.delete(
        [
            {"kind": "Deployment", "metadata": {"name": "web"}},
            {"kind": "Deployment", "metadata": {"name": "gone"}},
        ]
    )
    assert [r.action for r in results] == ["deleted", "not found"]
    assert results[0].object["metadata"]["resourceVersion"] == "3"
    with pytest.raises(InvalidResources) as info:
        store.delete([{"kind": "Gadget", "metadata": {"name": "x"}}, {"kind": "Pod"}])
    assert [(e.document, e.path) for e in info.value.errors] == [(0, "kind"), (1, "metadata.name")]
    with pytest.raises(InvalidResources, match="may not be deleted"):
        store.delete([ns("default")])


def test_namespace_delete_cascades_and_leaves_running_pods_to_their_node() -> None:
    store = make_store()
    store.apply([ns("shop"), svc("web", "shop"), deploy("web", namespace="shop")])
    store.apply([pod("web-1", "shop"), pod("web-2", "shop"), svc("keep")])
    store.put_status("Pod", "shop", "web-1", {"phase": "Running", "hostIP": "10.0.0.1"})
    store.delete([ns("shop")])
    assert store.list("Service", "shop") == []
    assert store.list("Deployment", "shop") == []
    # the pod a node runs is terminating (its node drains and deletes it); the other is gone
    (left,) = store.list("Pod", "shop")
    assert left["metadata"]["name"] == "web-1" and left["metadata"]["deletionTimestamp"]
    assert store.get("Service", "default", "keep") is not None
    # the cluster IP went back to the pool
    (s,) = store.apply([svc("again")])
    assert s.object["spec"]["clusterIP"] == "10.96.0.2"


# -- watches -------------------------------------------------------------------------------


def test_watch_starts_with_state_then_bookmark_then_changes_in_order() -> None:
    store = make_store()
    store.apply([svc("a"), deploy("web")])
    w = store.watch(["Service", "Pod"])
    first = w.take()
    assert [(e.type, e.kind) for e in first] == [("ADDED", "Service"), ("BOOKMARK", "Bookmark")]
    assert first[-1].object["metadata"]["resourceVersion"] == "3"
    store.apply([pod("web-1"), deploy("web", 2)])
    store.put_status("Pod", "default", "web-1", {"phase": "Running"})
    store.delete([svc("a")])
    events = w.take()
    assert [(e.type, e.kind) for e in events] == [
        ("ADDED", "Pod"),
        ("MODIFIED", "Pod"),
        ("DELETED", "Service"),
    ]
    rvs = [int(e.object["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and len(set(rvs)) == len(rvs)
    assert rvs == [e.resource_version for e in events]


def test_watch_from_resource_version_replays_the_gap() -> None:
    store = make_store()
    store.apply([svc("a")])
    rv = store.resource_version
    store.apply([svc("b")])
    store.delete([svc("a")])
    events = drain(store, ["Service"], rv)
    assert [(e.type, e.object["metadata"]["name"]) for e in events[:-1]] == [
        ("ADDED", "b"),
        ("DELETED", "a"),
    ]
    assert events[-1].type == "BOOKMARK"
    assert drain(store, None, store.resource_version)[0].type == "BOOKMARK"


def test_watch_too_old_or_future_resource_version_expires() -> None:
    store = make_store(history=2)
    store.apply([svc("a")])
    store.apply([svc("b")])
    store.apply([svc("c")])
    with pytest.raises(Expired, match="too old or unknown"):
        store.watch(None, 1)
    with pytest.raises(Expired):
        store.watch(None, store.resource_version + 1)
    assert [e.type for e in drain(store, None, store.resource_version - 1)] == ["ADDED", "BOOKMARK"]


def test_slow_watcher_is_closed_not_waited_on() -> None:
    store = make_store(watch_limit=3)
    w = store.watch(["Service"])
    w.take()
    woken: list[int] = []
    w.notify = lambda: woken.append(1)
    store.apply([svc(f"s{i}") for i in range(5)])
    assert w.closed is not None and "fell behind" in w.closed
    assert len(w) == 3
    assert woken  # the consumer was told, and learns about the closing too
    assert "closed" in repr(w)
    store.apply([svc("later")])  # the store no longer pushes to it
    assert len(w) == 3


def test_unknown_watch_kind() -> None:
    with pytest.raises(ValueError, match="unknown kind 'Gadget'"):
        make_store().watch(["Gadget"])


def test_subscribers_see_every_event() -> None:
    store = make_store()
    seen: list[tuple[str, str]] = []
    unsubscribe = store.subscribe(lambda e: seen.append((e.type, e.kind)))
    store.apply([svc("a")])
    store.delete([svc("a")])
    unsubscribe()
    store.apply([svc("b")])
    assert seen == [("ADDED", "Service"), ("DELETED", "Service")]


# -- persistence ---------------------------------------------------------------------------


def test_snapshot_round_trip_keeps_ids_ips_and_counter(tmp_path: Path) -> None:
    commits: list[int] = []
    store = make_store(on_commit=lambda s: commits.append(s.resource_version))
    store.apply([ns("shop"), svc("web", "shop"), svc("api")])
    state = StateFile(tmp_path / "state" / "store.json")
    state.save(store.snapshot())
    assert commits == [4]

    restored = make_store()
    loaded = state.load()
    assert loaded is not None
    assert restored.restore(loaded) == []
    assert restored.resource_version == store.resource_version
    assert restored.list("Service") == store.list("Service")
    (new,) = restored.apply([svc("third")])
    assert new.object["spec"]["clusterIP"] == "10.96.0.4"  # .2 and .3 stay taken
    assert int(new.object["metadata"]["resourceVersion"]) == store.resource_version + 1
    # a watch from before the restart cannot be replayed
    with pytest.raises(Expired):
        restored.watch(None, 2)


def test_restore_skips_invalid_objects_and_keeps_out_of_range_ips() -> None:
    store = make_store()
    store.apply([svc("web")])
    snap = store.snapshot()
    snap["objects"].append({"kind": "Service", "metadata": {"name": "broken"}})
    other = make_store(service_cidr="10.100.0.0/16")
    warnings = other.restore(snap)
    assert any("no longer validates" in w for w in warnings)
    assert any("keeps clusterIP 10.96.0.2 outside the service range" in w for w in warnings)
    assert other.get("Service", "default", "web") is not None
    with pytest.raises(ValueError, match="unsupported state snapshot version"):
        other.restore({"version": 99})


def test_state_file_missing_and_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    state = StateFile(path)
    assert state.load() is None
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is corrupt"):
        state.load()
    assert (tmp_path / "store.json.corrupt").exists()
    assert not path.exists()
    state.save({"version": 1, "resourceVersion": 0, "objects": []})
    assert json.loads(path.read_text())["version"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# -- properties ----------------------------------------------------------------------------

ops = st.lists(
    st.tuples(st.sampled_from(["apply", "delete", "update"]), st.integers(0, 7)),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_cluster_ips_unique_and_stable_while_alive(sequence: list[tuple[str, int]]) -> None:
    store = make_store(service_cidr="10.96.0.0/28")
    watch = store.watch(None)
    ips: dict[str, str] = {}
    for op, i in sequence:
        name = f"s{i}"
        if op == "delete":
            store.delete([svc(name)])
            ips.pop(name, None)
            continue
        doc = svc(name)
        if op == "update":
            doc["spec"]["ports"] = [{"port": 81 + i}]
        (r,) = store.apply([doc])
        ip = r.object["spec"]["clusterIP"]
        if name in ips:
            assert ips[name] == ip
        ips[name] = ip
        assert len(set(ips.values())) == len(ips)
    live = {s["metadata"]["name"]: s["spec"]["clusterIP"] for s in store.list("Service")}
    assert live == ips
    rvs = [e.resource_version for e in watch.take() if e.type != "BOOKMARK"]
    assert rvs == sorted(rvs) and len(rvs) == len(set(rvs))
    # replaying the snapshot gives the same state
    other = make_store(service_cidr="10.96.0.0/28")
    other.restore(json.loads(json.dumps(store.snapshot())))
    assert other.snapshot() == store.snapshot()


def test_oversized_objects_and_batches_are_refused_whole() -> None:
    from weft.control.store import MAX_DOCUMENTS, MAX_OBJECT_BYTES

    store = make_store()
    big = svc("big")
    big["metadata"]["annotations"] = {"blob": "x" * MAX_OBJECT_BYTES}
    with pytest.raises(InvalidResources) as info:
        store.apply([svc("small"), big])
    assert "at most" in str(info.value) and "document 2" in str(info.value)
    assert store.get("Service", "default", "small") is None  # all or nothing
    many = [svc(f"s{i}") for i in range(MAX_DOCUMENTS + 1)]
    with pytest.raises(InvalidResources, match="apply them in parts"):
        store.apply(many)
    assert store.list("Service") == []


def test_the_database_keeps_what_changed_commit_by_commit(tmp_path: Path) -> None:
    from weft.control.persist import StateDb, migrate_json

    db = StateDb(tmp_path / "store.db")
    assert db.load() is None
    store = make_store(on_commit=lambda s: db.write(s.take_changes(), s.resource_version))
    store.apply([ns("shop"), svc("web", "shop"), svc("api")])
    store.delete([{"kind": "Service", "metadata": {"name": "api"}}])
    store.put_status("Service", "shop", "web", {"loadBalancer": {}})
    assert store.take_changes() == {}  # each commit took its own
    db.close()
    restored = make_store()
    loaded = StateDb(tmp_path / "store.db").load()
    assert loaded is not None and restored.restore(loaded) == []
    assert restored.resource_version == store.resource_version
    assert restored.list("Service") == store.list("Service")
    assert [s["metadata"]["name"] for s in restored.list("Service")] == ["web"]
    assert oct((tmp_path / "store.db").stat().st_mode & 0o777) == "0o600"
    # an older Weft's store.json is taken in once
    old = tmp_path / "old"
    StateFile(old / "store.json").save(store.snapshot())
    db2 = StateDb(old / "store.db")
    assert db2.load() is None
    snapshot = migrate_json(old / "store.json", db2)
    assert snapshot is not None and not (old / "store.json").exists()
    again = db2.load()
    assert again is not None and again["resourceVersion"] == store.resource_version
    assert len(again["objects"]) == len(store.snapshot()["objects"])


def test_a_corrupt_database_is_moved_aside(tmp_path: Path) -> None:
    from weft.control.persist import StateDb

    path = tmp_path / "store.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match="is corrupt"):
        StateDb(path).load()
    assert (tmp_path / "store.db.corrupt").exists() and not path.exists()
    assert StateDb(path).load() is None  # a fresh one

"""The informer's cache: lists, watch events, indexes (sans-I/O)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.core.informer import BadObject, Cache, Change, key_of, watch_error


def pod(name: str, rv: str, ip: str | None = None, ns: str = "default") -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
        "status": {},
    }
    if ip is not None:
        obj["status"]["podIP"] = ip
    return obj


def by_ip(obj: dict[str, Any]) -> list[str]:
    ip = obj["status"].get("podIP")
    return [ip] if ip else []


def test_a_list_fills_the_cache_and_says_what_appeared() -> None:
    cache = Cache({"ip": by_ip})
    changes = cache.replace([pod("a", "1", "10.0.0.1"), pod("b", "2")], "5")
    assert [(c.kind, c.key) for c in changes] == [("added", "default/a"), ("added", "default/b")]
    assert cache.resource_version == "5"
    assert cache.by_index("ip", "10.0.0.1") == [pod("a", "1", "10.0.0.1")]
    assert len(cache) == 2 and "default/b" in cache


def test_a_relist_finds_what_changed_and_what_was_deleted_unseen() -> None:
    cache = Cache({"ip": by_ip})
    cache.replace([pod("a", "1", "10.0.0.1"), pod("b", "2"), pod("c", "3")], "5")
    changes = cache.replace([pod("a", "1", "10.0.0.1"), pod("b", "7", "10.0.0.2")], "9")
    assert [(c.kind, c.key) for c in changes] == [
        ("updated", "default/b"),
        ("deleted", "default/c"),
    ]
    deleted = changes[1]
    assert deleted.new is None and deleted.obj == pod("c", "3")
    assert cache.by_index("ip", "10.0.0.2") == [pod("b", "7", "10.0.0.2")]
    assert cache.resource_version == "9"


def test_watch_events_update_the_cache_and_the_resource_version() -> None:
    cache = Cache({"ip": by_ip})
    cache.replace([], "1")
    added = cache.apply("ADDED", pod("a", "2", "10.0.0.1"))
    assert added == Change("added", "default/a", None, pod("a", "2", "10.0.0.1"))
    moved = cache.apply("MODIFIED", pod("a", "3", "10.0.0.9"))
    assert moved is not None and moved.kind == "updated"
    assert cache.by_index("ip", "10.0.0.1") == []
    assert cache.by_index("ip", "10.0.0.9") == [pod("a", "3", "10.0.0.9")]
    assert cache.index_values("ip") == ["10.0.0.9"]
    gone = cache.apply("DELETED", pod("a", "4", "10.0.0.9"))
    assert (
        gone is not None
        and gone.kind == "deleted"
        and gone.obj["metadata"]["resourceVersion"] == "4"
    )
    assert len(cache) == 0 and cache.index_values("ip") == []
    assert cache.resource_version == "4"


def test_bookmarks_move_the_resource_version_only() -> None:
    cache = Cache()
    cache.replace([pod("a", "2")], "2")
    bookmark = {"kind": "Pod", "metadata": {"resourceVersion": "40"}}
    assert cache.apply("BOOKMARK", bookmark) is None
    assert cache.resource_version == "40" and len(cache) == 1


def test_repeats_and_unknown_deletes_change_nothing() -> None:
    cache = Cache()
    cache.replace([pod("a", "2")], "2")
    assert cache.apply("MODIFIED", pod("a", "2")) is None
    assert cache.apply("DELETED", pod("zz", "3")) is None
    assert cache.resource_version == "3"


def test_resync_re_delivers_every_object_unchanged() -> None:
    cache = Cache()
    cache.replace([pod("a", "1"), pod("b", "2")], "2")
    changes = cache.resync()
    assert [(c.kind, c.key) for c in changes] == [
        ("updated", "default/a"),
        ("updated", "default/b"),
    ]
    assert all(c.old is c.new for c in changes)


def test_cluster_scoped_keys_and_bad_objects() -> None:
    assert key_of({"metadata": {"name": "node-1"}}) == "node-1"
    for bad in (
        {},
        {"metadata": {}},
        {"metadata": {"name": ""}},
        {"metadata": {"name": "x", "namespace": 3}},
    ):
        with pytest.raises(BadObject):
            key_of(bad)
    cache = Cache()
    # one bad item in a list is skipped, not fatal
    assert [c.key for c in cache.replace([{"metadata": {}}, pod("a", "1")], "1")] == ["default/a"]
    for kind, obj in (("ADDED", None), ("WHAT", pod("a", "1")), ("ERROR", pod("a", "1"))):
        with pytest.raises(BadObject):
            cache.apply(kind, obj)
    with pytest.raises(BadObject):
        cache.apply("ADDED", {"metadata": {"namespace": "x"}})


def test_an_index_that_cannot_read_an_object_leaves_it_out() -> None:
    cache = Cache({"ip": lambda o: [o["status"]["podIP"]]})
    cache.replace([pod("a", "1"), pod("b", "2", "10.0.0.2")], "2")
    assert cache.index_values("ip") == ["10.0.0.2"]


def test_watch_errors() -> None:
    gone = watch_error(
        {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "code": 410,
                "reason": "Expired",
                "message": "too old resource version: 5 (90)",
            },
        }
    )
    assert gone.gone and gone.code == 410 and "too old" in gone.message
    other = watch_error(
        {"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "boom"}}
    )
    assert not other.gone
    assert watch_error({"type": "ERROR", "object": "junk"}).code == 500


# -- property: whatever the server sends, the cache is what it said last, the changes replayed
# -- from the previous state give the new one, and the index is the brute-force answer

NAMES = st.sampled_from(["a", "b", "c", "d", "e"])
IPS = st.one_of(st.none(), st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]))

ops = st.lists(
    st.one_of(
        st.tuples(st.just("list"), st.lists(st.tuples(NAMES, IPS), max_size=5)),
        st.tuples(st.sampled_from(["ADDED", "MODIFIED", "DELETED"]), st.tuples(NAMES, IPS)),
        st.tuples(st.just("BOOKMARK"), st.none()),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_the_cache_follows_the_server_and_its_changes_replay(script: list[Any]) -> None:
    cache = Cache({"ip": by_ip})
    truth: dict[str, dict[str, Any]] = {}
    mirror: dict[str, dict[str, Any]] = {}  # rebuilt only from the returned changes
    for rv, (op, arg) in enumerate(script, 1):
        if op == "list":
            truth = {}
            for name, ip in arg:
                truth[f"default/{name}"] = pod(name, str(rv), ip)
            changes = cache.replace(list(truth.values()), str(rv))
        elif op == "BOOKMARK":
            mark = cache.apply("BOOKMARK", {"metadata": {"resourceVersion": str(rv)}})
            changes = [mark] if mark else []
        else:
            name, ip = arg
            obj = pod(name, str(rv), ip)
            if op == "DELETED":
                truth.pop(f"default/{name}", None)
            else:
                truth[f"default/{name}"] = obj
            change = cache.apply(op, obj)
            changes = [change] if change else []
        for c in changes:
            if c.kind == "deleted":
                del mirror[c.key]
            else:
                assert c.new is not None
                mirror[c.key] = c.new
        assert {k: cache.get(k) for k in cache} == truth == mirror
        assert cache.resource_version == str(rv)
        for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
            want = sorted(k for k, o in truth.items() if o["status"].get("podIP") == ip)
            assert [key_of(o) for o in cache.by_index("ip", ip)] == want

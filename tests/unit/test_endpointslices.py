"""The local EndpointSlice controller (kube-controller-manager's rules) and destinations read
from slices: several per Service, hand-written ones, and the index that keeps changes local."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from weft.control.destinations import DestinationService, resolve
from weft.control.state import CachedState, StateEvent
from weft.control.store import Store
from weft.discovery import Destination
from weft.resources.errors import InvalidResources
from weft.runtime.local.endpointslices import MANAGED_BY, MAX_PER_SLICE, desired_slices
from weft.testing.clock import FakeClock
from weft.testing.cluster import LocalCluster


def make_store() -> Store:
    counter = itertools.count(1)
    return Store(clock=FakeClock(1_700_000_000.0), uid=lambda: f"uid-{next(counter)}")


def svc(
    name: str = "web", ns: str = "default", selector: bool = True, **port: Any
) -> dict[str, Any]:
    p = {"name": "http", "port": 8080, "targetPort": "http", **port}
    spec: dict[str, Any] = {"ports": [p]}
    if selector:
        spec["selector"] = {"app": name}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def pod(
    name: str,
    ip: str,
    *,
    app: str = "web",
    ns: str = "default",
    ready: bool = True,
    port: int = 9000,
    ips: list[str] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running", "podIP": ip, "ready": ready}
    if ips:
        status["podIPs"] = [{"ip": i} for i in ips]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {
            "nodeName": "node-1",
            "containers": [
                {
                    "name": "app",
                    "command": ["x"],
                    "ports": [{"name": "http", "containerPort": port}],
                }
            ],
        },
        "status": status,
    }


def slices_of(store: Store, service: str = "web") -> list[dict[str, Any]]:
    return [
        s
        for s in store.list("EndpointSlice")
        if s["metadata"]["labels"].get("kubernetes.io/service-name") == service
    ]


def addresses(dest: Destination | None) -> list[str]:
    assert dest is not None
    return [f"{e.address[0]}:{e.address[1]}" for e in dest.endpoints]


def test_a_slice_per_port_mapping_and_family_with_kube_controller_manager_conditions() -> None:
    store = make_store()
    cluster = LocalCluster(store)
    leaving = pod("web-3", "10.244.0.4")
    leaving["status"]["terminating"] = True
    store.apply(
        [
            svc(),
            pod("web-1", "10.244.0.2"),
            pod("web-2", "10.244.0.3", port=9100),
            pod("web-4", "10.244.0.5", ready=False),
            leaving,
            pod("web-6", "10.244.0.7", ips=["10.244.0.7", "fd00::7"]),
            pod("api-1", "10.244.0.9", app="api"),
        ]
    )
    slices = slices_of(store)
    by_mapping = {(s["addressType"], s["ports"][0]["port"]): s for s in slices}
    assert sorted(by_mapping) == [("IPv4", 9000), ("IPv4", 9100), ("IPv6", 9000)]
    main = by_mapping[("IPv4", 9000)]
    assert main["metadata"]["labels"] == {
        "kubernetes.io/service-name": "web",
        "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
    }
    assert main["metadata"]["ownerReferences"][0]["kind"] == "Service"
    conditions = {e["targetRef"]["name"]: e["conditions"] for e in main["endpoints"]}
    assert conditions == {
        "web-1": {"ready": True, "serving": True, "terminating": False},
        "web-3": {"ready": False, "serving": True, "terminating": True},
        "web-4": {"ready": False, "serving": False, "terminating": False},
        "web-6": {"ready": True, "serving": True, "terminating": False},
    }
    assert main["endpoints"][0]["nodeName"] == "node-1"
    assert main["ports"] == [{"name": "http", "port": 9000, "protocol": "TCP"}]
    # the destination joins every slice: ready endpoints only, each at its slice's port
    assert addresses(resolve(cluster, "web:8080")) == [
        "10.244.0.2:9000",
        "10.244.0.3:9100",
        "10.244.0.7:9000",
        "fd00::7:9000",
    ]


def test_slices_follow_pods_and_services_and_are_put_back_when_changed_by_hand() -> None:
    store = make_store()
    LocalCluster(store)
    store.apply([svc(), pod("web-1", "10.244.0.2")])
    (first,) = slices_of(store)
    # a label change moves the pod out of the Service
    moved = pod("web-1", "10.244.0.2", app="other")
    store.apply([moved])
    (placeholder,) = slices_of(store)  # no endpoints: one empty slice, as kcm keeps
    assert placeholder["endpoints"] == [] and placeholder["ports"] == []
    store.apply([pod("web-1", "10.244.0.2")])
    (again,) = slices_of(store)
    # someone edits the controller's slice: it is put back
    tampered = {**again, "endpoints": []}
    store.apply([tampered])
    assert slices_of(store)[0]["endpoints"] == again["endpoints"]
    # the Service goes: its slices go with it
    store.delete([svc()])
    assert slices_of(store) == []
    assert first["metadata"]["name"] == again["metadata"]["name"]


def test_a_service_without_selector_keeps_its_hand_written_slices() -> None:
    store = make_store()
    cluster = LocalCluster(store)
    manual = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "ext-1", "labels": {"kubernetes.io/service-name": "ext"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80}],
        "endpoints": [
            {"addresses": ["192.0.2.10"]},  # no conditions: ready
            {"addresses": ["192.0.2.11"], "conditions": {"ready": False}},
        ],
    }
    second = {
        **manual,
        "metadata": {**manual["metadata"], "name": "ext-2"},
        "endpoints": [{"addresses": ["192.0.2.12"], "conditions": {"ready": True}}],
    }
    fqdn = {
        **manual,
        "metadata": {**manual["metadata"], "name": "ext-3"},
        "addressType": "FQDN",
        "endpoints": [{"addresses": ["db.example.com"]}],
    }
    store.apply([svc("ext", selector=False, targetPort=80), manual, second, fqdn])
    dest = resolve(cluster, "ext:8080")
    assert addresses(dest) == ["192.0.2.10:80", "192.0.2.12:80"]
    assert dest is not None and not dest.endpoints[0].meshed
    assert dict(dest.endpoints[0].labels) == {"namespace": "default"}
    assert len(slices_of(store, "ext")) == 3  # the controller left them alone


def test_large_services_are_split_into_slices_of_at_most_a_hundred() -> None:
    pods = [pod(f"web-{i:03d}", f"10.244.{i // 200}.{i % 200 + 1}") for i in range(250)]
    slices = desired_slices(svc() | {"metadata": {"name": "web", "namespace": "default"}}, pods)
    assert slices is not None
    assert [len(s["endpoints"]) for s in slices] == [MAX_PER_SLICE, MAX_PER_SLICE, 50]
    assert len({s["metadata"]["name"] for s in slices}) == 3
    assert desired_slices(svc(selector=False), pods) is None


def test_a_bad_slice_is_refused_with_the_field_named() -> None:
    store = make_store()
    bad = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "x"},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["fd00::1"], "conditions": {"ready": "yes"}}],
        "ports": [{"port": 70000}],
    }
    try:
        store.apply([bad])
    except InvalidResources as e:
        text = str(e)
    else:
        raise AssertionError("accepted")
    assert "endpoints[0].addresses[0]" in text and "IPv4" in text
    assert "endpoints[0].conditions.ready" in text
    assert "ports[0].port" in text


def test_a_change_recomputes_only_the_subscribers_of_what_changed() -> None:
    store = make_store()
    cluster = LocalCluster(store)
    names = [f"svc{i}" for i in range(20)]
    store.apply(
        [svc(n) for n in names]
        + [pod(f"{n}-1", f"10.244.0.{i + 2}", app=n) for i, n in enumerate(names)]
    )
    service = DestinationService(cluster)
    for n in names:
        for _ in range(3):
            service.subscribe(f"{n}:8080", lambda d: None)
    before = service.recomputes
    store.apply([pod("svc7-2", "10.244.1.2", app="svc7")])
    # the new pod, then its slice: svc7's one shared translator, nothing else
    assert 1 <= service.recomputes - before <= 2


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    state = CachedState()
    seen: list[StateEvent] = []

    def broken(event: StateEvent) -> None:
        raise RuntimeError("boom")

    state.subscribe(broken)
    state.subscribe(seen.append)
    state.apply(
        "Pod",
        "ADDED",
        pod("web-1", "10.244.0.2")
        | {"metadata": {"name": "web-1", "namespace": "default", "resourceVersion": "1"}},
    )
    state.apply("Pod", "ADDED", {"metadata": {}})  # no name: logged, skipped
    assert [e.type for e in seen] == ["ADDED"]
    assert [p["metadata"]["name"] for p in state.by_index("Pod", "ip", "10.244.0.2")] == ["web-1"]


# -- the dependency index never misses a change ------------------------------------------------

_ops = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "pod",
                "unready",
                "relabel",
                "mesh",
                "delete-pod",
                "service",
                "delete-service",
                "route",
            ]
        ),
        st.integers(0, 3),  # pod or service number
        st.integers(0, 2),  # the service a pod belongs to
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(_ops)
def test_subscribed_snapshots_equal_a_fresh_resolution_after_any_changes(ops: list[Any]) -> None:
    store = make_store()
    cluster = LocalCluster(store)
    service = DestinationService(cluster)
    store.apply([svc("s0")])
    ip = store.get("Service", "default", "s0")["spec"]["clusterIP"]  # type: ignore[index]
    targets = ["s0:8080", "s1:8080", "s2.default:8080", f"{ip}:8080", "10.244.0.3:9000"]
    latest: dict[str, Destination | None] = {}
    for t in targets:
        current, _ = service.subscribe(t, lambda d, t=t: latest.__setitem__(t, d))
        latest[t] = current
    for op, n, s in ops:
        name, ip_ = f"p{n}", f"10.244.0.{n + 2}"
        if op == "pod":
            store.apply([pod(name, ip_, app=f"s{s}")])
        elif op == "unready":
            store.apply([pod(name, ip_, app=f"s{s}", ready=False)])
        elif op == "mesh":  # only the pod changes (its proxy), not its slice
            meshed = pod(name, ip_, app=f"s{s}")
            meshed["metadata"]["annotations"] = {"weft.io/proxy-admin": f"{ip_}:4191"}
            store.apply([meshed])
        elif op == "relabel":
            store.apply([pod(name, ip_, app=f"s{(s + 1) % 3}")])
        elif op == "delete-pod":
            store.delete([{"kind": "Pod", "metadata": {"name": name}}])
        elif op == "service":
            store.apply([svc(f"s{s}")])
        elif op == "delete-service":
            store.delete([{"kind": "Service", "metadata": {"name": f"s{s}"}}])
        elif op == "route":
            store.apply(
                [
                    {
                        "apiVersion": "gateway.networking.k8s.io/v1",
                        "kind": "HTTPRoute",
                        "metadata": {"name": f"r{n}"},
                        "spec": {
                            "parentRefs": [
                                {"name": f"s{s}", "kind": "Service", "group": "core", "port": 8080}
                            ],
                            "rules": [{"timeouts": {"request": f"{n + 1}s"}}],
                        },
                    }
                ]
            )
    for t in targets:
        assert latest[t] == resolve(cluster, t), t


def test_malformed_objects_from_an_api_never_break_a_subscription() -> None:
    """What a misbehaving API server or a hand-written object could send: skipped, logged, and
    the snapshot is what the well-formed objects say."""
    state = CachedState()
    service = DestinationService(state)
    seen: list[Destination | None] = []
    current, _ = service.subscribe("web.default:8080", seen.append)
    assert current is None
    good_svc = {
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", "resourceVersion": "1"},
        "spec": {"ports": [{"name": "http", "port": 8080}]},
    }
    bad = [
        (
            "Service",
            {
                "kind": "Service",
                "metadata": {"name": "odd", "namespace": "default", "resourceVersion": "2"},
            },
        ),
        ("Service", {"kind": "Service", "metadata": {"namespace": "default"}}),
        (
            "EndpointSlice",
            {
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "web-x",
                    "namespace": "default",
                    "resourceVersion": "3",
                    "labels": {"kubernetes.io/service-name": "web"},
                },
                "addressType": "IPv4",
                "endpoints": "garbage",
                "ports": [{"name": "http", "port": "x"}],
            },
        ),
        (
            "Pod",
            {
                "kind": "Pod",
                "metadata": {"name": "p", "namespace": "default", "resourceVersion": "4"},
                "status": "garbage",
            },
        ),
    ]
    for kind, obj in bad:
        state.apply(kind, "ADDED", obj)
    state.apply("Service", "ADDED", good_svc)
    state.apply(
        "EndpointSlice",
        "ADDED",
        {
            "kind": "EndpointSlice",
            "metadata": {
                "name": "web-y",
                "namespace": "default",
                "resourceVersion": "5",
                "labels": {"kubernetes.io/service-name": "web"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 9000}],
            "endpoints": [{"addresses": ["10.244.0.9"]}, "garbage", {"addresses": []}],
        },
    )
    assert addresses(seen[-1]) == ["10.244.0.9:9000"]
    assert service.resolve("odd.default:8080") is None

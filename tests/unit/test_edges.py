"""Unit and property tests for edges (``weft edges``): which workload connections are mutual TLS,
from synthetic scraped outbound metrics; the API group and the CLI's table."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.cli.commands.edges import message, table
from weft.control.edges import EdgesApi
from weft.control.httpserver import HttpError, Request
from weft.control.metrics import Stats, parse_metrics
from weft.control.store import Store
from weft.testing.clock import FakeClock

T0 = 1_700_000_000.0
API_ID = "api.prod.serviceaccount.identity.cluster.local"
WEB_ID = "web.shop.serviceaccount.identity.cluster.local"


def labels(**kv: str) -> str:
    return ",".join(f'{k}="{v}"' for k, v in kv.items())


def dst(pod: str, deploy: str = "api", ns: str = "prod", tls: str = "true", **extra: str) -> str:
    """The outbound labels of a series to ``pod`` as a client proxy writes them."""
    kv = {"direction": "outbound", "dst_namespace": ns, "dst_pod": pod,
          "dst_deployment": deploy, "target_addr": "10.244.0.9:80", "tls": tls}  # fmt: skip
    if tls == "true":
        kv["server_id"] = f"{deploy}.{ns}.serviceaccount.identity.cluster.local"
    elif tls == "no_identity":
        kv["no_tls_reason"] = "not_provided_by_service_discovery"
    kv.update(extra)
    return labels(**kv)


def http(lab: str, n: int) -> str:
    return f"request_total{{{lab}}} {n}"


def tcp(lab: str, opens: int, open_now: int = 0) -> str:
    return (
        f'tcp_open_total{{{lab},peer="dst"}} {opens}\n'
        f'tcp_open_connections{{{lab},peer="dst"}} {open_now}'
    )


def text(*lines: str) -> str:
    return (
        "# TYPE request_total counter\n# TYPE tcp_open_total counter\n"
        "# TYPE tcp_open_connections gauge\n" + "\n".join(lines) + "\n"
    )


class World:
    """A store with client pods (deployment web in shop, SA web) and Stats on a fake clock."""

    def __init__(self) -> None:
        self.clock = FakeClock(T0)
        n = itertools.count(1)
        self.store = Store(clock=self.clock, uid=lambda: f"uid-{next(n)}")
        self.stats = Stats(self.store, clock=self.clock)
        self.store.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}])

    def pod(
        self, name: str, *, deploy: str | None = "web", ns: str = "shop", sa: str = "web"
    ) -> dict[str, Any]:
        annotations = {"weft.io/proxy-admin": "127.0.0.1:4191"}
        if deploy is not None:
            annotations["weft.io/deployment"] = deploy
        (r,) = self.store.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": name, "namespace": ns, "annotations": annotations},
                    "spec": {
                        "serviceAccountName": sa,
                        "containers": [{"name": "a", "command": ["x"]}],
                    },
                    "status": {"phase": "Running", "podIP": "10.244.0.2", "ready": True},
                }
            ]
        )
        self.clock.advance(100)  # older than the windows: its first scrape is a baseline
        return dict(r.object)

    def scrape(self, pod: dict[str, Any], metrics: str) -> None:
        self.stats.record(pod, self.clock(), parse_metrics(metrics))

    def baseline_then(self, pod: dict[str, Any], before: str, after: str, dt: float = 30) -> None:
        """A scrape now and one ``dt`` seconds later (inside a 60 s window)."""
        self.scrape(pod, before)
        self.clock.advance(dt)
        self.scrape(pod, after)


# -- parsing ---------------------------------------------------------------------------------


def test_parse_keeps_outbound_series_to_known_pods_only() -> None:
    values = parse_metrics(
        text(
            http(dst("api-0"), 5),
            tcp(dst("api-0"), 2, 1),
            # no destination pod: cannot be an edge
            'request_total{direction="outbound",authority="example.com:80",tls="disabled"} 9',
            # the outbound listener's accepted connections (peer src): not an edge, not stat's
            'tcp_open_connections{direction="outbound",peer="src",dst_pod="x",dst_namespace="y"} 3',
        )
    )
    kept = sorted((name, dict(lab).get("peer")) for name, lab in values)
    assert kept == [("request_total", None), ("tcp_open_connections", "dst"),
                    ("tcp_open_total", "dst")]  # fmt: skip


def test_outbound_edge_series_do_not_change_stat() -> None:
    w = World()
    p = w.pod("web-0")
    w.baseline_then(p, text(tcp(dst("api-0"), 0, 4)), text(tcp(dst("api-0"), 8, 4)))
    (row,) = w.stats.stat("pod", "web-0", "shop", 60)
    assert row["tcp_open_connections"] == 0  # inbound connections only
    assert row["requests"] == 0


# -- edges -----------------------------------------------------------------------------------


def test_secured_http_edge_names_both_identities() -> None:
    w = World()
    p = w.pod("web-0")
    w.baseline_then(p, text(http(dst("api-0"), 10)), text(http(dst("api-0"), 25)))
    (row,) = w.stats.edges("deploy", None, 60)
    assert row == {
        "src": "web", "src_namespace": "shop", "dst": "api", "dst_namespace": "prod",
        "secured": True, "client_id": WEB_ID, "server_id": API_ID,
        "requests": 15, "connections": 0, "open_connections": 0, "unsecured": 0, "reasons": [],
    }  # fmt: skip
    (pod_row,) = w.stats.edges("pod", None, 60)
    assert (pod_row["src"], pod_row["dst"], pod_row["secured"]) == ("web-0", "api-0", True)


def test_plaintext_edge_says_why() -> None:
    w = World()
    p = w.pod("web-0")
    lab = dst("api-0", tls="no_identity")
    w.baseline_then(p, text(http(lab, 0)), text(http(lab, 4)))
    (row,) = w.stats.edges("deploy", "shop", 60)
    assert row["secured"] is False
    assert row["reasons"] == ["no_identity (not_provided_by_service_discovery)"]
    assert row["unsecured"] == 4
    assert row["server_id"] is None
    assert row["client_id"] == WEB_ID  # the source proxy had an identity, the server none


def test_source_without_identity_is_disabled_and_has_no_client_id() -> None:
    w = World()
    p = w.pod("web-0")
    lab = dst("api-0", tls="disabled")
    w.baseline_then(p, text(tcp(lab, 1)), text(tcp(lab, 3)))
    (row,) = w.stats.edges("deploy", None, 60)
    assert (row["secured"], row["client_id"], row["connections"]) == (False, None, 2)
    assert row["reasons"] == ["disabled (the source proxy has no identity)"]


def test_mixed_edge_is_not_secured() -> None:
    w = World()
    a, b = w.pod("web-0"), w.pod("web-1")
    secure, plain = dst("api-0"), dst("api-1", tls="no_identity")
    w.scrape(a, text(http(secure, 0)))
    w.scrape(b, text(http(plain, 0)))
    w.clock.advance(30)
    w.scrape(a, text(http(secure, 99)))
    w.scrape(b, text(http(plain, 1)))
    (row,) = w.stats.edges("deploy", None, 60)
    assert (row["secured"], row["requests"], row["unsecured"]) == (False, 100, 1)
    assert row["server_id"] == API_ID
    pods = w.stats.edges("pod", None, 60)
    assert [(r["src"], r["dst"], r["secured"]) for r in pods] == [
        ("web-0", "api-0", True),
        ("web-1", "api-1", False),
    ]


def test_tcp_only_edges_count_opens_and_long_lived_connections() -> None:
    w = World()
    p = w.pod("web-0")
    db = dst("db-0", deploy="db", ns="data")
    cache = dst("cache-0", deploy="cache", ns="data", tls="no_identity")
    # db: one connection opened before the window and still open, nothing new: still traffic;
    # cache: two connections opened inside the window, closed again
    w.baseline_then(
        p,
        text(tcp(db, 1, 1), tcp(cache, 0, 0)),
        text(tcp(db, 1, 1), tcp(cache, 2, 0)),
    )
    rows = {r["dst"]: r for r in w.stats.edges("deploy", None, 60)}
    assert rows["db"]["secured"] is True
    assert (rows["db"]["connections"], rows["db"]["open_connections"]) == (0, 1)
    assert rows["db"]["server_id"] == "db.data.serviceaccount.identity.cluster.local"
    assert rows["cache"]["secured"] is False
    assert (rows["cache"]["connections"], rows["cache"]["open_connections"]) == (2, 0)


def test_only_traffic_inside_the_window_makes_an_edge() -> None:
    w = World()
    p = w.pod("web-0")
    plain = dst("api-0", tls="no_identity")
    w.scrape(p, text(http(dst("api-0"), 0), http(plain, 0)))
    w.clock.advance(10)
    w.scrape(p, text(http(dst("api-0"), 5), http(plain, 3)))  # plaintext, long ago
    w.clock.advance(120)
    w.scrape(p, text(http(dst("api-0"), 9), http(plain, 3)))  # since: mutual TLS only
    (row,) = w.stats.edges("deploy", None, 60)
    assert (row["secured"], row["requests"]) == (True, 4)
    (old,) = w.stats.edges("deploy", None, 300)
    assert (old["secured"], old["requests"], old["unsecured"]) == (False, 12, 3)
    w.clock.advance(120)
    w.scrape(p, text(http(dst("api-0"), 9), http(plain, 3)))
    assert w.stats.edges("deploy", None, 60) == []  # no traffic in the last minute


def test_namespace_filter_matches_source_or_destination() -> None:
    w = World()
    p = w.pod("web-0")
    w.baseline_then(p, text(http(dst("api-0"), 0)), text(http(dst("api-0"), 1)))
    assert len(w.stats.edges("deploy", "shop", 60)) == 1
    assert len(w.stats.edges("deploy", "prod", 60)) == 1
    assert w.stats.edges("deploy", "other", 60) == []


def test_deploy_edges_need_deployments_on_both_ends() -> None:
    w = World()
    bare = w.pod("job-0", deploy=None, sa="default")
    lab = labels(direction="outbound", dst_namespace="prod", dst_pod="solo", tls="true",
                 server_id=API_ID)  # fmt: skip
    w.baseline_then(bare, text(http(dst("api-0"), 0), http(lab, 0)),
                    text(http(dst("api-0"), 2), http(lab, 3)))  # fmt: skip
    assert w.stats.edges("deploy", None, 60) == []
    rows = w.stats.edges("pod", None, 60)
    assert [(r["src"], r["dst"], r["client_id"]) for r in rows] == [
        ("job-0", "api-0", "default.shop.serviceaccount.identity.cluster.local"),
        ("job-0", "solo", "default.shop.serviceaccount.identity.cluster.local"),
    ]


def test_trust_domain_and_bad_kind() -> None:
    w = World()
    p = w.pod("web-0")
    w.baseline_then(p, text(http(dst("api-0"), 0)), text(http(dst("api-0"), 1)))
    (row,) = w.stats.edges("deploy", None, 60, trust_domain="example.org")
    assert row["client_id"] == "web.shop.serviceaccount.identity.example.org"
    with pytest.raises(ValueError, match="kind must be deploy or pod"):
        w.stats.edges("svc", None, 60)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["true", "no_identity", "disabled"]),
            st.integers(0, 50),  # requests before
            st.integers(0, 50),  # requests added in the window
        ),
        min_size=1,
        max_size=6,
    )
)
def test_secured_iff_every_active_series_is_mutual_tls(
    series: list[tuple[str, int, int]],
) -> None:
    w = World()
    p = w.pod("web-0")
    labs = [dst("api-0", tls=tls, authority=f"a{i}") for i, (tls, _, _) in enumerate(series)]
    w.scrape(p, text(*(http(lab, b) for lab, (_, b, _) in zip(labs, series, strict=True))))
    w.clock.advance(30)
    w.scrape(p, text(*(http(lab, b + d) for lab, (_, b, d) in zip(labs, series, strict=True))))
    rows = w.stats.edges("deploy", None, 60)
    active = [(tls, d) for tls, _, d in series if d > 0]
    if not active:
        assert rows == []
        return
    (row,) = rows
    assert row["requests"] == sum(d for _, d in active)
    assert row["secured"] == all(tls == "true" for tls, _ in active)
    assert row["unsecured"] == sum(d for tls, d in active if tls != "true")
    assert (row["client_id"] is None) == all(tls == "disabled" for tls, _ in active)


# -- API group -------------------------------------------------------------------------------


def request(query: dict[str, str], method: str = "GET") -> Request:
    return Request(method=method, path="/api/v1/edges", query=query, headers={}, body=b"")


async def test_api_answers_rows_and_rejects_bad_queries() -> None:
    w = World()
    p = w.pod("web-0")
    w.baseline_then(p, text(http(dst("api-0"), 0)), text(http(dst("api-0"), 6)))
    api = EdgesApi(w.stats)
    resp = await api.handle(request({"kind": "deployments", "namespace": "shop"}), [])
    body = json.loads(resp.body)
    assert resp.status == 200 and body["window"] == 60
    assert [(r["src"], r["dst"], r["secured"]) for r in body["rows"]] == [("web", "api", True)]
    for query, status in [
        ({"kind": "svc"}, 400),
        ({}, 400),
        ({"kind": "pod", "window": "0"}, 400),
        ({"kind": "pod", "window": "nan"}, 400),
        ({"kind": "pod", "window": "1e9"}, 400),
        ({"kind": "pod", "window": "soon"}, 400),
    ]:
        with pytest.raises(HttpError) as err:
            await api.handle(request(query), [])
        assert err.value.status == status, query
    with pytest.raises(HttpError) as err:
        await api.handle(request({"kind": "pod"}, method="POST"), [])
    assert err.value.status == 405
    with pytest.raises(HttpError) as err:
        await api.handle(request({"kind": "pod"}), ["extra"])
    assert err.value.status == 404
    with pytest.raises(ValueError, match="invalid trust domain"):
        EdgesApi(w.stats, trust_domain="Not A Domain")


# -- CLI table -------------------------------------------------------------------------------


def test_table_columns_wide_and_msg() -> None:
    ok = {"src": "web", "dst": "api", "src_namespace": "shop", "dst_namespace": "prod",
          "secured": True, "client_id": WEB_ID, "server_id": API_ID, "reasons": []}  # fmt: skip
    reasons = ["disabled (the source proxy has no identity)", "no_identity (x)"]
    bad = {**ok, "dst": "db", "secured": False, "server_id": None, "reasons": reasons}
    columns, cells = table([ok], wide=False)
    assert columns == ["SRC", "DST", "SRC_NS", "DST_NS", "SECURED"]
    assert cells == [["web", "api", "shop", "prod", "√"]]
    columns, cells = table([ok, bad], wide=True)
    assert columns == ["SRC", "DST", "SRC_NS", "DST_NS", "SECURED", "CLIENT_ID", "SERVER_ID",
                       "MSG"]  # fmt: skip
    assert cells[0] == ["web", "api", "shop", "prod", "√", WEB_ID, API_ID, ""]
    assert cells[1] == ["web", "db", "shop", "prod", "✗", WEB_ID, "-",
                        "disabled (the source proxy has no identity); no_identity (x)"]  # fmt: skip
    assert message({"secured": False}) == "not mutual TLS"

"""Unit and property tests for weft.core.authz: inbound policy decisions."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.core.authz import (
    DEFAULT_ROUTE,
    NO_ROUTE_VERDICT,
    PROBE_AUTHORIZATION,
    PROBE_VERDICT,
    InboundAuthz,
    IPAddress,
    Verdict,
    parse_ip,
)
from weft.inbound import Authorization, InboundPolicy, InboundRoute, Network
from weft.policy import PathMatch, RouteMatch, ValueMatch

TD = "serviceaccount.identity.cluster.local"
WEB = f"web.shop.{TD}"
API = f"api.shop.{TD}"
OTHER = f"api.other.{TD}"


def no_headers(name: bytes) -> bytes | None:
    return None


def authz(**fields: Any) -> InboundAuthz:
    return InboundAuthz(InboundPolicy(port=8080, **fields))


def allows(a: Authorization, ip: str | IPAddress | None, client_id: str | None) -> bool:
    return authz(authorizations=(a,)).connection(ip, client_id).allowed


# -- identities ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "identity", "expected"),
    [
        (WEB, WEB, True),
        (WEB, API, False),
        ("*", WEB, True),
        ("*", "anything", True),
        (f"*.shop.{TD}", WEB, True),
        (f"*.shop.{TD}", f"a.b.shop.{TD}", True),  # one or more whole labels
        (f"*.shop.{TD}", f"shop.{TD}", False),  # not the suffix itself
        (f"*.shop.{TD}", f"xshop.{TD}", False),  # whole labels only
        (f"*.shop.{TD}", f".shop.{TD}", False),  # empty labels are not labels
        (f"*.shop.{TD}", f"a..shop.{TD}", False),
        (f"*.shop.{TD}", f".a.shop.{TD}", False),
        (f"*.shop.{TD}", OTHER, False),
        (f"*.{TD}", OTHER, True),
        (f"web.*.{TD}", WEB, False),  # only a leading "*." is a wildcard
        (WEB, WEB.upper(), False),  # identities compare as issued
    ],
)
def test_identity_patterns(pattern: str, identity: str, expected: bool) -> None:
    a = Authorization("authorizationpolicy", "p", authenticated=True, identities=(pattern,))
    assert allows(a, "10.0.0.1", identity) is expected


def test_authenticated_without_identities_needs_any_identity() -> None:
    a = Authorization("default", "all-authenticated", authenticated=True)
    assert allows(a, "10.0.0.1", WEB)
    assert not allows(a, "10.0.0.1", None)
    assert not allows(a, "10.0.0.1", "")  # an empty identity is no identity


def test_identities_are_ignored_when_not_authenticated() -> None:
    a = Authorization("authorizationpolicy", "p", identities=(WEB,))
    assert allows(a, "10.0.0.1", None)
    assert allows(a, "10.0.0.1", API)


# -- networks -----------------------------------------------------------------------------------


def test_networks_with_exceptions() -> None:
    a = Authorization(
        "authorizationpolicy",
        "p",
        networks=(
            Network("10.0.0.0/8", ("10.1.0.0/16", "10.2.3.4/32")),
            Network("2001:db8::/32", ("2001:db8:1::/48",)),
        ),
    )
    assert allows(a, "10.9.9.9", None)
    assert not allows(a, "10.1.2.3", None)
    assert not allows(a, "10.2.3.4", None)
    assert allows(a, "10.2.3.5", None)
    assert not allows(a, "192.168.0.1", None)
    assert allows(a, "2001:db8:2::1", None)
    assert not allows(a, "2001:db8:1::1", None)
    assert not allows(a, "fd00::1", None)
    assert allows(a, "::ffff:10.9.9.9", None)  # IPv4-mapped: its IPv4 address
    assert not allows(a, "::ffff:10.1.0.1", None)
    assert allows(a, ipaddress.ip_address("10.3.0.1"), None)


def test_unparseable_addresses_are_in_no_network_but_networkless_rules_still_apply() -> None:
    restricted = Authorization("authorizationpolicy", "p", networks=(Network("0.0.0.0/0"),))
    anywhere = Authorization("default", "all-unauthenticated")
    for ip in ("", "not-an-ip", "10.0.0", None):
        assert not allows(restricted, ip, None)
        assert allows(anywhere, ip, None)
    assert parse_ip("fe80::1%eth0") is not None
    assert parse_ip("::ffff:1.2.3.4") == ipaddress.ip_address("1.2.3.4")
    assert parse_ip(1234) is None  # type: ignore[arg-type]


def test_host_bits_in_a_cidr_are_tolerated() -> None:
    a = Authorization("authorizationpolicy", "p", networks=(Network("10.1.2.3/16"),))
    assert allows(a, "10.1.200.1", None)


def test_networks_and_identity_must_both_hold() -> None:
    a = Authorization(
        "authorizationpolicy",
        "p",
        networks=(Network("10.0.0.0/8"),),
        authenticated=True,
        identities=(WEB,),
    )
    assert allows(a, "10.0.0.1", WEB)
    assert not allows(a, "192.168.0.1", WEB)
    assert not allows(a, "10.0.0.1", API)
    assert not allows(a, "10.0.0.1", None)


# -- connections --------------------------------------------------------------------------------


def test_connection_verdicts_report_the_first_allowing_authorization() -> None:
    web_only = Authorization("authorizationpolicy", "web", authenticated=True, identities=(WEB,))
    anyone = Authorization("authorizationpolicy", "anyone")
    a = authz(authorizations=(web_only, anyone))
    v = a.connection("10.0.0.1", WEB)
    assert (v.allowed, v.authorization, v.audit, v.route, v.status) == (
        True,
        web_only,
        False,
        None,
        None,
    )
    assert a.connection("10.0.0.1", API).authorization is anyone


def test_no_authorization_denies_with_403_and_audit_allows() -> None:
    v = authz().connection("10.0.0.1", WEB)
    assert (v.allowed, v.authorization, v.audit, v.status) == (False, None, False, 403)
    v = authz(audit=True).connection("10.0.0.1", WEB)
    assert (v.allowed, v.authorization, v.audit, v.status) == (True, None, True, None)


def test_routes_do_not_apply_to_connections() -> None:
    route = InboundRoute("shop/r", authorizations=(Authorization("authorizationpolicy", "r"),))
    assert not authz(routes=(route,)).connection("10.0.0.1", None).allowed


# -- HTTP ---------------------------------------------------------------------------------------


def test_without_routes_every_request_gets_one_constant_verdict() -> None:
    anyone = Authorization("default", "all-unauthenticated")
    conn = authz(authorizations=(anyone,)).http("10.0.0.1", None)
    assert conn.constant is not None
    assert conn.constant.route == DEFAULT_ROUTE
    assert conn.check(b"POST", b"/x", b"", no_headers) is conn.constant
    assert conn.check(b"GET", b"/y", b"a=1", no_headers) is conn.constant


def test_routes_match_and_unmatched_requests_get_404() -> None:
    server_wide = Authorization("authorizationpolicy", "server", authenticated=True)
    books_only = Authorization("authorizationpolicy", "books-anyone")
    books = InboundRoute(
        "shop/books",
        matches=(RouteMatch(path=PathMatch("PathPrefix", "/books")),),
        authorizations=(books_only,),
    )
    admin = InboundRoute(
        "shop/admin",
        matches=(RouteMatch(path=PathMatch("Exact", "/admin"), method="POST"),),
    )
    a = authz(authorizations=(server_wide,), routes=(books, admin))
    assert a.has_routes
    anon = a.http("10.0.0.1", None)
    assert anon.constant is None
    v = anon.check(b"GET", b"/books/1", b"", no_headers)
    assert (v.allowed, v.authorization, v.route) == (True, books_only, "shop/books")
    assert anon.check(b"GET", b"/books/2", b"", no_headers) is v  # kept per route
    v = anon.check(b"POST", b"/admin", b"", no_headers)
    assert (v.allowed, v.route, v.status) == (False, "shop/admin", 403)
    assert anon.check(b"GET", b"/admin", b"", no_headers) is NO_ROUTE_VERDICT
    assert NO_ROUTE_VERDICT.status == 404
    meshed = a.http("10.0.0.1", WEB)  # the server-wide authorization covers every route
    v = meshed.check(b"POST", b"/admin", b"", no_headers)
    assert (v.allowed, v.authorization) == (True, server_wide)
    assert meshed.check(b"GET", b"/books", b"", no_headers).authorization is server_wide


def test_no_route_is_404_even_when_auditing() -> None:
    route = InboundRoute("shop/r", matches=(RouteMatch(path=PathMatch("Exact", "/r")),))
    conn = authz(routes=(route,), audit=True).http("10.0.0.1", None)
    assert conn.check(b"GET", b"/other", b"", no_headers) is NO_ROUTE_VERDICT
    v = conn.check(b"GET", b"/r", b"", no_headers)
    assert (v.allowed, v.audit, v.authorization, v.route) == (True, True, None, "shop/r")


def test_routes_match_headers_and_query_through_the_route_table() -> None:
    route = InboundRoute(
        "shop/canary",
        matches=(
            RouteMatch(
                headers=(ValueMatch("x-canary", "1"),),
                query_params=(ValueMatch("v", "2"),),
            ),
        ),
        authorizations=(Authorization("authorizationpolicy", "p"),),
    )
    conn = authz(routes=(route,)).http("10.0.0.1", None)

    def canary(name: bytes) -> bytes | None:
        return b"1" if name == b"x-canary" else None

    assert conn.check(b"GET", b"/", b"v=2", canary).allowed
    assert conn.check(b"GET", b"/", b"v=3", canary) is NO_ROUTE_VERDICT
    assert conn.check(b"GET", b"/", b"v=2", no_headers) is NO_ROUTE_VERDICT


def test_probes_are_always_allowed_for_get_and_head_on_their_exact_path() -> None:
    route = InboundRoute("shop/r", matches=(RouteMatch(path=PathMatch("Exact", "/r")),))
    for a in (authz(probes=("/ready", "/live")), authz(probes=("/ready",), routes=(route,))):
        conn = a.http("10.0.0.1", None)
        assert conn.check(b"GET", b"/ready", b"", no_headers) is PROBE_VERDICT
        assert conn.check(b"HEAD", b"/ready", b"verbose=1", no_headers) is PROBE_VERDICT
        assert not conn.check(b"POST", b"/ready", b"", no_headers).allowed
        assert not conn.check(b"GET", b"/ready/x", b"", no_headers).allowed
        assert not conn.check(b"GET", b"/READY", b"", no_headers).allowed
    assert PROBE_VERDICT.authorization is PROBE_AUTHORIZATION
    assert PROBE_VERDICT.route == "probe"


def test_verdicts_compare_by_identity() -> None:
    a = Verdict(True, None, False, None, None)
    b = Verdict(True, None, False, None, None)
    assert a != b
    assert len({a, b, a}) == 2


# -- bad policies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"authorizations": (Authorization("a", "p", networks=(Network("10.0.0.0/33"),)),)},
            r"authorizations\[0\] \(a 'p'\) networks\[0\] cidr: invalid CIDR '10.0.0.0/33'",
        ),
        (
            {"authorizations": (Authorization("a", "p", networks=(Network("::/0", ("x",)),)),)},
            r"exceptions\[0\]: invalid CIDR 'x'",
        ),
        (
            {"authorizations": (Authorization("a", "p", networks=(Network(5),)),)},  # type: ignore[arg-type]
            "expected a CIDR string",
        ),
        (
            {"authorizations": (Authorization("a", "p", networks=(Network("::/0", "::1"),)),)},  # type: ignore[arg-type]
            "exceptions must be a list",
        ),
        (
            {"authorizations": (Authorization("a", "p", identities=WEB),)},  # type: ignore[arg-type]
            "identities must be a list of strings",
        ),
        (
            {"authorizations": (Authorization("a", "p", networks="10.0.0.0/8"),)},  # type: ignore[arg-type]
            "networks must be a list",
        ),
        (
            {"authorizations": (Authorization("a", "p", authenticated="yes"),)},  # type: ignore[arg-type]
            "authenticated must be true or false",
        ),
        ({"authorizations": ("p",)}, "expected an authorization"),
        ({"authorizations": (Authorization(1, "p"),)}, "kind and name must be strings"),  # type: ignore[arg-type]
        ({"audit": "yes"}, "audit must be true or false"),
        ({"probes": "/ready"}, "probes must be a list"),
        ({"probes": (5,)}, "probes must be a list of paths"),
        ({"probes": ("/\udcff",)}, "probes"),
        ({"server": 3}, "server must be a string"),
        ({"routes": ("r",)}, r"routes\[0\]: expected a route"),
        (
            {"routes": (InboundRoute("r", matches=(RouteMatch(method=5),)),)},  # type: ignore[arg-type]
            r"routes\[0\] \(r\) matches\[0\]: method must be a string",
        ),
        (
            {"routes": (InboundRoute("r", matches=({"path": "/"},)),)},  # type: ignore[arg-type]
            "expected a route match",
        ),
        (
            {"routes": (InboundRoute("r", matches=(RouteMatch(headers=(("a", "b"),)),)),)},  # type: ignore[arg-type]
            r"headers\[0\]: expected a name and a value",
        ),
        (
            {
                "routes": (
                    InboundRoute(
                        "r", matches=(RouteMatch(path=PathMatch("RegularExpression", "(")),)
                    ),
                )
            },
            "invalid regular expression",
        ),
        (
            {
                "routes": (
                    InboundRoute("r", authorizations=(Authorization("a", "p", networks=("x",)),)),  # type: ignore[arg-type]
                )
            },
            r"routes\[0\] authorizations\[0\] \(a 'p'\) networks\[0\]: expected a network",
        ),
    ],
)
def test_bad_policies_are_refused_with_the_field_named(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        authz(**fields)


def test_not_a_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="expected an InboundPolicy"):
        InboundAuthz({"port": 80})  # type: ignore[arg-type]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    data=st.fixed_dictionaries(
        {"port": st.integers(1, 65535)},
        optional={
            "server": json_values,
            "authorizations": st.lists(
                st.fixed_dictionaries(
                    {"kind": json_values, "name": json_values},
                    optional={
                        "networks": st.lists(
                            st.fixed_dictionaries(
                                {"cidr": json_values}, optional={"exceptions": json_values}
                            ),
                            max_size=2,
                        ),
                        "authenticated": json_values,
                        "identities": json_values,
                    },
                ),
                max_size=2,
            ),
            "routes": st.lists(
                st.fixed_dictionaries(
                    {"name": json_values},
                    optional={"matches": json_values, "authorizations": json_values},
                ),
                max_size=2,
            ),
            "probes": json_values,
            "audit": json_values,
        },
    )
)
def test_any_policy_that_parses_compiles_or_is_refused_with_a_value_error(
    data: dict[str, Any],
) -> None:
    try:
        policy = InboundPolicy.from_json(data)
    except (ValueError, TypeError, AttributeError):
        return  # the model's own parsing refused it
    try:
        compiled = InboundAuthz(policy)
    except ValueError:
        return
    compiled.connection("10.0.0.1", WEB)
    compiled.http("10.0.0.1", None).check(b"GET", b"/", b"", no_headers)


# -- properties: the decision equals a reference evaluation of the model ------------------------

CIDRS = [
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.3/32",
    "192.168.0.0/24",
    "0.0.0.0/0",
    "::/0",
    "fd00::/8",
    "2001:db8::/32",
]
PATTERNS = ["*", WEB, API, f"*.shop.{TD}", f"*.{TD}", OTHER, f"*.b.shop.{TD}"]
IPS = [
    "10.1.2.3",
    "10.1.9.9",
    "10.2.0.1",
    "192.168.0.7",
    "172.16.0.1",
    "fd00::1",
    "2001:db8::5",
    "::ffff:10.1.2.3",
    "not-an-ip",
    "",
]
IDS = [None, "", WEB, API, OTHER, f"a.b.shop.{TD}", f"shop.{TD}", f".shop.{TD}", f"x..shop.{TD}"]
PATHS = ["/", "/a", "/b", "/healthz"]

networks = st.builds(
    Network,
    st.sampled_from(CIDRS),
    st.lists(st.sampled_from(CIDRS), max_size=2).map(tuple),
)
authorizations = st.builds(
    Authorization,
    kind=st.sampled_from(["authorizationpolicy", "default"]),
    name=st.sampled_from(["p1", "p2", "p3"]),
    networks=st.lists(networks, max_size=2).map(tuple),
    authenticated=st.booleans(),
    identities=st.lists(st.sampled_from(PATTERNS), max_size=3).map(tuple),
)
matches = st.sampled_from(
    [(), (RouteMatch(path=PathMatch("PathPrefix", "/")),)]
    + [(RouteMatch(path=PathMatch("Exact", p)),) for p in PATHS]
)
routes = st.builds(
    InboundRoute,
    name=st.sampled_from(["shop/r1", "shop/r2", "shop/r3"]),
    matches=matches,
    authorizations=st.lists(authorizations, max_size=2).map(tuple),
)
policies = st.builds(
    InboundPolicy,
    port=st.just(8080),
    server=st.sampled_from([None, "shop/web"]),
    authorizations=st.lists(authorizations, max_size=3).map(tuple),
    routes=st.lists(routes, max_size=3).map(tuple),
    probes=st.lists(st.sampled_from(PATHS), max_size=2).map(tuple),
    audit=st.booleans(),
)
requests = st.tuples(st.sampled_from([b"GET", b"HEAD", b"POST"]), st.sampled_from(PATHS))


def ref_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def ref_identity(pattern: str, identity: str) -> bool:
    if pattern == "*":
        return True
    if not pattern.startswith("*."):
        return pattern == identity
    rest = pattern[2:].split(".")
    labels = identity.split(".")
    head = labels[: len(labels) - len(rest)]
    return len(labels) > len(rest) and labels[-len(rest) :] == rest and all(head)


def ref_allows(a: Authorization, ip_text: str, client_id: str | None) -> bool:
    ip = ref_ip(ip_text)
    if a.networks:
        inside = any(
            ip is not None
            and ip in ipaddress.ip_network(n.cidr, strict=False)
            and not any(ip in ipaddress.ip_network(e, strict=False) for e in n.exceptions)
            for n in a.networks
        )
        if not inside:
            return False
    if not a.authenticated:
        return True
    if not client_id:
        return False
    return not a.identities or any(ref_identity(p, client_id) for p in a.identities)


def ref_route(policy: InboundPolicy, path: str) -> InboundRoute | None:
    for r in policy.routes:  # an Exact match wins; the earlier route among equals
        if any(m.path is not None and m.path.type == "Exact" and m.path.value == path
               for m in r.matches):  # fmt: skip
            return r
    for r in policy.routes:
        if not r.matches or any(m.path is not None and m.path.type == "PathPrefix"
                                for m in r.matches):  # fmt: skip
            return r
    return None


Outcome = tuple[bool, Authorization | None, bool, str | None, int | None]


def ref_decide(
    policy: InboundPolicy, ip: str, client_id: str | None, request: tuple[bytes, str] | None
) -> Outcome:
    auths = list(policy.authorizations)
    route: str | None = None
    if request is not None:
        method, path = request
        if method in (b"GET", b"HEAD") and path in policy.probes:
            return (True, PROBE_AUTHORIZATION, False, "probe", None)
        route = DEFAULT_ROUTE
        if policy.routes:
            matched = ref_route(policy, path)
            if matched is None:
                return (False, None, False, None, 404)
            route = matched.name
            auths += matched.authorizations
    for a in auths:
        if ref_allows(a, ip, client_id):
            return (True, a, False, route, None)
    if policy.audit:
        return (True, None, True, route, None)
    return (False, None, False, route, 403)


def outcome(v: Verdict) -> Outcome:
    return (v.allowed, v.authorization, v.audit, v.route, v.status)


@settings(max_examples=500, deadline=None)
@given(
    policy=policies,
    ip=st.sampled_from(IPS),
    client_id=st.sampled_from(IDS),
    reqs=st.lists(requests, min_size=1, max_size=6),
)
def test_decisions_equal_the_reference_evaluation(
    policy: InboundPolicy, ip: str, client_id: str | None, reqs: list[tuple[bytes, str]]
) -> None:
    compiled = InboundAuthz(policy)
    assert outcome(compiled.connection(ip, client_id)) == ref_decide(policy, ip, client_id, None)
    conn = compiled.http(ip, client_id)
    for method, path in reqs:
        got = outcome(conn.check(method, path.encode(), b"", no_headers))
        assert got == ref_decide(policy, ip, client_id, (method, path))


REGEX_ROUTE = InboundRoute(
    "shop/re",
    matches=(
        RouteMatch(
            path=PathMatch("RegularExpression", "/[a-z]+"),
            headers=(ValueMatch("x-a", "b.*", "RegularExpression"),),
            query_params=(ValueMatch("q", "1"),),
        ),
    ),
)


def with_regex_route(policy: InboundPolicy) -> InboundPolicy:
    return InboundPolicy(
        port=policy.port,
        authorizations=policy.authorizations,
        routes=(*policy.routes, REGEX_ROUTE),
        probes=policy.probes,
        audit=policy.audit,
    )


@settings(max_examples=300, deadline=None)
@given(
    policy=st.one_of(policies, policies.map(with_regex_route)),
    ip=st.one_of(st.text(max_size=40), st.sampled_from(IPS)),
    client_id=st.one_of(st.none(), st.text(max_size=60)),
    method=st.binary(max_size=10),
    path=st.binary(max_size=30),
    query=st.binary(max_size=30),
    header=st.one_of(st.none(), st.binary(max_size=20)),
)
def test_decisions_never_raise_on_any_input(
    policy: InboundPolicy,
    ip: str,
    client_id: str | None,
    method: bytes,
    path: bytes,
    query: bytes,
    header: bytes | None,
) -> None:
    compiled = InboundAuthz(policy)
    assert isinstance(compiled.connection(ip, client_id).allowed, bool)
    conn = compiled.http(ip, client_id)
    v = conn.check(method, path, query, lambda name: header)
    assert v.allowed is (v.status is None)

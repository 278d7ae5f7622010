"""Unit and property tests for weft.core.routes: Gateway API matching and precedence, traffic
split, header modifiers and redirects."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.core.routes import (
    Matched,
    RouteTable,
    WeightedPicker,
    apply_header_modifier,
    redirect_location,
)
from weft.policy import (
    Backend,
    HeaderModifier,
    PathMatch,
    Redirect,
    Route,
    RouteMatch,
    Rule,
    ServicePolicy,
    ValueMatch,
)


def hdrs(**values: str) -> Callable[[bytes], bytes | None]:
    table = {k.replace("_", "-").lower().encode(): v.encode() for k, v in values.items()}
    return table.get


def prefix(value: str) -> RouteMatch:
    return RouteMatch(path=PathMatch("PathPrefix", value))


def exact(value: str) -> RouteMatch:
    return RouteMatch(path=PathMatch("Exact", value))


def regex(value: str) -> RouteMatch:
    return RouteMatch(path=PathMatch("RegularExpression", value))


def table(*routes: Route) -> RouteTable:
    return RouteTable(ServicePolicy(routes=routes), rng=random.Random(1))


def one_route(*rules: Rule, name: str = "ns/r") -> RouteTable:
    return table(Route(name, rules))


def rule_of(*matches: RouteMatch, tag: str = "") -> Rule:
    return Rule(matches=matches, backends=(Backend(tag or "x:80"),))


def which(t: RouteTable, path: str, method: str = "GET", query: str = "", **headers: str) -> str:
    m = t.match(method.encode(), path.encode(), query.encode(), hdrs(**headers))
    if m is None:
        return "-"
    assert m.picker is not None
    picked = m.picker.pick()
    assert picked is not None
    return picked.target


# -- path matching ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "path", "expected"),
    [
        ("/foo", "/foo", True),
        ("/foo", "/foo/", True),
        ("/foo", "/foo/bar", True),
        ("/foo", "/foobar", False),
        ("/foo", "/fo", False),
        ("/foo", "/", False),
        ("/foo/", "/foo", True),  # a trailing "/" of the prefix is ignored
        ("/foo/", "/foo/bar", True),
        ("/foo/", "/foobar", False),
        ("/", "/", True),
        ("/", "/anything/at/all", True),
        ("/foo/bar", "/foo/bar/baz", True),
        ("/foo/bar", "/foo/barbaz", False),
        ("/foo", "/FOO", False),  # case-sensitive
    ],
)
def test_path_prefix_matches_whole_elements(value: str, path: str, expected: bool) -> None:
    t = one_route(rule_of(prefix(value)))
    assert (which(t, path) != "-") is expected


def test_exact_and_regex_paths() -> None:
    t = one_route(rule_of(exact("/foo"), tag="e"), rule_of(regex(r"/items/[0-9]+"), tag="r"))
    assert which(t, "/foo") == "e"
    assert which(t, "/foo/") == "-"
    assert which(t, "/items/42") == "r"
    assert which(t, "/items/42/x") == "-"  # the whole path must match
    assert which(t, "/x/items/42") == "-"


def test_rule_without_matches_matches_everything() -> None:
    t = one_route(Rule(backends=(Backend("all"),)))
    m = t.match(b"DELETE", b"/whatever", b"a=b", hdrs())
    assert m is not None and m.match is None and m.rule_index == 0
    assert which(t, "/") == "all"


def test_no_policy_or_no_routes_matches_nothing() -> None:
    assert RouteTable(None).match(b"GET", b"/", b"", hdrs()) is None
    assert RouteTable(ServicePolicy()).match(b"GET", b"/", b"", hdrs()) is None
    assert len(RouteTable(None)) == 0
    assert one_route(rule_of(prefix("/a"))).match(b"GET", b"/b", b"", hdrs()) is None


# -- precedence -------------------------------------------------------------------------------


def test_exact_beats_longer_prefix_and_longest_prefix_wins() -> None:
    t = one_route(
        rule_of(prefix("/"), tag="root"),
        rule_of(prefix("/api/v1/users"), tag="long"),
        rule_of(prefix("/api"), tag="short"),
        rule_of(exact("/api"), tag="exact"),
    )
    assert which(t, "/api") == "exact"
    assert which(t, "/api/v1/users/7") == "long"
    assert which(t, "/api/v2") == "short"
    assert which(t, "/other") == "root"


def test_regex_ranks_between_exact_and_prefix() -> None:
    t = one_route(
        rule_of(prefix("/users/admin"), tag="prefix"),
        rule_of(regex("/users/.*"), tag="regex"),
        rule_of(exact("/users/me"), tag="exact"),
    )
    assert which(t, "/users/me") == "exact"
    assert which(t, "/users/admin") == "regex"
    assert which(t, "/usersx") == "-"


def test_method_then_headers_then_query_params() -> None:
    t = one_route(
        rule_of(prefix("/p"), tag="plain"),
        rule_of(RouteMatch(path=PathMatch("PathPrefix", "/p"), query_params=(
            ValueMatch("a", "1"), ValueMatch("b", "2"), ValueMatch("c", "3"))), tag="3q"),
        rule_of(RouteMatch(path=PathMatch("PathPrefix", "/p"), headers=(
            ValueMatch("x", "1"), ValueMatch("y", "1"))), tag="2h"),
        rule_of(RouteMatch(path=PathMatch("PathPrefix", "/p"), headers=(ValueMatch("x", "1"),),
                           query_params=(ValueMatch("a", "1"),)), tag="1h1q"),
        rule_of(RouteMatch(path=PathMatch("PathPrefix", "/p"), method="POST"), tag="post"),
    )  # fmt: skip
    assert which(t, "/p", "POST", "a=1&b=2&c=3", x="1", y="1") == "post"
    assert which(t, "/p", "GET", "a=1&b=2&c=3", x="1", y="1") == "2h"
    assert which(t, "/p", "GET", "a=1&b=2&c=3", x="1") == "1h1q"
    assert which(t, "/p", "GET", "a=1&b=2&c=3") == "3q"
    assert which(t, "/p", "GET", "a=1") == "plain"
    # ... but the path comes first: a longer prefix beats a method match.
    t2 = one_route(
        rule_of(RouteMatch(path=PathMatch("PathPrefix", "/p"), method="GET"), tag="method"),
        rule_of(prefix("/p/q"), tag="longer"),
    )
    assert which(t2, "/p/q") == "longer"


def test_ties_go_to_the_earlier_route_then_rule_then_match() -> None:
    t = table(
        Route("ns/b-older", (rule_of(prefix("/x"), tag="older"),)),
        Route("ns/a-newer", (rule_of(prefix("/x"), tag="newer"),)),
    )
    assert which(t, "/x") == "older"
    r = Rule(matches=(prefix("/x"), exact("/y"), prefix("/x")), backends=(Backend("first"),))
    t2 = one_route(r, rule_of(prefix("/x"), tag="second"))
    m = t2.match(b"GET", b"/x/1", b"", hdrs())
    assert m is not None and m.rule_index == 0 and m.match is r.matches[0]
    assert m.route_name == "ns/r"


def test_header_matching() -> None:
    t = one_route(
        rule_of(RouteMatch(headers=(ValueMatch("X-Canary", "1"),)), tag="canary"),
        rule_of(RouteMatch(headers=(ValueMatch("x-ver", "v[0-9]+", "RegularExpression"),)),
                tag="ver"),
        rule_of(prefix("/"), tag="stable"),
    )  # fmt: skip
    assert which(t, "/", x_canary="1") == "canary"  # names are case-insensitive
    assert which(t, "/", x_canary="11") == "stable"
    assert which(t, "/", x_ver="v12") == "ver"
    assert which(t, "/", x_ver="v12a") == "stable"  # regexes match whole values
    assert which(t, "/", x_ver="V12") == "stable"  # values are case-sensitive


def test_only_the_first_matcher_of_a_name_counts() -> None:
    t = one_route(
        rule_of(RouteMatch(headers=(ValueMatch("x", "1"), ValueMatch("X", "2"))), tag="h"),
        rule_of(RouteMatch(query_params=(ValueMatch("q", "1"), ValueMatch("q", "2"))), tag="q"),
        rule_of(RouteMatch(headers=(ValueMatch("z", "1"),)), tag="z"),
    )
    assert which(t, "/", x="1") == "h"
    assert which(t, "/", "GET", "q=1") == "q"
    # "h" counts one header (its duplicate is ignored): a tie with "z", the earlier rule wins.
    assert which(t, "/", x="1", z="1") == "h"


def test_query_params_are_decoded_first_value_and_case_sensitive_names() -> None:
    t = one_route(
        rule_of(RouteMatch(query_params=(ValueMatch("name", "a b/c"),)), tag="dec"),
        rule_of(RouteMatch(query_params=(ValueMatch("v", "1"),)), tag="first"),
        rule_of(RouteMatch(query_params=(ValueMatch("id", "[0-9]+", "RegularExpression"),)),
                tag="re"),
    )  # fmt: skip
    assert which(t, "/", "GET", "name=a%20b%2Fc") == "dec"
    assert which(t, "/", "GET", "name=a+b/c") == "dec"
    assert which(t, "/", "GET", "v=1&v=2") == "first"
    assert which(t, "/", "GET", "v=2&v=1") == "-"
    assert which(t, "/", "GET", "V=1") == "-"
    assert which(t, "/", "GET", "&&id=42&") == "re"
    assert which(t, "/", "GET", "id=") == "-"
    assert which(t, "/", "GET", "id") == "-"


def test_hostnames_precedence_and_filtering() -> None:
    t = table(
        Route("ns/any", (rule_of(exact("/x"), tag="any"),)),
        Route("ns/wild", (rule_of(prefix("/"), tag="wild"),), hostnames=("*.example.com",)),
        Route("ns/exact", (rule_of(prefix("/"), tag="exact"),), hostnames=("api.example.com",)),
        Route("ns/other", (rule_of(prefix("/"), tag="other"),), hostnames=("other.org",)),
    )
    # Hostname precedence comes before path precedence.
    assert which(t, "/x", host="api.example.com:8080") == "exact"
    assert which(t, "/x", host="API.Example.COM") == "exact"
    assert which(t, "/x", host="www.example.com") == "wild"
    assert which(t, "/x", host="a.b.example.com") == "wild"
    assert which(t, "/x", host="example.com") == "any"  # "*." needs a label
    assert which(t, "/x", host="unknown") == "any"
    assert which(t, "/y", host="unknown") == "-"
    assert which(t, "/x") == "any"  # no Host header
    assert which(t, "/y", host="other.org") == "other"


def test_invalid_regex_names_route_rule_and_pattern() -> None:
    with pytest.raises(ValueError, match=r"'ns/bad' rule 1 match 0 path.*'\(unclosed'"):
        one_route(rule_of(prefix("/")), rule_of(regex("(unclosed")), name="ns/bad")
    with pytest.raises(ValueError, match=r"header 'x'.*'\['"):
        one_route(rule_of(RouteMatch(headers=(ValueMatch("x", "[", "RegularExpression"),))))


def test_matched_carries_a_picker_per_rule_or_none_for_the_parent_service() -> None:
    shared = Rule(matches=(prefix("/a"), prefix("/b")), backends=(Backend("x"), Backend("y")))
    t = one_route(shared, Rule(matches=(prefix("/c"),)))
    ma = t.match(b"GET", b"/a", b"", hdrs())
    mb = t.match(b"GET", b"/b", b"", hdrs())
    mc = t.match(b"GET", b"/c", b"", hdrs())
    assert isinstance(ma, Matched) and isinstance(mb, Matched) and isinstance(mc, Matched)
    assert ma.picker is mb.picker is not None  # one split per rule, whichever match
    assert mc.picker is None
    assert "routes=1 matches=3" in repr(t)


# -- property: the table agrees with a direct reading of the spec ------------------------------

_names = st.sampled_from(["a", "b"])
_values = st.sampled_from(["1", "2"])
_paths = st.sampled_from(["/", "/a", "/a/", "/a/b", "/ab", "/b", "/a/b/c"])


@st.composite
def route_matches(draw: st.DrawFn) -> RouteMatch:
    kind = draw(st.sampled_from(["PathPrefix", "Exact", "RegularExpression", None]))
    path = None
    if kind == "RegularExpression":
        path = PathMatch(kind, draw(st.sampled_from(["/a.*", "/a/[bc]", ".*b"])))
    elif kind is not None:
        path = PathMatch(kind, draw(_paths))
    return RouteMatch(
        path=path,
        headers=tuple(
            ValueMatch(n, v) for n, v in draw(st.lists(st.tuples(_names, _values), max_size=2))
        ),
        query_params=tuple(
            ValueMatch(n, v) for n, v in draw(st.lists(st.tuples(_names, _values), max_size=2))
        ),
        method=draw(st.sampled_from([None, "GET", "POST"])),
    )


@st.composite
def policies(draw: st.DrawFn) -> ServicePolicy:
    routes = []
    for ri in range(draw(st.integers(1, 3))):
        rules = tuple(
            Rule(matches=tuple(draw(st.lists(route_matches(), max_size=3))))
            for _ in range(draw(st.integers(1, 3)))
        )
        hostnames = tuple(
            draw(st.lists(st.sampled_from(["h.example", "*.example", "x.h.example"]), max_size=2))
        )
        routes.append(Route(f"ns/r{ri}", rules, hostnames))
    return ServicePolicy(routes=tuple(routes))


def reference(
    policy: ServicePolicy,
    method: str,
    path: str,
    query: dict[str, str],
    headers: dict[str, str],
    host: str | None,
) -> tuple[int, int, int] | None:
    """The spec, read directly: every match of every rule is scored; the best score wins and
    ties go to the first (route, rule, match) in order."""

    def host_score(route: Route) -> tuple[int, int] | None:
        if not route.hostnames:
            return (0, 0)
        scores = []
        for h in route.hostnames:
            if h.startswith("*."):
                if host is not None and host.endswith(h[1:]) and host != h[2:]:
                    scores.append((0, len(h)))
            elif host == h:
                scores.append((len(h), len(h)))
        return max(scores) if scores else None

    def first_by_name(matchers: tuple[ValueMatch, ...], fold: bool) -> dict[str, str]:
        out: dict[str, str] = {}
        for vm in matchers:
            out.setdefault(vm.name.lower() if fold else vm.name, vm.value)
        return out

    def path_score(pm: PathMatch | None) -> tuple[int, int] | None:
        if pm is None:
            return (0, 1)
        if pm.type == "Exact":
            return (2, len(pm.value)) if path == pm.value else None
        if pm.type == "RegularExpression":
            return (1, 0) if re.fullmatch(pm.value, path) else None
        want = pm.value.rstrip("/").split("/")
        got = path.split("/")
        if got[: len(want)] != want:
            return None
        return (0, max(1, len(pm.value.rstrip("/"))))

    best: tuple[tuple[int, ...], tuple[int, int, int]] | None = None
    for ri, route in enumerate(policy.routes):
        hs = host_score(route)
        if hs is None:
            continue
        for qi, rule in enumerate(route.rules):
            for mi, m in enumerate(rule.matches or (RouteMatch(),)):
                ps = path_score(m.path)
                if ps is None or (m.method is not None and m.method != method):
                    continue
                hm = first_by_name(m.headers, True)
                qm = first_by_name(m.query_params, False)
                if any(headers.get(n) != v for n, v in hm.items()):
                    continue
                if any(query.get(n) != v for n, v in qm.items()):
                    continue
                key = (*hs, *ps, m.method is not None, len(hm), len(qm))
                if best is None or key > best[0]:
                    best = (key, (ri, qi, mi))
    return best[1] if best is not None else None


@settings(max_examples=400, deadline=None)
@given(
    policies(),
    st.sampled_from(["GET", "POST"]),
    _paths,
    st.dictionaries(_names, _values),
    st.dictionaries(_names, _values),
    st.sampled_from([None, "h.example", "x.h.example", "y.example", "example", "H.EXAMPLE:80"]),
)
def test_table_agrees_with_the_spec_read_directly(
    policy: ServicePolicy,
    method: str,
    path: str,
    query: dict[str, str],
    headers: dict[str, str],
    host: str | None,
) -> None:
    t = RouteTable(policy)
    all_headers = dict(headers)
    if host is not None:
        all_headers["host"] = host
    lookup = {k.encode(): v.encode() for k, v in all_headers.items()}.get
    got = t.match(
        method.encode(), path.encode(), "&".join(f"{k}={v}" for k, v in query.items()).encode(),
        lookup,
    )  # fmt: skip
    norm_host = host.lower().split(":")[0] if host is not None else None
    want = reference(policy, method, path, query, headers, norm_host)
    if want is None:
        assert got is None
        return
    ri, qi, mi = want
    assert got is not None
    route = policy.routes[ri]
    assert got.route is route and got.rule_index == qi
    assert got.match is (route.rules[qi].matches[mi] if route.rules[qi].matches else None)


# -- WeightedPicker ---------------------------------------------------------------------------


@given(
    st.lists(st.integers(0, 20), min_size=1, max_size=6),
    st.integers(1, 3),
    st.integers(0, 2**32),
)
def test_picker_honours_weights_exactly_per_cycle(
    weights: list[int], cycles: int, seed: int
) -> None:
    backends = [Backend(f"b{i}", w) for i, w in enumerate(weights)]
    picker = WeightedPicker(backends, random.Random(seed))
    total = sum(weights)
    if total == 0:
        assert picker.pick() is None
        return
    counts: Counter[str] = Counter()
    for _ in range(total * cycles):
        b = picker.pick()
        assert b is not None
        counts[b.target] += 1
    assert counts == Counter({f"b{i}": w * cycles for i, w in enumerate(weights) if w})


def test_picker_is_smooth_and_accurate_for_canary_splits() -> None:
    picker = WeightedPicker([Backend("a", 1), Backend("b", 3)])
    seq = [picker.pick() for _ in range(8)]
    assert [b.target for b in seq if b is not None] == ["b", "a", "b", "b"] * 2
    for canary in (0, 10, 50, 100):
        p = WeightedPicker(
            [Backend("stable", 100 - canary), Backend("canary", canary)], random.Random(canary)
        )
        counts = Counter(b.target for _ in range(10_000) if (b := p.pick()) is not None)
        assert counts["canary"] == 100 * canary  # exact: 10,000 is 100 cycles
        assert counts["stable"] == 100 * (100 - canary)
        # ... and never bursty: in any 100 consecutive picks, within one of the weight.
    p = WeightedPicker([Backend("stable", 9), Backend("canary", 1)])
    picks = [p.pick() for _ in range(1000)]
    for start in range(0, 900):
        window = picks[start : start + 100]
        assert 9 <= sum(1 for b in window if b is not None and b.target == "canary") <= 11


def test_picker_edge_cases_and_rng_breaks_ties() -> None:
    assert WeightedPicker([]).pick() is None
    assert WeightedPicker([Backend("z", 0)]).pick() is None
    only = WeightedPicker([Backend("z", 0), Backend("one", 5)])
    assert {only.pick() for _ in range(10)} == {Backend("one", 5)}
    assert only.backends == (Backend("one", 5),)
    firsts = {
        p.target
        for seed in range(40)
        if (p := WeightedPicker([Backend("a"), Backend("b")], random.Random(seed)).pick())
    }
    assert firsts == {"a", "b"}
    assert "one=5" in repr(only)


# -- header modifiers -------------------------------------------------------------------------

H = [(b"Host", b"svc"), (b"X-A", b"1"), (b"x-a", b"2"), (b"Accept", b"*/*")]


def test_header_modifier_set_add_remove() -> None:
    original = list(H)
    out = apply_header_modifier(
        HeaderModifier(set=(("x-a", "new"),), add=(("Accept", "text/html"),), remove=("HOST",)),
        H,
    )
    assert out == [(b"x-a", b"new"), (b"Accept", b"*/*"), (b"Accept", b"text/html")]
    assert original == H  # the input is untouched
    assert apply_header_modifier(HeaderModifier(set=(("X-New", "v"),)), H) == [
        *H,
        (b"X-New", b"v"),
    ]
    assert apply_header_modifier(HeaderModifier(add=(("x-a", "3"),)), H) == [*H, (b"x-a", b"3")]
    assert apply_header_modifier(HeaderModifier(remove=("x-A", "nope")), H) == [
        (b"Host", b"svc"),
        (b"Accept", b"*/*"),
    ]
    assert apply_header_modifier(HeaderModifier(), H) == H


@pytest.mark.parametrize(
    "mod",
    [
        HeaderModifier(set=(("x", "a\r\nInjected: 1"),)),
        HeaderModifier(add=(("x\n", "v"),)),
        HeaderModifier(remove=("a\0",)),
        HeaderModifier(add=(("x", "\u2603"),)),
    ],
)
def test_header_modifier_refuses_unsafe_text(mod: HeaderModifier) -> None:
    with pytest.raises(ValueError, match="header modifier"):
        apply_header_modifier(mod, H)


@given(
    st.lists(st.tuples(st.sampled_from([b"a", b"A", b"b", b"c"]), st.binary(max_size=3))),
    st.lists(st.sampled_from(["a", "B", "d"]), max_size=2, unique=True),
    st.lists(st.sampled_from(["c", "e"]), max_size=2, unique=True),
)
def test_header_modifier_properties(
    headers: list[tuple[bytes, bytes]], sets: list[str], removes: list[str]
) -> None:
    mod = HeaderModifier(set=tuple((n, "v") for n in sets), remove=tuple(removes))
    out = apply_header_modifier(mod, headers)
    for n in sets:
        assert [v for k, v in out if k.lower() == n.lower().encode()] == [b"v"]
    for n in removes:
        assert all(k.lower() != n.encode() for k, _ in out)
    untouched = {n.lower().encode() for n in [*sets, *removes]}
    assert [h for h in out if h[0].lower() not in untouched] == [
        h for h in headers if h[0].lower() not in untouched
    ]


# -- redirects --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("redirect", "request_", "expected"),
    [
        (Redirect(), (b"http", b"svc", 80, b"/a", b""), (302, b"http://svc/a")),
        (Redirect(), (b"http", b"svc:8080", 8080, b"/a", b"q=1"), (302, b"http://svc:8080/a?q=1")),
        (Redirect(scheme="https"), (b"http", b"svc", 8080, b"/a", b""), (302, b"https://svc/a")),
        (
            Redirect(scheme="https", port=8443, status_code=301),
            (b"http", b"svc", 80, b"/a", b"x=y"),
            (301, b"https://svc:8443/a?x=y"),
        ),
        (Redirect(hostname="new.example"), (b"http", b"svc", 80, b"/a", b""),
         (302, b"http://new.example/a")),
        (Redirect(hostname="new.example"), (b"http", b"svc", 9090, b"/a", b""),
         (302, b"http://new.example:9090/a")),
        (Redirect(port=80), (b"http", b"svc", 8080, b"/", b""), (302, b"http://svc/")),
        (Redirect(scheme="http", port=443), (b"https", b"svc", 443, b"/", b""),
         (302, b"http://svc:443/")),
        (Redirect(path="/new"), (b"http", b"svc", 80, b"/old", b"k=v"), (302, b"http://svc/new?k=v")),
        (Redirect(path="/new?z=1"), (b"http", b"svc", 80, b"/old", b"k=v"),
         (302, b"http://svc/new?z=1")),
        (Redirect(), (b"http", b"[::1]:8080", 8080, b"/", b""), (302, b"http://[::1]:8080/")),
        (Redirect(hostname="svc"), (b"http", b"x", None, b"/", b""), (302, b"http://svc/")),
        (Redirect(status_code=308), (b"HTTP", b"SVC", 80, b"/", b""), (308, b"http://svc/")),
    ],
)  # fmt: skip
def test_redirect_location(
    redirect: Redirect,
    request_: tuple[bytes, bytes, int | None, bytes, bytes],
    expected: tuple[int, bytes],
) -> None:
    assert redirect_location(redirect, *request_) == expected

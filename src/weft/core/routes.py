"""HTTP route matching and per-rule actions, compiled once per policy snapshot.

:class:`RouteTable` compiles a :class:`~weft.policy.ServicePolicy`'s HTTPRoutes (regular
expressions compiled, strings encoded, matches sorted by precedence) so that
:meth:`RouteTable.match` is a short loop over pre-sorted matches. Precedence follows the
Gateway API (``HTTPRouteSpec.hostnames`` and ``HTTPRouteRule.matches``), highest first:

1. routes whose hostnames match the request's ``Host``: most characters in a matching
   non-wildcard hostname, then most characters in a matching hostname (a route without
   hostnames matches every host with 0 characters);
2. an ``Exact`` path match, then a ``RegularExpression`` path match, then the ``PathPrefix``
   match with the most characters (the spec leaves regular expressions' rank to
   implementations; ranking them above prefixes keeps a catch-all ``/`` prefix from hiding
   them, as Envoy Gateway does);
3. a method match;
4. the most header matches;
5. the most query parameter matches;
6. then the earlier route in ``ServicePolicy.routes`` (the control plane lists routes oldest
   first, then by ``namespace/name``, which is the spec's order), then the first rule, then the
   first match.

Matching details: paths are compared as raw bytes (no percent-decoding or normalisation);
``PathPrefix`` matches whole path elements and ignores a trailing ``/`` of the prefix (``/foo``
matches ``/foo``, ``/foo/`` and ``/foo/bar``, not ``/foobar``); header names are
case-insensitive, query parameter names are case-sensitive, and a repeated query parameter
is matched on its first value; regular expressions (Python ``re`` syntax, on bytes) must match
the whole value; of several matchers naming the same header or query parameter only the first
counts. A request that matches no rule gets ``None``: the proxy then uses the service's
default backend.

Also here: :class:`WeightedPicker` (smooth weighted round robin over a rule's backends),
:func:`apply_header_modifier` (``RequestHeaderModifier`` / ``ResponseHeaderModifier``) and
:func:`redirect_location` (``RequestRedirect``).

Sans-I/O: no awaits; the RNG is injected. Not for: validating or refusing HTTPRoute resources
(the control plane does that, and builds the policy), timeouts and retries (``weft.core.retry``),
nor resolving backends (discovery).
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from weft.policy import Backend, HeaderModifier, Redirect, Route, RouteMatch, Rule, ServicePolicy

HeaderLookup = Callable[[bytes], "bytes | None"]

# Path match kinds, by rank (a higher rank wins).
_PREFIX = 0
_REGEX = 1
_EXACT = 2


@dataclass(frozen=True, slots=True)
class Matched:
    """The result of :meth:`RouteTable.match`.

    ``match`` is the :class:`~weft.policy.RouteMatch` that matched, or ``None`` when the rule
    has no matches (it matches every request). ``picker`` chooses among the rule's backends;
    ``None`` when the rule names none (the request goes to the parent service itself).
    """

    route: Route
    rule: Rule
    rule_index: int
    match: RouteMatch | None
    picker: WeightedPicker | None

    @property
    def route_name(self) -> str:
        return self.route.name


class _Entry:
    """One compiled :class:`RouteMatch` (or a rule's implicit match-all)."""

    __slots__ = (
        "headers",
        "host_route",
        "matched",
        "method",
        "path_kind",
        "path_re",
        "path_slash",
        "path_value",
        "query",
        "sort_key",
    )

    def __init__(
        self,
        *,
        path_kind: int,
        path_value: bytes,
        path_re: re.Pattern[bytes] | None,
        method: bytes | None,
        headers: tuple[tuple[bytes, bytes | None, re.Pattern[bytes] | None], ...],
        query: tuple[tuple[bytes, bytes | None, re.Pattern[bytes] | None], ...],
        matched: Matched,
        host_route: int,
        sort_key: tuple[int, ...],
    ) -> None:
        self.path_kind = path_kind
        self.path_value = path_value
        # "/foo" matches "/foo" and "/foo/..."; the prefix "/" (stored as b"") matches all.
        self.path_slash = path_value + b"/"
        self.path_re = path_re
        self.method = method
        self.headers = headers
        self.query = query
        self.matched = matched
        self.host_route = host_route  # index into the table's host patterns, -1: any host
        self.sort_key = sort_key


def _compile_regex(pattern: str, where: str) -> re.Pattern[bytes]:
    try:
        return re.compile(pattern.encode())
    except (re.error, UnicodeEncodeError) as exc:
        raise ValueError(f"{where}: invalid regular expression {pattern!r}: {exc}") from None


def _compile_values(
    matches: Sequence[tuple[str, str, str]], *, fold: bool, where: str
) -> tuple[tuple[bytes, bytes | None, re.Pattern[bytes] | None], ...]:
    out: list[tuple[bytes, bytes | None, re.Pattern[bytes] | None]] = []
    seen: set[bytes] = set()
    for name, value, kind in matches:
        key = name.encode()
        if fold:
            key = key.lower()
        if key in seen:  # Gateway API: only the first matcher of a name counts
            continue
        seen.add(key)
        if kind == "RegularExpression":
            out.append((key, None, _compile_regex(value, f"{where} {name!r}")))
        else:
            out.append((key, value.encode(), None))
    return tuple(out)


def _parse_query(query: bytes) -> dict[bytes, bytes]:
    """Query parameters, percent-decoded (``+`` is a space), first value of each name."""
    params: dict[bytes, bytes] = {}
    for part in query.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        name = unquote_to_bytes(name.replace(b"+", b" "))
        if name not in params:
            params[name] = unquote_to_bytes(value.replace(b"+", b" "))
    return params


def _host_of(host: bytes) -> bytes:
    """The hostname of a ``Host`` header value: port dropped, lower case, no trailing dot."""
    host = host.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end >= 0 else host
    colon = host.rfind(b":")
    if colon >= 0:
        host = host[:colon]
    return host.rstrip(b".")


def _host_score(patterns: tuple[bytes, ...], host: bytes) -> tuple[int, int] | None:
    """Gateway API hostname precedence of the best of ``patterns`` matching ``host``:
    (characters of a matching non-wildcard hostname, characters of a matching hostname)."""
    best: tuple[int, int] | None = None
    for p in patterns:
        if p.startswith(b"*."):
            # "*.example.com" matches any subdomain (several labels too), not the apex.
            ok = host.endswith(p[1:]) and len(host) > len(p) - 1
            score = (0, len(p))
        else:
            ok = host == p
            score = (len(p), len(p))
        if ok and (best is None or score > best):
            best = score
    return best


class RouteTable:
    """The routes of one :class:`~weft.policy.ServicePolicy` snapshot, ready to match.

    Build one per snapshot (``RouteTable(destination.policy)``); ``None`` or a policy without
    routes gives a table that matches nothing. Raises ``ValueError`` naming the route, rule and
    pattern when a regular expression does not compile. ``rng`` seeds the backend pickers'
    tie-breaking (see :class:`WeightedPicker`).
    """

    __slots__ = ("_entries", "_host_patterns", "_policy")

    def __init__(self, policy: ServicePolicy | None, *, rng: random.Random | None = None) -> None:
        self._policy = policy
        rng = rng if rng is not None else random.Random()
        entries: list[_Entry] = []
        host_patterns: list[tuple[bytes, ...]] = []
        routes = policy.routes if policy is not None else ()
        for ri, route in enumerate(routes):
            host_route = -1
            if route.hostnames:
                host_route = len(host_patterns)
                host_patterns.append(
                    tuple(h.strip().lower().rstrip(".").encode() for h in route.hostnames)
                )
            for qi, rule in enumerate(route.rules):
                picker = WeightedPicker(rule.backends, rng) if rule.backends else None
                where = f"route {route.name!r} rule {qi}"
                matches: Sequence[RouteMatch | None] = rule.matches or (None,)
                for mi, m in enumerate(matches):
                    matched = Matched(route, rule, qi, m, picker)
                    entries.append(
                        self._compile(m, matched, host_route, (ri, qi, mi), f"{where} match {mi}")
                    )
        entries.sort(key=lambda e: e.sort_key)
        self._entries = tuple(entries)
        self._host_patterns = tuple(host_patterns)

    @staticmethod
    def _compile(
        m: RouteMatch | None,
        matched: Matched,
        host_route: int,
        order: tuple[int, int, int],
        where: str,
    ) -> _Entry:
        path = m.path if m is not None else None
        path_re = None
        if path is None:
            kind, value, length = _PREFIX, b"", 1
        elif path.type == "Exact":
            value = path.value.encode()
            kind, length = _EXACT, len(value)
        elif path.type == "RegularExpression":
            path_re = _compile_regex(path.value, f"{where} path")
            kind, value, length = _REGEX, b"", 0
        else:
            value = path.value.encode()
            length = len(value)
            value = value.rstrip(b"/")  # "/foo/" is "/foo"; "/" becomes b"": matches all
            if value:
                length = len(value)
            kind = _PREFIX
        method = m.method.encode() if m is not None and m.method else None
        headers = _compile_values(
            [(h.name, h.value, h.type) for h in m.headers] if m is not None else [],
            fold=True,
            where=f"{where} header",
        )
        query = _compile_values(
            [(q.name, q.value, q.type) for q in m.query_params] if m is not None else [],
            fold=False,
            where=f"{where} query param",
        )
        sort_key = (
            -kind,
            -length,
            -(method is not None),
            -len(headers),
            -len(query),
            *order,
        )
        return _Entry(
            path_kind=kind,
            path_value=value,
            path_re=path_re,
            method=method,
            headers=headers,
            query=query,
            matched=matched,
            host_route=host_route,
            sort_key=sort_key,
        )

    @property
    def policy(self) -> ServicePolicy | None:
        return self._policy

    def __len__(self) -> int:
        """The number of compiled matches."""
        return len(self._entries)

    def __repr__(self) -> str:
        routes = len(self._policy.routes) if self._policy is not None else 0
        return f"<RouteTable routes={routes} matches={len(self._entries)}>"

    def match(
        self, method: bytes, path: bytes, query: bytes, headers: HeaderLookup
    ) -> Matched | None:
        """The highest-precedence rule matching the request, or ``None``.

        ``path`` and ``query`` are the request target split at the first ``?`` (without it);
        ``headers(name)`` returns the value of the header ``name`` (given in lower case), with
        repeated headers combined as RFC 9110 allows, or ``None``; for HTTP/2 ``host`` should
        answer the ``:authority``.
        """
        entries = self._entries
        if not entries:
            return None
        if self._host_patterns:
            return self._match_hosts(method, path, query, headers)
        params: dict[bytes, bytes] | None = None
        for e in entries:
            if not _path_ok(e, path):
                continue
            if e.method is not None and e.method != method:
                continue
            if e.headers and not _values_ok(e.headers, headers):
                continue
            if e.query:
                if params is None:
                    params = _parse_query(query)
                if not _values_ok(e.query, params.get):
                    continue
            return e.matched
        return None

    def _match_hosts(
        self, method: bytes, path: bytes, query: bytes, headers: HeaderLookup
    ) -> Matched | None:
        raw = headers(b"host")
        host = _host_of(raw) if raw is not None else b""
        scores = [_host_score(p, host) for p in self._host_patterns]
        top = max((s for s in scores if s is not None), default=(0, 0))
        best: _Entry | None = None
        best_score = (-1, -1)
        params: dict[bytes, bytes] | None = None
        for e in self._entries:
            if e.host_route < 0:
                score = (0, 0)
            else:
                s = scores[e.host_route]
                if s is None:
                    continue
                score = s
            if score <= best_score:  # an earlier entry of at least this host rank matched
                continue
            if not _path_ok(e, path):
                continue
            if e.method is not None and e.method != method:
                continue
            if e.headers and not _values_ok(e.headers, headers):
                continue
            if e.query:
                if params is None:
                    params = _parse_query(query)
                if not _values_ok(e.query, params.get):
                    continue
            best, best_score = e, score
            if score == top:
                break
        return best.matched if best is not None else None


def _path_ok(e: _Entry, path: bytes) -> bool:
    kind = e.path_kind
    if kind == _PREFIX:
        value = e.path_value
        return not value or path == value or path.startswith(e.path_slash)
    if kind == _EXACT:
        return path == e.path_value
    pattern = e.path_re
    return pattern is not None and pattern.fullmatch(path) is not None


def _values_ok(
    matchers: tuple[tuple[bytes, bytes | None, re.Pattern[bytes] | None], ...],
    lookup: Callable[[bytes], bytes | None],
) -> bool:
    for name, exact, pattern in matchers:
        value = lookup(name)
        if value is None:
            return False
        if exact is not None:
            if value != exact:
                return False
        elif pattern is not None and pattern.fullmatch(value) is None:
            return False
    return True


# -- traffic split ----------------------------------------------------------------------------


class WeightedPicker:
    """Smooth weighted round robin over backends (nginx's algorithm).

    Every cycle of ``sum(weights)`` picks gives each backend exactly its weight, interleaved
    (weights 1:3 pick ``B A B B``, not ``A B B B``), so a split is exact over any whole number
    of cycles and within one cycle of exact at any time. Zero-weight backends are never picked;
    :meth:`pick` returns ``None`` when every weight is zero (the proxy should answer 500, as
    for a rule whose backends are all invalid). ``rng`` only shuffles the tie-breaking order, so
    that proxies built from the same snapshot do not all send their first requests to the same
    backend at once. O(number of backends) per pick. Weights changed live: build a new picker
    from the new snapshot.
    """

    __slots__ = ("_backends", "_current", "_total", "_weights")

    def __init__(self, backends: Sequence[Backend], rng: random.Random | None = None) -> None:
        live = [b for b in backends if b.weight > 0]
        if rng is not None:
            rng.shuffle(live)
        self._backends = tuple(live)
        self._weights = tuple(b.weight for b in live)
        self._total = sum(self._weights)
        self._current = [0] * len(live)

    @property
    def backends(self) -> tuple[Backend, ...]:
        """The backends that can be picked (weight > 0), in tie-breaking order."""
        return self._backends

    def pick(self) -> Backend | None:
        n = len(self._backends)
        if n <= 1:
            return self._backends[0] if n else None
        current = self._current
        weights = self._weights
        best = 0
        best_value = current[0] + weights[0]
        current[0] = best_value
        for i in range(1, n):
            v = current[i] + weights[i]
            current[i] = v
            if v > best_value:
                best, best_value = i, v
        current[best] = best_value - self._total
        return self._backends[best]

    def __repr__(self) -> str:
        shown = ", ".join(f"{b.name or b.target}={b.weight}" for b in self._backends)
        return f"<WeightedPicker {shown}>"


# -- filters ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _compiled_modifier(
    mod: HeaderModifier,
) -> tuple[frozenset[bytes], tuple[tuple[bytes, bytes], ...], tuple[tuple[bytes, bytes], ...]]:
    def enc(text: str, what: str) -> bytes:
        if any(c in text for c in "\r\n\0"):
            raise ValueError(f"header modifier {what}: {text!r} contains CR, LF or NUL")
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"header modifier {what}: {text!r} is not Latin-1") from None

    sets = tuple((enc(n, "set name"), enc(v, "set value")) for n, v in mod.set)
    adds = tuple((enc(n, "add name"), enc(v, "add value")) for n, v in mod.add)
    drop = frozenset(enc(n, "remove name").lower() for n in mod.remove)
    return drop | {n.lower() for n, _ in sets}, sets, adds


def apply_header_modifier(
    mod: HeaderModifier, headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """A new header list with ``mod`` applied (``headers`` is left as it was).

    ``remove`` drops every field with one of those names; ``set`` replaces every field of its
    name with one (at the position of the first, or at the end); ``add`` appends a field,
    keeping existing ones. Names compare case-insensitively; configured names are sent as
    written. Raises ``ValueError`` for a name or value with CR, LF or NUL, or not Latin-1.
    """
    drop, sets, adds = _compiled_modifier(mod)
    if not drop:
        return [*headers, *adds]
    set_by_name = {n.lower(): (n, v) for n, v in sets}
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        key = name.lower()
        if key in drop:
            replacement = set_by_name.pop(key, None)
            if replacement is not None:
                out.append(replacement)
            continue
        out.append((name, value))
    out.extend(set_by_name.values())
    out.extend(adds)
    return out


_DEFAULT_PORTS = {b"http": 80, b"https": 443}


def redirect_location(
    redirect: Redirect,
    scheme: bytes,
    host: bytes,
    port: int | None,
    path: bytes,
    query: bytes,
) -> tuple[int, bytes]:
    """The status and ``Location`` of a ``RequestRedirect`` for a request.

    ``scheme``, ``host`` (a port in it is ignored), ``port`` (the port the request was sent to;
    ``None`` if unknown), ``path`` and ``query`` (without ``?``) describe the request. Per the
    Gateway API: the redirect's scheme and hostname replace the request's when set; the port is
    the redirect's, else the well-known port of the redirect's scheme when it sets one, else the
    request's; it is left out when it is the scheme's default (80 for http, 443 for https).
    ``path`` (``ReplaceFullPath``) replaces the request's path, and its query too when it has
    one; otherwise the request's query is kept.
    """
    new_scheme = redirect.scheme.encode() if redirect.scheme else scheme.lower()
    hostname = redirect.hostname.encode() if redirect.hostname else _host_of(host)
    if b":" in hostname and not hostname.startswith(b"["):
        hostname = b"[" + hostname + b"]"  # an IPv6 literal
    if redirect.port is not None:
        new_port: int | None = redirect.port
    elif redirect.scheme:
        new_port = _DEFAULT_PORTS.get(new_scheme, port)
    else:
        new_port = port
    authority = hostname
    if new_port is not None and _DEFAULT_PORTS.get(new_scheme) != new_port:
        authority += b":%d" % new_port
    if redirect.path is not None:
        target = redirect.path.encode()
        if b"?" not in target and query:
            target += b"?" + query
    else:
        target = path + b"?" + query if query else path
    return redirect.status_code, new_scheme + b"://" + authority + target

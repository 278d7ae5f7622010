"""Matches and filters of HTTP route rules: parsing them into the :mod:`weft.policy` types the
proxy receives, their bounds, and writing them back in the Kubernetes shape.

Shared by :mod:`weft.resources.httproute` (path, header, query and method matches; the
``RequestHeaderModifier``, ``ResponseHeaderModifier`` and ``RequestRedirect`` filters) and
:mod:`weft.resources.grpcroute` (header matches and modifiers).

Not for: routes, parents or backends (the route modules).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from weft.policy import HeaderModifier, PathMatch, Redirect, RouteMatch, ValueMatch
from weft.resources.validate import EMPTY, Checker, index, join, show

SUPPORTED_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect")

_FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "RequestMirror": "requestMirror",
    "ExtensionRef": "extensionRef",
    "CORS": "cors",
    "ExternalAuth": "externalAuth",
}

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")

REDIRECT_CODES = (301, 302, 303, 307, 308)

MAX_FILTERS = 16

MAX_HEADER_MATCHES = 16

MAX_MODIFIER_ITEMS = 16

_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")

_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

_MATCH_KNOWN = frozenset({"path", "headers", "queryParams", "method"})


def unsupported(feature: str, supported: str) -> str:
    """The message refusing a feature: ``X is not supported by Weft (supported: ...)``."""
    return f"{feature} is not supported by Weft (supported: {supported})"


def _parse_path(c: Checker, value: Any, path: str) -> PathMatch | None:
    m = c.mapping(value, path)
    c.known_fields(m, path, frozenset({"type", "value"}))
    ptype = c.choice(
        m.get("type"),
        join(path, "type"),
        ("Exact", "PathPrefix", "RegularExpression"),
        default="PathPrefix",
    )
    vpath = join(path, "value")
    text = c.string(m.get("value"), vpath, max_len=1024)
    if m.get("value") is None:
        text = "/"
    if text is None or ptype is None:
        return None
    if ptype == "RegularExpression":
        if not _regex_ok(c, text, vpath):
            return None
    else:
        problem = _path_problem(text)
        if problem is not None:
            c.error(vpath, f"invalid path {show(text)}: {problem}")
            return None
    return PathMatch(ptype, text)


def _path_problem(text: str) -> str | None:
    if not text.startswith("/"):
        return "must be an absolute path starting with '/'"
    if "//" in text:
        return "must not contain '//'"
    for bad in ("/./", "/../", "%2f", "%2F", "#"):
        if bad in text:
            return f"must not contain {show(bad)}"
    if text.endswith(("/..", "/.")):
        return "must not end with '/..' or '/.'"
    return None


def _regex_ok(c: Checker, text: str, path: str) -> bool:
    try:
        re.compile(text)
    except re.error as exc:
        c.error(path, f"invalid regular expression {show(text)}: {exc}")
        return False
    return True


def parse_value_matches(c: Checker, value: Any, path: str, what: str) -> tuple[ValueMatch, ...]:
    out: list[ValueMatch] = []
    raw = c.items(value, path)
    if len(raw) > MAX_HEADER_MATCHES:
        c.error(path, f"must have at most {MAX_HEADER_MATCHES} items")
    seen: set[str] = set()
    for i, item in enumerate(raw):
        ipath = index(path, i)
        m = c.mapping(item, ipath, required=True)
        if m is EMPTY:  # not a mapping (reported); an empty one is parsed, so its fields are named
            continue
        c.known_fields(m, ipath, frozenset({"type", "name", "value"}))
        mtype = c.choice(
            m.get("type"), join(ipath, "type"), ("Exact", "RegularExpression"), default="Exact"
        )
        name = _header_name(c, m.get("name"), join(ipath, "name"))
        text = c.string(m.get("value"), join(ipath, "value"), required=True, max_len=4096)
        if name is None or text is None or mtype is None:
            continue
        # header names are case-insensitive, query parameter names are not
        folded = name.lower() if what == "header" else name
        if folded in seen:
            c.error(join(ipath, "name"), f"duplicate {what} name {show(name)} in this match")
            continue
        seen.add(folded)
        if mtype == "RegularExpression" and not _regex_ok(c, text, join(ipath, "value")):
            continue
        out.append(ValueMatch(name=name, value=text, type=mtype))
    return tuple(out)


def _header_name(c: Checker, value: Any, path: str) -> str | None:
    text = c.string(value, path, required=True, max_len=256)
    if text is None:
        return None
    if not _HEADER_NAME.match(text):
        c.error(path, f"invalid header name {show(text)}: must be an HTTP token")
        return None
    return text


def parse_match(c: Checker, value: Any, path: str) -> RouteMatch | None:
    m = c.mapping(value, path, required=True)
    if not isinstance(value, Mapping):
        return None
    c.known_fields(m, path, _MATCH_KNOWN)
    pm = _parse_path(c, m.get("path"), join(path, "path")) if "path" in m else None
    if "path" not in m:
        pm = PathMatch("PathPrefix", "/")  # the Gateway API default
    headers = parse_value_matches(c, m.get("headers"), join(path, "headers"), "header")
    query = parse_value_matches(c, m.get("queryParams"), join(path, "queryParams"), "query")
    method = c.choice(m.get("method"), join(path, "method"), METHODS)
    if pm is None:
        return None
    return RouteMatch(path=pm, headers=headers, query_params=query, method=method)


def parse_modifier(c: Checker, value: Any, path: str) -> HeaderModifier | None:
    m = c.mapping(value, path, required=True)
    if not isinstance(value, Mapping):
        return None
    c.known_fields(m, path, frozenset({"set", "add", "remove"}))
    lists: dict[str, tuple[tuple[str, str], ...]] = {}
    for key in ("set", "add"):
        kpath = join(path, key)
        raw = c.items(m.get(key), kpath)
        if len(raw) > MAX_MODIFIER_ITEMS:
            c.error(kpath, f"must have at most {MAX_MODIFIER_ITEMS} items")
        pairs: list[tuple[str, str]] = []
        seen: set[str] = set()
        for i, item in enumerate(raw):
            ipath = index(kpath, i)
            im = c.mapping(item, ipath, required=True)
            if not im:
                continue
            c.known_fields(im, ipath, frozenset({"name", "value"}))
            name = _header_name(c, im.get("name"), join(ipath, "name"))
            text = c.string(im.get("value"), join(ipath, "value"), nonempty=False, max_len=4096)
            if im.get("value") is None:
                c.error(join(ipath, "value"), "required field is missing")
            if name is None or text is None:
                continue
            if name.lower() in seen:
                c.error(join(ipath, "name"), f"duplicate header {show(name)} in {key}")
                continue
            seen.add(name.lower())
            pairs.append((name, text))
        lists[key] = tuple(pairs)
    rpath = join(path, "remove")
    removed: list[str] = []
    raw_remove = c.items(m.get("remove"), rpath)
    if len(raw_remove) > MAX_MODIFIER_ITEMS:
        c.error(rpath, f"must have at most {MAX_MODIFIER_ITEMS} items")
    for i, item in enumerate(raw_remove):
        name = _header_name(c, item, index(rpath, i))
        if name is None:
            continue
        if name.lower() in {r.lower() for r in removed}:
            c.error(index(rpath, i), f"duplicate header {show(name)} in remove")
            continue
        removed.append(name)
    return HeaderModifier(set=lists["set"], add=lists["add"], remove=tuple(removed))


def _parse_redirect(c: Checker, value: Any, path: str) -> Redirect | None:
    m = c.mapping(value, path, required=True)
    if not isinstance(value, Mapping):
        return None
    c.known_fields(m, path, frozenset({"scheme", "hostname", "path", "port", "statusCode"}))
    before = len(c.errors)
    scheme = c.choice(m.get("scheme"), join(path, "scheme"), ("http", "https"))
    hostname = c.string(m.get("hostname"), join(path, "hostname"), max_len=253)
    if hostname is not None and (hostname.startswith("*.") or not _HOSTNAME.match(hostname)):
        c.error(join(path, "hostname"), f"invalid hostname {show(hostname)}: a DNS name")
    full_path: str | None = None
    if m.get("path") is not None:
        ppath = join(path, "path")
        pm = c.mapping(m.get("path"), ppath)
        c.known_fields(pm, ppath, frozenset({"type", "replaceFullPath", "replacePrefixMatch"}))
        ptype = pm.get("type")
        if ptype is None:
            c.error(join(ppath, "type"), "required field is missing")
        elif ptype == "ReplacePrefixMatch":
            c.error(join(ppath, "type"), unsupported("ReplacePrefixMatch", "ReplaceFullPath"))
        elif ptype != "ReplaceFullPath":
            c.error(join(ppath, "type"), f"must be ReplaceFullPath, got {show(ptype)}")
        else:
            if pm.get("replacePrefixMatch") is not None:
                c.error(
                    join(ppath, "replacePrefixMatch"), "must not be set with type ReplaceFullPath"
                )
            fpath = join(ppath, "replaceFullPath")
            full_path = c.string(pm.get("replaceFullPath"), fpath, required=True, max_len=1024)
            if full_path is not None:
                problem = _path_problem(full_path)
                if problem is not None:
                    c.error(fpath, f"invalid path {show(full_path)}: {problem}")
    port = c.port(m.get("port"), join(path, "port"))
    code = m.get("statusCode", 302)
    if isinstance(code, bool) or code not in REDIRECT_CODES:
        c.error(
            join(path, "statusCode"),
            f"must be one of {', '.join(map(str, REDIRECT_CODES))}, got {show(code)}",
        )
    if len(c.errors) > before:
        return None
    return Redirect(
        scheme=scheme, hostname=hostname, path=full_path, port=port, status_code=int(code)
    )


def parse_filters(
    c: Checker, value: Any, path: str
) -> tuple[tuple[str, ...], HeaderModifier | None, HeaderModifier | None, Redirect | None]:
    order: list[str] = []
    req: HeaderModifier | None = None
    resp: HeaderModifier | None = None
    redirect: Redirect | None = None
    raw = c.items(value, path)
    if len(raw) > MAX_FILTERS:
        c.error(path, f"must have at most {MAX_FILTERS} items")
    supported = ", ".join(SUPPORTED_FILTERS)
    for i, item in enumerate(raw):
        ipath = index(path, i)
        m = c.mapping(item, ipath, required=True)
        if m is EMPTY:  # not a mapping (reported); an empty one is parsed, so its fields are named
            continue
        c.known_fields(m, ipath, frozenset({"type", *_FILTER_FIELDS.values()}))
        ftype = c.string(m.get("type"), join(ipath, "type"), required=True)
        if ftype is None:
            continue
        if ftype not in SUPPORTED_FILTERS:
            c.error(join(ipath, "type"), unsupported(ftype, supported))
            continue
        config_field = _FILTER_FIELDS[ftype]
        for other in _FILTER_FIELDS.values():
            if other != config_field and m.get(other) is not None:
                c.error(join(ipath, other), f"must not be set with type {ftype}")
        if ftype in order:
            c.error(join(ipath, "type"), f"{ftype} may appear only once in a rule's filters")
            continue
        order.append(ftype)
        cpath = join(ipath, config_field)
        if ftype == "RequestHeaderModifier":
            req = parse_modifier(c, m.get(config_field), cpath)
        elif ftype == "ResponseHeaderModifier":
            resp = parse_modifier(c, m.get(config_field), cpath)
        else:
            redirect = _parse_redirect(c, m.get(config_field), cpath)
    return tuple(order), req, resp, redirect


def match_dict(m: RouteMatch) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if m.path is not None:
        out["path"] = {"type": m.path.type, "value": m.path.value}
    if m.headers:
        out["headers"] = [{"type": h.type, "name": h.name, "value": h.value} for h in m.headers]
    if m.query_params:
        out["queryParams"] = [
            {"type": q.type, "name": q.name, "value": q.value} for q in m.query_params
        ]
    if m.method is not None:
        out["method"] = m.method
    return out


def modifier_dict(h: HeaderModifier) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if h.set:
        out["set"] = [{"name": n, "value": v} for n, v in h.set]
    if h.add:
        out["add"] = [{"name": n, "value": v} for n, v in h.add]
    if h.remove:
        out["remove"] = list(h.remove)
    return out


def redirect_dict(r: Redirect) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if r.scheme is not None:
        out["scheme"] = r.scheme
    if r.hostname is not None:
        out["hostname"] = r.hostname
    if r.path is not None:
        out["path"] = {"type": "ReplaceFullPath", "replaceFullPath": r.path}
    if r.port is not None:
        out["port"] = r.port
    out["statusCode"] = r.status_code
    return out

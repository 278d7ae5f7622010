"""Label and field selectors as the Kubernetes API reads them (``?labelSelector=``,
``?fieldSelector=``).

Label selectors: comma-separated requirements, all of which must hold: ``k=v``, ``k==v``,
``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k`` (exists), ``!k`` (does not exist). Field
selectors: ``path=v``, ``path==v``, ``path!=v`` over the fields the API supports for a kind
(``metadata.name`` and ``metadata.namespace`` for every kind; for Pods also ``spec.nodeName``,
``spec.serviceAccountName``, ``status.phase``, ``status.podIP``; for Namespaces
``status.phase``; for EndpointSlices ``addressType``); any other field is refused, as the API
server refuses it. A malformed selector raises :class:`SelectorError` (HTTP 400).

Not for: Service selectors (plain equality maps, :func:`weft.resources.models.selector_matches`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_SET = re.compile(r"^\s*(!?)\s*([^\s!=(),]+)\s+(in|notin)\s*\(([^)]*)\)\s*$")

FIELDS: dict[str, frozenset[str]] = {
    "Pod": frozenset(
        {
            "spec.nodeName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "spec.restartPolicy",
            "spec.schedulerName",
        }
    ),
    "Namespace": frozenset({"status.phase"}),
    "EndpointSlice": frozenset({"addressType"}),
    "Service": frozenset({"spec.clusterIP", "spec.type"}),
}
_COMMON_FIELDS = frozenset({"metadata.name", "metadata.namespace"})


class SelectorError(ValueError):
    """A selector the API cannot read (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def holds(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        match self.op:
            case "=":
                return value == self.values[0]
            case "!=":
                return value != self.values[0]
            case "in":
                return value in self.values
            case "notin":
                return value not in self.values
            case "exists":
                return self.key in labels
            case _:
                return self.key not in labels


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _check_key(key: str, text: str) -> str:
    if not _KEY.match(key) or len(key.rpartition("/")[2]) > 63:
        raise SelectorError(f"invalid label key {key!r} in selector {text!r}")
    return key


def _check_value(value: str, text: str) -> str:
    if not _VALUE.match(value) or len(value) > 63:
        raise SelectorError(f"invalid label value {value!r} in selector {text!r}")
    return value


def parse_labels(text: str | None) -> tuple[Requirement, ...]:
    """The requirements of a label selector ("" or None: everything)."""
    if not text:
        return ()
    out: list[Requirement] = []
    for part in _split(text):
        m = _SET.match(part)
        if m is not None:
            if m.group(1):
                raise SelectorError(f"unexpected '!' in {part!r}")
            values = tuple(
                _check_value(v.strip(), text) for v in m.group(4).split(",") if v.strip()
            )
            if not values:
                raise SelectorError(f"{part!r}: a set needs at least one value")
            out.append(Requirement(_check_key(m.group(2), text), m.group(3), values))
        elif "!=" in part:
            key, _, value = part.partition("!=")
            out.append(
                Requirement(
                    _check_key(key.strip(), text), "!=", (_check_value(value.strip(), text),)
                )
            )
        elif "=" in part:
            key, _, value = part.partition("==") if "==" in part else part.partition("=")
            out.append(
                Requirement(
                    _check_key(key.strip(), text), "=", (_check_value(value.strip(), text),)
                )
            )
        elif part.startswith("!"):
            out.append(Requirement(_check_key(part[1:].strip(), text), "!exists"))
        else:
            out.append(Requirement(_check_key(part, text), "exists"))
    return tuple(out)


def _field(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_fields(kind: str, text: str | None) -> tuple[tuple[str, str, str], ...]:
    """``(path, op, value)`` of a field selector for ``kind``; SelectorError for a field the
    API does not select on."""
    if not text:
        return ()
    allowed = _COMMON_FIELDS | FIELDS.get(kind, frozenset())
    out = []
    for part in _split(text):
        if "!=" in part:
            path, _, value = part.partition("!=")
            op = "!="
        elif "=" in part:
            path, _, value = part.partition("==") if "==" in part else part.partition("=")
            op = "="
        else:
            raise SelectorError(f"invalid field selector {part!r}: expected path=value")
        path = path.strip()
        if path not in allowed:
            raise SelectorError(
                f'field label not supported: "{path}" (for {kind}: {", ".join(sorted(allowed))})'
            )
        out.append((path, op, value.strip()))
    return tuple(out)


def matcher(
    kind: str, labels: str | None, fields: str | None
) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate for objects of ``kind`` that both selectors select; SelectorError for a
    malformed one."""
    requirements = parse_labels(labels)
    field_reqs = parse_fields(kind, fields)
    if not requirements and not field_reqs:
        return lambda obj: True

    def matches(obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        obj_labels = meta.get("labels") or {}
        if not all(r.holds(obj_labels) for r in requirements):
            return False
        return all((_field(obj, path) == value) == (op == "=") for path, op, value in field_reqs)

    return matches


__all__ = ["FIELDS", "Requirement", "SelectorError", "matcher", "parse_fields", "parse_labels"]

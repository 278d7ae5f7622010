"""The status of Gateway API routes (``RouteStatus``): its shape, validated.

The control plane writes it (:mod:`weft.control.routestatus`): ``status.parents[]`` with the
parentRef, the controller's name and ``metav1.Condition``-shaped conditions. HTTPRoute and
GRPCRoute validate their status with :func:`parse_route_status`.

Not for: computing a status (the control plane).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from weft.resources.errors import InvalidResources
from weft.resources.validate import EMPTY, Checker, index, join

CONDITION_STATUSES = ("True", "False", "Unknown")
_CONDITION_KNOWN = frozenset(
    {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
)


def parse_route_status(status: Mapping[str, Any]) -> dict[str, Any]:
    """Validate an HTTPRoute ``status`` (Gateway API ``RouteStatus``); raises InvalidResources."""
    c = Checker()
    c.known_fields(status, "status", frozenset({"parents"}))
    parents = c.items(status.get("parents"), "status.parents")
    for i, item in enumerate(parents):
        path = index("status.parents", i)
        m = c.mapping(item, path, required=True)
        if m is EMPTY:  # not a mapping (reported); an empty one is parsed, so its fields are named
            continue
        c.known_fields(m, path, frozenset({"parentRef", "controllerName", "conditions"}))
        ref = c.mapping(m.get("parentRef"), join(path, "parentRef"), required=True)
        c.string(ref.get("name"), join(path, "parentRef.name"), required=True)
        c.string(m.get("controllerName"), join(path, "controllerName"), required=True)
        for j, cond in enumerate(c.items(m.get("conditions"), join(path, "conditions"))):
            cpath = index(join(path, "conditions"), j)
            cm = c.mapping(cond, cpath, required=True)
            if not cm:
                continue
            c.known_fields(
                cm,
                cpath,
                _CONDITION_KNOWN,
            )
            c.string(cm.get("type"), join(cpath, "type"), required=True)
            if cm.get("status") is None:
                c.error(join(cpath, "status"), "required field is missing")
            else:
                c.choice(cm.get("status"), join(cpath, "status"), CONDITION_STATUSES)
            c.string(cm.get("reason"), join(cpath, "reason"), required=True)
            c.string(cm.get("message"), join(cpath, "message"), nonempty=False)
            if cm.get("observedGeneration") is not None:
                gpath = join(cpath, "observedGeneration")
                c.integer(cm.get("observedGeneration"), gpath, minimum=0)
    c.json_value(dict(status), "status")
    if c.errors:
        raise InvalidResources(c.errors)
    return dict(status)

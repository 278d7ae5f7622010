"""``weft get KIND [NAME]``: list resources from the control plane, as tables or YAML/JSON.

Tables follow kubectl: pods ``NAME READY STATUS RESTARTS IP AGE`` (plus ``PRIVILEGED`` when
some listed pod runs containers as root: such a pod can administer a local mesh), deployments
``NAME READY UP-TO-DATE AVAILABLE AGE``, services ``NAME CLUSTER-IP PORTS AGE``, namespaces
``NAME STATUS AGE``, httproutes ``NAME PARENTS ACCEPTED REASON AGE`` (ACCEPTED: every parent
Service accepted the route; REASON: the first failing condition, e.g. ``NoMatchingParent`` or
``BackendNotFound``; the messages are in ``-o yaml``); ``-A`` adds a NAMESPACE column;
``-o yaml|json`` prints the objects (a ``List`` without NAME).

Also the home of what the resource commands share: the ``--control`` endpoint flag, the "mesh not
running" message, and table printing.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from weft.control.client import (
    ApiError,
    ControlClient,
    ControlUnavailable,
    ControlUnreachable,
    default_endpoint,
    run_sync,
)
from weft.control.routestatus import summarize
from weft.core.durations import human_duration
from weft.resources import pods as podread
from weft.resources.registry import KINDS, KindInfo, resolve_kind
from weft.resources.security import root_containers_of

T = TypeVar("T")

# -- shared by apply, delete, get, stat -------------------------------------------------------


def add_control_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--control",
        default=os.environ.get("WEFT_CONTROL"),
        metavar="ENDPOINT",
        help="control plane endpoint: unix:PATH or http://HOST:PORT "
        "(default: unix:$WEFT_STATE_DIR/control.sock, state dir /run/weft)",
    )
    p.add_argument(
        "--state-dir",
        default=None,
        help="the mesh's state directory (default: $WEFT_STATE_DIR or /run/weft)",
    )


def client_for(args: argparse.Namespace) -> ControlClient:
    endpoint = args.control or default_endpoint(args.state_dir)
    return ControlClient(endpoint)


def call(prog: str, client: ControlClient, coro: Coroutine[Any, Any, T]) -> T:
    """Run one client call; a mesh that is not running becomes a one-line error (exit 1)."""
    try:
        return run_sync(coro)
    except ControlUnreachable as exc:
        where = client.endpoint.removeprefix("unix:")
        raise SystemExit(
            f"{prog}: the mesh is not running (no control plane at {where}: {_reason(exc)}); "
            "start it with `weft up`"
        ) from None
    except ControlUnavailable as exc:
        raise SystemExit(f"{prog}: lost the connection to the control plane: {exc}") from None


def _reason(exc: ControlUnavailable) -> str:
    text = str(exc)
    return text.rsplit(": ", 1)[-1] if ": " in text else text


def api_error(prog: str, exc: ApiError) -> str:
    lines = [f"{prog}: {exc.message}"]
    for d in exc.details:
        if isinstance(d, Mapping):
            lines.append(f"  {d.get('path') or '(document)'}: {d.get('message')}")
    return "\n".join(lines)


def print_table(
    columns: Sequence[str], rows: Sequence[Sequence[str]], out: Console | None = None
) -> None:
    table = Table(
        box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 3, 0, 0)
    )
    for col in columns:
        table.add_column(col, no_wrap=True)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # plain text: "[default]" is no markup
    (out or Console(width=10_000, soft_wrap=True)).print(table)


def age(timestamp: Any, now: float | None = None) -> str:
    """kubectl's human duration since an RFC 3339 timestamp: ``45s``, ``3m20s``, ``5h``, ``2d``."""
    if not isinstance(timestamp, str):
        return "<unknown>"
    try:
        then = calendar.timegm(time.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return "<unknown>"
    return human_duration(max(0.0, (time.time() if now is None else now) - then))


def kind_arg(prog: str, name: str) -> KindInfo:
    try:
        return resolve_kind(name)
    except ValueError as exc:
        raise SystemExit(f"{prog}: {exc}") from None


def ref_name(obj: Mapping[str, Any]) -> str:
    """kubectl's ``deployment.apps/web`` form."""
    kind = str(obj.get("kind", ""))
    info = KINDS.get(kind)
    group = info.api_version.split("/")[0] if info and "/" in info.api_version else ""
    name = obj.get("metadata", {}).get("name", "")
    return f"{kind.lower()}{'.' + group if group else ''}/{name}"


# -- weft get ---------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "get",
        help="list resources (pods, deploy, svc, ns, httproutes)",
        description=__doc__.split("\n")[0],
    )
    p.add_argument(
        "kind", help="pods|po, deployments|deploy, services|svc, namespaces|ns, httproutes"
    )
    p.add_argument("name", nargs="?", help="one resource by name")
    p.add_argument("-n", "--namespace", default=None, help="namespace (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p.add_argument("-o", "--output", choices=["yaml", "json"], default=None)
    add_control_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    info = kind_arg("weft get", args.kind)
    client = client_for(args)
    namespace = None if args.all_namespaces else (args.namespace or "default")
    pods: list[dict[str, Any]] = []
    try:
        if args.name:
            obj = call("weft get", client, client.get(info.kind, namespace, args.name))
            if obj is None:
                where = f' in namespace "{namespace}"' if info.namespaced else ""
                print(f'weft get: {info.kind} "{args.name}" not found{where}', file=sys.stderr)
                return 1
            items = [obj]
        else:
            scope = namespace if info.namespaced else None
            items = call("weft get", client, client.list(info.kind, scope))
        if info.kind == "Deployment" and args.output is None:
            # READY/AVAILABLE fall back to counting pods when the runtime wrote no status yet
            pods = call("weft get", client, client.list("Pod", namespace))
    except ApiError as exc:
        print(api_error("weft get", exc), file=sys.stderr)
        return 1
    if args.output in ("yaml", "json"):
        data: Any = items[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": items}
        if args.output == "json":
            print(json.dumps(data, indent=2))
        else:
            sys.stdout.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
        return 0
    if not items:
        where = f" in {namespace} namespace" if namespace and info.namespaced else ""
        print(f"No resources found{where}.", file=sys.stderr)
        return 0
    columns, rows = table_for(info.kind, items, pods)
    if args.all_namespaces and info.namespaced:
        columns = ["NAMESPACE", *columns]
        rows = [
            [str(o["metadata"].get("namespace", "")), *r] for o, r in zip(items, rows, strict=True)
        ]
    print_table(columns, rows)
    return 0


TableFn = Callable[[Mapping[str, Any], Sequence[Mapping[str, Any]], float], list[str]]


def table_for(
    kind: str,
    items: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]] = (),
    now: float | None = None,
) -> tuple[list[str], list[list[str]]]:
    """Columns and rows for ``kind`` as kubectl shows them."""
    t = time.time() if now is None else now
    spec: dict[str, tuple[list[str], TableFn]] = {
        "Pod": (["NAME", "READY", "STATUS", "RESTARTS", "IP", "AGE"], _pod_row),
        "Deployment": (["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], _deploy_row),
        "Service": (["NAME", "CLUSTER-IP", "PORTS", "AGE"], _service_row),
        "Namespace": (["NAME", "STATUS", "AGE"], _namespace_row),
        "HTTPRoute": (["NAME", "PARENTS", "ACCEPTED", "REASON", "AGE"], _httproute_row),
        "GRPCRoute": (["NAME", "PARENTS", "ACCEPTED", "REASON", "AGE"], _httproute_row),
    }
    columns, fn = spec.get(kind, (["NAME", "AGE"], _generic_row))
    rows = [fn(o, pods, t) for o in items]
    if kind == "Pod":
        # pods running as root can administer a local mesh: a column, shown when there are any
        marks = [privileged_mark(o) for o in items]
        if any(marks):
            columns = [*columns, "PRIVILEGED"]
            rows = [[*r, m or "-"] for r, m in zip(rows, marks, strict=True)]
    return columns, rows


def privileged_mark(o: Mapping[str, Any]) -> str:
    """``root`` (with the containers when not all of them) for a pod that runs containers as
    root (``runAsUser: 0`` or ``privileged: true``), else empty."""
    spec = o.get("spec") or {}
    names = root_containers_of(spec)
    if not names:
        return ""
    every = len(names) == len(spec.get("containers") or [])
    return "root" if every else f"root ({','.join(names)})"


def _pod_row(o: Mapping[str, Any], _pods: Sequence[Mapping[str, Any]], now: float) -> list[str]:
    status = o.get("status") or {}
    statuses = status.get("containerStatuses") or []
    total = len(statuses) or len(o.get("spec", {}).get("containers", []))
    ready = sum(1 for cs in statuses if cs.get("ready"))
    restarts = sum(int(cs.get("restartCount") or 0) for cs in statuses)
    return [
        o["metadata"]["name"],
        f"{ready}/{total}",
        pod_status(o),
        str(restarts),
        str(status.get("podIP") or "<none>"),
        age(o["metadata"].get("creationTimestamp"), now),
    ]


def pod_status(o: Mapping[str, Any]) -> str:
    """``Terminating``, a waiting container's reason (``CrashLoopBackOff``), or the phase."""
    status = o.get("status") or {}
    if podread.is_terminating(o):
        return "Terminating"
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        for key in ("waiting", "terminated"):
            reason = (state.get(key) or {}).get("reason") if isinstance(state, Mapping) else None
            if reason and status.get("phase") not in ("Succeeded",):
                return str(reason)
    if status.get("phase") == "Succeeded":
        return "Completed"
    return str(status.get("phase") or "Pending")


def _deploy_row(o: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], now: float) -> list[str]:
    meta, spec, status = o["metadata"], o.get("spec") or {}, o.get("status") or {}
    mine = [
        p
        for p in pods
        if p["metadata"].get("namespace") == meta.get("namespace")
        and podread.deployment(p) == meta["name"]
        and not podread.is_terminating(p)
    ]
    derived_ready = sum(1 for p in mine if podread.is_ready(p))
    ready = status.get("readyReplicas", derived_ready)
    updated = status.get("updatedReplicas", len(mine))
    available = status.get("availableReplicas", derived_ready)
    return [
        meta["name"],
        f"{ready}/{spec.get('replicas', 1)}",
        str(updated),
        str(available),
        age(meta.get("creationTimestamp"), now),
    ]


def _service_row(o: Mapping[str, Any], _pods: Sequence[Mapping[str, Any]], now: float) -> list[str]:
    spec = o.get("spec") or {}
    ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports", []))
    return [
        o["metadata"]["name"],
        str(spec.get("clusterIP") or "<none>"),
        ports or "<none>",
        age(o["metadata"].get("creationTimestamp"), now),
    ]


def _namespace_row(
    o: Mapping[str, Any], _pods: Sequence[Mapping[str, Any]], now: float
) -> list[str]:
    phase = (o.get("status") or {}).get("phase", "Active")
    return [o["metadata"]["name"], str(phase), age(o["metadata"].get("creationTimestamp"), now)]


def _httproute_row(
    o: Mapping[str, Any], _pods: Sequence[Mapping[str, Any]], now: float
) -> list[str]:
    parents = []
    for ref in (o.get("spec") or {}).get("parentRefs") or []:
        port = ref.get("port")
        parents.append(f"{ref.get('name')}:{port}" if port is not None else str(ref.get("name")))
    accepted, reason = summarize(o.get("status"))
    return [
        o["metadata"]["name"],
        ",".join(parents) or "<none>",
        accepted,
        reason,
        age(o["metadata"].get("creationTimestamp"), now),
    ]


def _generic_row(o: Mapping[str, Any], _pods: Sequence[Mapping[str, Any]], now: float) -> list[str]:
    return [o["metadata"]["name"], age(o["metadata"].get("creationTimestamp"), now)]

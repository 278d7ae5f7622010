"""``weft demo``: start the mesh with the bundled demo app and show what to try next.

Brings the mesh up (as ``weft up``), applies the demo (namespace ``booksapp``: a ``web`` front end
calling ``books`` and ``authors`` by service name, ``books`` failing 10% of its requests, and a
``traffic`` generator), waits until every demo pod is ready (bounded by ``--timeout``), and prints
the commands to try. ``--print-manifest`` only prints the manifests (to apply elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from weft.cli.commands.up import bring_up
from weft.control.client import ApiError, ControlClient, ControlUnavailable
from weft.demo import manifest_text
from weft.resources import pods as podread
from weft.resources.errors import InvalidResources
from weft.resources.loader import load_text
from weft.runtime.local.mesh import CONTROL_START_TIMEOUT, LocalMesh
from weft.runtime.local.net import DEFAULT_POD_CIDR, DEFAULT_SERVICE_CIDR
from weft.runtime.local.state import DEFAULT_STATE_DIR

NAMESPACE = "booksapp"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", help="start the mesh with a demo app", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--state-dir", default=None, help="as for weft up")
    p.add_argument("--pod-cidr", default=DEFAULT_POD_CIDR, help="as for weft up")
    p.add_argument("--service-cidr", default=DEFAULT_SERVICE_CIDR, help="as for weft up")
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the demo's pods to be ready (120)",
    )
    p.add_argument(
        "--print-manifest", action="store_true", help="print the demo's manifests and exit"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    text = manifest_text()
    if args.print_manifest:
        sys.stdout.write(text)
        return 0
    up_args = argparse.Namespace(
        state_dir=args.state_dir,
        pod_cidr=args.pod_cidr,
        service_cidr=args.service_cidr,
        timeout=CONTROL_START_TIMEOUT,
    )
    mesh = bring_up(up_args, "weft demo")
    if mesh is None:
        return 1
    try:
        docs = load_text(text, "weft demo")
    except InvalidResources as exc:  # a broken bundled manifest is a bug worth a clear message
        print(f"weft demo: the bundled manifest is invalid: {exc}", file=sys.stderr)
        return 1
    client = mesh.client(timeout=10.0)
    try:
        for action, obj in asyncio.run(client.apply_actions([d.data for d in docs], "weft demo")):
            meta = obj.get("metadata", {})
            print(f"{obj.get('kind', '').lower()}/{meta.get('name')} {action}")
    except (ApiError, ControlUnavailable) as exc:
        print(f"weft demo: applying the demo failed: {exc}", file=sys.stderr)
        return 1
    print(f"waiting for the demo's pods to be ready (up to {args.timeout:g}s)...")
    pods = wait_ready(client, NAMESPACE, args.timeout)
    if pods is None:
        print(
            f"weft demo: the demo's pods are not all ready after {args.timeout:g}s; "
            f"see `weft get pods -n {NAMESPACE}{_state_flag(mesh)}` and `weft logs POD`",
            file=sys.stderr,
        )
        return 1
    print_next_steps(mesh, pods)
    return 0


def _state_flag(mesh: LocalMesh) -> str:
    return "" if mesh.state.root == DEFAULT_STATE_DIR else f" --state-dir {mesh.state.root}"


def _ready_pods(
    deployments: list[dict[str, Any]], pods: list[dict[str, Any]]
) -> dict[str, str] | None:
    """deployment -> one ready pod's name, when every deployment has all replicas ready."""
    out: dict[str, str] = {}
    for dep in deployments:
        name = dep["metadata"]["name"]
        want = int((dep.get("spec") or {}).get("replicas", 1))
        ready = [
            p["metadata"]["name"]
            for p in pods
            if podread.deployment(p) == name
            and podread.is_ready(p)
            and not podread.is_terminating(p)
        ]
        if len(ready) < want:
            return None
        if ready:
            out[name] = ready[0]
    return out


def wait_ready(client: ControlClient, namespace: str, timeout: float) -> dict[str, str] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            deployments = asyncio.run(client.list("Deployment", namespace))
            pods = asyncio.run(client.list("Pod", namespace))
        except (ApiError, ControlUnavailable):
            deployments, pods = [], []
        if deployments:
            ready = _ready_pods(deployments, pods)
            if ready is not None:
                return ready
        time.sleep(0.5)
    return None


def print_next_steps(mesh: LocalMesh, pods: dict[str, str]) -> None:
    state = _state_flag(mesh)
    web = pods.get("web", "WEB_POD")
    ns = f" -n {NAMESPACE}"
    print(
        f"""
The demo is running in namespace {NAMESPACE}: web -> books (fails 10%) and authors, with traffic;
ratings, a gRPC service (2 replicas, 5% UNAVAILABLE), called by ratings-traffic.

Try:
  weft get pods{ns}{state}
  weft stat deploy{ns}{state}              # success rate, RPS, latency per deployment
  weft routes ratings{ns}{state}           # the gRPC service, per route
  weft exec{ns}{state} {web} -- curl -s http://books:8080/
  weft logs{ns}{state} {web} -c proxy
  weft check{state}
When done:
  weft down{state}"""
    )

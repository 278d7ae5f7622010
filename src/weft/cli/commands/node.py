"""``weft node``: the local runtime agent (started by ``weft up``; not usually run by hand).

Watches Deployments, Services and Pods through the control plane, runs each pod as a network
namespace with a ``weft proxy`` sidecar, rolls Deployments, and reports Pod status. Reads the
mesh's ranges and iptables flavour from ``<state dir>/mesh.json`` (written by ``weft up``). Issues
each meshed pod's identity token for the trust domain given by ``--trust-domain``. Supervises the
mesh's control plane (unless ``--control`` names another one): restarts it with backoff when it
exits, counting the restarts in ``<state dir>/control-status.json``. On SIGTERM it stops
supervising, stops every pod (SIGTERM, grace period) and exits.

With ``--kubeconfig FILE`` it is instead one node of the cluster the kubeconfig names, its
kubelet (:mod:`weft.runtime.local.clusternode`): it brings up the node network itself (pods get
addresses from ``--pod-cidr``; ``--service-cidr`` is the cluster's), registers the Node
``--node-name``, and runs the pods the cluster's scheduler binds to it as their (injected) specs
say. On SIGTERM it stops them, marks the node not ready and removes its network.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from weft.identity.names import DEFAULT_TRUST_DOMAIN
from weft.runtime.base import RuntimeFailure
from weft.runtime.local.agent import NodeAgent
from weft.runtime.local.nodeconfig import NodeConfig
from weft.runtime.local.state import StateDir, StateDirError, resolve_state_dir
from weft.runtime.local.supervisor import ControlSupervisor, MeshControl


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("node", help="run the local runtime agent", description=__doc__)
    p.add_argument(
        "--state-dir", default=None, help="the mesh's state directory ($WEFT_STATE_DIR, /run/weft)"
    )
    p.add_argument(
        "--control",
        default=None,
        help="control plane endpoint (default: the mesh's, unix:<state dir>/control.sock, "
        "which the agent then supervises)",
    )
    p.add_argument(
        "--drain-delay",
        type=float,
        default=1.5,
        help="seconds a leaving pod keeps serving after discovery dropped it (1.5)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        help="longest grace period pods get when the agent stops (10)",
    )
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    p.add_argument("--proxy-log-level", default="info", help="log level of the sidecars")
    p.add_argument(
        "--trust-domain",
        default=DEFAULT_TRUST_DOMAIN,
        help=f"the mesh's identity trust domain, given to the sidecars ({DEFAULT_TRUST_DOMAIN})",
    )
    p.add_argument("--kubeconfig", default=None,
                   help="be a node of this cluster, not the local mesh")  # fmt: skip
    p.add_argument("--context", default=None, help="the kubeconfig's context")
    p.add_argument("--node-name", default=None, help="the Node's name (this host's name)")
    p.add_argument("--pod-cidr", default="10.244.0.0/16",
                   help="with --kubeconfig: this node's pod range (10.244.0.0/16)")  # fmt: skip
    p.add_argument("--service-cidr", default="10.96.0.0/16",
                   help="with --kubeconfig: the cluster's services (10.96.0.0/16)")  # fmt: skip
    p.set_defaults(func=run)


def _cluster_config(args: argparse.Namespace, state: StateDir) -> NodeConfig:
    """A node of the kubeconfig's cluster: its own network and state, no mesh record."""
    import socket

    from lightkube.config.kubeconfig import KubeConfig

    from weft.runtime.local import net, netrun

    try:
        kc = KubeConfig.from_file(args.kubeconfig)
        conf = kc.get(context_name=args.context) if args.context else kc.get()
    except Exception as exc:  # a missing or invalid file, an unknown context
        raise ValueError(f"--kubeconfig {args.kubeconfig}: {exc}") from None
    if conf is None:
        raise ValueError(f"--kubeconfig {args.kubeconfig}: no context to use")
    if netrun.netns_exists(net.NODE_NETNS):
        raise ValueError(f"the node namespace {net.NODE_NETNS} exists: a local mesh runs here, "
                         "or an agent did not stop cleanly (weft down removes it)")  # fmt: skip
    network = net.MeshNetwork.parse(args.pod_cidr, args.service_cidr)
    try:
        state.prepare()
        iptables = netrun.detect_iptables()
    except (StateDirError, OSError, net.NetError) as exc:
        raise ValueError(str(exc)) from None
    return NodeConfig(
        state_dir=state.root,
        network=network,
        iptables=iptables,
        control_endpoint="",
        drain_delay=args.drain_delay,
        shutdown_timeout=args.shutdown_timeout,
        trust_domain=args.trust_domain,
        kube_listen=None,
        kubeconfig=args.kubeconfig,
        kube_context=args.context,
        node_name=args.node_name or socket.gethostname().lower(),
        api_server=str(conf.cluster.server),
    )


def run(args: argparse.Namespace) -> int:
    from weft import logs

    logs.configure(args.log_level, args.log_format)
    state = StateDir(resolve_state_dir(args.state_dir))
    if args.kubeconfig:
        try:
            config = _cluster_config(args, state)
        except ValueError as exc:
            print(f"weft node: {exc}", file=sys.stderr)
            return 2
        asyncio.run(_main(config, None))
        return 0
    try:
        record = state.read_record()
    except StateDirError as exc:
        print(f"weft node: {exc}", file=sys.stderr)
        return 2
    if record is None:
        print(
            f"weft node: {state.record_path} is missing: start the mesh with `weft up`",
            file=sys.stderr,
        )
        return 2
    try:
        config = NodeConfig(
            state_dir=state.root,
            network=record.network,
            iptables=record.iptables,
            control_endpoint=args.control or state.control_endpoint,
            drain_delay=args.drain_delay,
            shutdown_timeout=args.shutdown_timeout,
            proxy_log_level=args.proxy_log_level,
            trust_domain=args.trust_domain,
        )
    except ValueError as exc:
        print(f"weft node: {exc}", file=sys.stderr)
        return 2
    supervisor: ControlSupervisor | None = None
    if args.control is None:  # the mesh's own control plane: this agent keeps it running
        try:
            control = MeshControl.of(state.root, record, python=config.python)
        except RuntimeFailure as exc:
            print(f"weft node: {exc}", file=sys.stderr)
            return 2
        supervisor = ControlSupervisor(control, state.control_status)
    asyncio.run(_main(config, supervisor))
    return 0


async def _main(config: NodeConfig, supervisor: ControlSupervisor | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = NodeAgent(config, control_supervisor=supervisor)
    await agent.run(stop)

"""Can this host run the local mesh: root, the tools, ``/proc/sys/net``, network namespaces, and
an iptables whose nat table works in a namespace (``weft check --pre``, and ``weft up`` first).

Not for: the running mesh's checks (:mod:`weft.runtime.local.mesh`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from weft.runtime.base import Check
from weft.runtime.local import net, netrun


def host_checks() -> tuple[list[Check], str | None]:
    """The host checks of ``weft check --pre`` and ``weft up``, and the iptables binary whose
    nat table works in a namespace (None when it was not found or not checked)."""
    iptables: str | None = None
    checks = [
        Check(
            "running as root",
            os.geteuid() == 0,
            "" if os.geteuid() == 0 else f"euid is {os.geteuid()}",
            "run weft with sudo: pods need network namespaces and iptables",
        )
    ]
    missing = [tool for tool in ("ip", "setpriv") if shutil.which(tool) is None]
    checks.append(
        Check(
            "tools: ip (iproute2), setpriv (util-linux)",
            not missing,
            f"missing: {', '.join(missing)}" if missing else "",
            "install them: apt-get install iproute2 util-linux",
        )
    )
    checks.append(
        Check(
            "/proc/sys/net is available",
            Path("/proc/sys/net/ipv4").is_dir(),
            "",
            "mount /proc (pods need per-namespace network settings)",
        )
    )
    if os.geteuid() != 0 or missing:
        checks.append(
            Check(
                "network namespaces work",
                False,
                "not checked (needs root and ip)",
                "run as root with iproute2",
            )
        )
        return checks, iptables
    probe = f"{net.NETNS_PREFIX}-check-{os.getpid()}"
    try:
        netrun.run_plan([net.Cmd(("ip", "netns", "add", probe))])
        netrun.run_plan([net.Cmd(("ip", "-n", probe, "link", "set", "lo", "up"))])
        checks.append(Check("network namespaces work", True, "ip netns add/exec/del"))
    except net.NetError as exc:
        checks.append(
            Check(
                "network namespaces work",
                False,
                str(exc),
                "the kernel needs CONFIG_NET_NS and the process CAP_SYS_ADMIN "
                "(in a container: --privileged)",
            )
        )
        return checks, iptables
    finally:
        with contextlib.suppress(net.NetError):
            netrun.run_plan(net.netns_delete_plan(probe))
    try:
        iptables = netrun.detect_iptables(probe)
        checks.append(Check("iptables nat table usable in a namespace", True, iptables))
    except net.NetError as exc:
        checks.append(
            Check(
                "iptables nat table usable in a namespace",
                False,
                str(exc),
                "install iptables (nft or legacy) with the nat table, owner, multiport, "
                "comment and REDIRECT support",
            )
        )
    return checks, iptables

"""Running the local runtime's network plans and looking at what exists: commands (blocking for
the CLI, async for the node agent), network namespaces, their processes, the host routes Weft
owns, the iptables flavour that works here, sockets opened inside a namespace, and probes.

The plans themselves are pure functions of :mod:`weft.runtime.local.net`.

Not for: deciding what to run (the plans), nor processes of pods (:mod:`weft.runtime.local.pod`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterable
from pathlib import Path

from weft.core.proxyinit import PortRange, proxy_init_rules
from weft.runtime.local.net import (
    NETNS_DIR,
    NETNS_PREFIX,
    ROUTE_PROTO,
    Cmd,
    MeshNetwork,
    NetError,
    netns_delete_plan,
    remove_pod_etc,
)

log = logging.getLogger("weft.node")

# -- running plans --------------------------------------------------------------------------


def _failed(cmd: Cmd, code: int, err: str) -> NetError | None:
    if code == 0:
        return None
    if any(fragment in err for fragment in cmd.ok_if):
        return None
    if cmd.optional:
        return None
    return NetError(f"`{cmd}` failed (exit {code}): {err.strip() or 'no error output'}")


def run_cmd(cmd: Cmd, *, timeout: float = 10.0) -> str:
    """Run one command, blocking; returns its output. Raises NetError."""
    try:
        proc = subprocess.run(
            cmd.argv,
            input=cmd.stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise NetError(f"`{cmd.argv[0]}` is not installed (needed for `{cmd}`)") from None
    except subprocess.TimeoutExpired:
        raise NetError(f"`{cmd}` did not finish within {timeout:g}s") from None
    error = _failed(cmd, proc.returncode, proc.stderr)
    if error is not None:
        raise error
    return proc.stdout


def run_plan(plan: Iterable[Cmd], *, timeout: float = 10.0) -> None:
    """Run a plan in order, blocking; stops at the first failure (raises NetError)."""
    for cmd in plan:
        run_cmd(cmd, timeout=timeout)


async def run_cmd_async(cmd: Cmd, *, time_limit: float = 10.0) -> str:
    """Run one command from asyncio; returns its output. Raises NetError."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd.argv,
            stdin=subprocess.PIPE if cmd.stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except FileNotFoundError:
        raise NetError(f"`{cmd.argv[0]}` is not installed (needed for `{cmd}`)") from None
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(cmd.stdin.encode() if cmd.stdin is not None else None), time_limit
        )
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise NetError(f"`{cmd}` did not finish within {time_limit:g}s") from None
    assert proc.returncode is not None
    error = _failed(cmd, proc.returncode, err.decode(errors="replace"))
    if error is not None:
        raise error
    return out.decode(errors="replace")


async def run_plan_async(plan: Iterable[Cmd], *, time_limit: float = 10.0) -> None:
    for cmd in plan:
        await run_cmd_async(cmd, time_limit=time_limit)


async def teardown_netns(netns: str) -> None:
    """Kill what still runs in pod namespace ``netns``, delete it and its ``/etc/netns`` files
    (a failure to delete is logged: cleanup finds it later)."""
    if netns_exists(netns):
        try:
            out = await run_cmd_async(Cmd(("ip", "netns", "pids", netns)))
        except NetError:
            out = ""
        for tok in out.split():
            if tok.isdigit():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(tok), signal.SIGKILL)
        try:
            await run_plan_async(netns_delete_plan(netns))
        except NetError as exc:
            log.warning("cannot delete namespace %s: %s", netns, exc)
    with contextlib.suppress(ValueError):
        remove_pod_etc(netns)


# -- inspection -----------------------------------------------------------------------------


def list_netns(netns_dir: Path = NETNS_DIR) -> list[str]:
    """Names of the named network namespaces (what ``ip netns list`` shows)."""
    try:
        return sorted(p.name for p in netns_dir.iterdir())
    except FileNotFoundError:
        return []


def netns_exists(name: str, netns_dir: Path = NETNS_DIR) -> bool:
    return (netns_dir / name).exists()


def netns_pids(name: str) -> list[int]:
    """Processes whose network namespace is ``name`` (as ``ip netns pids``)."""
    try:
        out = run_cmd(Cmd(("ip", "netns", "pids", name)), timeout=10.0)
    except NetError:
        return []
    return sorted({int(tok) for tok in out.split() if tok.isdigit()})


def weft_host_routes() -> list[str]:
    """Destinations of the host routes Weft added (tagged with :data:`ROUTE_PROTO`)."""
    try:
        out = run_cmd(Cmd(("ip", "route", "show", "proto", str(ROUTE_PROTO))))
    except NetError:
        return []
    dests: list[str] = []
    for line in out.splitlines():
        parts = line.split()
        if not parts:
            continue
        # "blackhole 10.244.0.0/16" or "10.244.0.0/16 ..." depending on the route type
        dest = parts[1] if parts[0] in ("blackhole", "unreachable", "prohibit") else parts[0]
        dests.append(dest)
    return dests


def host_route_conflicts(net: MeshNetwork) -> list[str]:
    """Host routes (not Weft's) that overlap the mesh's ranges: using them would cut the host off
    from those addresses, so ``weft up`` refuses."""
    try:
        out = run_cmd(Cmd(("ip", "-4", "route", "show", "table", "all")))
    except NetError:
        return []
    conflicts: list[str] = []
    for line in out.splitlines():
        parts = line.split()
        if not parts or ("proto" in parts and _after(parts, "proto") == str(ROUTE_PROTO)):
            continue
        if parts[0] in ("broadcast", "local", "multicast", "anycast"):
            continue
        dest = (
            parts[1]
            if parts[0] in ("blackhole", "unreachable", "prohibit", "unicast")
            else parts[0]
        )
        if dest == "default":
            continue
        try:
            network = ipaddress.ip_network(dest, strict=False)
        except ValueError:
            continue
        if not isinstance(network, ipaddress.IPv4Network):
            continue
        if any(network.overlaps(r) for r in net.ranges):
            conflicts.append(line.strip())
    return conflicts


def _after(parts: list[str], key: str) -> str | None:
    try:
        return parts[parts.index(key) + 1]
    except (ValueError, IndexError):
        return None


# -- iptables flavour -----------------------------------------------------------------------

IPTABLES_CANDIDATES = ("iptables-nft", "iptables-legacy", "iptables")


def detect_iptables(probe_netns: str | None = None) -> str:
    """The iptables binary whose ``nat`` table, ``owner``, ``multiport``, ``comment`` and
    ``REDIRECT`` work inside a fresh namespace here; raises NetError listing what failed.

    Both flavours work per namespace (rules vanish with the namespace), so the first that passes
    wins; nft first because that is what current distributions default to.
    """
    name = probe_netns or f"{NETNS_PREFIX}-probe-{os.getpid()}"
    rules = proxy_init_rules(skip_inbound=(PortRange(4567, 4568),), skip_outbound=())
    failures: list[str] = []
    run_cmd(Cmd(("ip", "netns", "add", name), ok_if=("File exists",)))
    try:
        for binary in IPTABLES_CANDIDATES:
            if shutil.which(f"{binary}-restore") is None:
                failures.append(f"{binary}: {binary}-restore not installed")
                continue
            try:
                run_cmd(Cmd(("ip", "netns", "exec", name, f"{binary}-restore", "--noflush"), rules))
                run_cmd(Cmd(("ip", "netns", "exec", name, binary, "-t", "nat", "-S")))
            except NetError as exc:
                failures.append(f"{binary}: {exc}")
                continue
            return binary
    finally:
        run_plan(netns_delete_plan(name))
    raise NetError("no usable iptables in a network namespace: " + "; ".join(failures))


# -- sockets inside a namespace -------------------------------------------------------------

_CLONE_NEWNET = 0x40000000
_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_socket(
    netns: str | None,
    family: int = socket.AF_INET,
    kind: int = socket.SOCK_STREAM,
    *,
    netns_dir: Path = NETNS_DIR,
) -> socket.socket:
    """A socket that lives in network namespace ``netns`` (``None``: this process's).

    A socket keeps the namespace it was created in, so a short-lived thread enters the namespace,
    creates the socket and exits; the calling thread never moves.
    """
    if netns is None:
        return socket.socket(family, kind)
    result: list[socket.socket] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            fd = os.open(netns_dir / netns, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            failure.append(OSError(errno.ENOENT, f"network namespace {netns!r} does not exist"))
            return
        try:
            _setns(fd)
            result.append(socket.socket(family, kind))
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)
        finally:
            os.close(fd)

    thread = threading.Thread(target=work, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


async def tcp_probe(netns: str | None, host: str, port: int, *, time_limit: float = 1.0) -> bool:
    """True when a TCP connection to ``host:port`` from inside ``netns`` succeeds."""
    loop = asyncio.get_running_loop()
    try:
        sock = await asyncio.to_thread(netns_socket, netns)
    except OSError:
        return False
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), time_limit)
        return True
    except (OSError, TimeoutError):
        return False
    finally:
        sock.close()


async def http_probe(
    netns: str | None, host: str, port: int, path: str = "/", *, time_limit: float = 1.0
) -> bool:
    """True when ``GET path`` on ``host:port`` from inside ``netns`` answers 2xx or 3xx (as a
    Kubernetes httpGet probe)."""
    loop = asyncio.get_running_loop()
    try:
        sock = await asyncio.to_thread(netns_socket, netns)
    except OSError:
        return False
    sock.setblocking(False)
    try:
        async with asyncio.timeout(time_limit):
            await loop.sock_connect(sock, (host, port))
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: weft-probe\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            await loop.sock_sendall(sock, request)
            head = b""
            while b"\r\n" not in head and len(head) < 1024:
                chunk = await loop.sock_recv(sock, 1024)
                if not chunk:
                    break
                head += chunk
        status_line = head.split(b"\r\n", 1)[0].split()
        return (
            len(status_line) >= 2
            and status_line[0].startswith(b"HTTP/")
            and status_line[1].isdigit()
            and 200 <= int(status_line[1]) < 400
        )
    except (OSError, TimeoutError):
        return False
    finally:
        sock.close()

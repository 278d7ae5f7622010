"""Socket addresses as the mesh passes them around: ``(host, port)`` tuples, parsed strictly."""

from __future__ import annotations

import ipaddress

Address = tuple[str, int]


def parse_hostport(text: str, *, default_host: str | None = None) -> Address:
    """Parse ``host:port``, ``[v6]:port`` or (with ``default_host``) ``:port`` / ``port``.

    Raises ValueError naming the text when it is not an address.
    """
    raw = text.strip()
    if raw.isdigit() and default_host is not None:
        host, port_s = default_host, raw
    elif raw.startswith("["):
        end = raw.find("]")
        if end < 0 or raw[end + 1 : end + 2] != ":":
            raise ValueError(f"invalid address {text!r}: expected [v6]:port")
        host, port_s = raw[1:end], raw[end + 2 :]
    else:
        host, sep, port_s = raw.rpartition(":")
        if not sep:
            raise ValueError(f"invalid address {text!r}: expected host:port")
        if not host:
            if default_host is None:
                raise ValueError(f"invalid address {text!r}: missing host")
            host = default_host
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"invalid address {text!r}: port must be 1-65535")
    return host, int(port_s)


def format_addr(addr: Address) -> str:
    """Format an address as ``host:port`` (``[v6]:port`` for IPv6)."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_ip(host: str) -> bool:
    """True when ``host`` is an IPv4 or IPv6 literal."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True

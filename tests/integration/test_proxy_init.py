"""``weft proxy-init`` (the injected ``weft-init`` container's command) in a network namespace of
the test's own: it installs the same rules the local runtime installs (one generator), a second
run leaves them as they are, and bad flags are refused."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from weft.core.proxyinit import parse_ports, proxy_init_rules

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"weft-t-pi-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def proxy_init(netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "weft", "proxy-init", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def nat_rules(netns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", netns, "iptables-nft", "-t", "nat", "-S"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [line for line in out.splitlines() if "weft" in line.lower()]


def test_it_installs_the_local_runtimes_rules_once(netns: str) -> None:
    done = proxy_init(netns, "--inbound-skip-ports", "22,8000-8010", "--iptables", "iptables-nft")
    assert done.returncode == 0, done.stderr
    rules = nat_rules(netns)
    assert any("--to-ports 4143" in r for r in rules) and any("--to-ports 4140" in r for r in rules)
    assert any("22,4143,4190,4191,8000:8010" in r for r in rules), rules
    # the same as the local runtime installs (the generator's input, restored directly)
    other = f"{netns}-b"
    subprocess.run(["ip", "netns", "add", other], check=True)
    try:
        generated = proxy_init_rules(skip_inbound=parse_ports("22,8000-8010", "x"),
                                     skip_outbound=parse_ports("4567,4568", "x"))  # fmt: skip
        subprocess.run(["ip", "netns", "exec", other, "iptables-nft-restore", "--noflush"],
                       input=generated, text=True, check=True)  # fmt: skip
        assert nat_rules(other) == rules
    finally:
        subprocess.run(["ip", "netns", "delete", other], check=False)
    # a restarted init container changes nothing
    again = proxy_init(netns, "--iptables", "iptables-nft")
    assert again.returncode == 0 and "in place already" in again.stderr
    assert nat_rules(netns) == rules


def test_bad_flags_are_refused_naming_them(netns: str) -> None:
    done = proxy_init(netns, "--outbound-skip-ports", "70000")
    assert done.returncode == 2 and "--outbound-skip-ports" in done.stderr
    done = proxy_init(netns, "--iptables", "no-such-iptables")
    assert done.returncode == 1 and "no iptables found" in done.stderr
    assert nat_rules(netns) == []

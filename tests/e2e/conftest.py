"""End-to-end fixtures: a real local mesh (network namespaces, iptables, sidecars) per test module.

``mesh`` brings a mesh up in a fresh state directory with ``weft up``, yields an
:class:`~meshlib.E2EMesh` driver (which runs the real ``weft`` command), and on teardown runs
``weft down`` and asserts that the host is as it was before: network namespaces, links, host
routes, iptables rules, ``/etc/netns`` and processes.

The tests need root and network namespaces; without them they skip with the reason. They create
namespaces only through Weft and send traffic only inside them (pod and service ranges that the
host blackholes).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# The test modules import their helpers from meshlib next to this file; pytest's importlib mode
# does not put test directories on sys.path, so this conftest (loaded first) does.
sys.path.insert(0, str(Path(__file__).parent))

from meshlib import E2EMesh, HostSnapshot, e2e_unavailable


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    reason = None
    checked = False
    for item in items:
        if here not in Path(str(item.fspath)).parents:
            continue
        item.add_marker(pytest.mark.e2e)
        if not checked:
            reason, checked = e2e_unavailable(), True
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2EMesh]:
    before = HostSnapshot.take()
    state = tmp_path_factory.mktemp("weft") / f"state-{uuid.uuid4().hex[:6]}"
    driver = E2EMesh(state)
    driver.weft("up", timeout=60)
    try:
        yield driver
    finally:
        down = driver.weft("down", check=False, timeout=90)
        after = HostSnapshot.take()
        problems = before.differences(after)
        assert down.returncode == 0, f"weft down failed: {down.stderr}"
        assert not problems, "weft down left things behind:\n" + "\n".join(problems)
        assert not state.exists(), f"state directory {state} left behind"

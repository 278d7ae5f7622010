"""Build hook: with ``WEFT_MYPYC=1``, compile the proxy's per-request modules with mypyc.

Everything else about the package (metadata, dependencies, packages) is in pyproject.toml; this
file only adds the C extensions. Without ``WEFT_MYPYC=1`` (the default, and what CI and ``make
test`` use) nothing is compiled and the package is pure Python.

The compiled build is meant for a non-editable install (``WEFT_MYPYC=1 pip install
--no-build-isolation .``, or a wheel built the same way): a compiled module shadows its ``.py``
file, so in an editable checkout later edits to these files would be silently ignored until the
next build. ``make compiled`` builds into its own virtualenv for that reason.

Not for: choosing modules at run time; a compiled and a pure-Python weft behave the same.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

# The modules every proxied request runs through (issue #2: CPU per request).
HOT_MODULES = (
    "src/weft/core/accept.py",
    "src/weft/core/balancer.py",
    "src/weft/core/detect.py",
    "src/weft/core/h2conn.py",
    "src/weft/core/h2limits.py",
    "src/weft/core/hpack.py",
    "src/weft/metrics/proxy.py",
    "src/weft/proxy/accept/conn.py",
    "src/weft/proxy/accept/handover.py",
    "src/weft/proxy/accept/listen.py",
    "src/weft/proxy/accept/mesh.py",
    "src/weft/proxy/outbound/concrete.py",
    "src/weft/proxy/outbound/endpoint.py",
    "src/weft/proxy/outbound/logical.py",
    "src/weft/proxy/outbound/service.py",
    "src/weft/proxy/protocol/http1/client.py",
    "src/weft/proxy/protocol/http1/exchange.py",
    "src/weft/proxy/protocol/http1/framing.py",
    "src/weft/proxy/protocol/http1/server.py",
    "src/weft/proxy/protocol/http2/client.py",
    "src/weft/proxy/protocol/http2/context.py",
    "src/weft/proxy/protocol/http2/grpc.py",
    "src/weft/proxy/protocol/http2/peer.py",
    "src/weft/proxy/protocol/http2/server.py",
    "src/weft/proxy/protocol/http2/stream.py",
    "src/weft/proxy/protocol/tcp.py",
)


def _compiled() -> bool:
    flag = os.environ.get("WEFT_MYPYC", "")
    if flag not in ("", "0", "1"):
        raise SystemExit(f"WEFT_MYPYC must be 0 or 1, not {flag!r}")
    return flag == "1"


def _extensions() -> list[Extension]:
    if not _compiled():
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        raise SystemExit(
            "WEFT_MYPYC=1 needs mypy (with mypyc) and weft's dependencies in the build "
            "environment: install them, then `WEFT_MYPYC=1 pip install --no-build-isolation .`"
        ) from None
    # mypyc type-checks the whole program as `make lint` does: with an isolated build
    # environment (no uvloop, httptools, ...) the checked types and the compiled code differ.
    return mypycify(["--config-file", "pyproject.toml", *HOT_MODULES], group_name="weft")


setup(ext_modules=_extensions())

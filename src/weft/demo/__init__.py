"""The demo application ``weft demo`` deploys (namespace ``booksapp``): plain HTTP and gRPC
services that know nothing about the mesh and call each other by service name.

- :mod:`~weft.demo.web`: the front end; ``GET /`` calls ``http://books:8080/`` and
  ``http://authors:8080/`` and combines their answers (502 when one fails);
- :mod:`~weft.demo.backend`: a backend (books or authors) answering a known fraction of requests
  with 500 (``FAILURE_RATE``), spread evenly so that N requests fail exactly ``N * rate`` times;
- :mod:`~weft.demo.traffic`: a traffic generator, unbounded in the demo, bounded (count, duration)
  when tests use it as a load client;
- :mod:`~weft.demo.ratings`: a gRPC service (grpcio, h2c; unary, server-, client- and
  bidirectional streaming) failing a known fraction of calls with UNAVAILABLE;
- :mod:`~weft.demo.grpc_traffic`: its traffic generator (all four kinds of call, with deadlines);
- ``demo.yaml``: the Namespace, Deployments and Services.

The HTTP apps use the standard library only, the gRPC ones grpcio (the ``demo`` extra), so the
apps behave like any unmeshed app (``python -m weft.demo.<app>``).

Not for: testing the proxy's protocol corners (see :mod:`weft.testing`).
"""

from __future__ import annotations

from importlib import resources


def manifest_text() -> str:
    """The demo's manifests (``demo.yaml``)."""
    return resources.files(__package__).joinpath("demo.yaml").read_text(encoding="utf-8")

"""The demo application ``weft demo`` deploys (namespace ``booksapp``): plain HTTP services that
know nothing about the mesh and call each other by service name.

- :mod:`~weft.demo.web`: the front end; ``GET /`` calls ``http://books:8080/`` and
  ``http://authors:8080/`` and combines their answers (502 when one fails);
- :mod:`~weft.demo.backend`: a backend (books or authors) answering a known fraction of requests
  with 500 (``FAILURE_RATE``), spread evenly so that N requests fail exactly ``N * rate`` times;
- :mod:`~weft.demo.traffic`: a traffic generator, unbounded in the demo, bounded (count, duration)
  when tests use it as a load client;
- ``demo.yaml``: the Namespace, Deployments and Services.

Standard library only (``python -m weft.demo.<app>``), so the apps behave like any unmeshed app.

Not for: testing the proxy's protocol corners (see :mod:`weft.testing`).
"""

from __future__ import annotations

from importlib import resources


def manifest_text() -> str:
    """The demo's manifests (``demo.yaml``)."""
    return resources.files(__package__).joinpath("demo.yaml").read_text(encoding="utf-8")

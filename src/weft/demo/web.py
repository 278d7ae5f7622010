"""The demo front end: ``GET /`` calls the books and authors services and joins their answers.

Environment: ``BOOKS_URL`` (``http://books:8080/``), ``AUTHORS_URL`` (``http://authors:8080/``),
``PORT`` (8080). A failed backend call makes the answer a 502 naming it. The calls go to service
names; the mesh (hosts file, iptables, proxies) does the rest.
"""

from __future__ import annotations

import http.client
import json
import os
from typing import Any
from urllib.parse import urlsplit

from weft.demo._server import Request, serve

TIMEOUT = 5.0


def fetch(url: str) -> tuple[int, Any]:
    """GET ``url``; ``(status, json body)``, or ``(0, error text)`` when no answer came."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=TIMEOUT)
    try:
        conn.request("GET", parts.path or "/", headers={"Accept": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        return resp.status, body
    except OSError as exc:
        return 0, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def main() -> int:
    books_url = os.environ.get("BOOKS_URL", "http://books:8080/")
    authors_url = os.environ.get("AUTHORS_URL", "http://authors:8080/")

    def handle(req: Request) -> tuple[int, Any]:
        if req.path == "/healthz":
            return 200, {"ok": True}
        books_status, books = fetch(books_url)
        authors_status, authors = fetch(authors_url)
        failed = [
            f"{name} answered {status or 'nothing'}"
            for name, status in (("books", books_status), ("authors", authors_status))
            if status != 200
        ]
        if failed:
            return 502, {"error": "; ".join(failed)}
        names = {a["id"]: a["name"] for a in authors.get("authors", [])}
        return 200, {
            "books": [
                {"title": b["title"], "author": names.get(b["author"], "?")}
                for b in books.get("books", [])
            ],
            "served_by": {"books": books.get("pod"), "authors": authors.get("pod")},
        }

    return serve(handle)


if __name__ == "__main__":
    raise SystemExit(main())

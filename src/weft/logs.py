"""Logging setup shared by every Weft process: text or JSON lines, level by flag or environment.

``WEFT_LOG`` (or the ``--log-level`` flag) sets the level; ``--log-format json`` emits one JSON
object per line with ``ts``, ``level``, ``logger`` and ``msg``. The access log (logger
``weft.access``) writes its JSON lines to its own destination.
"""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure(level: str = "info", fmt: str = "text", access_log: str | None = None) -> None:
    """Configure the root logger (stderr) and, when asked, the access log."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root.addHandler(handler)
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    root.setLevel(numeric)
    # the Kubernetes client's HTTP library logs every request at INFO: only its warnings
    logging.getLogger("httpx2").setLevel(max(numeric, logging.WARNING))
    access = logging.getLogger("weft.access")
    access.propagate = False
    for h in list(access.handlers):
        access.removeHandler(h)
    if access_log is not None:
        target: logging.Handler = (
            logging.StreamHandler(sys.stdout)
            if access_log == "-"
            else logging.FileHandler(access_log)
        )
        target.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(target)
        access.setLevel(logging.INFO)
    else:
        access.setLevel(logging.CRITICAL + 1)

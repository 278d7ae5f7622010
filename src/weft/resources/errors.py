"""Validation errors of resource documents: which file, which document, which field, what is wrong.

A :class:`FieldError` names one problem by its field path (``spec.ports[0].port``); an
:class:`InvalidResources` carries every problem found in one batch of documents (a file or an API
request), so that a user sees all of them at once and nothing of the batch is applied.

Not for: I/O or the HTTP mapping of errors (the control plane maps ``InvalidResources`` to a 422).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem in one document.

    ``document`` is the index of the document in its batch (0-based; the message counts from 1) or
    ``None`` when the problem is not tied to one document (an unreadable file); ``path`` is the
    field path inside the document (``""`` for the whole document); ``source`` names the file the
    document came from, when known; ``line`` is the 1-based line in that file where the document
    starts, when known.
    """

    path: str
    message: str
    document: int | None = None
    source: str | None = None
    line: int | None = None

    def located(
        self, *, document: int | None = None, source: str | None = None, line: int | None = None
    ) -> FieldError:
        """The same error, with the document index/source/line filled in where still unknown."""
        return FieldError(
            path=self.path,
            message=self.message,
            document=self.document if self.document is not None else document,
            source=self.source if self.source is not None else source,
            line=self.line if self.line is not None else line,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "message": self.message}
        if self.document is not None:
            out["document"] = self.document
        if self.source is not None:
            out["source"] = self.source
        if self.line is not None:
            out["line"] = self.line
        return out

    @classmethod
    def from_json(cls, data: Any) -> FieldError:
        if not isinstance(data, dict):
            return cls(path="", message=str(data))
        doc = data.get("document")
        line = data.get("line")
        src = data.get("source")
        return cls(
            path=str(data.get("path", "")),
            message=str(data.get("message", "")),
            document=doc if isinstance(doc, int) else None,
            source=src if isinstance(src, str) else None,
            line=line if isinstance(line, int) else None,
        )

    def __str__(self) -> str:
        where: list[str] = []
        if self.source is not None:
            where.append(self.source if self.line is None else f"{self.source}:{self.line}")
        if self.document is not None:
            where.append(f"document {self.document + 1}")  # people count from 1
        prefix = ", ".join(where)
        field = self.path or "(document)"
        return f"{prefix}: {field}: {self.message}" if prefix else f"{field}: {self.message}"


class InvalidResources(ValueError):
    """A batch of documents was rejected; ``errors`` lists every problem found."""

    def __init__(self, errors: Iterable[FieldError], summary: str | None = None) -> None:
        self.errors: tuple[FieldError, ...] = tuple(errors)
        if not self.errors:
            raise ValueError("InvalidResources needs at least one error")
        self.summary = summary or _summary(self.errors)
        super().__init__(self.summary)

    def __str__(self) -> str:
        if len(self.errors) == 1:
            return str(self.errors[0])
        lines = [self.summary, *(f"  {e}" for e in self.errors)]
        return "\n".join(lines)


def _summary(errors: tuple[FieldError, ...]) -> str:
    sources = sorted({e.source for e in errors if e.source})
    what = f" in {', '.join(sources)}" if sources else ""
    n = len(errors)
    return f"{n} invalid field{'s' if n != 1 else ''}{what}; nothing was applied"

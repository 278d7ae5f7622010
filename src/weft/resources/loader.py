"""Loading resource documents from YAML/JSON files and directories, all-or-nothing.

``load_paths(["web.yaml", "manifests/"])`` reads every file (a directory contributes its ``*.yaml``,
``*.yml`` and ``*.json`` files, sorted, not recursively, as ``kubectl apply -f DIR`` does), splits
multi-document YAML, validates each document with :func:`weft.resources.models.parse_resource`,
and returns them in order. Any problem anywhere (unreadable file, invalid YAML, duplicate keys, an
invalid field) raises one :class:`~weft.resources.errors.InvalidResources` listing every problem
with its file, document (and the line it starts on) and field path; callers apply nothing then.

YAML is read with the safe loader, without implicit timestamps (``creationTimestamp`` stays a
string, as in JSON) and rejecting duplicate mapping keys (Kubernetes does too).

Not for: cross-document rules (namespace existence, cluster IPs): the control plane checks those.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from weft.resources.errors import FieldError, InvalidResources
from weft.resources.registry import Resource, parse_resource

SUFFIXES = (".yaml", ".yml", ".json")
MAX_FILE_BYTES = 16 * 1024 * 1024


class _Loader(yaml.SafeLoader):
    """Safe YAML without timestamp conversion and with duplicate keys rejected."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:
                    continue  # unhashable keys are reported by the base constructor
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Document:
    """One validated document: where it came from and what it is."""

    source: str
    index: int
    line: int
    data: Mapping[str, Any]
    resource: Resource

    @property
    def kind(self) -> str:
        return self.resource.KIND

    @property
    def name(self) -> str:
        return self.resource.metadata.name


def parse_text(text: str, source: str) -> list[tuple[int, Any]]:
    """Split YAML (or JSON, a YAML subset) into ``(line, document)`` pairs, skipping empty ones.

    Raises InvalidResources naming ``source``, the document and the line of a syntax error.
    """
    docs: list[tuple[int, Any]] = []
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            line = node.start_mark.line + 1
            data = loader.construct_document(node)
            if data is None:
                continue
            docs.append((line, data))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        detail = f"{context}: {problem}" if context else str(problem)
        raise InvalidResources(
            [
                FieldError(
                    path="",
                    message=f"invalid YAML{where}: {detail}",
                    document=len(docs),
                    source=source,
                    line=mark.line + 1 if mark is not None else None,
                )
            ]
        ) from None
    finally:
        loader.dispose()
    return docs


def load_text(text: str, source: str) -> list[Document]:
    """Parse and validate every document of one file's text. Raises InvalidResources."""
    out: list[Document] = []
    errors: list[FieldError] = []
    for i, (line, data) in enumerate(parse_text(text, source)):
        try:
            resource = parse_resource(data)
        except InvalidResources as exc:
            errors.extend(e.located(document=i, source=source, line=line) for e in exc.errors)
            continue
        out.append(Document(source, i, line, data, resource))
    if errors:
        raise InvalidResources(errors)
    return out


def expand_paths(paths: Iterable[str]) -> list[str]:
    """Files named, plus the resource files of directories named (sorted, not recursive)."""
    out: list[str] = []
    for p in paths:
        if p == "-":
            out.append(p)
            continue
        path = Path(p)
        if path.is_dir():
            out.extend(
                str(child)
                for child in sorted(path.iterdir())
                if child.is_file() and child.suffix in SUFFIXES
            )
        else:
            out.append(p)
    return out


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    size = os.stat(path).st_size
    if size > MAX_FILE_BYTES:
        raise OSError(f"file is larger than {MAX_FILE_BYTES} bytes")
    with open(path, encoding="utf-8") as f:
        return f.read()


def load_paths(paths: Sequence[str]) -> list[Document]:
    """Load and validate every document of every file; all of them or an InvalidResources."""
    docs: list[Document] = []
    errors: list[FieldError] = []
    files = expand_paths(paths)
    if not files:
        raise InvalidResources(
            [FieldError("", f"no resource files ({', '.join(SUFFIXES)}) in {', '.join(paths)}")]
        )
    for f in files:
        source = "<stdin>" if f == "-" else f
        try:
            text = _read(f)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            errors.append(FieldError("", f"cannot read file: {reason}", source=source))
            continue
        try:
            docs.extend(load_text(text, source))
        except InvalidResources as exc:
            errors.extend(exc.errors)
    if errors:
        raise InvalidResources(errors)
    return docs

"""Tests for weft.resources.loader: files, directories, YAML errors, all-or-nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from weft.resources import InvalidResources, load_paths, load_text

GOOD = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  creationTimestamp: 2024-01-01T00:00:00Z
spec:
  selector: {app: web}
  ports:
  - port: 80
"""

BAD_PORT = """\
apiVersion: v1
kind: Service
metadata: {name: ok}
spec:
  ports: [{port: 80}]
---
# the second document
apiVersion: v1
kind: Service
metadata: {name: broken}
spec:
  ports:
  - port: 0
"""


def test_multi_document_file(tmp_path: Path) -> None:
    f = tmp_path / "shop.yaml"
    f.write_text(GOOD)
    docs = load_paths([str(f)])
    assert [(d.kind, d.name, d.index, d.line) for d in docs] == [
        ("Namespace", "shop", 0, 1),
        ("Service", "web", 1, 6),
    ]
    # no implicit timestamps: the value stays the string it was written as
    assert docs[1].data["metadata"]["creationTimestamp"] == "2024-01-01T00:00:00Z"
    assert all(d.source == str(f) for d in docs)


def test_errors_name_file_document_line_and_field(tmp_path: Path) -> None:
    f = tmp_path / "svc.yaml"
    f.write_text(BAD_PORT)
    with pytest.raises(InvalidResources) as info:
        load_paths([str(f)])
    (err,) = info.value.errors
    assert (err.source, err.document, err.line, err.path) == (str(f), 1, 8, "spec.ports[0].port")
    assert str(err) == f"{f}:8, document 2: spec.ports[0].port: must be >= 1, got 0"
    assert "nothing was applied" in info.value.summary


def test_invalid_yaml_names_file_and_position(tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: web\nspec: {}\n")
    with pytest.raises(InvalidResources) as info:
        load_paths([str(f)])
    (err,) = info.value.errors
    assert err.source == str(f)
    assert err.message.startswith("invalid YAML at line ")
    assert str(f) in str(info.value)


def test_duplicate_keys_are_rejected() -> None:
    with pytest.raises(InvalidResources) as info:
        load_text("apiVersion: v1\nkind: Namespace\nkind: Service\nmetadata: {name: a}\n", "d.yaml")
    assert "found duplicate key 'kind'" in info.value.errors[0].message
    assert info.value.errors[0].line == 3


def test_python_tags_are_refused() -> None:
    with pytest.raises(InvalidResources) as info:
        load_text("!!python/object/apply:os.system ['true']\n", "evil.yaml")
    assert "invalid YAML" in info.value.errors[0].message


def test_all_or_nothing_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(BAD_PORT)
    (tmp_path / "c.yaml").write_text("kind: [unclosed\n")
    with pytest.raises(InvalidResources) as info:
        load_paths([str(tmp_path)])
    sources = sorted({Path(e.source or "").name for e in info.value.errors})
    assert sources == ["b.yaml", "c.yaml"]


def test_directory_is_sorted_and_not_recursive(tmp_path: Path) -> None:
    (tmp_path / "2-svc.yml").write_text(GOOD.split("---\n")[1].replace("  namespace: shop\n", ""))
    (tmp_path / "1-ns.json").write_text(
        json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    )
    (tmp_path / "notes.txt").write_text("not a manifest")
    sub = tmp_path / "nested"
    sub.mkdir()
    (sub / "x.yaml").write_text("this: [is not read\n")
    docs = load_paths([str(tmp_path)])
    assert [d.kind for d in docs] == ["Namespace", "Service"]


def test_missing_file_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidResources) as info:
        load_paths([str(tmp_path / "nope.yaml")])
    assert "cannot read file: No such file or directory" in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidResources, match="no resource files"):
        load_paths([str(empty)])


def test_empty_documents_are_skipped() -> None:
    docs = load_text("---\n---\n" + GOOD + "---\n", "x.yaml")
    assert [d.index for d in docs] == [0, 1]

"""Field readers that validate one value at a field path and collect every error on the way.

The resource models (:mod:`weft.resources.models`) read documents through a :class:`Checker`: each
reader returns the value when it is valid (or a default) and records a
:class:`~weft.resources.errors.FieldError` naming the path and the offending value otherwise, so
that one pass over a document reports all of its problems.

Not for: the shape of any particular kind (see :mod:`weft.resources.models`).
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from weft.resources.errors import FieldError

EMPTY: Mapping[str, Any] = MappingProxyType({})

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def join(path: str, key: str) -> str:
    """``spec`` + ``ports`` -> ``spec.ports``; keys that are not identifiers are quoted."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def index(path: str, i: int) -> str:
    return f"{path}[{i}]"


def show(value: Any) -> str:
    """A short, quoted rendering of an offending value for error messages."""
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


class Checker:
    """Collects :class:`FieldError` values while a document is read."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path=path, message=message))

    # -- structure ---------------------------------------------------------------------------

    def mapping(self, value: Any, path: str, *, required: bool = False) -> Mapping[str, Any]:
        """``value`` as a mapping; ``{}`` (with an error when required) when absent or wrong."""
        if value is None:
            if required:
                self.error(path, "required field is missing")
            return EMPTY
        if not isinstance(value, Mapping):
            self.error(path, f"must be a mapping, got {type_name(value)} {show(value)}")
            return EMPTY
        for key in value:
            if not isinstance(key, str):
                self.error(path, f"keys must be strings, got {type_name(key)} {show(key)}")
                return EMPTY
        return value

    def items(self, value: Any, path: str, *, required: bool = False) -> Sequence[Any]:
        """``value`` as a list; ``[]`` (with an error when required) when absent or wrong."""
        if value is None:
            if required:
                self.error(path, "required field is missing")
            return ()
        if not isinstance(value, list | tuple):
            self.error(path, f"must be a list, got {type_name(value)} {show(value)}")
            return ()
        return value

    def known_fields(
        self,
        data: Mapping[str, Any],
        path: str,
        known: frozenset[str],
        passthrough: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        """Report fields that are neither ``known`` nor ``passthrough``; return the passthrough
        ones (Kubernetes fields Weft keeps but does not interpret), checked to be JSON values."""
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key in known:
                continue
            if key in passthrough:
                if value is not None and self.json_value(value, join(path, key)):
                    extra[key] = value
                continue
            choices = ", ".join(sorted(known | passthrough))
            self.error(join(path, key), f"unknown field; known fields here: {choices}")
        return extra

    def json_value(self, value: Any, path: str) -> bool:
        if value is None or isinstance(value, str | bool | int):
            return True
        if isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                self.error(path, f"must be a finite number, got {show(value)}")
                return False
            return True
        if isinstance(value, Mapping):
            ok = True
            for k, v in value.items():
                if not isinstance(k, str):
                    self.error(path, f"keys must be strings, got {type_name(k)} {show(k)}")
                    return False
                ok = self.json_value(v, join(path, k)) and ok
            return ok
        if isinstance(value, list | tuple):
            ok = True
            for i, v in enumerate(value):
                ok = self.json_value(v, index(path, i)) and ok
            return ok
        self.error(path, f"unsupported value {show(value)} of type {type_name(value)}")
        return False

    # -- scalars -----------------------------------------------------------------------------

    def string(
        self,
        value: Any,
        path: str,
        *,
        required: bool = False,
        nonempty: bool = True,
        max_len: int | None = None,
    ) -> str | None:
        if value is None:
            if required:
                self.error(path, "required field is missing")
            return None
        if not isinstance(value, str):
            hint = ' (quote it in YAML, e.g. "1")' if isinstance(value, int | float) else ""
            self.error(path, f"must be a string, got {type_name(value)} {show(value)}{hint}")
            return None
        if nonempty and not value:
            self.error(path, "must not be empty")
            return None
        if max_len is not None and len(value) > max_len:
            self.error(path, f"must be at most {max_len} characters, got {len(value)}")
            return None
        return value

    def choice(
        self, value: Any, path: str, choices: Sequence[str], *, default: str | None = None
    ) -> str | None:
        if value is None:
            return default
        text = self.string(value, path)
        if text is None:
            return default
        if text not in choices:
            self.error(path, f"must be one of {', '.join(choices)}, got {show(value)}")
            return default
        return text

    def integer(
        self,
        value: Any,
        path: str,
        *,
        required: bool = False,
        minimum: int | None = None,
        maximum: int | None = None,
        default: int | None = None,
    ) -> int | None:
        if value is None:
            if required:
                self.error(path, "required field is missing")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"must be an integer, got {type_name(value)} {show(value)}")
            return default
        if minimum is not None and value < minimum:
            self.error(path, f"must be >= {minimum}, got {value}")
            return default
        if maximum is not None and value > maximum:
            self.error(path, f"must be <= {maximum}, got {value}")
            return default
        return value

    def boolean(self, value: Any, path: str, *, default: bool = False) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(path, f"must be true or false, got {type_name(value)} {show(value)}")
            return default
        return value

    def port(self, value: Any, path: str, *, required: bool = False) -> int | None:
        return self.integer(value, path, required=required, minimum=1, maximum=65535)

    def ip(self, value: Any, path: str) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            self.error(path, f"must be an IP address, got {show(value)}")
            return None

    def string_list(self, value: Any, path: str) -> tuple[str, ...]:
        out: list[str] = []
        for i, item in enumerate(self.items(value, path)):
            if item is None:
                self.error(index(path, i), "must be a string, got null")
                continue
            text = self.string(item, index(path, i), nonempty=False)
            if text is not None:
                out.append(text)
        return tuple(out)

    # -- names -------------------------------------------------------------------------------

    def dns_label(self, value: Any, path: str, *, required: bool = True) -> str | None:
        """RFC 1123 label: lower case alphanumerics and '-', at most 63 characters."""
        return self._name(
            value, path, required, _DNS_LABEL, 63,
            "alphanumeric characters or '-', starting and ending with an alphanumeric",
        )  # fmt: skip

    def dns_1035_label(self, value: Any, path: str, *, required: bool = True) -> str | None:
        """RFC 1035 label (Service names): like a DNS label, but starting with a letter."""
        return self._name(
            value, path, required, _DNS_1035_LABEL, 63,
            "alphanumeric characters or '-', starting with a letter and ending with an "
            "alphanumeric",
        )  # fmt: skip

    def dns_subdomain(self, value: Any, path: str, *, required: bool = True) -> str | None:
        """RFC 1123 subdomain: DNS labels separated by '.', at most 253 characters."""
        return self._name(
            value, path, required, _DNS_SUBDOMAIN, 253,
            "alphanumeric characters, '-' or '.', starting and ending with an alphanumeric",
        )  # fmt: skip

    def _name(
        self,
        value: Any,
        path: str,
        required: bool,
        pattern: re.Pattern[str],
        limit: int,
        rule: str,
    ) -> str | None:
        text = self.string(value, path, required=required)
        if text is None:
            return None
        if len(text) > limit or not pattern.match(text):
            self.error(
                path, f"invalid name {show(text)}: must be at most {limit} lower case {rule}"
            )
            return None
        return text

    def port_name(self, value: Any, path: str, *, required: bool = False) -> str | None:
        """IANA service name: at most 15 lower case alphanumerics or '-', with a letter."""
        text = self.string(value, path, required=required)
        if text is None:
            return None
        if (
            len(text) > 15
            or not _IANA_SVC_NAME.match(text)
            or "--" in text
            or not any(c.isalpha() for c in text)
        ):
            self.error(
                path,
                f"invalid port name {show(text)}: must be at most 15 lower case alphanumeric "
                "characters or '-' with at least one letter and no '--'",
            )
            return None
        return text

    def env_name(self, value: Any, path: str) -> str | None:
        text = self.string(value, path, required=True)
        if text is None:
            return None
        if not _ENV_NAME.match(text):
            self.error(
                path,
                f"invalid environment variable name {show(text)}: must consist of letters, "
                "digits, '_', '-' or '.', and must not start with a digit",
            )
            return None
        return text

    def qualified_key(self, key: str, path: str) -> bool:
        """A label or annotation key: ``[prefix/]name`` (prefix a DNS subdomain, name <= 63)."""
        prefix, slash, name = key.rpartition("/")
        if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
            self.error(path, f"invalid key {show(key)}: the prefix must be a DNS subdomain")
            return False
        if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
            self.error(
                path,
                f"invalid key {show(key)}: the name part must be at most 63 alphanumeric "
                "characters, '-', '_' or '.', starting and ending with an alphanumeric",
            )
            return False
        return True

    def labels(self, value: Any, path: str) -> Mapping[str, str]:
        out: dict[str, str] = {}
        for key, val in self.mapping(value, path).items():
            kpath = join(path, key)
            if not self.qualified_key(key, kpath):
                continue
            text = self.label_value(val, kpath)
            if text is not None:
                out[key] = text
        return MappingProxyType(out)

    def label_value(self, value: Any, path: str) -> str | None:
        """A label value: at most 63 alphanumerics, '-', '_' or '.' (or empty)."""
        text = self.string(value, path, nonempty=False)
        if text is None:
            if value is None:
                self.error(path, "label value must be a string, got null")
            return None
        if len(text) > 63 or not _LABEL_VALUE.match(text):
            self.error(
                path,
                f"invalid label value {show(text)}: must be at most 63 alphanumeric "
                "characters, '-', '_' or '.', starting and ending with an alphanumeric",
            )
            return None
        return text

    def positive_number(self, value: Any, path: str, *, required: bool = False) -> float | None:
        """A finite number > 0 (an integer or a decimal)."""
        if value is None:
            if required:
                self.error(path, "required field is missing")
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(path, f"must be a number, got {type_name(value)} {show(value)}")
            return None
        if not math.isfinite(value) or value <= 0:
            self.error(path, f"must be a positive number, got {show(value)}")
            return None
        return value

    def annotations(self, value: Any, path: str) -> Mapping[str, str]:
        out: dict[str, str] = {}
        for key, val in self.mapping(value, path).items():
            kpath = join(path, key)
            if not self.qualified_key(key, kpath):
                continue
            text = self.string(val, kpath, nonempty=False)
            if text is None:
                if val is None:
                    self.error(kpath, "annotation value must be a string, got null")
                continue
            out[key] = text
        return MappingProxyType(out)

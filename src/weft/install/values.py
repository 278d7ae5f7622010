"""The values ``weft install`` renders from: defaults, a values file, flags; validated.

A value is named the same way everywhere: ``--proxy-log-level debug`` on the command line is
``proxy-log-level: debug`` in a values file (``-f FILE``) and in the installed configuration
(the ``weft-config`` ConfigMap's ``values.yaml``, which ``weft upgrade`` reads back). Flags win
over the file. Only the values a user set are recorded (:attr:`Values.explicit`), so an upgrade
takes the next version's defaults for everything else (its images, for one).

``ha: true`` (``--ha``) changes defaults, never what was set: three replicas of each control
plane Deployment, spread over nodes (required anti-affinity) and larger requests.

Not for: the objects themselves (:mod:`weft.install.controlplane`), nor certificates
(:mod:`weft.install.certs`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import yaml

from weft import __version__
from weft.identity.names import DEFAULT_TRUST_DOMAIN, check_trust_domain
from weft.inbound import DEFAULT_POLICIES, DEFAULT_POLICY
from weft.install.inject import LOG_LEVELS

NAMESPACE = "weft-system"
# Linkerd's default: the private ranges a cluster's pods and nodes use
CLUSTER_NETWORKS = "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8"
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_DURATION = re.compile(r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$")
_IMAGE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


class ValuesError(ValueError):
    """A value that cannot be used, named as the user wrote it."""


@dataclass(frozen=True, slots=True)
class Values:
    """Everything the manifests depend on, besides certificates; see the module docstring."""

    ha: bool = False
    image_registry: str = "weft"
    image_tag: str = __version__
    image_pull_policy: str = "IfNotPresent"
    controller_replicas: int = 1
    injector_replicas: int = 1
    controller_cpu_request: str = "100m"
    controller_memory_request: str = "64Mi"
    controller_memory_limit: str = "256Mi"
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    cluster_networks: str = CLUSTER_NETWORKS
    default_inbound_policy: str = DEFAULT_POLICY
    leaf_lifetime: str = "24h"
    control_log_level: str = "info"
    proxy_log_level: str = "info"
    webhook_timeout_seconds: int = 10
    # the names given explicitly (by a file or a flag), in their key form (``proxy-log-level``)
    explicit: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key in ("controller-replicas", "injector-replicas"):
            n = getattr(self, _attr(key))
            if not (isinstance(n, int) and 1 <= n <= 10):
                raise ValuesError(f"{key}: must be a whole number from 1 to 10, got {n!r}")
        if not (isinstance(self.webhook_timeout_seconds, int) and
                1 <= self.webhook_timeout_seconds <= 30):  # fmt: skip
            raise ValuesError(
                f"webhook-timeout-seconds: from 1 to 30 (the API server's bound), got "
                f"{self.webhook_timeout_seconds!r}"
            )
        for key in ("controller-cpu-request", "controller-memory-request",
                    "controller-memory-limit"):  # fmt: skip
            value = getattr(self, _attr(key))
            if not _QUANTITY.match(str(value)):
                raise ValuesError(f"{key}: not a Kubernetes quantity: {value!r}")
        for key in ("image-registry", "image-tag"):
            value = getattr(self, _attr(key))
            if not _IMAGE_PART.match(str(value)):
                raise ValuesError(f"{key}: not an image reference part: {value!r}")
        if self.image_pull_policy not in PULL_POLICIES:
            raise ValuesError(f"image-pull-policy: one of {', '.join(PULL_POLICIES)}")
        try:
            check_trust_domain(self.trust_domain)
        except ValueError as exc:
            raise ValuesError(f"trust-domain: {exc}") from None
        for net in self.networks:
            try:
                ipaddress.ip_network(net, strict=True)
            except ValueError as exc:
                raise ValuesError(f"cluster-networks: {exc}") from None
        if not self.networks:
            raise ValuesError("cluster-networks: at least one network")
        if self.default_inbound_policy not in DEFAULT_POLICIES:
            raise ValuesError(
                f"default-inbound-policy: one of {', '.join(DEFAULT_POLICIES)}, got "
                f"{self.default_inbound_policy!r}"
            )
        if not _DURATION.match(self.leaf_lifetime):
            raise ValuesError(f"leaf-lifetime: a duration such as 24h, got {self.leaf_lifetime!r}")
        for key in ("control-log-level", "proxy-log-level"):
            if getattr(self, _attr(key)) not in LOG_LEVELS:
                raise ValuesError(f"{key}: one of {', '.join(LOG_LEVELS)}")

    @property
    def networks(self) -> tuple[str, ...]:
        return tuple(n.strip() for n in self.cluster_networks.split(",") if n.strip())

    def image(self, name: str) -> str:
        return f"{self.image_registry}/{name}:{self.image_tag}"

    def recorded(self) -> dict[str, Any]:
        """What the installed configuration keeps: the explicit values, in key form."""
        return {key: getattr(self, _attr(key)) for key in sorted(self.explicit)}


def value_keys() -> list[str]:
    """Every value's key form, in declaration order."""
    return [f.name.replace("_", "-") for f in fields(Values) if f.name != "explicit"]


def _attr(key: str) -> str:
    return key.replace("-", "_")


def _coerce(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("true", "yes", "1"):
            return True
        if text in ("false", "no", "0"):
            return False
        raise ValuesError(f"{key}: true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool):
            raise ValuesError(f"{key}: a whole number, got {value!r}")
        try:
            return int(str(value), 10)
        except ValueError:
            raise ValuesError(f"{key}: a whole number, got {value!r}") from None
    if isinstance(value, (dict, list)) or value is None:
        raise ValuesError(f"{key}: a single value, got {value!r}")
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def resolve(*layers: Mapping[str, Any]) -> Values:
    """The values from ``layers`` (key form; later layers win), over the defaults (``ha``
    choosing its own). ValuesError names an unknown key or a bad value."""
    known = set(value_keys())
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key not in known:
                raise ValuesError(f"unknown value {key!r} (known: {', '.join(sorted(known))})")
            merged[key] = value
    defaults = Values()
    given = {_attr(k): _coerce(k, v, getattr(defaults, _attr(k))) for k, v in merged.items()}
    base = defaults
    if given.get("ha"):
        base = replace(
            base,
            controller_replicas=3,
            injector_replicas=3,
            controller_cpu_request="200m",
            controller_memory_request="128Mi",
            controller_memory_limit="512Mi",
        )
    return replace(base, **given, explicit=tuple(sorted(merged)))


def load_file(text: str, source: str) -> dict[str, Any]:
    """A values file: a YAML mapping of key-form names (ValuesError naming ``source``)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValuesError(f"{source}: not YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ValuesError(f"{source}: expected a mapping of value names, got {type(data).__name__}")
    return data


def dump(values: Values) -> str:
    """The installed configuration's ``values.yaml``: the explicit values."""
    return yaml.safe_dump(values.recorded(), sort_keys=True, default_flow_style=False)


__all__ = [
    "CLUSTER_NETWORKS",
    "NAMESPACE",
    "Values",
    "ValuesError",
    "dump",
    "load_file",
    "resolve",
    "value_keys",
]

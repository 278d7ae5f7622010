"""Unit tests for the retry/timeout/failure-accrual annotations of Services and HTTPRoutes."""

from __future__ import annotations

from typing import Any

import pytest

from weft.policy import DEFAULT_BUDGET, FailureAccrualConfig, RetryBudgetConfig, RetryPolicy
from weft.resources import InvalidResources, PolicyAnnotations, parse_resource
from weft.resources.annotations import parse_failure_accrual, parse_policy_annotations
from weft.resources.validate import Checker


def parse(annotations: dict[str, str], kind: str = "Service") -> PolicyAnnotations:
    c = Checker()
    out = parse_policy_annotations(annotations, kind, c)
    assert c.errors == [], c.errors
    return out


def service(annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "annotations": annotations},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080}]},
    }


def test_no_policy_annotations_means_nothing_configured() -> None:
    p = parse({"example.com/team": "blue", "weft.io/deployment": "x"})
    assert not p
    assert p.retry_policy() is None
    assert p.failure_accrual() is None
    assert p.timeouts().request is None


def test_retry_annotations_build_a_retry_policy() -> None:
    p = parse(
        {
            "retry.weft.io/http": "gateway-error, 429",
            "retry.weft.io/limit": "3",
            "retry.weft.io/timeout": "250ms",
            "retry.weft.io/budget-ratio": "0.1",
            "retry.weft.io/budget-min-per-second": "5",
            "retry.weft.io/budget-ttl": "20s",
        }
    )
    assert p.retry_policy(all_methods=True) == RetryPolicy(
        statuses=((429, 429), (502, 504)),
        limit=3,
        timeout=0.25,
        all_methods=True,
        budget=RetryBudgetConfig(ratio=0.1, min_per_second=5.0, ttl=20.0),
    )


def test_any_retry_annotation_turns_retries_on_with_defaults() -> None:
    p = parse({"retry.weft.io/limit": "2"})
    policy = p.retry_policy()
    assert policy is not None
    assert (policy.statuses, policy.limit, policy.budget, policy.all_methods) == (
        ((500, 599),),
        2,
        DEFAULT_BUDGET,
        False,
    )
    budget_only = parse({"retry.weft.io/budget-ratio": "0.5"}).retry_policy()
    assert budget_only is not None
    assert budget_only.budget == RetryBudgetConfig(ratio=0.5, min_per_second=10.0, ttl=10.0)


def test_timeouts_with_zero_meaning_none() -> None:
    p = parse(
        {
            "timeout.weft.io/request": "1m30s",
            "timeout.weft.io/response": "0s",
            "timeout.weft.io/idle": "45s",
        }
    )
    t = p.timeouts()
    assert (t.request, t.response, t.idle, t.backend_request) == (90.0, None, 45.0, None)
    # "0s" is set (it overrides), even though it means "no timeout"
    assert "timeout.weft.io/response" in p.values


def test_route_values_override_service_values_key_by_key() -> None:
    svc = parse(
        {
            "retry.weft.io/http": "5xx",
            "retry.weft.io/limit": "1",
            "timeout.weft.io/request": "10s",
            "timeout.weft.io/idle": "30s",
        }
    )
    route = parse({"retry.weft.io/limit": "4", "timeout.weft.io/request": "0s"}, "HTTPRoute")
    merged = svc.overridden_by(route)
    retry = merged.retry_policy()
    assert retry is not None and (retry.statuses, retry.limit) == (((500, 599),), 4)
    t = merged.timeouts()
    assert (t.request, t.idle) == (None, 30.0)
    assert svc.overridden_by(PolicyAnnotations()) is svc
    assert route.configures_retry and not parse({"timeout.weft.io/idle": "1s"}).configures_retry


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", FailureAccrualConfig()),
        ("max-failures=3", FailureAccrualConfig(max_failures=3)),
        (
            "max-failures=7, min-penalty=500ms, max-penalty=2m, jitter=0",
            FailureAccrualConfig(max_failures=7, min_penalty=0.5, max_penalty=120.0, jitter=0.0),
        ),
    ],
)
def test_failure_accrual_values(text: str, expected: FailureAccrualConfig) -> None:
    assert parse_failure_accrual(text) == expected
    p = parse({"failure-accrual.weft.io/consecutive": text})
    assert p.failure_accrual() == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("max-failures=0", "max-failures must be a whole number 1..1000"),
        ("max-failures=x", "max-failures must be a whole number"),
        ("min-penalty=10s,max-penalty=1s", "min_penalty <= max_penalty"),
        ("min-penalty=0s", "min-penalty must be positive"),
        ("jitter=2", "jitter must be 0..1"),
        ("jitter-ratio=0.5", 'unknown key "jitter-ratio"'),
        ("max-failures", "expected key=value"),
        ("max-failures=3,max-failures=4", 'duplicate key "max-failures"'),
        ("max-failures=3,,jitter=0", "empty item"),
        ("min-penalty=soon", "min-penalty: duration: invalid"),
    ],
)
def test_failure_accrual_errors(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        parse_failure_accrual(text)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("retry.weft.io/http", "5xy"),
        ("retry.weft.io/http", ""),
        ("retry.weft.io/http", "600"),
        ("retry.weft.io/limit", "11"),
        ("retry.weft.io/limit", "-1"),
        ("retry.weft.io/limit", "two"),
        ("retry.weft.io/timeout", "fast"),
        ("retry.weft.io/budget-ratio", "nan"),
        ("retry.weft.io/budget-ratio", "-0.1"),
        ("retry.weft.io/budget-min-per-second", "lots"),
        ("retry.weft.io/budget-ttl", "0s"),
        ("retry.weft.io/budget-ttl", "2m"),
        ("timeout.weft.io/request", "10"),
        ("timeout.weft.io/response", "-1s"),
        ("timeout.weft.io/idle", "1d"),
        ("failure-accrual.weft.io/consecutive", "max-failures=0"),
    ],
)
def test_invalid_values_are_refused_at_apply_naming_the_annotation(key: str, value: str) -> None:
    with pytest.raises(InvalidResources) as info:
        parse_resource(service({key: value}))
    (err,) = info.value.errors
    assert err.path == f'metadata.annotations["{key}"]'
    assert err.message.startswith(f"invalid {key} value")
    assert key in str(info.value)


def test_unknown_annotations_under_weft_prefixes_are_refused() -> None:
    with pytest.raises(InvalidResources) as info:
        parse_resource(
            service({"retry.weft.io/limits": "2", "timeout.weft.io/total": "1s", "x.io/a": "b"})
        )
    assert {e.path for e in info.value.errors} == {
        'metadata.annotations["retry.weft.io/limits"]',
        'metadata.annotations["timeout.weft.io/total"]',
    }
    assert all("unknown annotation" in e.message for e in info.value.errors)


def test_a_valid_service_keeps_its_annotations() -> None:
    ann = {"retry.weft.io/http": "5xx", "failure-accrual.weft.io/consecutive": "max-failures=5"}
    svc = parse_resource(service(ann))
    assert dict(svc.metadata.annotations) == ann


def test_without_a_checker_the_first_problem_raises() -> None:
    with pytest.raises(ValueError, match=r'retry\.weft\.io/limit"\]: invalid'):
        parse_policy_annotations({"retry.weft.io/limit": "x"}, "Service")


def test_grpc_retry_annotation_on_services_and_grpc_routes() -> None:
    for kind in ("Service", "GRPCRoute"):
        p = parse({"retry.weft.io/grpc": "Unavailable, cancelled,unavailable"}, kind)
        policy = p.retry_policy()
        assert policy is not None
        assert policy.grpc == ("cancelled", "unavailable")
    c = Checker()
    parse_policy_annotations({"retry.weft.io/grpc": "unavailable, not-found"}, "Service", c)
    assert c.errors and "not-found" in str(c.errors[0])

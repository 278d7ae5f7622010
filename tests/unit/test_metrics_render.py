"""``weft.metrics.render_family``: the one formatter of counter and gauge families that other
components (inbound policy, identity, control streams, the accept loop) append to ``/metrics``.

Held to the text format by parsing with ``prometheus_client.parser`` (the proxy does not import
that library; the tests may).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from weft.metrics import render_family
from weft.proxy.inbound.policy import _Counters


def _parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, dict(s.labels), s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    ]


def test_labelled_counter_lines() -> None:
    text = render_family(
        "tcp_detect_timeout_closed_total",
        "counter",
        "Connections closed",
        [((("direction", "outbound"),), 0), ((("direction", "inbound"),), 3)],
    )
    assert text == (
        "# HELP tcp_detect_timeout_closed_total Connections closed\n"
        "# TYPE tcp_detect_timeout_closed_total counter\n"
        'tcp_detect_timeout_closed_total{direction="outbound"} 0\n'
        'tcp_detect_timeout_closed_total{direction="inbound"} 3\n'
    )


def test_unlabelled_gauge_and_value_formats() -> None:
    assert render_family("g", "gauge", "d", [((), 1700000000)]) == (
        "# HELP g d\n# TYPE g gauge\ng 1700000000\n"
    )
    assert render_family("g", "gauge", "d", [((), 1.5)]).endswith("g 1.500\n")
    # a header alone when there is nothing to sample (callers append samples of their own)
    assert render_family("g", "gauge", "d", ()) == "# HELP g d\n# TYPE g gauge\n"


def test_bool_value_is_a_number() -> None:
    # a bool passes the type checker as an int; "True" is no sample value to a parser
    text = render_family("up", "gauge", "d", [((("k", "v"),), True), ((("k", "w"),), False)])
    assert 'up{k="v"} 1\n' in text and 'up{k="w"} 0\n' in text
    assert [v for _, _, v in _parse(text)] == [1.0, 0.0]


def test_label_values_escaped() -> None:
    value = 'a\\b"c\nd'
    text = render_family("c_total", "counter", "d", [((("route", value),), 2)])
    assert 'c_total{route="a\\\\b\\"c\\nd"} 2\n' in text
    assert _parse(text) == [("c_total", {"route": value}, 2.0)]


def test_help_text_escaped() -> None:
    # a newline in HELP would end the line and leave the rest as garbage
    text = render_family("c_total", "counter", "one\ntwo \\ three", [((), 1)])
    assert text.startswith("# HELP c_total one\\ntwo \\\\ three\n# TYPE c_total counter\n")
    (fam,) = text_string_to_metric_families(text)
    assert fam.documentation == "one\ntwo \\ three"


_values = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@given(st.lists(st.tuples(_values, st.integers(0, 2**53)), max_size=5))
def test_any_label_value_round_trips(samples: list[tuple[str, int]]) -> None:
    text = render_family(
        "x_total", "counter", "d", [((("a", v), ("b", "c")), n) for v, n in samples]
    )
    assert _parse(text) == [("x_total", {"a": v, "b": "c"}, float(n)) for v, n in samples]


def test_inbound_policy_counters_render_through_it() -> None:
    counters = _Counters()
    labels = (("direction", "inbound"), ("srv_name", 'odd"name\\\n'))
    counters.get("inbound_http_authz_allow_total", labels).value += 2
    text = counters.render()
    assert text == render_family(
        "inbound_http_authz_allow_total", "counter", "HTTP requests authorized", [(labels, 2)]
    )
    assert _parse(text) == [("inbound_http_authz_allow_total", dict(labels), 2.0)]


def test_endpoint_states_of_a_target_with_quotes_and_backslashes_parse() -> None:
    """``outbound_endpoint_state`` used to be formatted by hand in ``Concrete``, unescaped: a
    target named ``we"ird\\:80`` made the whole scrape unparseable."""
    from weft.discovery import Endpoint
    from weft.metrics import ProxyMetrics
    from weft.policy import FailureAccrualConfig, ServicePolicy
    from weft.proxy.outbound.concrete import Concrete

    name = 'we"ird\\:80'
    concrete = Concrete(
        name, direction="outbound", metrics=ProxyMetrics(process=False), connect_timeout=1.0,
        pool_max_idle=1,
    )  # fmt: skip
    concrete.set_policy(ServicePolicy(failure_accrual=FailureAccrualConfig()))
    concrete.set_endpoints([Endpoint(("127.0.0.1", 8080))])
    text = render_family("outbound_endpoint_state", "gauge", "state", concrete.endpoint_states())
    ((metric, labels, value),) = _parse(text)
    assert (metric, labels["target_addr"], labels["endpoint"], value) == (
        "outbound_endpoint_state", name, "127.0.0.1:8080", 1.0
    )  # fmt: skip

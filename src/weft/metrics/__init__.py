"""The proxy's metrics: Linkerd-compatible names, labels and buckets.

The hot path increments plain slot attributes on per-series objects (:mod:`weft.metrics.proxy`);
exposition in the Prometheus text format is done by ``prometheus_client`` through a custom
collector. Measured on this machine (``python -m timeit``-style loop, see docs/benchmarks.md):
a ``prometheus_client`` counter ``inc`` costs 0.63 us and a histogram ``observe`` 1.37 us, so the
three updates per request cost ~2.6 us; the slot counters used here cost ~0.4 us for all three.
"""

from weft.metrics.proxy import (
    LATENCY_BUCKETS_MS,
    HttpSeries,
    ProxyMetrics,
    ResponseSeries,
    TcpSeries,
)

__all__ = ["LATENCY_BUCKETS_MS", "HttpSeries", "ProxyMetrics", "ResponseSeries", "TcpSeries"]

"""The proxy's metrics: Linkerd-compatible names, labels and buckets.

The hot path increments plain slot attributes on per-series objects (:mod:`weft.metrics.proxy`)
and the exposition is rendered from them at scrape time. Measured on this machine (timeit loop,
see docs/benchmarks.md): a ``prometheus_client`` counter ``inc`` costs 0.63 us and a histogram
``observe`` 1.37 us, so the three updates per request would cost ~2.6 us; the slot counters used
here cost ~0.4 us for all three. Importing ``prometheus_client`` would also add 5.4 MB of RSS.
"""

from weft.metrics.proxy import (
    LATENCY_BUCKETS_MS,
    HttpSeries,
    ProxyMetrics,
    ResponseSeries,
    TcpSeries,
    render_family,
)

__all__ = [
    "LATENCY_BUCKETS_MS",
    "HttpSeries",
    "ProxyMetrics",
    "ResponseSeries",
    "TcpSeries",
    "render_family",
]

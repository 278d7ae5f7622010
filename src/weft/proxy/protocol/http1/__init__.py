"""HTTP/1.1: the client side (:mod:`.server`), the exchange that adapts the logical layer
(:mod:`.exchange`), pooled upstream connections (:mod:`.client`) and framing (:mod:`.framing`).
"""

from weft.proxy.protocol.http1.client import Http1Upstream
from weft.proxy.protocol.http1.exchange import Exchange
from weft.proxy.protocol.http1.framing import HOP_BY_HOP, error_response, transfer_coding_error
from weft.proxy.protocol.http1.server import Http1Context, Http1Downstream

__all__ = [
    "HOP_BY_HOP",
    "Exchange",
    "Http1Context",
    "Http1Downstream",
    "Http1Upstream",
    "error_response",
    "transfer_coding_error",
]

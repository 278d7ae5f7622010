"""Protocol codecs and adapters: HTTP/1.1 (:mod:`.http1`), HTTP/2 and gRPC (:mod:`.http2`), and
the opaque TCP relay (:mod:`.tcp`). The HTTP adapters feed the one logical layer
(:mod:`weft.proxy.outbound.logical`) and drain it.
"""

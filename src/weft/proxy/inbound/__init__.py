"""What only the inbound side does before a request is proxied: mesh TLS (:mod:`.tls`: the
memory-BIO TLS transport, termination on bytes already read, and the client connect the outbound
endpoint layer dials meshed endpoints with) and the inbound policy (:mod:`.policy`:
authorization, rate limits, its watch and metrics).
"""

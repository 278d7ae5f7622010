"""The accept path, for both listeners: batched accepts and the detection timer (:mod:`.listen`),
each connection until its protocol is known (:mod:`.conn`, deciding with
:class:`weft.core.accept.Detection`; a mesh proxy's connections to the inbound port in
:mod:`.mesh`), and its hand-over to HTTP/1, HTTP/2 or a TCP relay
(:mod:`.handover`).
"""

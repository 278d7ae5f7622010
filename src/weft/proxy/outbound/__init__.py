"""The request path by layer: logical (:mod:`.logical`: route, filters, timeouts, retries, error
rules, accounting; once for every protocol), concrete (:mod:`.concrete`: a backend's balancer,
failure accrual and policy) and endpoint (:mod:`.endpoint`: an endpoint's labels and pooled
connections). The inbound side uses the same layers towards its local app.
"""
